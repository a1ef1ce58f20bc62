//! The coordinator's sweeps: reads of candidates, and the statements that apply the sweeps'
//! decisions under the leader lease.
//!
//! Each sweep reads candidates, decides with a pure rule, and applies each kind of decision with
//! one conditional statement. An apply statement re-checks the decision's conditions under the
//! row lock, records its event in the same statement with the per-run sequence raised, and
//! checks the leadership it acts under (`leader_fence!`), so neither a second coordinator nor a
//! former leader that paused and woke up changes anything twice. Apply statements lock their
//! rows in key order, so that two of them over overlapping batches wait for each other instead
//! of deadlocking. The reaper's apply statements live here too; its read is in `reaper.rs`.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::leader::leader_fence;
use super::query::{Query, clear_lease, notify_queued};
use super::{Error, Leadership, ReapParams, Store, millis};
use crate::ids::{LeaseEpoch, NodeId, RunId};
use crate::lease::{LeaseView, NodeBudget, StaleReapedView};
use crate::run::{NodeStatus, RunStatus};
use crate::spec;

/// One pass of the pausing settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PausingParams {
    /// The database's `now()` when `None`; tests pin it to stand on either side of a horizon.
    pub now: Option<DateTime<Utc>>,
    /// Most runs looked at in one pass.
    pub limit: usize,
}

/// One pass of the auto-resume sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoResumeParams {
    /// The database's `now()` when `None`; tests pin it to stand on either side of a horizon.
    pub now: Option<DateTime<Utc>>,
    /// How long after its stale reap a run may still be resumed.
    pub window: Duration,
    /// Auto-resumes a run may have in its life.
    pub cap: u32,
    /// Most runs looked at in one pass.
    pub limit: usize,
}

/// One pass of the stale-gate sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleGateParams {
    /// The database's `now()` when `None`; tests pin it to stand on either side of a horizon.
    pub now: Option<DateTime<Utc>>,
    /// How long a gate may be pending before it is marked stale.
    pub after: Duration,
    /// Most gates looked at in one pass.
    pub limit: usize,
}

/// A pending approval gate, as the stale-gate sweep sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingGateView {
    /// The gate.
    pub gate_id: Uuid,
    /// The run stopped at it.
    pub run_id: RunId,
    /// The gated node.
    pub node_id: NodeId,
    /// When the run reached it.
    pub requested_at: DateTime<Utc>,
    /// When it was marked stale, if it was.
    pub stale_marked_at: Option<DateTime<Utc>>,
}

// The reaper's requeue, fenced on the leader lease: expired
// before any progress since the claim, the run goes back to `queued` with its attempts and its
// place in the queue, and idle workers are woken. The `target` scan re-checks every condition on
// the locked row's newest version, so a run renewed, completed or cancelled since the read, or a
// leadership lost since the decision, changes nothing.
const LEADER_REQUEUE_EXPIRED: Query = Query {
    name: "leader_requeue_expired",
    sql: concat!(
        "\
WITH target AS (
    SELECT r.run_id, r.claimant_id, r.lease_expires_at FROM runs r
    JOIN unnest($1::uuid[], $2::bigint[]) AS c(run_id, epoch)
      ON r.run_id = c.run_id AND r.lease_epoch = c.epoch
    WHERE r.status = 'running' AND r.lease_expires_at < coalesce($3::timestamptz, now())
      AND r.progress_epoch < r.lease_epoch AND r.expired_claims + 1 < $4::int
      AND ",
        leader_fence!(5, 6),
        "
    ORDER BY r.run_id
    FOR UPDATE OF r
),
requeued AS (
    UPDATE runs r
    SET status = 'queued', queue_reason = 'claim_expired', expired_claims = r.expired_claims + 1,
        ",
        clear_lease!(),
        ",
        event_seq = r.event_seq + 1, updated_at = now()
    FROM target
    WHERE r.run_id = target.run_id
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq, r.expired_claims,
              target.claimant_id, target.lease_expires_at
)
INSERT INTO run_events (run_id, seq, tenant_id, event, epoch, metadata)
SELECT run_id, event_seq, tenant_id, 'run_execution_claim_expired_requeued', lease_epoch,
       jsonb_build_object('claimant_id', claimant_id, 'lease_expired_at', lease_expires_at,
                          'expired_claims', expired_claims)
FROM requeued
RETURNING run_id, (SELECT ",
        notify_queued!(),
        ") AS notified"
    ),
};

