//! The deadline sweep's statements: runs past their start or run deadline, and failing them
//! under the leader lease, their running nodes stopped as a cancel stops them.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::int;
use crate::ids::RunId;
use crate::store::gated::DEADLINES_SCHEMA_VERSION;
use crate::store::leader::leader_fence;
use crate::store::query::{Query, clear_lease, close_open_work, notify_stopped};
use crate::store::runs::{read_run, run_columns};
use crate::store::{Error, Leadership, RunRecord, Store};

/// A run the sweep fails, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineFailure {
    /// The run.
    pub run_id: RunId,
    /// `run_timed_out`, or for a missed start what kept it waiting (`crate::run::deadline`).
    pub stop_kind: &'static str,
    /// The sentence its record and history carry.
    pub reason: String,
}

// Runs never claimed whose start deadline is past (runs_start_deadline_idx), and unfinished
// runs whose run deadline is past (runs_run_deadline_idx), earliest deadline first; a run past
// both comes twice, and the sweep keeps it once. Only runs with deadlines are in those indexes.
const PAST_DEADLINES: Query = Query {
    name: "past_deadlines",
    sql: concat!(
        "\
SELECT * FROM (
    (SELECT ",
        run_columns!(),
        ", r.start_deadline AS missed_at
     FROM runs r
     WHERE r.start_deadline IS NOT NULL AND r.status = 'queued' AND r.lease_epoch = 0
       AND r.start_deadline < $1::timestamptz
     ORDER BY r.start_deadline LIMIT $2::int)
    UNION ALL
    (SELECT ",
        run_columns!(),
        ", r.run_deadline AS missed_at
     FROM runs r
     WHERE r.run_deadline IS NOT NULL
       AND r.status NOT IN ('completed', 'failed', 'blocked', 'cancelled')
       AND r.run_deadline < $1::timestamptz
     ORDER BY r.run_deadline LIMIT $2::int)
) past
ORDER BY missed_at"
    ),
};

// Fails runs past a deadline, each once, re-checking under the row lock that it still is (a run
// claimed or finished since the read, or a leadership lost, changes nothing): the lease is
// cleared, the holder told at commit (a NOTIFY on the stopped channel, as a cancel does), so
// that it stops the run's nodes; running node rows are failed, pending gates closed, a backoff
// forgotten. Locks runs in id order, like every sweep's apply statement.
const FAIL_PAST_DEADLINES: Query = Query {
    name: "fail_past_deadlines",
    sql: concat!(
        "\
WITH decided AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) AS d(run_id, stop_kind, reason)
),
target AS (
    SELECT r.run_id, r.status AS was, d.stop_kind, d.reason
    FROM runs r JOIN decided d USING (run_id)
    WHERE r.status NOT IN ('completed', 'failed', 'blocked', 'cancelled')
      AND CASE WHEN d.stop_kind = 'run_timed_out' THEN r.run_deadline < $4::timestamptz
               ELSE r.status = 'queued' AND r.lease_epoch = 0
                    AND r.start_deadline < $4::timestamptz END
      AND ",
        leader_fence!(5, 6),
        "
    ORDER BY r.run_id
    FOR UPDATE OF r
),
failed AS (
    UPDATE runs r
    SET status = 'failed', stop_kind = t.stop_kind, stop_reason = left(t.reason, 4096),
        finished_at = now(), retry_after = NULL,
        ",
        clear_lease!(),
        ",
        event_seq = r.event_seq + 1, updated_at = now()
    FROM target t
    WHERE r.run_id = t.run_id
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq, r.start_deadline,
              r.run_deadline, t.was, t.stop_kind, t.reason
),
",
        close_open_work!(
            "failed",
            "attempt stopped: the run timed out",
            "the run timed out"
        ),
        ",
events AS (
    INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, reason, stop_kind,
                            metadata)
    SELECT run_id, event_seq, tenant_id,
           CASE WHEN stop_kind = 'run_timed_out' THEN 'run_timed_out'
                ELSE 'run_start_timed_out' END,
           'failed', lease_epoch, left(reason, 4096), stop_kind,
           jsonb_build_object('deadline', CASE WHEN stop_kind = 'run_timed_out'
                                               THEN run_deadline ELSE start_deadline END)
    FROM failed
)
SELECT f.run_id,
       CASE WHEN f.was IN ('running', 'pausing') THEN ",
        notify_stopped!("f.run_id"),
        " END AS notified
FROM failed f"
    ),
};

pub(super) const QUERIES: &[Query] = &[PAST_DEADLINES, FAIL_PAST_DEADLINES];

impl Store {
    /// Runs past a deadline at `now`, at most `limit` of each kind (never claimed past the start
    /// deadline; unfinished past the run deadline), earliest deadline first, each once, read as
    /// listings read them (what [`Store::wait_reasons`] judges). None on a schema without
    /// deadlines (below V18).
    pub async fn past_deadlines(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, Error> {
        let client = self.client().await?;
        if self.schema(&client).await? < DEADLINES_SCHEMA_VERSION {
            return Ok(Vec::new());
        }
        let rows = PAST_DEADLINES.query(&client, &[&now, &int(limit)]).await?;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let run = read_run(row)?;
            if seen.insert(run.run_id) {
                out.push(run);
            }
        }
        Ok(out)
    }

    /// Fails, under `leader`, the runs the sweep found past a deadline at `now`, each if it
    /// still is; returns the runs it failed.
    ///
    /// # Locks
    /// The runs rows in run-id order, then their running node rows and pending gates, and a
    /// share lock on the role's `leader_leases` row, for the statement only.
    pub async fn fail_past_deadlines(
        &self,
        leader: &Leadership,
        failures: &[DeadlineFailure],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunId>, Error> {
        if failures.is_empty() {
            return Ok(Vec::new());
        }
        let run_ids: Vec<Uuid> = failures.iter().map(|f| f.run_id.0).collect();
        let kinds: Vec<&str> = failures.iter().map(|f| f.stop_kind).collect();
        let reasons: Vec<&str> = failures.iter().map(|f| f.reason.as_str()).collect();
        let (name, epoch) = (leader.name(), leader.epoch().0);
        let client = self.client().await?;
        let rows = FAIL_PAST_DEADLINES
            .query(&client, &[&run_ids, &kinds, &reasons, &now, &name, &epoch])
            .await?;
        Ok(rows.iter().map(|row| RunId(row.get("run_id"))).collect())
    }
}
