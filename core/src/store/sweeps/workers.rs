//! The worker-pruning sweep's statements: the rows of workers silent for long, and deleting
//! them under the leader lease.

use chrono::{DateTime, Utc};

use super::int;
use crate::ids::ClaimantId;
use crate::store::leader::leader_fence;
use crate::store::query::Query;
use crate::store::{Error, Leadership, Store};

/// A worker whose last beat is older than the sweep's horizon, as the sweep reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilentWorker {
    /// The worker.
    pub claimant_id: ClaimantId,
    /// Its last beat.
    pub last_heartbeat: DateTime<Utc>,
    /// Whether a run is still held under its name: the reaper's to settle first.
    pub holds_runs: bool,
}

// Workers whose last beat is before $1, longest silent first. Workers are few (a row per
// process, removed when it exits cleanly): the table is read whole.
const SILENT_WORKERS: Query = Query {
    name: "silent_workers",
    sql: "\
SELECT w.claimant_id, w.last_heartbeat,
       EXISTS (SELECT 1 FROM runs r
               WHERE r.claimant_id = w.claimant_id AND r.status IN ('running', 'pausing'))
           AS holds_runs
FROM workers w
WHERE w.last_heartbeat < $1::timestamptz
ORDER BY w.last_heartbeat
LIMIT $2::int",
};

// Deletes the rows of the workers the sweep decided to prune, each if it is still silent since
// before $2 and holds no run (a worker that beat or claimed since keeps its row), under the
// leadership.
const PRUNE_WORKERS: Query = Query {
    name: "prune_workers",
    sql: concat!(
        "\
DELETE FROM workers w
WHERE w.claimant_id = ANY($1::text[]) AND w.last_heartbeat < $2::timestamptz
  AND NOT EXISTS (SELECT 1 FROM runs r
                  WHERE r.claimant_id = w.claimant_id AND r.status IN ('running', 'pausing'))
  AND ",
        leader_fence!(3, 4),
        "
RETURNING w.claimant_id"
    ),
};

pub(super) const QUERIES: &[Query] = &[SILENT_WORKERS, PRUNE_WORKERS];

impl Store {
    /// At most `limit` workers whose last beat is before `before`, longest silent first.
    pub async fn silent_workers(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<SilentWorker>, Error> {
        let client = self.client().await?;
        let rows = SILENT_WORKERS
            .query(&client, &[&before, &int(limit)])
            .await?;
        Ok(rows
            .iter()
            .map(|row| SilentWorker {
                claimant_id: ClaimantId(row.get("claimant_id")),
                last_heartbeat: row.get("last_heartbeat"),
                holds_runs: row.get("holds_runs"),
            })
            .collect())
    }

    /// Deletes, under `leader`, the rows of `workers`, each if it is still silent since before
    /// `before` and holds no run; returns the workers removed.
    pub async fn prune_workers(
        &self,
        leader: &Leadership,
        workers: &[ClaimantId],
        before: DateTime<Utc>,
    ) -> Result<Vec<ClaimantId>, Error> {
        if workers.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = workers.iter().map(ClaimantId::as_str).collect();
        let (name, epoch) = (leader.name(), leader.epoch().0);
        let client = self.client().await?;
        let rows = PRUNE_WORKERS
            .query(&client, &[&ids, &before, &name, &epoch])
            .await?;
        Ok(rows
            .iter()
            .map(|row| ClaimantId(row.get("claimant_id")))
            .collect())
    }
}
