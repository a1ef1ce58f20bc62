-- migration: expand, in a transaction
-- Concurrency and rate limits, enforced by the claim across every worker (issue 19).
--
-- A limit belongs to an automation (its spec's `max_running`, `max_starts_per_second`, `burst`,
-- written here when a version is stored) or to a queue (`leasehold queue set-limit`). A scope
-- without a row has no limit.
--
-- Concurrency: a claimed run of a limited scope takes a free *slot* of it, 1 to max_running
-- (runs.automation_slot, runs.queue_slot), and a unique index over the held runs' slots (V17)
-- makes a second holder of a slot impossible: never more than max_running held at once, however
-- many claimers race. Slots need no release: a run that stops being held leaves the index.
--
-- Rate: a token bucket per scope, refilled at max_starts_per_second up to `burst` and spent by
-- the claim statement, which updates the row (so concurrent claimers queue on it and each sees
-- the tokens the one before left).
--
-- An expand step: a new table and nullable columns the previous release never reads (no
-- rewrite; brief ACCESS EXCLUSIVE locks). The previous release's claims ignore limits: they hold
-- once every worker runs this release (docs/operations.md).
CREATE TABLE run_limits (
    -- 'automation' (tenant_id, name = automation id) or 'queue' (tenant_id '', name = queue).
    scope                  text             NOT NULL CHECK (scope IN ('automation', 'queue')),
    tenant_id              text             NOT NULL,
    name                   text             NOT NULL,
    max_running            integer          CHECK (max_running BETWEEN 1 AND 100000),
    max_starts_per_second  double precision CHECK (max_starts_per_second > 0
                                                   AND max_starts_per_second <= 100000),
    burst                  integer          NOT NULL DEFAULT 1 CHECK (burst BETWEEN 1 AND 100000),
    -- The bucket: tokens left at refilled_at (a claim refills it first, then spends).
    tokens                 double precision NOT NULL DEFAULT 1 CHECK (tokens >= 0),
    refilled_at            timestamptz      NOT NULL DEFAULT now(),
    -- What the last claim took from the bucket: its answer to the claim statement.
    last_grant             integer          NOT NULL DEFAULT 0,
    updated_at             timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, tenant_id, name)
);

-- The slot a held run of a limited automation or queue takes; null for an unlimited one.
ALTER TABLE runs
    ADD COLUMN automation_slot integer,
    ADD COLUMN queue_slot integer;