// The reaper's poison guard, fenced on the leader lease: expired before any progress once too
// often in a row, the run is blocked for an operator instead of requeued forever.
const LEADER_BLOCK_POISONED: Query = Query {
    name: "leader_block_poisoned",
    sql: concat!(
        "\
WITH target AS (
    SELECT r.run_id, r.claimant_id, r.lease_expires_at FROM runs r
    JOIN unnest($1::uuid[], $2::bigint[]) AS c(run_id, epoch)
      ON r.run_id = c.run_id AND r.lease_epoch = c.epoch
    WHERE r.status = 'running' AND r.lease_expires_at < coalesce($3::timestamptz, now())
      AND r.progress_epoch < r.lease_epoch AND r.expired_claims + 1 >= $4::int
      AND ",
        leader_fence!(5, 6),
        "
    ORDER BY r.run_id
    FOR UPDATE OF r
),
blocked AS (
    UPDATE runs r
    SET status = 'blocked', stop_kind = 'poisoned', expired_claims = r.expired_claims + 1,
        stop_reason = format('the lease expired before any progress %s times in a row',
                             r.expired_claims + 1),
        ",
        clear_lease!(),
        ",
        event_seq = r.event_seq + 1, updated_at = now()
    FROM target
    WHERE r.run_id = target.run_id
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq, r.stop_reason,
              target.claimant_id, target.lease_expires_at
)
INSERT INTO run_events (run_id, seq, tenant_id, event, epoch, reason, stop_kind, metadata)
SELECT run_id, event_seq, tenant_id, 'run_blocked_claims_keep_expiring', lease_epoch,
       stop_reason, 'poisoned',
       jsonb_build_object('claimant_id', claimant_id, 'lease_expired_at', lease_expires_at)
FROM blocked
RETURNING run_id"
    ),
};

// The reaper's stale reap, fenced on the leader lease: expired after a node started under the
// claim, the run is paused as stale-reaped for the auto-resume sweep or an operator, and its
// running nodes are recorded as interrupted attempts, which count against max_attempts.
const LEADER_STALE_REAP: Query = Query {
    name: "leader_stale_reap",
    sql: concat!(
        "\
WITH target AS (
    SELECT r.run_id, r.claimant_id, r.lease_expires_at FROM runs r
    JOIN unnest($1::uuid[], $2::bigint[]) AS c(run_id, epoch)
      ON r.run_id = c.run_id AND r.lease_epoch = c.epoch
    WHERE r.status = 'running' AND r.lease_expires_at < coalesce($3::timestamptz, now())
      AND r.progress_epoch = r.lease_epoch
      AND ",
        leader_fence!(4, 5),
        "
    ORDER BY r.run_id
    FOR UPDATE OF r
),
reaped AS (
    UPDATE runs r
    SET status = 'paused', stop_kind = 'stale_reaped',
        stop_reason = 'the lease expired after progress: its worker stopped heartbeating',
        stale_reaped_at = coalesce($3::timestamptz, now()),
        ",
        clear_lease!(),
        ",
        event_seq = r.event_seq + 1, updated_at = now()
    FROM target
    WHERE r.run_id = target.run_id
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq, r.stop_reason,
              target.claimant_id, target.lease_expires_at
),
interrupted AS (
    UPDATE run_nodes n
    SET status = 'failed', last_error = 'attempt interrupted: the lease expired',
        last_error_retryable = true, finished_at = now()
    FROM reaped
    WHERE n.run_id = reaped.run_id AND n.status = 'running'
    RETURNING n.run_id, n.node_id, n.attempts
)
INSERT INTO run_events (run_id, seq, tenant_id, event, epoch, reason, stop_kind, metadata)
SELECT reaped.run_id, event_seq, tenant_id, 'run_stale_reaped', lease_epoch, stop_reason,
       'stale_reaped',
       jsonb_build_object(
           'claimant_id', claimant_id, 'lease_expired_at', lease_expires_at,
           'interrupted', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                               'node_id', i.node_id, 'attempt', i.attempts)), '[]'::jsonb)
                           FROM interrupted i WHERE i.run_id = reaped.run_id))
FROM reaped
RETURNING run_id"
    ),
};

