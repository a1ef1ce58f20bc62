//! Claiming due runs, renewing their leases, and handing them back: rules 1, 2 and 6 of
//! docs/lease_protocol.md.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::gated::{
    QUEUES_SCHEMA_VERSION, START_NODES_SCHEMA_VERSION, before_schema, if_traced, since_schema,
};
use super::query::{Query, bucket_now, clear_lease, notify_queued};
use super::{Error, Store, millis};
use crate::ids::{AutomationId, ClaimantId, LeaseEpoch, NodeId, RunId, TenantId};
use crate::routing::{Capabilities, DEFAULT_QUEUE};
use crate::run::RunStatus;
use crate::trace::{TraceContext, TraceParent, TraceState};

/// Proof of a claim: a run and the epoch it was claimed at. Only [`Store::claim_runs`] makes
/// one, and every write the holder makes to the run carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Claim {
    pub(super) run_id: RunId,
    pub(super) epoch: LeaseEpoch,
}

impl Claim {
    /// The run held.
    pub fn run_id(&self) -> RunId {
        self.run_id
    }

    /// The fencing token.
    pub fn epoch(&self) -> LeaseEpoch {
        self.epoch
    }
}

/// A run a worker has just claimed, with what it needs to start executing it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedRun {
    /// The claim to present with every write.
    pub claim: Claim,
    /// The run's tenant.
    pub tenant: TenantId,
    /// The automation.
    pub automation_id: AutomationId,
    /// The version the run pinned.
    pub automation_version: i32,
    /// The run's inputs.
    pub inputs: serde_json::Value,
    /// When the new lease runs out, by the database's clock.
    pub lease_expires_at: DateTime<Utc>,
    /// A node started under an earlier claim: load the checkpoint before executing.
    pub resumed: bool,
    /// The node whose retry this claim is for, if it waited in backoff.
    pub retry_node_id: Option<NodeId>,
    /// The nodes this claim started, their attempts counted in the claim's statement: run
    /// their handlers without starting them again. Empty unless the run never started a node
    /// before and the claim was asked to start some.
    pub started: Vec<StartedNode>,
    /// How long the run was due before this claim took it, by the database's clock: from its
    /// start, its backoff's end or its resume, to the claim.
    pub waited: Duration,
    /// The trace the run's work continues, read with the claim; `None` for a run started
    /// before runs had one.
    pub trace: Option<TraceContext>,
}

/// A node whose attempt a claim counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedNode {
    /// The node.
    pub node_id: NodeId,
    /// The attempt counted (1: a claim starts only a run's first nodes).
    pub attempt: u32,
}

/// Which queued runs a claim may take: those of the queues served whose requirement set the
/// claimant meets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    queues: Vec<String>,
    /// Sorted. `None` (with the two below): every requirement set is met.
    kinds: Option<Vec<String>>,
    /// As the statement takes them: one JSON object, made once rather than per claim.
    labels: Option<serde_json::Value>,
    /// Sorted.
    context: Option<Vec<String>>,
}

impl Served {
    /// What a worker with `capabilities` may claim: runs of its queues (the default queue when
    /// it names none) that need no kind, label or context it lacks.
    pub fn by(capabilities: &Capabilities) -> Self {
        Self {
            queues: match &capabilities.queues {
                Some(queues) => queues.iter().cloned().collect(),
                None => vec![DEFAULT_QUEUE.to_owned()],
            },
            kinds: Some(capabilities.kinds.iter().cloned().collect()),
            labels: Some(super::workers::labels_json(&capabilities.labels)),
            context: Some(capabilities.context.iter().cloned().collect()),
        }
    }

    /// Every run of the default queue, whatever it requires: for a claimant that executes
    /// anything (tests, tools).
    pub fn default_queue() -> Self {
        Self {
            queues: vec![DEFAULT_QUEUE.to_owned()],
            kinds: None,
            labels: None,
            context: None,
        }
    }
}

/// A lease renewed by a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewed {
    /// The claim.
    pub claim: Claim,
    /// `running`, or `pausing` when a user asked the run to pause.
    pub status: RunStatus,
    /// The new expiry, by the database's clock.
    pub lease_expires_at: DateTime<Utc>,
}

