//! The sweeps' statements, one file per sweep, matching `coordinator/src/sweeps/`: each holds
//! the sweep's read of candidates and the statements that apply its decisions under the leader
//! lease.
//!
//! Each sweep reads candidates, decides with a pure rule, and applies each kind of decision with
//! one conditional statement. An apply statement re-checks the decision's conditions under the
//! row lock, records its event in the same statement with the per-run sequence raised, and
//! checks the leadership it acts under (`leader_fence!`), so neither a second coordinator nor a
//! former leader that paused and woke up changes anything twice. Apply statements lock their
//! rows in key order, so that two of them over overlapping batches wait for each other instead
//! of deadlocking.

mod auto_resume;
mod counts;
mod deadlines;
mod partitions;
mod pausing;
mod reaper;
mod retention;
mod schedules;
mod stale_gates;
mod workers;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::query::Query;
use super::{Error, Store};
use crate::ids::{LeaseEpoch, RunId};
use crate::lease::LeaseView;
use crate::run::{RunStatus, UnknownStatus};

pub use auto_resume::AutoResumeParams;
pub use counts::CountsFolded;
pub use deadlines::DeadlineFailure;
pub use pausing::PausingParams;
pub use reaper::ReapParams;
pub use retention::RetentionCutoffs;
pub use schedules::{FireDecision, UnstartedFire};
pub use stale_gates::{PendingGateView, StaleGateParams};
pub use workers::SilentWorker;

// The database's clock, read once at the start of a sweep pass: the pass decides and applies at
// this instant, so its rules and its statements agree on what has expired.
const DATABASE_NOW: Query = Query {
    name: "database_now",
    sql: "SELECT now() AS now",
};

/// Every statement of the sweeps, for the check that prepares them all.
pub(super) fn queries() -> impl Iterator<Item = &'static Query> {
    [
        &[DATABASE_NOW][..],
        reaper::QUERIES,
        retention::QUERIES,
        schedules::QUERIES,
        pausing::QUERIES,
        auto_resume::QUERIES,
        counts::QUERIES,
        deadlines::QUERIES,
        stale_gates::QUERIES,
        partitions::QUERIES,
        workers::QUERIES,
    ]
    .into_iter()
    .flatten()
}

impl Store {
    /// The database's `now()`: the clock every sweep decides by.
    pub async fn database_now(&self) -> Result<DateTime<Utc>, Error> {
        let client = self.client().await?;
        Ok(DATABASE_NOW.query_one(&client, &[]).await?.get("now"))
    }
}

pub(super) fn split(views: &[LeaseView]) -> (Vec<Uuid>, Vec<i64>) {
    views.iter().map(|v| (v.run_id.0, v.epoch.0)).unzip()
}

pub(super) fn int(n: impl TryInto<i32>) -> i32 {
    n.try_into().unwrap_or(i32::MAX)
}

/// Runs an apply statement over a batch; an empty batch costs no round trip.
pub(super) async fn apply_many(
    store: &Store,
    sql: Query,
    batch: usize,
    args: &[&(dyn ToSql + Sync)],
) -> Result<Vec<RunId>, Error> {
    if batch == 0 {
        return Ok(Vec::new());
    }
    let client = store.client().await?;
    let rows = sql.query(&client, args).await?;
    Ok(rows.iter().map(|row| RunId(row.get("run_id"))).collect())
}

pub(super) fn read_lease_view(row: &Row) -> Result<LeaseView, Error> {
    let run_id = RunId(row.get("run_id"));
    let status: RunStatus = row
        .get::<_, &str>("status")
        .parse()
        .map_err(|e: UnknownStatus| Error::UnreadableRun {
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
