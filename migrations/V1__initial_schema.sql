-- migration: expand, in a transaction
-- Leasehold's first schema: automations, runs with their leases, node checkpoints, events, workers.
-- Statuses and names are text with CHECK constraints rather than enums, so that a later migration
-- can add a value without rewriting the table.

CREATE TABLE automations (
    tenant_id       text        NOT NULL CHECK (length(tenant_id) BETWEEN 1 AND 128),
    automation_id   text        NOT NULL CHECK (length(automation_id) BETWEEN 1 AND 128),
    current_version integer     NOT NULL CHECK (current_version >= 1),
    status          text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, automation_id)
);

-- A version is never updated: a run pins the version it started with.
CREATE TABLE automation_versions (
    tenant_id      text        NOT NULL,
    automation_id  text        NOT NULL,
    version        integer     NOT NULL CHECK (version >= 1),
    spec           jsonb       NOT NULL CHECK (octet_length(spec::text) <= 64 * 1024 * 1024),
    spec_hash      bytea       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, automation_id, version),
    FOREIGN KEY (tenant_id, automation_id) REFERENCES automations (tenant_id, automation_id)
        ON DELETE CASCADE
);

-- Runs are updated on every claim, heartbeat and checkpoint: room on each page lets those
-- updates stay HOT (no index change) when they touch only unindexed columns.
CREATE TABLE runs (
    run_id              uuid        PRIMARY KEY,
    tenant_id           text        NOT NULL CHECK (length(tenant_id) BETWEEN 1 AND 128),
    automation_id       text        NOT NULL,
    automation_version  integer     NOT NULL,
    trigger             text        NOT NULL CHECK (trigger IN ('manual', 'schedule', 'api')),
    inputs              jsonb       NOT NULL DEFAULT '{}'::jsonb
                                    CHECK (octet_length(inputs::text) <= 1024 * 1024),
    idempotency_key     text        CHECK (length(idempotency_key) BETWEEN 1 AND 256),
    status              text        NOT NULL CHECK (status IN (
                                        'queued', 'running', 'pausing', 'paused', 'awaiting_approval',
                                        'completed', 'failed', 'blocked', 'cancelled')),
    priority            smallint    NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
    queue_reason        text        CHECK (length(queue_reason) <= 64),
    queued_at           timestamptz NOT NULL DEFAULT now(),

    -- Durable backoff: a queued run is not due before retry_after.
    retry_after         timestamptz,
    retry_node_id       text,
    retry_attempt       integer     CHECK (retry_attempt >= 1),
    retry_backoff_ms    bigint      CHECK (retry_backoff_ms >= 0),

    -- The lease. lease_epoch is the fencing token: every claim raises it, every write matches it.
    claim_id            uuid,
    claimant_id         text        CHECK (length(claimant_id) BETWEEN 1 AND 256),
    claimed_at          timestamptz,
    lease_expires_at    timestamptz,
    lease_epoch         bigint      NOT NULL DEFAULT 0 CHECK (lease_epoch >= 0),
    -- The epoch under which a node last started: progress since the claim means it equals lease_epoch.
    progress_epoch      bigint      NOT NULL DEFAULT 0 CHECK (progress_epoch >= 0),
    -- Claims in a row that expired before any progress; the poison guard blocks the run past a limit.
    expired_claims      integer     NOT NULL DEFAULT 0 CHECK (expired_claims >= 0),
    -- Per-run event sequence, raised under the row lock so that watchers see a gap-free order.
    event_seq           bigint      NOT NULL DEFAULT 0 CHECK (event_seq >= 0),

    concurrency_key     text        CHECK (length(concurrency_key) BETWEEN 1 AND 256),
    detail              text        CHECK (length(detail) <= 4096),
    stop_kind           text        CHECK (stop_kind IN (
                                        'operator_paused', 'stale_reaped', 'guardrail_stopped',
                                        'cancelled', 'node_failed', 'poisoned', 'unreadable')),
    stop_reason         text        CHECK (length(stop_reason) <= 4096),
    pause_reason        text        CHECK (length(pause_reason) <= 4096),
    resume_reason       text        CHECK (length(resume_reason) <= 4096),
    failed_node_id      text,
    failed_attempt      integer,
    stale_reaped_at     timestamptz,
    auto_resumes        integer     NOT NULL DEFAULT 0 CHECK (auto_resumes >= 0),

    cost_tokens         bigint      NOT NULL DEFAULT 0 CHECK (cost_tokens >= 0),
    cost_micros         bigint      NOT NULL DEFAULT 0 CHECK (cost_micros >= 0),

    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,

    FOREIGN KEY (tenant_id, automation_id, automation_version)
        REFERENCES automation_versions (tenant_id, automation_id, version),
    UNIQUE (tenant_id, idempotency_key),
    -- A held run always has its whole lease; an unheld run has none.
    CHECK ((status IN ('running', 'pausing')) =
           (claimant_id IS NOT NULL AND claim_id IS NOT NULL AND lease_expires_at IS NOT NULL))
) WITH (fillfactor = 70);