/// What one heartbeat round found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// Leases extended.
    pub renewed: Vec<Renewed>,
    /// Claims whose lease is gone: stop those runs and write nothing more for them.
    pub lost: Vec<Claim>,
}

/// What a hand-back did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Released {
    /// Runs back in `queued` with their checkpoint.
    pub released: Vec<RunId>,
    /// Claims that were no longer held; nothing was written for them.
    pub lost: Vec<Claim>,
}

// One statement claims up to $2 due runs. The `due` scan walks runs_claimable_by_queue_idx (V15)
// in claim order ([`claim_order!`]), one range for each queue served ($5) and each requirement
// set the claimant meets ($6 to $8: its kinds, labels and context; set 0, runs queued before
// V14, needs nothing); runs nobody here can serve are never read. It walks them twice. First
// without locks, at most $2 runs from each range, to find how many of the first $2 of them all
// each range holds (its quota). Then each range again, locking its quota of runs and skipping
// rows another claimer has locked, so claimers never wait on each other, and a run another
// claimer took is replaced by the range's next. Locking at most $2 runs from every range
// instead would lock (ranges × $2) rows to keep $2: twenty queues made a claim of 512 five
// times slower once each held 512 runs (bench/README.md, backlog over 20 queues). Below V14 the
// scan walks runs_claimable_idx (priority, then oldest), every queue at once. A run whose
// concurrency key another run holds is skipped, and one batch takes at most one run per key; two
// claimers racing for one key are settled by runs_one_holder_per_key (the loser's statement fails
// and its next claim skips the key). The epoch rises by one per
// claim; times are the database's. Each claim records its event in the same statement, with the
// per-run sequence raised under the row lock.
//
// A run that never started a node (no progress under any claim, not waiting for a retry) starts
// its version's first nodes in the same statement, up to $4 of them in spec order: their
// attempts are counted (attempt 1) and their `node_started` events recorded after `run_claimed`,
// in node-id order, as a batch of starts records them (docs/lease_protocol.md, rules 1 and 8).
// The version's `start_nodes` (V13) lists only nodes whose start is that alone (no approval
// gate); a version without it (NULL) starts nothing, and the worker starts its nodes as before.
// Such a run has no node rows yet (only a start makes one, and a start marks progress); the
// statement checks it all the same, since a run the fold would collide with (a node row of its
// own) would make the whole claim fail, for every worker, until it left the head of the queue:
// such a run's nodes are started by its worker instead.
// From V16, limits (docs/lease_protocol.md, rule 1): between the scan and the pick, each run of a
// limited automation or queue (a `run_limits` row) takes a free slot of it, and runs beyond the
// free slots stay queued; the unique indexes over held runs' slots (V17) make two holders of one
// slot impossible, so a claimer that raced another for a slot fails and claims again, as for a
// concurrency key. The free slots are the numbers up to max_running that no held run uses, found
// among the first (held + $2) so that a high limit costs no more than its held runs. Then each
// rate-limited scope's bucket is refilled and spent in one update of its row, which concurrent
// claimers wait on in turn, each seeing the tokens the one before left; runs beyond the tokens
// granted stay queued. A run held back by its queue's tokens after its automation granted one
// has spent that token: the limits err on the side of starting fewer.
macro_rules! limit_stages {
    () => {
        concat!(
            "
ordered AS (
    SELECT due.*,
           row_number() OVER (PARTITION BY tenant_id, concurrency_key
                              ORDER BY claim_order, run_id) AS nth_key,
           row_number() OVER (PARTITION BY tenant_id, automation_id
                              ORDER BY claim_order, run_id) AS nth_automation,
           row_number() OVER (PARTITION BY queue ORDER BY claim_order, run_id)
               AS nth_queue
    FROM due
),
automation_limit AS MATERIALIZED (
    SELECT l.tenant_id, l.name AS automation_id, l.max_starts_per_second,
           ",
            free_slots!(
                "automation_slot",
                "h.tenant_id = l.tenant_id AND h.automation_id = l.name"
            ),
            "
    WHERE l.scope = 'automation'
      AND (l.tenant_id, l.name) IN (SELECT tenant_id, automation_id FROM due)
),
queue_limit AS MATERIALIZED (
    SELECT l.name AS queue, l.max_starts_per_second,
           ",
            free_slots!("queue_slot", "h.queue = l.name"),
            "
    WHERE l.scope = 'queue' AND l.tenant_id = '' AND l.name IN (SELECT queue FROM due)
),
fits AS (
    SELECT r.*, a.free_slots[r.nth_automation] AS automation_slot,
           q.free_slots[r.nth_queue] AS queue_slot
    FROM ordered r
    LEFT JOIN automation_limit a
      ON a.tenant_id = r.tenant_id AND a.automation_id = r.automation_id
    LEFT JOIN queue_limit q ON q.queue = r.queue
    WHERE (r.concurrency_key IS NULL OR r.nth_key = 1)
      AND (a.free_slots IS NULL OR r.nth_automation <= cardinality(a.free_slots))
      AND (q.free_slots IS NULL OR r.nth_queue <= cardinality(q.free_slots))
),
automation_grant AS (
    UPDATE run_limits l
    SET tokens = ",
            bucket_after!(),
            ", refilled_at = greatest(l.refilled_at, now()), last_grant = ",
            bucket_grant!(),
            "
    FROM (SELECT tenant_id, automation_id, count(*)::int AS wanted FROM fits GROUP BY 1, 2) w
    WHERE l.scope = 'automation' AND l.tenant_id = w.tenant_id AND l.name = w.automation_id
      AND l.max_starts_per_second IS NOT NULL
    RETURNING l.tenant_id, l.name AS automation_id, l.last_grant
),
queue_grant AS (
    UPDATE run_limits l
    SET tokens = ",
            bucket_after!(),
            ", refilled_at = greatest(l.refilled_at, now()), last_grant = ",
            bucket_grant!(),
            "
    FROM (SELECT queue, count(*)::int AS wanted FROM fits GROUP BY 1) w
    WHERE l.scope = 'queue' AND l.tenant_id = '' AND l.name = w.queue
      AND l.max_starts_per_second IS NOT NULL
    RETURNING l.name AS queue, l.last_grant
),
allowed AS (
    SELECT f.*
    FROM (
        SELECT fits.*,
               row_number() OVER (PARTITION BY tenant_id, automation_id
                                  ORDER BY claim_order, run_id) AS granted_automation,
               row_number() OVER (PARTITION BY queue ORDER BY claim_order, run_id)
                   AS granted_queue
        FROM fits
    ) f
    LEFT JOIN automation_grant ag
      ON ag.tenant_id = f.tenant_id AND ag.automation_id = f.automation_id
    LEFT JOIN queue_grant qg ON qg.queue = f.queue
    WHERE (ag.last_grant IS NULL OR f.granted_automation <= ag.last_grant)
      AND (qg.last_grant IS NULL OR f.granted_queue <= qg.last_grant)
),"
        )
    };
}

