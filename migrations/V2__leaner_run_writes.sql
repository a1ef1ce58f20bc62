-- migration: expand, in a transaction
-- Fewer index entries and checks on the per-run hot path (bench/README.md measures it). Every
-- statement of the build that carries this migration also works on the V1 schema, and every
-- statement of a V1 build still works on this one, so the migration may run while the
-- processes of the previous release are still being replaced.

-- Most runs carry no idempotency key, yet the V1 unique constraint indexes every run, and every
-- claim and completion (status changes, so not HOT updates) adds an entry for a NULL key. This
-- partial index holds only the runs that have a key. The V1 constraint stays for now: the V1
-- build's start names it in ON CONFLICT and its key race by name. A later migration drops it,
-- once no V1 build can be running.
CREATE UNIQUE INDEX runs_idempotency_key_idx ON runs (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Every node row inserted ran a foreign-key check against its run, a separate query per row. A
-- node row is only ever written under its run's claim, with the run's row locked in the same
-- statement, so the run exists; deleting an automation's runs deletes their node rows in the
-- same statement (a V1 build still relies on the cascade, and leaves the node rows of the runs
-- it deletes: rows nothing reads).
ALTER TABLE run_nodes DROP CONSTRAINT run_nodes_run_id_fkey;

-- A node row is inserted when its node starts and updated once when it finishes. At 80% full, a
-- page had room for the new versions of only a quarter of its rows, so most finishes were not
-- HOT and added an index entry each. Half-full pages keep them HOT, for small outputs at least;
-- the space of old versions is reclaimed by pruning. Only pages written from now on are affected.
ALTER TABLE run_nodes SET (fillfactor = 50);
