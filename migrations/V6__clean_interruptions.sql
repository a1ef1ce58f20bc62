-- migration: expand, in a transaction
-- Attempts that a clean stop interrupted (a worker's shutdown hand-back, an operator's pause) do
-- not use up a node's attempts: a node longer than a worker's grace period survives rolling
-- restarts. An expand step: only an addition with a default, so every statement of the previous
-- release still works on this schema (a previous release's hand-back leaves the count alone,
-- and its interrupted attempts count, as they always did), and the migration may run while the
-- processes of the previous release are still being replaced.

-- How many of the node's started attempts a clean stop interrupted. Its counted attempts are
-- attempts - clean_interruptions; the domain's CLEAN_INTERRUPTIONS_CAP bounds this count, so that
-- a node that never fits in a grace period cannot loop forever. A constant default is stored in
-- the catalogue (PostgreSQL 11 and later): the table is not rewritten, and the ACCESS EXCLUSIVE
-- lock on run_nodes, a hot table, is held for milliseconds.
ALTER TABLE run_nodes ADD COLUMN clean_interruptions integer NOT NULL DEFAULT 0;
