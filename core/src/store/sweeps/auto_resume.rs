//! The auto-resume sweep's statements: stale-reaped runs within the window, with each node's
//! attempt budget, and their requeue under the leader lease (docs/lease_protocol.md, rule 5).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{apply_many, int};
use crate::ids::{NodeId, RunId};
use crate::lease::{NodeBudget, StaleReapedView};
use crate::run::NodeStatus;
use crate::spec;
use crate::store::leader::leader_fence;
use crate::store::query::{Query, notify_queued};
use crate::store::{Error, Leadership, Store, millis};

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

// Runs paused as stale-reaped within the window, oldest reap first, with their pinned spec and
// their node rows, from which the sweep works out each node's attempt budget (the attempts that
// count: those started less those a clean stop interrupted). Runs reaped longer ago are not read
// at all: they wait for an operator however often the sweep runs; nor are runs the sweep
// declined for this reap, so that runs it can never resume do not fill the pass's limit ahead
// of those it can.
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
           array_agg(attempts - clean_interruptions ORDER BY node_id) AS attempts
    FROM run_nodes WHERE run_id = r.run_id
) n ON true
WHERE r.status = 'paused' AND r.stop_kind = 'stale_reaped'
  AND r.stale_reaped_at >= coalesce($1::timestamptz, now()) - $2::bigint * interval '1 millisecond'
  AND r.auto_resume_declined_for IS DISTINCT FROM r.stale_reaped_at
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
INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, reason, metadata)
SELECT run_id, event_seq, tenant_id, 'run_auto_resumed', 'queued', lease_epoch, resume_reason,
       jsonb_build_object('window_ms', $4::bigint, 'stale_reaped_at', stale_reaped_at,
                          'auto_resumes', auto_resumes)
FROM resumed
RETURNING run_id, (SELECT ", notify_queued!(), ") AS notified"
),
};

// Marks stale-reaped runs the sweep will not resume for this reap, each with the reason its
// history records, so that the candidate read skips them from now on. Like the resume, only if
// the run has not changed since it was read, and under the leader lease. The run stays paused.
const DECLINE_AUTO_RESUME: Query = Query {
    name: "decline_auto_resume",
    sql: concat!(
        "\
WITH target AS (
    SELECT r.run_id, c.reason FROM runs r
    JOIN unnest($1::uuid[], $2::bigint[], $3::text[]) AS c(run_id, event_seq, reason)
      ON r.run_id = c.run_id AND r.event_seq = c.event_seq
    WHERE r.status = 'paused' AND r.stop_kind = 'stale_reaped'
      AND ",
        leader_fence!(4, 5),
        "
    ORDER BY r.run_id
    FOR UPDATE OF r
),
declined AS (
    UPDATE runs r
    SET auto_resume_declined_for = r.stale_reaped_at, event_seq = r.event_seq + 1,
        updated_at = now()
    FROM target
    WHERE r.run_id = target.run_id
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq, r.auto_resumes,
              r.stale_reaped_at, target.reason
)
INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, reason, metadata)
SELECT run_id, event_seq, tenant_id, 'run_auto_resume_declined', 'paused', lease_epoch, reason,
       jsonb_build_object('stale_reaped_at', stale_reaped_at, 'auto_resumes', auto_resumes)
FROM declined
RETURNING run_id"
    ),
};

pub(super) const QUERIES: &[Query] = &[STALE_REAPED_RUNS, AUTO_RESUME, DECLINE_AUTO_RESUME];

impl Store {
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
        apply_many(
            self,
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
}

impl Store {
    /// Marks, under `leader`, the stale-reaped runs the sweep will not resume, each with its
    /// reason, unless they changed since they were read; returns those it marked. They stay
    /// paused for an operator, and the sweep does not read them again until a later stale reap.
    ///
    /// # Locks
    /// As [`Store::auto_resume`].
    pub async fn decline_auto_resume(
        &self,
        leader: &Leadership,
        declined: &[(&StaleReapedView, &str)],
    ) -> Result<Vec<RunId>, Error> {
        let mut run_ids = Vec::with_capacity(declined.len());
        let mut seqs = Vec::with_capacity(declined.len());
        let mut reasons = Vec::with_capacity(declined.len());
        for (view, reason) in declined {
            run_ids.push(view.run_id.0);
            seqs.push(view.event_seq);
            reasons.push(*reason);
        }
        let (name, epoch) = (leader.name(), leader.epoch().0);
        apply_many(
            self,
            DECLINE_AUTO_RESUME,
            declined.len(),
            &[&run_ids, &seqs, &reasons, &name, &epoch],
        )
        .await
    }
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
