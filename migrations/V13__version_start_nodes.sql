-- migration: expand, in a transaction
-- The nodes a fresh run of a version starts first: those that depend on nothing and need no
-- approval (neither an `approval` block nor the `approval` kind), in spec order. The claim of a
-- run that never started a node counts these nodes' first attempts in the same statement
-- (docs/lease_protocol.md, rules 1 and 8), so a one-node run costs a claim-and-start and a
-- completion. NULL means "not known": the claim then starts nothing, and the worker starts the
-- nodes as before.
--
-- An expand step: a nullable column, which the previous release never reads or writes; adding it
-- takes a brief ACCESS EXCLUSIVE lock on automation_versions (no rewrite). The versions already
-- stored get theirs from their spec, which is the spec as the store serialized it: a node's
-- `depends_on` and `approval` are absent when empty (an older serialization's `[]` or `null`
-- reads the same). Versions are few (one per distinct spec applied), so the backfill is short;
-- it holds the table's lock until it commits, which delays StartRun for that long.
ALTER TABLE automation_versions ADD COLUMN start_nodes text[];

UPDATE automation_versions v
SET start_nodes = ARRAY(
    SELECT node->>'id'
    FROM jsonb_array_elements(v.spec->'nodes') WITH ORDINALITY AS n(node, place)
    WHERE coalesce(jsonb_array_length(node->'depends_on'), 0) = 0
      AND coalesce(jsonb_typeof(node->'approval'), 'null') = 'null'
      AND node->>'kind' <> 'approval'
    ORDER BY place
);
