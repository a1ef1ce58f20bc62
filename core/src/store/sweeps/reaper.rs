//! The reaper's statements: held runs whose lease expired, and the three ways the reaper moves
//! them under the leader lease: requeued (rule 4 of docs/lease_protocol.md), stale-reaped
//! (rule 5), blocked as poison (rule 9). The decision between them is [`crate::lease::reap`].

use chrono::{DateTime, Utc};

use super::{apply_many, int, read_lease_view, split};
use crate::ids::RunId;
use crate::lease::LeaseView;
use crate::store::leader::leader_fence;
use crate::store::query::{Query, clear_lease, notify_queued};
use crate::store::{Error, Leadership, Store};

/// One reaper pass's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReapParams {
    /// The database's `now()` when `None`; tests pin it to stand on either side of a horizon.
    pub now: Option<DateTime<Utc>>,
    /// Most runs looked at in one pass.
    pub limit: usize,
    /// Unprogressed expiries in a row after which a run is blocked.
    pub poison_limit: u32,
}

// Held runs whose lease ran out, oldest expiry first. Walks runs_held_idx, which holds only
// running and pausing runs, so the cost follows the number of held runs, not of all runs.
const EXPIRED_LEASES: Query = Query {
    name: "expired_leases",
    sql: "\
SELECT run_id, lease_epoch, status, lease_expires_at,
       progress_epoch = lease_epoch AS progressed, expired_claims
FROM runs
WHERE status IN ('running', 'pausing') AND lease_expires_at < coalesce($1::timestamptz, now())
ORDER BY lease_expires_at
LIMIT $2::int",
};

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
INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, metadata)
SELECT run_id, event_seq, tenant_id, 'run_execution_claim_expired_requeued', 'queued',
       lease_epoch,
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
INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, reason, stop_kind,
                        metadata)
SELECT run_id, event_seq, tenant_id, 'run_blocked_claims_keep_expiring', 'blocked', lease_epoch,
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
INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, reason, stop_kind,
                        metadata)
SELECT reaped.run_id, event_seq, tenant_id, 'run_stale_reaped', 'paused', lease_epoch,
       stop_reason,
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

pub(super) const QUERIES: &[Query] = &[
    EXPIRED_LEASES,
    LEADER_REQUEUE_EXPIRED,
    LEADER_BLOCK_POISONED,
    LEADER_STALE_REAP,
];

impl Store {
    /// Held runs whose lease has expired at `params.now`.
    pub async fn expired_leases(&self, params: &ReapParams) -> Result<Vec<LeaseView>, Error> {
        let client = self.client().await?;
        let rows = EXPIRED_LEASES
            .query(&client, &[&params.now, &int(params.limit)])
            .await?;
        rows.iter().map(read_lease_view).collect()
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
        apply_many(
            self,
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
        apply_many(
            self,
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
        apply_many(
            self,
            LEADER_STALE_REAP,
            runs.len(),
            &[&run_ids, &epochs, &params.now, &name, &epoch],
        )
        .await
    }
}
