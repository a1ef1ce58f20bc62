//! How a held run leaves its worker: completed, failed, or queued again for a retry.

use std::time::Duration;

use super::query::{Query, clear_lease};
use super::{Claim, FenceError, Store, millis};
use crate::ids::NodeId;

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The node that failed for good.
    pub node_id: NodeId,
    /// Its last attempt.
    pub attempt: u32,
    /// The handler's message.
    pub reason: String,
}

// A retryable failure with attempts left: back to `queued`, not due before retry_after, holding
// no worker while it waits. Fenced on the claim and on `running`, so a run cancelled meanwhile
// is never revived. queued_at moves to the retry time so the run queues behind runs that were
// due before it.
const SCHEDULE_RETRY: Query = Query {
    name: "schedule_retry",
    sql: concat!(
        "\
WITH fenced AS (
    UPDATE runs r
    SET status = 'queued', queue_reason = 'retry_backoff',
        retry_after = now() + $5::bigint * interval '1 millisecond',
        queued_at = now() + $5::bigint * interval '1 millisecond',
        retry_node_id = $3::text, retry_attempt = $4::int, retry_backoff_ms = $5::bigint,
        ",
        clear_lease!(),
        ",
        event_seq = r.event_seq + 1, updated_at = now()
    WHERE r.run_id = $1::uuid AND r.lease_epoch = $2::bigint AND r.status = 'running'
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq, r.retry_after
)
INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, node_id, attempt,
                        metadata)
SELECT run_id, event_seq, tenant_id, 'node_retry_backoff_scheduled', 'queued', lease_epoch, $3::text,
       $4::int, jsonb_build_object('retry_after', retry_after, 'backoff_ms', $5::bigint)
FROM fenced
RETURNING run_id"
    ),
};

// The last node completed. Refused while a node is still running under any claim, so a worker
// cannot complete a run whose nodes it has not finished.
const COMPLETE_RUN: Query = Query {
    name: "complete_run",
    sql: concat!(
        "\
WITH fenced AS (
    UPDATE runs r
    SET status = 'completed', finished_at = now(),
        ",
        clear_lease!(),
        ",
        event_seq = r.event_seq + 1, updated_at = now()
    WHERE r.run_id = $1::uuid AND r.lease_epoch = $2::bigint AND r.status IN ('running', 'pausing')
      AND NOT EXISTS (SELECT 1 FROM run_nodes n WHERE n.run_id = $1::uuid AND n.status = 'running')
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq
)
INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch)
SELECT run_id, event_seq, tenant_id, 'run_completed', 'completed', lease_epoch FROM fenced
RETURNING run_id"
    ),
};

// A node failed for good: the run fails with the node, attempt and reason, and the nodes
// downstream of it are recorded as skipped, all in one statement.
const FAIL_RUN: Query = Query {
    name: "fail_run",
    sql: concat!(
        "\
WITH fenced AS (
    UPDATE runs r
    SET status = 'failed', stop_kind = 'node_failed', stop_reason = left($5::text, 4096),
        failed_node_id = $3::text, failed_attempt = $4::int, finished_at = now(),
        ",
        clear_lease!(),
        ",
        event_seq = r.event_seq + 1, updated_at = now()
    WHERE r.run_id = $1::uuid AND r.lease_epoch = $2::bigint AND r.status IN ('running', 'pausing')
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq
),
skipped AS (
    INSERT INTO run_nodes (run_id, node_id, status, attempts, epoch, finished_at)
    SELECT fenced.run_id, skip.node_id, 'skipped', 0, fenced.lease_epoch, now()
    FROM fenced, unnest($6::text[]) AS skip(node_id)
    ON CONFLICT (run_id, node_id) DO NOTHING
)
INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, node_id, attempt,
                        reason, stop_kind, metadata)
SELECT run_id, event_seq, tenant_id, 'run_failed', 'failed', lease_epoch, $3::text, $4::int,
       left($5::text, 4096), 'node_failed', jsonb_build_object('skipped', $6::text[])
FROM fenced
RETURNING run_id"
    ),
};

// Read only when a fenced run write changed nothing: did the same write land before (a lost
// acknowledgement) or is the lease gone?
const RUN_FENCE_STATE: Query = Query {
    name: "run_fence_state",
    sql: "\
SELECT status, lease_epoch, queue_reason, retry_node_id, retry_attempt, failed_node_id
FROM runs WHERE run_id = $1::uuid",
};

pub(super) const QUERIES: &[Query] = &[SCHEDULE_RETRY, COMPLETE_RUN, FAIL_RUN, RUN_FENCE_STATE];

/// What the row says after a fenced run write changed nothing.
pub(super) struct RunFence {
    pub(super) status: String,
    pub(super) epoch: i64,
    queue_reason: Option<String>,
    retry_node_id: Option<String>,
    retry_attempt: Option<i32>,
    failed_node_id: Option<String>,
}