// Pausing runs whose holder's lease ran out before the pause settled, oldest expiry first. Walks
// runs_held_idx, which holds only running and pausing runs.
const EXPIRED_PAUSING: Query = Query {
    name: "expired_pausing",
    sql: "\
SELECT run_id, lease_epoch, status, lease_expires_at,
       progress_epoch = lease_epoch AS progressed, expired_claims
FROM runs
WHERE status = 'pausing' AND lease_expires_at < coalesce($1::timestamptz, now())
ORDER BY lease_expires_at
LIMIT $2::int",
};

// A user asked the run to pause and its holder died before settling it: the sweep settles it as
// the holder would have, `paused` as operator_paused with the lease given up, and records its
// running nodes as interrupted attempts, which count. Fenced on the claim's epoch and on the
// leader lease, re-checked under the row lock.
const SETTLE_EXPIRED_PAUSING: Query = Query {
    name: "settle_expired_pausing",
    sql: concat!(
        "\
WITH target AS (
    SELECT r.run_id, r.claimant_id, r.lease_expires_at FROM runs r
    JOIN unnest($1::uuid[], $2::bigint[]) AS c(run_id, epoch)
      ON r.run_id = c.run_id AND r.lease_epoch = c.epoch
    WHERE r.status = 'pausing' AND r.lease_expires_at < coalesce($3::timestamptz, now())
      AND ",
        leader_fence!(4, 5),
        "
    ORDER BY r.run_id
    FOR UPDATE OF r
),
paused AS (
    UPDATE runs r
    SET status = 'paused', stop_kind = 'operator_paused',
        ",
        clear_lease!(),
        ",
        event_seq = r.event_seq + 1, updated_at = now()
    FROM target
    WHERE r.run_id = target.run_id
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq, r.pause_reason,
              target.claimant_id, target.lease_expires_at
),
interrupted AS (
    UPDATE run_nodes n
    SET status = 'failed', last_error = 'attempt interrupted: the lease expired',
        last_error_retryable = true, finished_at = now()
    FROM paused
    WHERE n.run_id = paused.run_id AND n.status = 'running'
    RETURNING n.run_id, n.node_id, n.attempts
)
INSERT INTO run_events (run_id, seq, tenant_id, event, epoch, reason, stop_kind, metadata)
SELECT paused.run_id, event_seq, tenant_id, 'run_paused', lease_epoch, pause_reason,
       'operator_paused',
       jsonb_build_object(
           'settled_by', 'lease_expired',
           'detail', 'the holder''s lease expired before the pause settled',
           'claimant_id', claimant_id, 'lease_expired_at', lease_expires_at,
           'interrupted', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                               'node_id', i.node_id, 'attempt', i.attempts)), '[]'::jsonb)
                           FROM interrupted i WHERE i.run_id = paused.run_id))
FROM paused
RETURNING run_id"
    ),
};

// Runs paused as stale-reaped within the window, oldest reap first, with their pinned spec and
// their node rows, from which the sweep works out each node's attempt budget. Runs reaped
// longer ago are not read at all: they wait for an operator however often the sweep runs.
const STALE_REAPED_RUNS: Query = Query {
    name: "stale_reaped_runs",
    sql: "\
SELECT r.run_id, r.event_seq, r.stale_reaped_at, r.auto_resumes, v.spec,
       coalesce(n.node_ids, '{}') AS node_ids, coalesce(n.statuses, '{}') AS statuses,
       coalesce(n.attempts, '{}') AS attempts
FROM runs r
JOIN automation_versions v
  ON v.tenant_id = r.tenant_id AND v.automation_id = r.automation_id
 AND v.version = r.automation_version
LEFT JOIN LATERAL (
    SELECT array_agg(node_id ORDER BY node_id) AS node_ids,
           array_agg(status ORDER BY node_id) AS statuses,
           array_agg(attempts ORDER BY node_id) AS attempts
    FROM run_nodes WHERE run_id = r.run_id
) n ON true
WHERE r.status = 'paused' AND r.stop_kind = 'stale_reaped'
  AND r.stale_reaped_at >= coalesce($1::timestamptz, now()) - $2::bigint * interval '1 millisecond'
ORDER BY r.stale_reaped_at
LIMIT $3::int",
};