-- The claim query walks this index in order and stops after N due rows. It holds queued runs
-- only, so finished runs, however many, never slow a claim.
CREATE INDEX runs_claimable_idx ON runs (priority DESC, queued_at, run_id) WHERE status = 'queued';

-- Two runs sharing a concurrency key are never held at once. The claim query skips runs whose
-- key is held; this index settles the race between two claimers that both saw the key free.
CREATE UNIQUE INDEX runs_one_holder_per_key ON runs (tenant_id, concurrency_key)
    WHERE concurrency_key IS NOT NULL AND status IN ('running', 'pausing');

-- The reaper looks at held runs only. lease_expires_at is deliberately not in the key: a
-- heartbeat then changes no indexed column and its update can stay HOT.
CREATE INDEX runs_held_idx ON runs (run_id) WHERE status IN ('running', 'pausing');

-- The auto-resume sweep's candidates: stale-reaped runs, by when they were reaped.
CREATE INDEX runs_stale_reaped_idx ON runs (stale_reaped_at)
    WHERE status = 'paused' AND stop_kind = 'stale_reaped';

-- Listings by automation and by status, newest first.
CREATE INDEX runs_automation_idx ON runs (tenant_id, automation_id, created_at DESC);
CREATE INDEX runs_status_idx ON runs (tenant_id, status, created_at DESC);

-- One row per node that has started or been settled; a node without a row is pending.
CREATE TABLE run_nodes (
    run_id          uuid        NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    node_id         text        NOT NULL CHECK (length(node_id) BETWEEN 1 AND 128),
    status          text        NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'skipped')),
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts BETWEEN 0 AND 1000),
    output          jsonb       CHECK (octet_length(output::text) <= 1024 * 1024),
    last_error      text        CHECK (length(last_error) <= 8192),
    last_error_retryable boolean,
    -- The epoch of the claim that started, finished or failed the current attempt.
    epoch           bigint      NOT NULL CHECK (epoch >= 0),
    started_at      timestamptz,
    finished_at     timestamptz,
    PRIMARY KEY (run_id, node_id)
) WITH (fillfactor = 80);

-- Append-only history. Partitioned by month so that retention detaches and drops old months
-- instead of deleting rows one by one.
CREATE TABLE run_events (
    run_id       uuid        NOT NULL,
    seq          bigint      NOT NULL CHECK (seq >= 1),
    tenant_id    text        NOT NULL,
    event        text        NOT NULL CHECK (length(event) BETWEEN 1 AND 64),
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    epoch        bigint      NOT NULL CHECK (epoch >= 0),
    node_id      text,
    attempt      integer,
    reason       text        CHECK (length(reason) <= 4096),
    stop_kind    text,
    metadata     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (run_id, seq, occurred_at)
) PARTITION BY RANGE (occurred_at);