/// A queued run's place in the claim order, lowest first: the ageing rule of
/// `routing::claim_order` (a minute of waiting per level of priority), written as V15's index
/// `runs_claimable_by_queue_idx` writes it, so that the scan walks the index in its order.
macro_rules! claim_order {
    () => {
        "first_queued_micros - priority::bigint * 60000000"
    };
}

/// A limited scope's free slots (`l` its `run_limits` row): the numbers up to its max_running
/// that none of its held runs has in `$slot`, among the first (held + $2); `$held_by` says which
/// runs `h` are the scope's.
macro_rules! free_slots {
    ($slot:literal, $held_by:literal) => {
        concat!(
            "CASE WHEN l.max_running IS NOT NULL THEN ARRAY(
               SELECT slot
               FROM generate_series(1, least(l.max_running, cardinality(held.slots) + $2::int))
                    AS slot
               WHERE slot <> ALL (held.slots)
               ORDER BY slot) END AS free_slots
    FROM run_limits l,
    LATERAL (SELECT ARRAY(
        SELECT h.",
            $slot,
            " FROM runs h
        WHERE ",
            $held_by,
            "
          AND h.",
            $slot,
            " IS NOT NULL AND h.status IN ('running', 'pausing')) AS slots) held"
        )
    };
}

/// The tokens a claim takes: as many whole ones as it wants (`w.wanted`) and the bucket holds.
macro_rules! bucket_grant {
    () => {
        concat!("least(floor(", bucket_now!(), ")::int, w.wanted)")
    };
}

/// The bucket after the claim took its grant.
macro_rules! bucket_after {
    () => {
        concat!(bucket_now!(), " - ", bucket_grant!())
    };
}

const CLAIM_RUNS: Query = Query {
    name: "claim_runs",
    sql: concat!(
        "WITH due AS (",
        before_schema!(
            14,
            "
    SELECT run_id, retry_node_id, tenant_id, concurrency_key, priority, queued_at, automation_id,
           automation_version, progress_epoch
    FROM runs q
    WHERE status = 'queued' AND (retry_after IS NULL OR retry_after <= now())
      AND (concurrency_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM runs h
          WHERE h.tenant_id = q.tenant_id AND h.concurrency_key = q.concurrency_key
            AND h.status IN ('running', 'pausing')))
    ORDER BY priority DESC, queued_at, run_id
    LIMIT $2::int
    FOR UPDATE SKIP LOCKED"
        ),
        since_schema!(
            14,
            "
    SELECT c.*
    FROM (
        SELECT head.queue, head.set_id, count(*)::int AS quota
        FROM (
            SELECT h.queue, h.set_id
            FROM unnest($5::text[]) AS served(queue),
                 (SELECT 0::bigint AS set_id
                  UNION ALL
                  SELECT set_id FROM requirement_sets
                  WHERE ($6::text[] IS NULL OR kinds <@ $6::text[])
                    AND ($7::jsonb IS NULL OR labels <@ $7::jsonb)
                    AND ($8::text[] IS NULL OR context <@ $8::text[])) AS met,
            LATERAL (
                SELECT served.queue, met.set_id, run_id, ",
            claim_order!(),
            " AS claim_order
                FROM runs q
                WHERE status = 'queued' AND queue = served.queue AND requirement_set = met.set_id
                  AND (retry_after IS NULL OR retry_after <= now())
                ORDER BY ",
            claim_order!(),
            ", run_id
                LIMIT $2::int
            ) AS h
            ORDER BY h.claim_order, h.run_id
            LIMIT $2::int
        ) AS head
        GROUP BY head.queue, head.set_id
    ) AS ranges,
    LATERAL (
        SELECT run_id, retry_node_id, tenant_id, concurrency_key, priority, queued_at,
               automation_id, automation_version, progress_epoch, queue, ",
            claim_order!(),
            " AS claim_order
        FROM runs q
        WHERE status = 'queued' AND queue = ranges.queue AND requirement_set = ranges.set_id
          AND (retry_after IS NULL OR retry_after <= now())
          AND (concurrency_key IS NULL OR NOT EXISTS (
              SELECT 1 FROM runs h
              WHERE h.tenant_id = q.tenant_id AND h.concurrency_key = q.concurrency_key
                AND h.status IN ('running', 'pausing')))
        ORDER BY ",
            claim_order!(),
            ", run_id
        LIMIT ranges.quota
        FOR UPDATE SKIP LOCKED
    ) AS c
    ORDER BY c.claim_order, c.run_id
    LIMIT $2::int"
        ),
        "
),
",
        since_schema!(16, limit_stages!()),
        "
-- At most one run per concurrency key from one batch: the first in claim order.
picked AS (
    SELECT run_id, retry_node_id, queued_at, progress_epoch > 0 AS resumed, ",
        since_schema!(
            13,
            "\
CASE WHEN progress_epoch = 0 AND retry_node_id IS NULL
               AND NOT EXISTS (SELECT 1 FROM run_nodes n WHERE n.run_id = ranked.run_id)
          THEN ARRAY(
               SELECT start.node_id
               FROM automation_versions v, unnest(v.start_nodes[1:$4::int]) AS start(node_id)
               WHERE v.tenant_id = ranked.tenant_id AND v.automation_id = ranked.automation_id
                 AND v.version = ranked.automation_version
               ORDER BY start.node_id)
           ELSE '{}'::text[] END"
        ),
        before_schema!(13, "'{}'::text[]"),
        " AS start_nodes",
        since_schema!(16, ", automation_slot, queue_slot"),
        "
    FROM ",
        before_schema!(
            16,
            "(
        SELECT run_id, retry_node_id, tenant_id, concurrency_key, queued_at, automation_id,
               automation_version, progress_epoch,
               row_number() OVER (PARTITION BY tenant_id, concurrency_key
                                  ORDER BY priority DESC, queued_at, run_id) AS nth
        FROM due
    ) ranked
    WHERE concurrency_key IS NULL OR nth = 1"
        ),
        since_schema!(16, "allowed ranked"),
        "
),
claimed AS (
    UPDATE runs r
    SET status = 'running', claim_id = gen_random_uuid(), claimant_id = $1::text,
        claimed_at = now(), lease_expires_at = now() + $3::bigint * interval '1 millisecond',
        lease_epoch = r.lease_epoch + 1,
        event_seq = r.event_seq + 1 + cardinality(picked.start_nodes),
        progress_epoch = CASE WHEN cardinality(picked.start_nodes) > 0
                              THEN r.lease_epoch + 1 ELSE r.progress_epoch END,
        expired_claims = CASE WHEN cardinality(picked.start_nodes) > 0
                              THEN 0 ELSE r.expired_claims END,
        queue_reason = NULL, retry_after = NULL, retry_node_id = NULL, retry_attempt = NULL,
        retry_backoff_ms = NULL, started_at = coalesce(r.started_at, now()), updated_at = now()",
        since_schema!(
            16,
            ",
        automation_slot = picked.automation_slot, queue_slot = picked.queue_slot"
        ),
        "
    FROM picked
    WHERE r.run_id = picked.run_id
    RETURNING r.run_id, r.tenant_id, r.automation_id, r.automation_version, r.inputs,
              r.lease_epoch, r.lease_expires_at, r.claim_id,
              r.event_seq - cardinality(picked.start_nodes) AS claim_seq, picked.resumed,
              picked.retry_node_id, picked.start_nodes,
              greatest((extract(epoch FROM now() - picked.queued_at) * 1000000)::bigint, 0)
                  AS waited_micros",
        if_traced!(", r.trace_parent, r.trace_state"),
        "
),
event AS (
    INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, metadata)
    SELECT run_id, claim_seq, tenant_id, 'run_claimed', 'running', lease_epoch,
           jsonb_build_object('claimant_id', $1::text, 'claim_id', claim_id)
    FROM claimed
),
started AS (
    INSERT INTO run_nodes (run_id, node_id, status, attempts, epoch, started_at)
    SELECT claimed.run_id, start.node_id, 'running', 1, claimed.lease_epoch, now()
    FROM claimed, unnest(claimed.start_nodes) AS start(node_id)
),
started_event AS (
    INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, node_id, attempt)
    SELECT claimed.run_id, claimed.claim_seq + start.nth, claimed.tenant_id, 'node_started',
           'running', claimed.lease_epoch, start.node_id, 1
    FROM claimed, unnest(claimed.start_nodes) WITH ORDINALITY AS start(node_id, nth)
)
SELECT run_id, tenant_id, automation_id, automation_version, inputs, lease_epoch,
       lease_expires_at, resumed, retry_node_id, start_nodes, waited_micros",
        if_traced!(", trace_parent, trace_state"),
        "
