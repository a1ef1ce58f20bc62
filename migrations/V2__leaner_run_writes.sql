-- Fewer index entries and checks on the per-run hot path (bench/README.md measures it).

-- Most runs carry no idempotency key, and the unique constraint indexed them all: every claim
-- and every completion (a status change, so not a HOT update) added an entry for a NULL key. A
-- partial index holds only the runs that have a key, and still keeps each key unique per tenant.
ALTER TABLE runs DROP CONSTRAINT runs_tenant_id_idempotency_key_key;
CREATE UNIQUE INDEX runs_idempotency_key_idx ON runs (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Every node row inserted ran a foreign-key check against its run, a separate query per row. A
-- node row is only ever written under its run's claim, with the run's row locked in the same
-- statement, so the run exists; deleting an automation's runs deletes their node rows in the
-- same statement.
ALTER TABLE run_nodes DROP CONSTRAINT run_nodes_run_id_fkey;

-- A node row is inserted when its node starts and updated once when it finishes. At 80% full, a
-- page had room for the new versions of only a quarter of its rows, so most finishes were not
-- HOT and added an index entry each. Half-full pages keep them HOT, for small outputs at least;
-- the space of old versions is reclaimed by pruning. Only pages written from now on are affected.
ALTER TABLE run_nodes SET (fillfactor = 50);
