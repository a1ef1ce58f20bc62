//! The reaper's read: held runs whose lease expired. The decision is [`crate::lease::reap`]; its
//! apply statements, fenced on the leader lease, are in `sweeps.rs` with the other sweeps'.

use chrono::{DateTime, Utc};

use super::query::Query;
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

pub(super) const QUERIES: &[Query] = &[EXPIRED_LEASES];

impl Store {
    /// Held runs whose lease has expired at `params.now`.
    pub async fn expired_leases(&self, params: &ReapParams) -> Result<Vec<LeaseView>, Error> {
        let limit = i32::try_from(params.limit).unwrap_or(i32::MAX);
        let client = self.client().await?;
        let rows = EXPIRED_LEASES
            .query(&client, &[&params.now, &limit])
            .await?;
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
}
