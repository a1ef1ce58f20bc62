-- migration: expand, outside a transaction
-- Routing runs to heterogeneous worker pools (issue 19): a run goes to a queue, and needs of
-- the one worker that runs it a set of capabilities (its nodes' kinds, the labels its nodes
-- require, the context its automation requires). A worker claims only runs of the queues it
-- serves whose requirement set it meets, and the check is in the claim's index walk, so that
-- runs nobody here can serve never slow a claim down however many of them wait.
--
-- Requirement sets are stored once per distinct content and referred to by id: a claim first
-- finds the (few) sets its worker meets, then walks one index range per queue and set. Set 0 is
-- no row: it is the set of runs queued before this step (or by the previous release), which any
-- worker may claim, as before.
--
-- An expand step: a new table, and columns the previous release never reads, each with a
-- constant default or none (no rewrite, no scan of runs; a brief ACCESS EXCLUSIVE lock on each
-- table). Statement by statement, so that no lock is held while another is awaited: a start
-- statement locks runs and then automation_versions (the foreign key's check), so altering both
-- in one transaction could deadlock with it. Each statement may therefore run again after a
-- failure; runs is altered last, since its queue column is what tells this release the step is
-- done (store/gated.rs). The previous release keeps claiming from runs_claimable_idx, from
-- every queue: routing holds once every worker runs this release (docs/operations.md). The index the new claim walks
-- is built by the next migration, concurrently.
CREATE TABLE IF NOT EXISTS requirement_sets (
    set_id   bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Sorted, without duplicates: equal sets are equal arrays.
    kinds    text[]  NOT NULL,
    -- Label key to value, e.g. {"gpu": "a100"}.
    labels   jsonb   NOT NULL,
    -- Names of context (secrets, settings) the worker must hold; sorted, without duplicates.
    context  text[]  NOT NULL,
    UNIQUE (kinds, labels, context)
);

-- The queue a version's runs go to unless their start names another, and what they require.
-- A version stored before this step has its kinds' set from the backfill below; one the
-- previous release stores meanwhile has none, and its runs get set 0.
ALTER TABLE automation_versions
    ADD COLUMN IF NOT EXISTS queue text NOT NULL DEFAULT 'default',
    ADD COLUMN IF NOT EXISTS requirement_set bigint;

-- What a worker serves and holds; null for a worker of the previous release (every queue).
ALTER TABLE workers
    ADD COLUMN IF NOT EXISTS queues text[],
    ADD COLUMN IF NOT EXISTS labels jsonb,
    ADD COLUMN IF NOT EXISTS context text[];

-- Specs stored so far name no labels or context (the fields are new): their set is their kinds.
-- Versions are few (one per distinct spec applied), so the backfill is short.
INSERT INTO requirement_sets (kinds, labels, context)
SELECT DISTINCT kinds.kinds, '{}'::jsonb, '{}'::text[]
FROM automation_versions v,
LATERAL (
    SELECT ARRAY(
        SELECT DISTINCT node->>'kind'
        FROM jsonb_array_elements(v.spec->'nodes') AS node
        WHERE node->>'kind' IS NOT NULL
        ORDER BY 1) AS kinds
) kinds
WHERE jsonb_typeof(v.spec->'nodes') = 'array'
ON CONFLICT (kinds, labels, context) DO NOTHING;

UPDATE automation_versions v
SET requirement_set = s.set_id
FROM requirement_sets s
WHERE v.requirement_set IS NULL AND jsonb_typeof(v.spec->'nodes') = 'array'
  AND s.labels = '{}'::jsonb AND s.context = '{}'::text[]
  AND s.kinds = ARRAY(
        SELECT DISTINCT node->>'kind'
        FROM jsonb_array_elements(v.spec->'nodes') AS node
        WHERE node->>'kind' IS NOT NULL
        ORDER BY 1);

-- first_queued_micros: when the run was first queued (microseconds since the epoch), kept
-- through retries, hand-backs and resumes, so that a run requeued keeps its place; with its
-- priority it makes the claim order (the ageing rule, domain/src/routing.rs `claim_order`): each
-- level of priority is worth a minute of waiting. Its default is the inserting transaction's
-- now(), so every writer sets it, the previous release's too; runs already stored get this
-- migration's time (a constant default: no rewrite).
ALTER TABLE runs
    ADD COLUMN IF NOT EXISTS queue text NOT NULL DEFAULT 'default',
    ADD COLUMN IF NOT EXISTS requirement_set bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS first_queued_micros bigint NOT NULL
        DEFAULT (extract(epoch FROM now()) * 1000000)::bigint;
