//! Node checkpoints: each start, output and failure, fenced on the claim.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::{Claim, Error, Store};
use crate::ids::{LeaseEpoch, NodeId, RunId};
use crate::run::{NodeState, NodeStatus};

/// A node's row in the checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    /// The node.
    pub node_id: NodeId,
    /// Where it stands.
    pub status: NodeStatus,
    /// Attempts started, interrupted ones included.
    pub attempts: u32,
    /// Its output, once completed.
    pub output: Option<serde_json::Value>,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// Whether the last failure may succeed on another attempt.
    pub last_error_retryable: Option<bool>,
    /// The epoch of the claim that last wrote it.
    pub epoch: LeaseEpoch,
    /// When the current attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished, if it has.
    pub finished_at: Option<DateTime<Utc>>,
}

impl NodeRecord {
    /// The part of the record the ready-node rule reads.
    pub fn state(&self) -> NodeState {
        NodeState {
            status: self.status,
            attempts: self.attempts,
            retryable: self.last_error_retryable.unwrap_or(true),
        }
    }
}

// Every node write has the same shape. `held` takes the run's row lock and checks the claim on
// the row's newest version, so a claim that moved on makes the whole statement write nothing.
// `node` then writes the node row with its own conditions in its WHERE (or ON CONFLICT WHERE):
// those are re-checked on the newest row version too, where a subquery would read the
// statement's older snapshot and let a repeat that waited behind the first write count twice.
// `fenced` raises the run's event sequence only when the node row changed, and `event`
// records it.

// name: node_started
// Counts the attempt before the handler is called (lease protocol, rule 8), and marks progress
// under this claim, which decides between requeue and stale-reap if the lease later expires. A
// node that completed, was skipped, or already started under this claim is left alone, and so
// is a run asked to pause: its running nodes finish, but no new one starts.
const NODE_STARTED: &str = "\
WITH held AS (
    SELECT r.run_id FROM runs r
    WHERE r.run_id = $1::uuid AND r.lease_epoch = $2::bigint AND r.status = 'running'
    FOR UPDATE
),
node AS (
    INSERT INTO run_nodes AS n (run_id, node_id, status, attempts, epoch, started_at)
    SELECT run_id, $3::text, 'running', 1, $2::bigint, now() FROM held
    ON CONFLICT (run_id, node_id) DO UPDATE
    SET status = 'running', attempts = n.attempts + 1, epoch = excluded.epoch,
        started_at = excluded.started_at, finished_at = NULL
    WHERE n.status IN ('running', 'failed') AND n.epoch < excluded.epoch
    RETURNING n.run_id, n.attempts
),
fenced AS (
    UPDATE runs r
    SET progress_epoch = r.lease_epoch, expired_claims = 0, event_seq = r.event_seq + 1,
        updated_at = now()
    FROM node
    WHERE r.run_id = node.run_id
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq
),
event AS (
    INSERT INTO run_events (run_id, seq, tenant_id, event, epoch, node_id, attempt)
    SELECT fenced.run_id, fenced.event_seq, fenced.tenant_id, 'node_started', fenced.lease_epoch,
           $3::text, node.attempts
    FROM fenced, node
)
SELECT attempts FROM node";

// name: node_completed
// Records a running node's output under the claim that started it: the node must be running
// under this very epoch.
const NODE_COMPLETED: &str = "\
WITH held AS (
    SELECT r.run_id FROM runs r
    WHERE r.run_id = $1::uuid AND r.lease_epoch = $2::bigint AND r.status IN ('running', 'pausing')
    FOR UPDATE
),
node AS (
    UPDATE run_nodes n
    SET status = 'completed', output = $4::jsonb, last_error = NULL, finished_at = now()
    FROM held
    WHERE n.run_id = held.run_id AND n.node_id = $3::text
      AND n.status = 'running' AND n.epoch = $2::bigint
    RETURNING n.run_id, n.attempts
),
fenced AS (
    UPDATE runs r
    SET event_seq = r.event_seq + 1, updated_at = now()
    FROM node
    WHERE r.run_id = node.run_id
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq
),
event AS (
    INSERT INTO run_events (run_id, seq, tenant_id, event, epoch, node_id, attempt)
    SELECT fenced.run_id, fenced.event_seq, fenced.tenant_id, 'node_completed', fenced.lease_epoch,
           $3::text, node.attempts
    FROM fenced, node
)
SELECT attempts FROM node";