// Puts stale-reaped runs back in the queue with their checkpoint, and wakes idle workers.
// queued_at moves to now, as an operator's resume does, so the time spent paused does not count
// as time waiting in the queue. The run must not have changed since it was read (the event sequence matches,
// which also vouches for the node rows the budget was worked out from), and the window and the
// cap are re-checked under the row lock along with the leader lease.
const AUTO_RESUME: Query = Query {
    name: "auto_resume",
    sql: concat!(
    "\
WITH target AS (
    SELECT r.run_id, r.stale_reaped_at FROM runs r
    JOIN unnest($1::uuid[], $2::bigint[]) AS c(run_id, event_seq)
      ON r.run_id = c.run_id AND r.event_seq = c.event_seq
    WHERE r.status = 'paused' AND r.stop_kind = 'stale_reaped'
      AND r.stale_reaped_at >= coalesce($3::timestamptz, now()) - $4::bigint * interval '1 millisecond'
      AND r.auto_resumes < $5::int
      AND ",
    leader_fence!(6, 7),
    "
    ORDER BY r.run_id
    FOR UPDATE OF r
),
resumed AS (
    UPDATE runs r
    SET status = 'queued', queue_reason = 'auto_resumed', auto_resumes = r.auto_resumes + 1,
        queued_at = now(), stop_kind = NULL, stop_reason = NULL,
        resume_reason = 'auto-resumed: its worker stopped heartbeating mid-run',
        event_seq = r.event_seq + 1, updated_at = now()
    FROM target
    WHERE r.run_id = target.run_id
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq, r.auto_resumes, r.resume_reason,
              target.stale_reaped_at
)
INSERT INTO run_events (run_id, seq, tenant_id, event, epoch, reason, metadata)
SELECT run_id, event_seq, tenant_id, 'run_auto_resumed', lease_epoch, resume_reason,
       jsonb_build_object('window_ms', $4::bigint, 'stale_reaped_at', stale_reaped_at,
                          'auto_resumes', auto_resumes)
FROM resumed
RETURNING run_id, (SELECT ", notify_queued!(), ") AS notified"
),
};

// Pending gates not yet marked stale that were requested longer ago than the threshold, oldest
// first. Walks gates_pending_idx, which holds pending gates only.
const STALE_GATE_CANDIDATES: Query = Query {
    name: "stale_gate_candidates",
    sql: "\
SELECT gate_id, run_id, node_id, requested_at, stale_marked_at
FROM gates
WHERE status = 'pending' AND stale_marked_at IS NULL
  AND requested_at < coalesce($1::timestamptz, now()) - $2::bigint * interval '1 millisecond'
ORDER BY requested_at
LIMIT $3::int",
};

