//! Pausing settlement: a user asked a running run to pause, and its holder's lease expired
//! before the pause settled. The sweep settles it as the holder would have: `paused` as
//! operator-paused, its running nodes recorded as interrupted attempts, which count.

use chrono::{DateTime, Utc};
use leasehold_core::lease::{self, LeaseView};
use leasehold_core::run::RunStatus;
use leasehold_core::store::{self, PausingParams};

use super::{Outcome, Pass, count};

/// One settlement pass at `pass.now` (the database's clock when `None`), under `pass.leader`.
pub async fn run_once(pass: Pass<'_>) -> Result<PausingOutcome, store::Error> {
    let now = pass.now().await?;
    let params = PausingParams {
        now: Some(now),
        limit: pass.config.batch_limit,
    };
    let pause: Vec<LeaseView> = pass
        .store
        .expired_pausing(&params)
        .await?
        .into_iter()
        .filter(|view| settle(view, now) == Settle::Pause)
        .collect();
    let paused = pass
        .store
        .settle_expired_pausing(pass.leader, &pause, &params)
        .await?;
    Ok(PausingOutcome {
        paused: count(&paused),
    })
}

/// What one pausing-settlement pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PausingOutcome {
    /// Runs settled into `paused`.
    pub paused: u64,
}

impl Outcome for PausingOutcome {
    fn actions(&self) -> Vec<(&'static str, u64)> {
        vec![("paused", self.paused)]
    }
}

/// The settlement's decision for one held run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Not pausing, or its holder's lease is alive: the holder settles it.
    Leave,
    /// Pausing and its holder's lease expired: settle it into `paused`.
    Pause,
}

/// The decision for `view` at `now`.
pub fn settle(view: &LeaseView, now: DateTime<Utc>) -> Settle {
    if view.status == RunStatus::Pausing && lease::is_expired(view.lease_expires_at, now) {
        Settle::Pause
    } else {
        Settle::Leave
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use leasehold_core::ids::{LeaseEpoch, RunId};

    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid timestamp")
    }

    fn check(status: RunStatus, expires_in_ms: i64, want: Settle) {
        let view = LeaseView {
            run_id: RunId::new(),
            epoch: LeaseEpoch(3),
            status,
            lease_expires_at: t0() + TimeDelta::milliseconds(expires_in_ms),
            progressed: true,
            expired_claims: 0,
        };
        assert_eq!(settle(&view, t0()), want, "{view:?}");
    }

    #[test]
    fn settles_a_pausing_run_once_its_lease_expired() {
        check(RunStatus::Pausing, -1, Settle::Pause);
        check(RunStatus::Pausing, 0, Settle::Leave);
        check(RunStatus::Pausing, 1, Settle::Leave);
    }

    #[test]
    fn leaves_runs_that_are_not_pausing() {
        for status in [RunStatus::Running, RunStatus::Paused, RunStatus::Queued] {
            check(status, -1_000, Settle::Leave);
        }
    }
}