FROM claimed"
    ),
};

// Every lease the process holds, extended in one statement per tick: per-run updates would cost
// one round trip each. Matches run id and epoch, so a lease that moved on is not renewed; the
// claims missing from the result are lost. Only lease_expires_at changes, an unindexed column,
// so the update can stay HOT. Each run is found by primary key in a LATERAL lookup, in the
// arrays' (run-id) order: a join of `runs` with the arrays is planned, with a generic plan, as a
// nested loop over every held run, quadratic in the leases held.
const HEARTBEAT: Query = Query {
    name: "heartbeat",
    sql: "\
WITH held AS (
    SELECT r.run_id
    FROM unnest($1::uuid[], $2::bigint[]) AS claim(run_id, epoch),
    LATERAL (
        SELECT run_id FROM runs
        WHERE run_id = claim.run_id AND lease_epoch = claim.epoch
          AND status IN ('running', 'pausing')
        FOR UPDATE
    ) AS r
)
UPDATE runs r
SET lease_expires_at = now() + $3::bigint * interval '1 millisecond'
FROM held
WHERE r.run_id = held.run_id
RETURNING r.run_id, r.lease_epoch, r.status, r.lease_expires_at",
};

// A worker shutting down hands its runs back in one statement, fenced per run, so another worker
// takes them at once instead of waiting for the leases to expire. The checkpoint stays and the
// run keeps its place in the queue. A node still running past the grace period was stopped by
// the worker: it is recorded as an attempt interrupted by a clean stop (clean_interruptions),
// which does not count toward max_attempts, and listed in the event. A crash never comes here:
// the reaper's stale reap records its interrupted attempts, and those count; so does a row an
// earlier claim left running (its holder died), which this closes without counting it clean.
const RELEASE_ON_SHUTDOWN: Query = Query {
    name: "release_on_shutdown",
    sql: concat!(
        "\
WITH held AS (
    SELECT r.run_id
    FROM unnest($1::uuid[], $2::bigint[]) AS claim(run_id, epoch),
    LATERAL (
        SELECT run_id FROM runs
        WHERE run_id = claim.run_id AND lease_epoch = claim.epoch AND status = 'running'
        FOR UPDATE
    ) AS r
),
released AS (
    UPDATE runs r
    SET status = 'queued', queue_reason = 'released_shutdown',
        ",
        clear_lease!(),
        ",
        event_seq = r.event_seq + 1, updated_at = now()
    FROM held
    WHERE r.run_id = held.run_id
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq
),
interrupted AS (
    UPDATE run_nodes n
    SET status = 'failed', last_error = 'attempt interrupted: the worker shut down',
        last_error_retryable = true, finished_at = now(),
        clean_interruptions = n.clean_interruptions + (n.epoch = released.lease_epoch)::int
    FROM released
    WHERE n.run_id = released.run_id AND n.status = 'running'
    RETURNING n.run_id, n.node_id, n.attempts, n.clean_interruptions, n.epoch
),
event AS (
    INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, metadata)
    SELECT run_id, event_seq, tenant_id, 'run_released_shutdown', 'queued', lease_epoch,
           jsonb_build_object(
               'interrupted', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                    'node_id', i.node_id, 'attempt', i.attempts,
                                    'clean_interruptions', i.clean_interruptions)
                                  ORDER BY i.node_id), '[]'::jsonb)
                               FROM interrupted i
                               WHERE i.run_id = released.run_id AND i.epoch = released.lease_epoch))
    FROM released
)
SELECT run_id, (SELECT ",
        notify_queued!(),
        ") AS notified FROM released"
    ),
};

