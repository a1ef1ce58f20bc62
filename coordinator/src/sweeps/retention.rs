//! History retention: finished runs are compacted past their hot window (`--retention`, a week
//! by default) and deleted past their full retention (`--delete-after`, ninety days), each
//! tenant by its own windows when it has them (`leasehold retention set`). The rule is
//! `leasehold_core::retention`; the store's statements apply it in batches, oldest finished
//! first, each batch its own short transaction under the leader lease. The events of deleted
//! runs go with their month's partition, which partition upkeep drops once no run needs it.

use std::time::Duration;

use leasehold_core::store::{self, RetentionCutoffs};
use tokio::time::Instant;

use super::{Outcome, Pass};

/// Batches of each kind one pass runs at most (100,000 runs at the default batch, 50 s at the
/// default rate), so that a pass over a large backlog ends and the next one reads the tenants'
/// windows again.
pub const BATCHES_PER_PASS: usize = 1_000;

/// One retention pass at `pass.now` (the database's clock when `None`), under `pass.leader`:
/// compacts, then deletes, batch after batch, until a batch comes back short of
/// `retention_batch` or [`BATCHES_PER_PASS`] have run.
pub async fn run_once(pass: Pass<'_>) -> Result<RetentionOutcome, store::Error> {
    let now = pass.now().await?;
    let tenants = pass
        .store
        .tenant_retentions()
        .await?
        .into_iter()
        .map(|(tenant, windows)| (tenant, windows.cutoffs(now)))
        .collect();
    let cutoffs = RetentionCutoffs {
        default: pass.config.retention.cutoffs(now),
        tenants,
    };
    let (batch, rate) = (pass.config.retention_batch, pass.config.retention_rate);
    let mut outcome = RetentionOutcome::default();
    for _ in 0..BATCHES_PER_PASS {
        let started = Instant::now();
        let compacted = pass
            .store
            .compact_finished_runs(pass.leader, &cutoffs, batch)
            .await?;
        outcome.compacted += compacted;
        if compacted < batch as u64 {
            break;
        }
        tokio::time::sleep(pause_after(compacted, rate, started.elapsed())).await;
    }
    for _ in 0..BATCHES_PER_PASS {
        let started = Instant::now();
        let deleted = pass
            .store
            .delete_finished_runs(pass.leader, &cutoffs, batch)
            .await?;
        outcome.deleted += deleted;
        if deleted < batch as u64 {
            break;
        }
        tokio::time::sleep(pause_after(deleted, rate, started.elapsed())).await;
    }
    Ok(outcome)
}

/// How long to wait after a batch of `runs` that took `took`, so that the pass moves at most
/// `rate` runs per second. Its statements are CPU-bound on the database; unpaced, a backlog of
/// a million runs kept a core busy for over a minute and tripled the claims' p99 on two cores
/// (bench/README.md, "History retention under load").
pub fn pause_after(runs: u64, rate: u32, took: Duration) -> Duration {
    let due = Duration::from_secs_f64(runs as f64 / f64::from(rate.max(1)));
    due.saturating_sub(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_takes_at_least_its_share_of_a_second_at_the_rate() {
        let ms = Duration::from_millis;
        assert_eq!(pause_after(1_000, 2_000, ms(100)), ms(400));
        assert_eq!(pause_after(1_000, 2_000, ms(500)), Duration::ZERO);
        assert_eq!(pause_after(1_000, 2_000, ms(900)), Duration::ZERO);
        assert_eq!(pause_after(0, 2_000, Duration::ZERO), Duration::ZERO);
    }
}

/// What one retention pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Runs compacted: their inputs and node outputs dropped.
    pub compacted: u64,
    /// Runs deleted, with their nodes and gates.
    pub deleted: u64,
}

impl Outcome for RetentionOutcome {
    fn actions(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("runs_compacted", self.compacted),
            ("runs_deleted", self.deleted),
        ]
    }
}
