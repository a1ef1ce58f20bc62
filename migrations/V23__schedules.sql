-- migration: expand, in a transaction
-- Cron schedules (issue 20). An automation's spec may carry schedules; storing a version syncs
-- them into `schedules`, where the leader keeps each one's cursor (`next_fire_at`, the first
-- fire time not decided yet) and its pause. Each fire time is decided once, as a row of
-- `schedule_fires` keyed by schedule and fire time, under the leader fence and a compare-and-set
-- of the cursor: a second coordinator or a former leader that wakes up cannot decide it again.
-- A fire decided to start gets its run through the ordinary start with an idempotency key made
-- of the schedule and the fire time, so it starts exactly one run however often the start is
-- retried. Runs record the schedule and the fire time they were started for.
--
-- An expand step: nullable columns without defaults on runs (no rewrite; a brief ACCESS
-- EXCLUSIVE lock) and new tables; only runs is altered, so it runs in a transaction. The index
-- of a schedule's unfinished runs comes with V24, concurrently.
ALTER TABLE runs
    ADD COLUMN schedule_id text CHECK (length(schedule_id) BETWEEN 1 AND 128),
    ADD COLUMN scheduled_for timestamptz;

CREATE TABLE schedules (
    tenant_id      text        NOT NULL,
    automation_id  text        NOT NULL,
    schedule_id    text        NOT NULL CHECK (length(schedule_id) BETWEEN 1 AND 128),
    cron           text        NOT NULL CHECK (length(cron) BETWEEN 1 AND 256),
    timezone       text        NOT NULL CHECK (length(timezone) BETWEEN 1 AND 64),
    inputs         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    overlap        text        NOT NULL CHECK (overlap IN ('skip', 'queue_one', 'allow')),
    -- Missed fires caught up after downtime, the latest ones; 0 skips them all.
    catch_up       integer     NOT NULL CHECK (catch_up BETWEEN 0 AND 1000),
    paused         boolean     NOT NULL DEFAULT false,
    paused_at      timestamptz,
    paused_by      text        CHECK (length(paused_by) <= 256),
    pause_reason   text        CHECK (length(pause_reason) <= 4096),
    -- The first fire time not decided yet; null when the pattern never fires again.
    next_fire_at   timestamptz,
    last_fire_at   timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, automation_id, schedule_id),
    FOREIGN KEY (tenant_id, automation_id) REFERENCES automations (tenant_id, automation_id)
        ON DELETE CASCADE
);

-- The leader's candidates: schedules due, by cursor; paused ones are not in it.
CREATE INDEX schedules_due_idx ON schedules (next_fire_at) WHERE NOT paused;

CREATE TABLE schedule_fires (
    tenant_id      text        NOT NULL,
    automation_id  text        NOT NULL,
    schedule_id    text        NOT NULL,
    fire_at        timestamptz NOT NULL,
    -- start: a run is (to be) started for it; skip_overlap: runs of earlier fires were
    -- unfinished; skip_paused: its automation was paused when its run was to start.
    decision       text        NOT NULL CHECK (decision IN ('start', 'skip_overlap', 'skip_paused')),
    -- Decided after its grace (no leader ran in time) and kept by the catch-up policy.
    caught_up      boolean     NOT NULL DEFAULT false,
    run_id         uuid,
    decided_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, automation_id, schedule_id, fire_at),
    FOREIGN KEY (tenant_id, automation_id, schedule_id)
        REFERENCES schedules (tenant_id, automation_id, schedule_id) ON DELETE CASCADE
);

-- Fires decided to start whose run is not started yet (a leader stopped between the two).
CREATE INDEX schedule_fires_unstarted_idx ON schedule_fires (fire_at)
    WHERE decision = 'start' AND run_id IS NULL;
-- Pruning decided fires after a day.
CREATE INDEX schedule_fires_decided_idx ON schedule_fires (decided_at);