// After a hand-back whose acknowledgement was lost: which of these claims did land.
const RELEASED_ALREADY: Query = Query {
    name: "released_already",
    sql: "\
SELECT r.run_id
FROM unnest($1::uuid[], $2::bigint[]) AS claim(run_id, epoch),
LATERAL (
    SELECT run_id FROM runs
    WHERE run_id = claim.run_id AND lease_epoch = claim.epoch
      AND status = 'queued' AND queue_reason = 'released_shutdown'
) AS r",
};

pub(super) const QUERIES: &[Query] =
    &[CLAIM_RUNS, HEARTBEAT, RELEASE_ON_SHUTDOWN, RELEASED_ALREADY];

/// Claims retried at once after losing a race for a concurrency key, before giving up for this
/// round (the caller polls again).
const KEY_RACE_RETRIES: usize = 3;

fn lost_key_race(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && db
                .constraint()
                .is_some_and(|constraint| ONE_HOLDER_INDEXES.contains(&constraint))
    })
}

/// The unique indexes a claim may lose a race on: a concurrency key (V1), a slot of a limited
/// automation or queue (V17).
const ONE_HOLDER_INDEXES: [&str; 3] = [
    "runs_one_holder_per_key",
    "runs_one_holder_per_automation_slot",
    "runs_one_holder_per_queue_slot",
];

