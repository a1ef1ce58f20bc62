-- migration: expand, outside a transaction
-- Listing a tenant's runs by concurrency key (ListRuns' `concurrency_key` filter, without an
-- automation) walked runs_status_idx for every status and filtered each entry by its key, so a
-- page of one key's runs read the tenant's runs of every state until it found enough: all of
-- them when the key has few. This index holds only the runs that have a key, in the order the
-- listing walks one status: list_runs_by_status (core/src/store/listing.rs) reads one key's runs
-- of one status newest first and stops after a page.
--
-- Built CONCURRENTLY, outside a transaction: it takes SHARE UPDATE EXCLUSIVE on runs, which
-- claims, heartbeats and checkpoints (ROW EXCLUSIVE) do not wait for, and waits itself for the
-- transactions already running, which in Leasehold are single statements. A build that fails
-- leaves an invalid index, which the runner drops before it tries again; IF NOT EXISTS makes a
-- finished build a no-op when the migration runs again.
--
-- It adds an index entry on the runs that have a key when their status changes, which never
-- was a HOT update (status is in runs_status_idx): keyless runs pay nothing.
CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_concurrency_key_idx
    ON runs (tenant_id, concurrency_key, status, created_at DESC)
    WHERE concurrency_key IS NOT NULL;
