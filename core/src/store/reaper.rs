//! The reaper's reads and writes: runs whose lease expired go back to the queue, or are
//! stale-reaped, or are blocked as poison. The decision is [`crate::lease::reap`]; each kind of
//! decision is applied by one conditional statement that re-checks it under the row lock, so a
//! second reaper, or a paused one waking up, changes nothing twice.

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{Error, Store};
use crate::ids::{LeaseEpoch, RunId};
use crate::lease::LeaseView;
use crate::run::RunStatus;

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

// name: expired_leases
// Held runs whose lease ran out, oldest expiry first. Walks runs_held_idx, which holds only
// running and pausing runs, so the cost follows the number of held runs, not of all runs.
const EXPIRED_LEASES: &str = "\
SELECT run_id, lease_epoch, status, lease_expires_at,
       progress_epoch = lease_epoch AS progressed, expired_claims
FROM runs
WHERE status IN ('running', 'pausing') AND lease_expires_at < coalesce($1::timestamptz, now())
ORDER BY lease_expires_at
LIMIT $2::int";

// name: requeue_expired
// Expired before any progress since the claim: back to `queued`, attempts untouched, keeping its
// place in the queue. The `target` scan re-checks every condition on the locked row's newest
// version, so a run renewed, completed or cancelled since the read is left alone.
const REQUEUE_EXPIRED: &str = "\
WITH target AS (
    SELECT r.run_id, r.claimant_id, r.lease_expires_at FROM runs r
    JOIN unnest($1::uuid[], $2::bigint[]) AS c(run_id, epoch)
      ON r.run_id = c.run_id AND r.lease_epoch = c.epoch
    WHERE r.status = 'running' AND r.lease_expires_at < coalesce($3::timestamptz, now())
      AND r.progress_epoch < r.lease_epoch AND r.expired_claims + 1 < $4::int
    FOR UPDATE OF r
),
requeued AS (
    UPDATE runs r
    SET status = 'queued', queue_reason = 'claim_expired', expired_claims = r.expired_claims + 1,
        claim_id = NULL, claimant_id = NULL, claimed_at = NULL, lease_expires_at = NULL,
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
RETURNING run_id, (SELECT pg_notify('leasehold_runs_queued', '')) AS notified";

// name: block_poisoned
// Expired before any progress once too often in a row: something kills every worker that takes
// the run before it can start, so it is blocked for an operator instead of requeued forever.
const BLOCK_POISONED: &str = "\
WITH target AS (
    SELECT r.run_id, r.claimant_id, r.lease_expires_at FROM runs r
    JOIN unnest($1::uuid[], $2::bigint[]) AS c(run_id, epoch)
      ON r.run_id = c.run_id AND r.lease_epoch = c.epoch
    WHERE r.status = 'running' AND r.lease_expires_at < coalesce($3::timestamptz, now())
      AND r.progress_epoch < r.lease_epoch AND r.expired_claims + 1 >= $4::int
    FOR UPDATE OF r
),
blocked AS (
    UPDATE runs r
    SET status = 'blocked', stop_kind = 'poisoned', expired_claims = r.expired_claims + 1,
        stop_reason = format('the lease expired before any progress %s times in a row',
                             r.expired_claims + 1),
        claim_id = NULL, claimant_id = NULL, claimed_at = NULL, lease_expires_at = NULL,
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
RETURNING run_id";

// name: stale_reap
// Expired after a node started under the claim: the worker died or froze mid-run. The run is
// paused as stale-reaped for the auto-resume sweep or an operator, and its running nodes are
// recorded as interrupted attempts, which count against max_attempts.
const STALE_REAP: &str = "\
WITH target AS (
    SELECT r.run_id, r.claimant_id, r.lease_expires_at FROM runs r
    JOIN unnest($1::uuid[], $2::bigint[]) AS c(run_id, epoch)
      ON r.run_id = c.run_id AND r.lease_epoch = c.epoch
    WHERE r.status = 'running' AND r.lease_expires_at < coalesce($3::timestamptz, now())
      AND r.progress_epoch = r.lease_epoch
    FOR UPDATE OF r
),
reaped AS (
    UPDATE runs r
    SET status = 'paused', stop_kind = 'stale_reaped',
        stop_reason = 'the lease expired after progress: its worker stopped heartbeating',
        stale_reaped_at = coalesce($3::timestamptz, now()),
        claim_id = NULL, claimant_id = NULL, claimed_at = NULL, lease_expires_at = NULL,
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
RETURNING run_id";

pub(super) const QUERIES: &[(&str, &str)] = &[
    ("expired_leases", EXPIRED_LEASES),
    ("requeue_expired", REQUEUE_EXPIRED),
    ("block_poisoned", BLOCK_POISONED),
    ("stale_reap", STALE_REAP),
];

fn split(views: &[LeaseView]) -> (Vec<Uuid>, Vec<i64>) {
    views.iter().map(|v| (v.run_id.0, v.epoch.0)).unzip()
}

fn poison_limit(params: &ReapParams) -> i32 {
    i32::try_from(params.poison_limit).unwrap_or(i32::MAX)
}

impl Store {
    /// Held runs whose lease has expired at `params.now`.
    pub async fn expired_leases(&self, params: &ReapParams) -> Result<Vec<LeaseView>, Error> {
        let limit = i32::try_from(params.limit).unwrap_or(i32::MAX);
        let client = self.client().await?;
        let stmt = client.prepare_cached(EXPIRED_LEASES).await?;
        let rows = client.query(&stmt, &[&params.now, &limit]).await?;
        rows.iter()
            .map(|row| {
                let run_id = RunId(row.get("run_id"));
                let status: RunStatus = row.get::<_, &str>("status").parse().map_err(
                    |e: crate::run::UnknownStatus| Error::UnreadableRun {
                        run_id,
                        reason: e.to_string(),
                    },
                )?;
                Ok(LeaseView {
                    run_id,
                    epoch: LeaseEpoch(row.get("lease_epoch")),
                    status,
                    lease_expires_at: row.get("lease_expires_at"),
                    progressed: row.get("progressed"),
                    expired_claims: row.get::<_, i32>("expired_claims").unsigned_abs(),
                })
            })
            .collect()
    }

    /// Requeues runs the reaper decided to requeue; returns those it moved.
    pub async fn requeue_expired(
        &self,
        runs: &[LeaseView],
        params: &ReapParams,
    ) -> Result<Vec<RunId>, Error> {
        let (run_ids, epochs) = split(runs);
        let limit = poison_limit(params);
        self.apply_reap(REQUEUE_EXPIRED, &[&run_ids, &epochs, &params.now, &limit])
            .await
    }

    /// Blocks runs the reaper decided are poison; returns those it moved.
    pub async fn block_poisoned(
        &self,
        runs: &[LeaseView],
        params: &ReapParams,
    ) -> Result<Vec<RunId>, Error> {
        let (run_ids, epochs) = split(runs);
        let limit = poison_limit(params);
        self.apply_reap(BLOCK_POISONED, &[&run_ids, &epochs, &params.now, &limit])
            .await
    }

    /// Stale-reaps runs the reaper decided to stale-reap; returns those it moved.
    pub async fn stale_reap(
        &self,
        runs: &[LeaseView],
        params: &ReapParams,
    ) -> Result<Vec<RunId>, Error> {
        let (run_ids, epochs) = split(runs);
        self.apply_reap(STALE_REAP, &[&run_ids, &epochs, &params.now])
            .await
    }

    async fn apply_reap(
        &self,
        sql: &'static str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<RunId>, Error> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await?;
        let rows = client.query(&stmt, args).await?;
        Ok(rows.iter().map(|row| RunId(row.get("run_id"))).collect())
    }
}