/// The claims as parallel arrays, in run-id order: the order the reaper locks rows in, so that
/// a heartbeat or hand-back and a reaper pass over the same runs wait for each other instead of
/// deadlocking.
fn split(claims: &[Claim]) -> (Vec<Uuid>, Vec<i64>) {
    let mut sorted = claims.to_vec();
    sorted.sort_by_key(|c| c.run_id);
    sorted.iter().map(|c| (c.run_id.0, c.epoch.0)).unzip()
}

impl Store {
    /// Claims up to `n` due runs of the default queue for `claimant`, whatever they require,
    /// each under a lease of `lease`. Starts no node: see [`Store::claim_and_start_runs`].
    ///
    /// # Locks
    /// As [`Store::claim_and_start_runs`].
    pub async fn claim_runs(
        &self,
        claimant: &ClaimantId,
        n: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedRun>, Error> {
        self.claim_and_start_runs(claimant, n, lease, 0, &Served::default_queue())
            .await
    }

    /// Claims up to `n` due runs that `served` covers for `claimant`, each under a lease of
    /// `lease`, and starts the first nodes of each run that never started one: up to `starts_per_run` of its version's
    /// start nodes, their attempts counted before this returns ([`ClaimedRun::started`]).
    ///
    /// # Locks
    /// Locks the claimed `runs` rows for the statement only; rows locked by another claimer are
    /// skipped, not waited for. No lock or transaction outlives the call.
    pub async fn claim_and_start_runs(
        &self,
        claimant: &ClaimantId,
        n: usize,
        lease: Duration,
        starts_per_run: usize,
        served: &Served,
    ) -> Result<Vec<ClaimedRun>, Error> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let limit = i32::try_from(n).unwrap_or(i32::MAX);
        let starts = i32::try_from(starts_per_run).unwrap_or(i32::MAX);
        let client = self.client().await?;
        // The trace context comes with the claim, in the same statement: no read of its own.
        let schema = self.schema(&client).await?;
        let claim_runs = CLAIM_RUNS.for_schema(schema);
        let lease = millis(lease);
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
            &claimant.as_str(),
            &limit,
            &lease,
            &starts,
            &served.queues,
            &served.kinds,
            &served.labels,
            &served.context,
        ];
        // An older schema's statement has no place for the newer arguments.
        let args = if schema >= QUEUES_SCHEMA_VERSION {
            &args[..]
        } else if schema >= START_NODES_SCHEMA_VERSION {
            &args[..4]
        } else {
            &args[..3]
        };
        for _ in 0..KEY_RACE_RETRIES {
            match claim_runs.query(&client, args).await {
                Ok(rows) => {
                    let Some(first) = rows.first() else {
                        return Ok(Vec::new());
                    };
                    let columns = ClaimColumns::of(first);
                    return Ok(rows.iter().map(|row| columns.read(row)).collect());
                }
                // Another claimer took a run of the same concurrency key in the same instant;
                // the statement claimed nothing, and claiming again skips that key.
                Err(e) if lost_key_race(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Vec::new())
    }

    /// Extends the lease of every claim by `lease` from the database's now.
    pub async fn heartbeat(&self, claims: &[Claim], lease: Duration) -> Result<Heartbeat, Error> {
        if claims.is_empty() {
            return Ok(Heartbeat::default());
        }
        let (run_ids, epochs) = split(claims);
        let client = self.client().await?;
        let rows = HEARTBEAT
            .query(&client, &[&run_ids, &epochs, &millis(lease)])
            .await?;
        let mut heartbeat = Heartbeat::default();
        for row in &rows {
            let claim = Claim {
                run_id: RunId(row.get("run_id")),
                epoch: LeaseEpoch(row.get("lease_epoch")),
            };
            let status =
                row.get::<_, &str>("status")
                    .parse()
                    .map_err(|e: crate::run::UnknownStatus| Error::UnreadableRun {
                        run_id: claim.run_id,
                        reason: e.to_string(),
                    })?;
            heartbeat.renewed.push(Renewed {
                claim,
                status,
                lease_expires_at: row.get("lease_expires_at"),
            });
        }
        heartbeat.lost = claims
            .iter()
            .filter(|c| !heartbeat.renewed.iter().any(|r| r.claim == **c))
            .copied()
            .collect();
        Ok(heartbeat)
    }

    /// Hands runs back to `queued` with their checkpoint, for a worker shutting down.
    pub async fn release_on_shutdown(&self, claims: &[Claim]) -> Result<Released, Error> {
        if claims.is_empty() {
            return Ok(Released::default());
        }
        let (run_ids, epochs) = split(claims);
        let client = self.client().await?;
        let mut released: Vec<RunId> = RELEASE_ON_SHUTDOWN
            .query(&client, &[&run_ids, &epochs])
            .await?
            .iter()
            .map(|row| RunId(row.get("run_id")))
            .collect();
        let missing: Vec<Claim> = claims
            .iter()
            .filter(|c| !released.contains(&c.run_id))
            .copied()
            .collect();
        if missing.is_empty() {
            return Ok(Released {
                released,
                lost: Vec::new(),
            });
        }
        let (run_ids, epochs) = split(&missing);
        let landed: Vec<RunId> = RELEASED_ALREADY
            .query(&client, &[&run_ids, &epochs])
            .await?
            .iter()
            .map(|row| RunId(row.get("run_id")))
            .collect();
        let lost = missing
            .into_iter()
            .filter(|c| !landed.contains(&c.run_id))
            .collect();
        released.extend(landed);
        Ok(Released { released, lost })
    }
}

/// Where each column of the claim's answer is, found once per answer: a lookup by name compares
/// the name with every column's, on every row.
struct ClaimColumns {
    run_id: usize,
    tenant_id: usize,
    automation_id: usize,
    automation_version: usize,
    inputs: usize,
    lease_epoch: usize,
    lease_expires_at: usize,
    resumed: usize,
    retry_node_id: usize,
    start_nodes: usize,
    waited_micros: usize,
    /// Absent from a schema without the trace context.
    trace: Option<(usize, usize)>,
}

impl ClaimColumns {
    fn of(row: &Row) -> Self {
        let columns = row.columns();
        let find = |name: &str| columns.iter().position(|c| c.name() == name);
        let at = |name: &str| find(name).unwrap_or_else(|| panic!("claim_runs answers {name}"));
        Self {
            run_id: at("run_id"),
            tenant_id: at("tenant_id"),
            automation_id: at("automation_id"),
            automation_version: at("automation_version"),
            inputs: at("inputs"),
            lease_epoch: at("lease_epoch"),
            lease_expires_at: at("lease_expires_at"),
            resumed: at("resumed"),
            retry_node_id: at("retry_node_id"),
            start_nodes: at("start_nodes"),
            waited_micros: at("waited_micros"),
            trace: find("trace_parent").zip(find("trace_state")),
        }
    }