-- Catches events of any month whose partition was not created ahead of time, so an insert never
-- fails for want of a partition. Partition upkeep keeps it empty.
CREATE TABLE run_events_default PARTITION OF run_events DEFAULT;

-- Creates the monthly partitions of run_events from the month of `from_day` on, `months` of them.
-- Idempotent; the coordinator's partition upkeep calls it ahead of time.
CREATE FUNCTION leasehold_ensure_event_partitions(from_day date, months integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    first_day date := date_trunc('month', from_day)::date;
    created integer := 0;
    lo date;
    name text;
BEGIN
    FOR i IN 0 .. months - 1 LOOP
        lo := (first_day + make_interval(months => i))::date;
        name := format('run_events_%s', to_char(lo, 'YYYY_MM'));
        IF to_regclass(name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF run_events FOR VALUES FROM (%L) TO (%L)',
                name, lo, (lo + interval '1 month')::date);
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END;
$$;

SELECT leasehold_ensure_event_partitions(current_date, 3);

-- Approval gates. A gate is requested by the worker that reaches a gated node, under its claim;
-- at most one is pending per node of a run.
CREATE TABLE gates (
    gate_id          uuid        PRIMARY KEY,
    tenant_id        text        NOT NULL,
    run_id           uuid        NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    node_id          text        NOT NULL CHECK (length(node_id) BETWEEN 1 AND 128),
    prompt           text        NOT NULL CHECK (length(prompt) BETWEEN 1 AND 4096),
    status           text        NOT NULL DEFAULT 'pending'
                                 CHECK (status IN ('pending', 'approved', 'rejected', 'cancelled')),
    requested_epoch  bigint      NOT NULL,
    requested_at     timestamptz NOT NULL DEFAULT now(),
    decided_at       timestamptz,
    decided_by       text        CHECK (length(decided_by) <= 256),
    decision_reason  text        CHECK (length(decision_reason) <= 4096),
    request_id       text        CHECK (length(request_id) <= 256),
    stale_marked_at  timestamptz,
    CHECK ((status = 'pending') = (decided_at IS NULL))
);

CREATE UNIQUE INDEX gates_one_pending_per_node ON gates (run_id, node_id) WHERE status = 'pending';
CREATE INDEX gates_pending_idx ON gates (tenant_id, requested_at) WHERE status = 'pending';
-- The stale-gate sweep's candidates, across tenants: pending gates not yet marked, oldest first.
CREATE INDEX gates_unmarked_idx ON gates (requested_at) WHERE status = 'pending' AND stale_marked_at IS NULL;
CREATE INDEX gates_run_idx ON gates (run_id);

CREATE TABLE workers (
    claimant_id     text        PRIMARY KEY CHECK (length(claimant_id) BETWEEN 1 AND 256),
    host            text        NOT NULL CHECK (length(host) <= 256),
    pid             integer     NOT NULL CHECK (pid >= 0),
    version         text        NOT NULL CHECK (length(version) <= 64),
    capacity        integer     NOT NULL CHECK (capacity BETWEEN 1 AND 100000),
    handlers        text[]      NOT NULL DEFAULT '{}',
    started_at      timestamptz NOT NULL DEFAULT now(),
    last_heartbeat  timestamptz NOT NULL DEFAULT now(),
    draining        boolean     NOT NULL DEFAULT false
);

-- Leadership of the coordinators' sweeps: one row per role, with its own fencing epoch. A row
-- rather than a session advisory lock, which breaks behind poolers and is lost silently with its
-- connection.
CREATE TABLE leader_leases (
    name         text        PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 64),
    holder       text        NOT NULL CHECK (length(holder) BETWEEN 1 AND 256),
    epoch        bigint      NOT NULL CHECK (epoch >= 1),
    acquired_at  timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
