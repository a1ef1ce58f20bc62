//! The queue's standing as gauges: run by the leader only, so that one coordinator reads it
//! and a dashboard sums nothing twice. Changes nothing: its outcome is never logged.

use leasehold_core::store::{self, QueueStanding};

use super::{Outcome, Pass};

/// One pass: reads the queue's standing and sets the gauges.
pub async fn run_once(pass: Pass<'_>) -> Result<QueueOutcome, store::Error> {
    let standing = pass.store.queue_standing().await?;
    publish(&standing);
    Ok(QueueOutcome)
}

/// Sets the `leasehold_queue_*` gauges from `standing`.
#[allow(clippy::cast_precision_loss)] // run counts are far below 2^52
pub fn publish(standing: &QueueStanding) {
    let runs = |state: &'static str, n: u64| {
        metrics::gauge!("leasehold_queue_runs", "state" => state).set(n as f64);
    };
    runs("due", standing.due);
    runs("in_backoff", standing.in_backoff);
    runs("running", standing.running);
    runs("pausing", standing.pausing);
    runs("stale_reaped", standing.stale_reaped);
    metrics::gauge!("leasehold_queue_held_leases")
        .set((standing.running + standing.pausing) as f64);
    metrics::gauge!("leasehold_queue_oldest_due_age_seconds")
        .set(standing.oldest_due_age.map_or(0.0, |age| age.as_secs_f64()));
}

/// A queue pass changes nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueOutcome;

impl Outcome for QueueOutcome {
    fn actions(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}