// name: node_failed
// Records a running node's failed attempt under the claim that started it. Whether it is retried
// is the caller's next write (schedule_retry or fail_run).
const NODE_FAILED: &str = "\
WITH held AS (
    SELECT r.run_id FROM runs r
    WHERE r.run_id = $1::uuid AND r.lease_epoch = $2::bigint AND r.status IN ('running', 'pausing')
    FOR UPDATE
),
node AS (
    UPDATE run_nodes n
    SET status = 'failed', last_error = left($4::text, 8192), last_error_retryable = $5::boolean,
        finished_at = now()
    FROM held
    WHERE n.run_id = held.run_id AND n.node_id = $3::text
      AND n.status = 'running' AND n.epoch = $2::bigint
    RETURNING n.run_id, n.attempts
),
fenced AS (
    UPDATE runs r
    SET event_seq = r.event_seq + 1, updated_at = now()
    FROM node
    WHERE r.run_id = node.run_id
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq
),
event AS (
    INSERT INTO run_events (run_id, seq, tenant_id, event, epoch, node_id, attempt, reason, metadata)
    SELECT fenced.run_id, fenced.event_seq, fenced.tenant_id, 'node_failed', fenced.lease_epoch,
           $3::text, node.attempts, left($4::text, 4096), jsonb_build_object('retryable', $5::boolean)
    FROM fenced, node
)
SELECT attempts FROM node";

// name: node_fence_state
// Read only when a fenced node write changed nothing: did the same write land before (a lost
// acknowledgement), is the lease gone, or does the checkpoint contradict the write?
const NODE_FENCE_STATE: &str = "\
SELECT r.status, r.lease_epoch, n.status AS node_status, n.epoch AS node_epoch, n.attempts,
       n.output, n.last_error
FROM runs r
LEFT JOIN run_nodes n ON n.run_id = r.run_id AND n.node_id = $2::text
WHERE r.run_id = $1::uuid";

// name: checkpoint
// Every node row of a run: what a worker resuming it must not run again.
const CHECKPOINT: &str = "\
SELECT node_id, status, attempts, output, last_error, last_error_retryable, epoch, started_at,
       finished_at
FROM run_nodes WHERE run_id = $1::uuid ORDER BY node_id";

pub(super) const QUERIES: &[(&str, &str)] = &[
    ("node_started", NODE_STARTED),
    ("node_completed", NODE_COMPLETED),
    ("node_failed", NODE_FAILED),
    ("node_fence_state", NODE_FENCE_STATE),
    ("checkpoint", CHECKPOINT),
];

/// A node write that changed nothing: what the row says about why.
struct NodeFence {
    held_by_claim: bool,
    pausing: bool,
    node_status: Option<String>,
    node_epoch: Option<i64>,
    attempts: Option<i32>,
    output: Option<serde_json::Value>,
    last_error: Option<String>,
}

impl NodeFence {
    fn landed(&self, claim: &Claim, status: &str) -> bool {
        self.node_status.as_deref() == Some(status) && self.node_epoch == Some(claim.epoch.0)
    }

    fn attempts(&self) -> u32 {
        self.attempts.map_or(0, i32::unsigned_abs)
    }

    /// The error for a write that did not land.
    fn refusal(&self, claim: &Claim, node_id: &NodeId) -> Error {
        if !self.held_by_claim {
            return Error::LeaseLost {
                run_id: claim.run_id,
                epoch: claim.epoch,
            };
        }
        let reason = match (&self.node_status, self.node_epoch) {
            (None, _) => "the node has not started".to_owned(),
            (Some(status), Some(epoch)) => format!("the node is {status} (epoch {epoch})"),
            (Some(status), None) => format!("the node is {status}"),
        };
        Error::NodeConflict {
            run_id: claim.run_id,
            node_id: node_id.clone(),
            reason,
        }
    }
}

