-- The hot queue apart from the run record: claimable runs in run_queue, held runs in run_leases
-- (one holder per concurrency key), and no index on runs that names `status`, so that a status
-- change alone can be a HOT update. A finished run's status is copied into `outcome`, which the
-- listings' indexes use instead.
ALTER TABLE runs ADD COLUMN outcome text;
CREATE TABLE run_queue (
    run_id uuid PRIMARY KEY, tenant_id text NOT NULL, priority smallint NOT NULL,
    queued_at timestamptz NOT NULL, retry_after timestamptz, concurrency_key text);
CREATE INDEX run_queue_order_idx ON run_queue (priority DESC, queued_at, run_id);
CREATE TABLE run_leases (run_id uuid PRIMARY KEY, tenant_id text NOT NULL, concurrency_key text);
CREATE UNIQUE INDEX run_leases_one_per_key ON run_leases (tenant_id, concurrency_key)
    WHERE concurrency_key IS NOT NULL;
DROP INDEX runs_claimable_idx, runs_one_holder_per_key, runs_held_idx, runs_status_idx,
    runs_stale_reaped_idx, runs_concurrency_key_idx;
CREATE INDEX runs_active_idx ON runs (tenant_id, created_at DESC, run_id) WHERE outcome IS NULL;
CREATE INDEX runs_finished_idx ON runs (tenant_id, outcome, created_at DESC, run_id)
    WHERE outcome IS NOT NULL;
