//! Worker pruning: the row of a worker that has not beaten for `dead_worker_after` (a day by
//! default) and holds no run is removed, so that `worker list` and the wait reasons do not carry
//! every process that ever ran. A worker that exits cleanly removes its own row; this is for those
//! that were killed. One that beats again after all registers again.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use leasehold_core::ids::ClaimantId;
use leasehold_core::store::{self, SilentWorker};

use super::{Outcome, Pass, count};

/// One pruning pass at `pass.now` (the database's clock when `None`), under `pass.leader`.
pub async fn run_once(pass: Pass<'_>) -> Result<WorkersOutcome, store::Error> {
    let now = pass.now().await?;
    let after = pass.config.dead_worker_after;
    let before = horizon(now, after);
    let prune: Vec<ClaimantId> = pass
        .store
        .silent_workers(before, pass.config.batch_limit)
        .await?
        .into_iter()
        .filter(|w| prunable(w, now, after))
        .map(|w| w.claimant_id)
        .collect();
    let pruned = pass
        .store
        .prune_workers(pass.leader, &prune, before)
        .await?;
    Ok(WorkersOutcome {
        pruned: count(&pruned),
    })
}

/// The instant before which a worker's last beat makes it prunable at `now`.
fn horizon(now: DateTime<Utc>, after: Duration) -> DateTime<Utc> {
    now - TimeDelta::from_std(after).unwrap_or(TimeDelta::MAX)
}

/// Whether `worker`'s row goes at `now`: silent for strictly longer than `after`, and holding no
/// run (the reaper settles those first, by their leases).
pub fn prunable(worker: &SilentWorker, now: DateTime<Utc>, after: Duration) -> bool {
    worker.last_heartbeat < horizon(now, after) && !worker.holds_runs
}

/// What one pruning pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkersOutcome {
    /// Workers' rows removed.
    pub pruned: u64,
}

impl Outcome for WorkersOutcome {
    fn actions(&self) -> Vec<(&'static str, u64)> {
        vec![("workers_pruned", self.pruned)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(24 * 60 * 60);

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid timestamp")
    }

    fn worker(silent_ms: i64, holds_runs: bool) -> SilentWorker {
        SilentWorker {
            claimant_id: ClaimantId::from("w"),
            last_heartbeat: t0() - TimeDelta::milliseconds(silent_ms),
            holds_runs,
        }
    }

    #[test]
    fn a_worker_goes_once_silent_for_longer_than_the_threshold() {
        let after_ms = i64::try_from(AFTER.as_millis()).expect("small");
        assert!(!prunable(&worker(after_ms - 1, false), t0(), AFTER));
        assert!(!prunable(&worker(after_ms, false), t0(), AFTER));
        assert!(prunable(&worker(after_ms + 1, false), t0(), AFTER));
    }

    #[test]
    fn a_worker_holding_runs_stays_until_they_are_settled() {
        assert!(!prunable(&worker(10 * 86_400_000, true), t0(), AFTER));
    }
}