impl Store {
    /// Counts a new attempt of `node_id` and returns its number (1 for the first). Call it before
    /// the handler runs. Repeating it under the same claim returns the same attempt.
    pub async fn node_started(&self, claim: &Claim, node_id: &NodeId) -> Result<u32, Error> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(NODE_STARTED).await?;
        let rows = client
            .query(&stmt, &[&claim.run_id.0, &claim.epoch.0, &node_id.as_str()])
            .await?;
        if let Some(row) = rows.first() {
            return Ok(row.get::<_, i32>(0).unsigned_abs());
        }
        let fence = self.node_fence(claim, node_id).await?;
        if fence.landed(claim, "running") && fence.held_by_claim {
            Ok(fence.attempts())
        } else if fence.pausing {
            Err(Error::PauseRequested {
                run_id: claim.run_id,
            })
        } else {
            Err(fence.refusal(claim, node_id))
        }
    }

    /// Records the output of the running attempt of `node_id`.
    pub async fn node_completed(
        &self,
        claim: &Claim,
        node_id: &NodeId,
        output: &serde_json::Value,
    ) -> Result<(), Error> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(NODE_COMPLETED).await?;
        let rows = client
            .query(
                &stmt,
                &[&claim.run_id.0, &claim.epoch.0, &node_id.as_str(), output],
            )
            .await?;
        if !rows.is_empty() {
            return Ok(());
        }
        let fence = self.node_fence(claim, node_id).await?;
        if fence.landed(claim, "completed") && fence.output.as_ref() == Some(output) {
            Ok(())
        } else {
            Err(fence.refusal(claim, node_id))
        }
    }

    /// Records that the running attempt of `node_id` failed with `error`.
    pub async fn node_failed(
        &self,
        claim: &Claim,
        node_id: &NodeId,
        error: &str,
        retryable: bool,
    ) -> Result<(), Error> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(NODE_FAILED).await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &claim.run_id.0,
                    &claim.epoch.0,
                    &node_id.as_str(),
                    &error,
                    &retryable,
                ],
            )
            .await?;
        if !rows.is_empty() {
            return Ok(());
        }
        let fence = self.node_fence(claim, node_id).await?;
        let stored_error = fence.last_error.as_deref();
        if fence.landed(claim, "failed") && stored_error.is_some_and(|e| error.starts_with(e)) {
            Ok(())
        } else {
            Err(fence.refusal(claim, node_id))
        }
    }

    /// Every node row of a run.
    pub async fn checkpoint(&self, run_id: RunId) -> Result<Vec<NodeRecord>, Error> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(CHECKPOINT).await?;
        let rows = client.query(&stmt, &[&run_id.0]).await?;
        rows.iter().map(|row| read_node(run_id, row)).collect()
    }

    async fn node_fence(&self, claim: &Claim, node_id: &NodeId) -> Result<NodeFence, Error> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(NODE_FENCE_STATE).await?;
        let row = client
            .query_opt(&stmt, &[&claim.run_id.0, &node_id.as_str()])
            .await?
            .ok_or(Error::RunNotFound(claim.run_id))?;
        let status: &str = row.get("status");
        let ours = row.get::<_, i64>("lease_epoch") == claim.epoch.0;
        Ok(NodeFence {
            held_by_claim: ours && matches!(status, "running" | "pausing"),
            pausing: ours && status == "pausing",
            node_status: row.get("node_status"),
            node_epoch: row.get("node_epoch"),
            attempts: row.get("attempts"),
            output: row.get("output"),
            last_error: row.get("last_error"),
        })
    }
}

fn read_node(run_id: RunId, row: &Row) -> Result<NodeRecord, Error> {
    let status_text: &str = row.get("status");
    let status = NodeStatus::parse(status_text).ok_or_else(|| Error::UnreadableRun {
        run_id,
        reason: format!("unknown node status {status_text:?}"),
    })?;
    Ok(NodeRecord {
        node_id: NodeId(row.get("node_id")),
        status,
        attempts: row.get::<_, i32>("attempts").unsigned_abs(),
        output: row.get("output"),
        last_error: row.get("last_error"),
        last_error_retryable: row.get("last_error_retryable"),
        epoch: LeaseEpoch(row.get("epoch")),
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
    })
}
