-- migration: expand, outside a transaction
-- Deadlines (issues 19 and 20): an automation may give its runs a schedule_to_start_timeout
-- (from the run's start to its first claim) and a run_timeout (from the run's start to its end,
-- time queued included). The start statement writes the deadlines on the run from its version,
-- and the leader's deadline sweep fails the runs past them, with a stop kind that says why:
-- `no_capable_worker` or `startup_runtime_context_missing` when no live worker could have taken
-- the run, `start_timed_out` when one could but none did in time, `run_timed_out`.
--
-- An expand step, statement by statement (it alters two tables, see V14), each statement a no-op
-- when run again. Nullable columns without defaults (no rewrite; brief ACCESS EXCLUSIVE locks).
-- The new stop kinds need a wider CHECK on runs.stop_kind: it is added NOT VALID (no scan under
-- the lock), validated (a scan under SHARE UPDATE EXCLUSIVE, which lets writes through), and
-- only then is V1's narrower CHECK dropped, so that runs.stop_kind is checked throughout. The
-- previous release writes only the old kinds, which the new CHECK admits; it never reads the
-- new columns, so its runs have no deadline.
ALTER TABLE automation_versions
    ADD COLUMN IF NOT EXISTS schedule_to_start_timeout_ms bigint
        CHECK (schedule_to_start_timeout_ms > 0),
    ADD COLUMN IF NOT EXISTS run_timeout_ms bigint CHECK (run_timeout_ms > 0);

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'runs'::regclass AND conname = 'runs_stop_kind_known') THEN
        ALTER TABLE runs ADD CONSTRAINT runs_stop_kind_known CHECK (stop_kind IN (
            'operator_paused', 'stale_reaped', 'guardrail_stopped', 'cancelled', 'node_failed',
            'poisoned', 'unreadable', 'no_capable_worker', 'startup_runtime_context_missing',
            'start_timed_out', 'run_timed_out')) NOT VALID;
    END IF;
END
$$;

ALTER TABLE runs VALIDATE CONSTRAINT runs_stop_kind_known;

ALTER TABLE runs DROP CONSTRAINT IF EXISTS runs_stop_kind_check;

-- Altered last: start_deadline is what tells this release the step is done (store/gated.rs).
ALTER TABLE runs
    ADD COLUMN IF NOT EXISTS start_deadline timestamptz,
    ADD COLUMN IF NOT EXISTS run_deadline timestamptz;