// Marks gates stale, once: no decision is taken, but the run's detail says in a sentence that
// it has waited too long, and its history records `gate_marked_stale`. A run may wait at more
// than one gate, so each run's sequence is raised by its count of marked gates, and the events
// take the numbers in between. A gate decided, a run ended, or a leadership lost since the read
// changes nothing. The runs rows are locked before the gates rows, the order every statement
// that decides a gate takes them in, so that the two wait for each other instead of deadlocking.
const MARK_GATES_STALE: Query = Query {
    name: "mark_gates_stale",
    sql: concat!(
        "\
WITH run_locks AS (
    SELECT r.run_id FROM runs r
    WHERE r.run_id IN (SELECT run_id FROM gates WHERE gate_id = ANY($1::uuid[]))
      AND r.status NOT IN ('completed', 'failed', 'blocked', 'cancelled')
      AND ",
        leader_fence!(4, 5),
        "
    ORDER BY r.run_id
    FOR UPDATE OF r
),
target AS (
    SELECT g.gate_id FROM gates g JOIN run_locks USING (run_id)
    WHERE g.gate_id = ANY($1::uuid[]) AND g.status = 'pending' AND g.stale_marked_at IS NULL
      AND g.requested_at < coalesce($2::timestamptz, now()) - $3::bigint * interval '1 millisecond'
    ORDER BY g.gate_id
    FOR UPDATE OF g
),
marked AS (
    UPDATE gates g SET stale_marked_at = now()
    FROM target
    WHERE g.gate_id = target.gate_id
    RETURNING g.gate_id, g.run_id, g.node_id, g.requested_at
),
numbered AS (
    SELECT gate_id, run_id, node_id, requested_at,
           row_number() OVER (PARTITION BY run_id ORDER BY requested_at, gate_id) AS k,
           left(format('Approval of node %s has been pending since %s UTC; the gate is stale '
                       'and stays open until someone approves or rejects it.',
                       node_id, to_char(requested_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')),
                4096) AS sentence
    FROM marked
),
per_run AS (
    SELECT run_id, count(*) AS n, min(sentence) FILTER (WHERE k = 1) AS detail
    FROM numbered GROUP BY run_id
),
bumped AS (
    UPDATE runs r
    SET detail = per_run.detail, event_seq = r.event_seq + per_run.n, updated_at = now()
    FROM per_run
    WHERE r.run_id = per_run.run_id
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq - per_run.n AS base
)
INSERT INTO run_events (run_id, seq, tenant_id, event, epoch, node_id, reason, metadata)
SELECT b.run_id, b.base + nb.k, b.tenant_id, 'gate_marked_stale', b.lease_epoch, nb.node_id,
       nb.sentence,
       jsonb_build_object('gate_id', nb.gate_id, 'requested_at', nb.requested_at,
                          'stale_after_ms', $3::bigint)
FROM numbered nb JOIN bumped b ON b.run_id = nb.run_id
RETURNING (metadata->>'gate_id')::uuid AS gate_id"
    ),
};

// Creates the monthly partitions of run_events ahead of time, from the month of the day given
// (today when null), so that events never land in the default partition. Fenced on the leader
// lease: two coordinators creating the same partition at once would make one of them fail.
// Null when the leadership is gone.
const ENSURE_EVENT_PARTITIONS: Query = Query {
    name: "ensure_event_partitions",
    sql: concat!(
        "\
SELECT CASE WHEN ",
        leader_fence!(3, 4),
        "
            THEN leasehold_ensure_event_partitions(
                     coalesce($1::timestamptz, now())::date, $2::int)
       END AS created"
    ),
};

// The database's clock, read once at the start of a sweep pass: the pass decides and applies at
// this instant, so its rules and its statements agree on what has expired.
const DATABASE_NOW: Query = Query {
    name: "database_now",
    sql: "SELECT now() AS now",
};

pub(super) const QUERIES: &[Query] = &[
    DATABASE_NOW,
    LEADER_REQUEUE_EXPIRED,
    LEADER_BLOCK_POISONED,
    LEADER_STALE_REAP,
    EXPIRED_PAUSING,
    SETTLE_EXPIRED_PAUSING,
    STALE_REAPED_RUNS,
    AUTO_RESUME,
    STALE_GATE_CANDIDATES,
    MARK_GATES_STALE,
    ENSURE_EVENT_PARTITIONS,
];

fn split(views: &[LeaseView]) -> (Vec<Uuid>, Vec<i64>) {
    views.iter().map(|v| (v.run_id.0, v.epoch.0)).unzip()
}

fn int(n: impl TryInto<i32>) -> i32 {
    n.try_into().unwrap_or(i32::MAX)
}

impl Store {
    /// The database's `now()`: the clock every sweep decides by.
    pub async fn database_now(&self) -> Result<DateTime<Utc>, Error> {
        let client = self.client().await?;
        Ok(DATABASE_NOW.query_one(&client, &[]).await?.get("now"))
    }

    /// Requeues, under `leader`, the runs the reaper decided to requeue; returns those it moved.
    ///
    /// # Locks
    /// The runs' rows, in run-id order, and a share lock on the role's `leader_leases` row, for
    /// the statement only.
    pub async fn requeue_expired_as_leader(
        &self,
        leader: &Leadership,
        runs: &[LeaseView],
        params: &ReapParams,
    ) -> Result<Vec<RunId>, Error> {
        let (run_ids, epochs) = split(runs);
        let (name, epoch) = (leader.name(), leader.epoch().0);
        let poison_limit = int(params.poison_limit);
        self.apply_many(
            LEADER_REQUEUE_EXPIRED,
            runs.len(),
            &[&run_ids, &epochs, &params.now, &poison_limit, &name, &epoch],
        )
        .await
    }

    /// Blocks, under `leader`, the runs the reaper decided are poison; returns those it moved.
    ///
    /// # Locks
    /// The runs' rows, in run-id order, and a share lock on the role's `leader_leases` row, for
    /// the statement only.
    pub async fn block_poisoned_as_leader(
        &self,
        leader: &Leadership,
        runs: &[LeaseView],
        params: &ReapParams,
    ) -> Result<Vec<RunId>, Error> {
        let (run_ids, epochs) = split(runs);
        let (name, epoch) = (leader.name(), leader.epoch().0);
        let poison_limit = int(params.poison_limit);
        self.apply_many(
            LEADER_BLOCK_POISONED,
            runs.len(),
            &[&run_ids, &epochs, &params.now, &poison_limit, &name, &epoch],
        )
        .await
    }

    /// Stale-reaps, under `leader`, the runs the reaper decided to stale-reap; returns those it
    /// moved.
    ///
    /// # Locks
    /// The runs' rows, in run-id order, and a share lock on the role's `leader_leases` row, for
    /// the statement only.
    pub async fn stale_reap_as_leader(
        &self,
        leader: &Leadership,
        runs: &[LeaseView],
        params: &ReapParams,
    ) -> Result<Vec<RunId>, Error> {
        let (run_ids, epochs) = split(runs);
        let (name, epoch) = (leader.name(), leader.epoch().0);
        self.apply_many(
            LEADER_STALE_REAP,
            runs.len(),
            &[&run_ids, &epochs, &params.now, &name, &epoch],
        )
        .await
    }

    /// Pausing runs whose lease has expired at `params.now`.
    pub async fn expired_pausing(&self, params: &PausingParams) -> Result<Vec<LeaseView>, Error> {
        let client = self.client().await?;
        let rows = EXPIRED_PAUSING
            .query(&client, &[&params.now, &int(params.limit)])
            .await?;
        rows.iter().map(read_lease_view).collect()
    }

    /// Settles, under `leader`, pausing runs whose holder's lease expired into `paused`;
    /// returns those it moved.
    ///
    /// # Locks
    /// The runs' rows, in run-id order, and a share lock on the role's `leader_leases` row, for
    /// the statement only.
    pub async fn settle_expired_pausing(
        &self,
        leader: &Leadership,
        runs: &[LeaseView],
        params: &PausingParams,
    ) -> Result<Vec<RunId>, Error> {
        let (run_ids, epochs) = split(runs);
        let (name, epoch) = (leader.name(), leader.epoch().0);
        self.apply_many(
            SETTLE_EXPIRED_PAUSING,
            runs.len(),
            &[&run_ids, &epochs, &params.now, &name, &epoch],
        )
        .await
    }

    /// Runs paused as stale-reaped within `params.window` of `params.now`, with each node's
    /// attempt budget. A run whose spec cannot be read is returned with the reason, not as an
    /// error, so that it alone waits for an operator.
    pub async fn stale_reaped_runs(
        &self,
        params: &AutoResumeParams,
    ) -> Result<Vec<StaleReapedView>, Error> {
        let client = self.client().await?;
        let rows = STALE_REAPED_RUNS
            .query(
                &client,
                &[&params.now, &millis(params.window), &int(params.limit)],
            )
            .await?;
        Ok(rows.iter().map(read_stale_reaped).collect())
    }

    /// Requeues, under `leader`, the stale-reaped runs the sweep decided to resume, unless they
    /// changed since they were read; returns those it moved.
    ///
    /// # Locks
    /// The runs' rows, in run-id order, and a share lock on the role's `leader_leases` row, for
    /// the statement only.
    pub async fn auto_resume(
        &self,
        leader: &Leadership,
        runs: &[StaleReapedView],
        params: &AutoResumeParams,
    ) -> Result<Vec<RunId>, Error> {
        let (run_ids, seqs): (Vec<Uuid>, Vec<i64>) =
            runs.iter().map(|v| (v.run_id.0, v.event_seq)).unzip();
        let (name, epoch) = (leader.name(), leader.epoch().0);
        let cap = int(params.cap);
        self.apply_many(
            AUTO_RESUME,
            runs.len(),
            &[
                &run_ids,
                &seqs,
                &params.now,
                &millis(params.window),
                &cap,
                &name,
                &epoch,
            ],
        )
        .await
    }

    /// Pending gates requested longer than `params.after` before `params.now` and not yet
    /// marked stale.
    pub async fn stale_gate_candidates(
        &self,
        params: &StaleGateParams,
    ) -> Result<Vec<PendingGateView>, Error> {
        let client = self.client().await?;
        let rows = STALE_GATE_CANDIDATES
            .query(
                &client,
                &[&params.now, &millis(params.after), &int(params.limit)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| PendingGateView {
                gate_id: row.get("gate_id"),
                run_id: RunId(row.get("run_id")),
                node_id: NodeId(row.get("node_id")),
                requested_at: row.get("requested_at"),
                stale_marked_at: row.get("stale_marked_at"),
            })
            .collect())
    }

    /// Marks, under `leader`, the gates the sweep decided are stale, each once, with an event on
    /// its run; returns the gates it marked.
    ///
    /// # Locks
    /// The gates' runs rows in run-id order, then the gates rows, and a share lock on the role's
    /// `leader_leases` row, for the statement only.
    pub async fn mark_gates_stale(
        &self,
        leader: &Leadership,
        gates: &[PendingGateView],
        params: &StaleGateParams,
    ) -> Result<Vec<Uuid>, Error> {
        if gates.is_empty() {
            return Ok(Vec::new());
        }
        let gate_ids: Vec<Uuid> = gates.iter().map(|g| g.gate_id).collect();
        let (name, epoch) = (leader.name(), leader.epoch().0);
        let client = self.client().await?;
        let rows = MARK_GATES_STALE
            .query(
                &client,
                &[&gate_ids, &params.now, &millis(params.after), &name, &epoch],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get("gate_id")).collect())
    }

    /// Creates, under `leader`, the monthly event partitions from the month of `now` (today
    /// when `None`) on, `months` of them, that do not exist yet; returns how many it created,
    /// or `None` when the leadership is gone and nothing was done.
    ///
    /// # Locks
    /// Creating a partition locks `run_events` briefly, and scans its default partition, which
    /// upkeep keeps empty. A month whose partition exists costs a catalog lookup only.
    pub async fn ensure_event_partitions(
        &self,
        leader: &Leadership,
        now: Option<DateTime<Utc>>,
        months: u32,
    ) -> Result<Option<u32>, Error> {
        let (name, epoch) = (leader.name(), leader.epoch().0);
        let client = self.client().await?;
        let row = ENSURE_EVENT_PARTITIONS
            .query_one(&client, &[&now, &int(months), &name, &epoch])
            .await?;
        Ok(row.get::<_, Option<i32>>("created").map(i32::unsigned_abs))
    }

    /// Runs an apply statement over a batch; an empty batch costs no round trip.
    async fn apply_many(
        &self,
        sql: Query,
        batch: usize,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<RunId>, Error> {
        if batch == 0 {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let rows = sql.query(&client, args).await?;
        Ok(rows.iter().map(|row| RunId(row.get("run_id"))).collect())
    }
}

fn read_lease_view(row: &Row) -> Result<LeaseView, Error> {
    let run_id = RunId(row.get("run_id"));
    let status: RunStatus =
        row.get::<_, &str>("status")
            .parse()
            .map_err(|e: crate::run::UnknownStatus| Error::UnreadableRun {
                run_id,
                reason: e.to_string(),
            })?;
    Ok(LeaseView {
        run_id,
        epoch: LeaseEpoch(row.get("lease_epoch")),
        status,
        lease_expires_at: row.get("lease_expires_at"),
        progressed: row.get("progressed"),
        expired_claims: row.get::<_, i32>("expired_claims").unsigned_abs(),
    })
}

fn read_stale_reaped(row: &Row) -> StaleReapedView {
    StaleReapedView {
        run_id: RunId(row.get("run_id")),
        event_seq: row.get("event_seq"),
        stale_reaped_at: row.get("stale_reaped_at"),
        auto_resumes: row.get::<_, i32>("auto_resumes").unsigned_abs(),
        nodes: node_budgets(row),
    }
}

/// Each node of the run's pinned spec with its attempts so far. A node without a row has not
/// started: its whole budget is left.
fn node_budgets(row: &Row) -> Result<Vec<NodeBudget>, String> {
    let spec = spec::from_stored(row.get("spec")).map_err(|e| e.to_string())?;
    let ids: Vec<String> = row.get("node_ids");
    let statuses: Vec<String> = row.get("statuses");
    let attempts: Vec<i32> = row.get("attempts");
    let mut recorded = HashMap::with_capacity(ids.len());
    for ((id, status), attempts) in ids.into_iter().zip(statuses).zip(attempts) {
        let status = NodeStatus::parse(&status)
            .ok_or_else(|| format!("node {id}: unknown node status {status:?}"))?;
        recorded.insert(NodeId(id), (status, attempts.unsigned_abs()));
    }
    Ok(spec
        .nodes
        .iter()
        .map(|node| {
            let (status, attempts) = recorded
                .get(&node.id)
                .copied()
                .map_or((None, 0), |(status, attempts)| (Some(status), attempts));
            NodeBudget {
                attempts,
                max_attempts: node.max_attempts,
                finished: matches!(status, Some(NodeStatus::Completed | NodeStatus::Skipped)),
            }
        })
        .collect())
}