    fn read(&self, row: &Row) -> ClaimedRun {
        ClaimedRun {
            claim: Claim {
                run_id: RunId(row.get(self.run_id)),
                epoch: LeaseEpoch(row.get(self.lease_epoch)),
            },
            tenant: TenantId(row.get(self.tenant_id)),
            automation_id: AutomationId(row.get(self.automation_id)),
            automation_version: row.get(self.automation_version),
            inputs: row.get(self.inputs),
            lease_expires_at: row.get(self.lease_expires_at),
            resumed: row.get(self.resumed),
            retry_node_id: row.get::<_, Option<String>>(self.retry_node_id).map(NodeId),
            // The statement counts first attempts only.
            started: row
                .get::<_, Vec<String>>(self.start_nodes)
                .into_iter()
                .map(|node_id| StartedNode {
                    node_id: NodeId(node_id),
                    attempt: 1,
                })
                .collect(),
            waited: Duration::from_micros(
                u64::try_from(row.get::<_, i64>(self.waited_micros)).unwrap_or(0),
            ),
            // The coordinator stores only checked values; anything else reads as none.
            trace: self.trace.and_then(|(parent, state)| {
                let parent = TraceParent::parse(row.get::<_, Option<&str>>(parent)?)?;
                let state = row
                    .get::<_, Option<&str>>(state)
                    .and_then(TraceState::parse);
                Some(TraceContext { parent, state })
            }),
        }
    }
}