impl RunFence {
    fn at(&self, claim: &Claim, status: &str) -> bool {
        self.epoch == claim.epoch.0 && self.status == status
    }

    /// Success for a write that landed before; otherwise why this one cannot land.
    fn landed_or_refused(
        &self,
        claim: &Claim,
        landed: bool,
        conflict: &str,
    ) -> Result<(), FenceError> {
        let held =
            self.epoch == claim.epoch.0 && matches!(self.status.as_str(), "running" | "pausing");
        if landed {
            Ok(())
        } else if held {
            Err(FenceError::RunConflict {
                run_id: claim.run_id,
                reason: format!("{conflict} (the run is {})", self.status),
            })
        } else {
            Err(FenceError::LeaseLost {
                run_id: claim.run_id,
                epoch: claim.epoch,
            })
        }
    }
}

impl Store {
    /// Queues the run again for attempt `attempt` of `node_id`, due after `delay`, and releases
    /// the lease. Record the failed attempt with [`Store::node_failed`] first.
    pub async fn schedule_retry(
        &self,
        claim: &Claim,
        node_id: &NodeId,
        attempt: u32,
        delay: Duration,
    ) -> Result<(), FenceError> {
        let attempt = i32::try_from(attempt).unwrap_or(i32::MAX);
        let client = self.client().await?;
        let rows = SCHEDULE_RETRY
            .query(
                &client,
                &[
                    &claim.run_id.0,
                    &claim.epoch.0,
                    &node_id.as_str(),
                    &attempt,
                    &millis(delay),
                ],
            )
            .await?;
        if !rows.is_empty() {
            return Ok(());
        }
        let fence = run_fence(&client, claim).await?;
        let landed = fence.at(claim, "queued")
            && fence.queue_reason.as_deref() == Some("retry_backoff")
            && fence.retry_node_id.as_deref() == Some(node_id.as_str())
            && fence.retry_attempt == Some(attempt);
        if !landed && fence.at(claim, "pausing") {
            // A pause asked for meanwhile wins: the caller settles it; the failed attempt is
            // recorded, so the node is retried when the run is resumed.
            return Err(FenceError::PauseRequested {
                run_id: claim.run_id,
            });
        }
        fence.landed_or_refused(claim, landed, "a pausing run is paused, not retried")
    }

    /// Completes the run and releases the lease.
    pub async fn complete_run(&self, claim: &Claim) -> Result<(), FenceError> {
        let client = self.client().await?;
        let rows = COMPLETE_RUN
            .query(&client, &[&claim.run_id.0, &claim.epoch.0])
            .await?;
        if !rows.is_empty() {
            return Ok(());
        }
        let fence = run_fence(&client, claim).await?;
        fence.landed_or_refused(
            claim,
            fence.at(claim, "completed"),
            "a node is still running",
        )
    }

    /// Fails the run for `failure`, marks `skipped` nodes as not run, and releases the lease.
    pub async fn fail_run(
        &self,
        claim: &Claim,
        failure: &Failure,
        skipped: &[NodeId],
    ) -> Result<(), FenceError> {
        let attempt = i32::try_from(failure.attempt).unwrap_or(i32::MAX);
        let skipped: Vec<&str> = skipped.iter().map(NodeId::as_str).collect();
        let client = self.client().await?;
        let rows = FAIL_RUN
            .query(
                &client,
                &[
                    &claim.run_id.0,
                    &claim.epoch.0,
                    &failure.node_id.as_str(),
                    &attempt,
                    &failure.reason,
                    &skipped,
                ],
            )
            .await?;
        if !rows.is_empty() {
            return Ok(());
        }
        let fence = run_fence(&client, claim).await?;
        let landed = fence.at(claim, "failed")
            && fence.failed_node_id.as_deref() == Some(failure.node_id.as_str());
        fence.landed_or_refused(claim, landed, "the run failed differently before")
    }
}

/// Reads why a run write changed nothing, on the connection that wrote: taking a second one
/// while holding the first would let as many repeats as the pool has connections wait for each
/// other.
pub(super) async fn run_fence(
    client: &deadpool_postgres::Client,
    claim: &Claim,
) -> Result<RunFence, FenceError> {
    let row = RUN_FENCE_STATE
        .query_opt(client, &[&claim.run_id.0])
        .await?
        .ok_or(FenceError::RunNotFound(claim.run_id))?;
    Ok(RunFence {
        status: row.get("status"),
        epoch: row.get("lease_epoch"),
        queue_reason: row.get("queue_reason"),
        retry_node_id: row.get("retry_node_id"),
        retry_attempt: row.get("retry_attempt"),
        failed_node_id: row.get("failed_node_id"),
    })
}
