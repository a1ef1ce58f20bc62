//! The stale-gate sweep's statements: approval gates pending longer than the threshold, and
//! marking them stale, once, under the leader lease.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::int;
use crate::ids::{NodeId, RunId};
use crate::store::leader::leader_fence;
use crate::store::query::Query;
use crate::store::{Error, Leadership, Store, millis};

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
    RETURNING r.run_id, r.tenant_id, r.status, r.lease_epoch, r.event_seq - per_run.n AS base
)
INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, node_id, reason,
                        metadata)
SELECT b.run_id, b.base + nb.k, b.tenant_id, 'gate_marked_stale', b.status, b.lease_epoch,
       nb.node_id, nb.sentence,
       jsonb_build_object('gate_id', nb.gate_id, 'requested_at', nb.requested_at,
                          'stale_after_ms', $3::bigint)
FROM numbered nb JOIN bumped b ON b.run_id = nb.run_id
RETURNING (metadata->>'gate_id')::uuid AS gate_id"
    ),
};

pub(super) const QUERIES: &[Query] = &[STALE_GATE_CANDIDATES, MARK_GATES_STALE];

impl Store {
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
}
