//! Stale gates: an approval gate pending longer than a threshold is marked stale, once. No
//! decision is taken for the approver; the run's detail says in a sentence that it has waited
//! too long, and its history records `gate_marked_stale`.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use leasehold_core::store::{self, PendingGateView, StaleGateParams};

use super::{Outcome, Pass, count};

/// One stale-gate pass at `pass.now` (the database's clock when `None`), under `pass.leader`.
pub async fn run_once(pass: Pass<'_>) -> Result<StaleGatesOutcome, store::Error> {
    let now = pass.now().await?;
    let params = StaleGateParams {
        now: Some(now),
        after: pass.config.stale_gate_after,
        limit: pass.config.batch_limit,
    };
    // A gate marked before stays as it is: a gate is marked once.
    let mark: Vec<PendingGateView> = pass
        .store
        .stale_gate_candidates(&params)
        .await?
        .into_iter()
        .filter(|gate| staleness(gate, now, params.after) == Staleness::MarkStale)
        .collect();
    let marked = pass
        .store
        .mark_gates_stale(pass.leader, &mark, &params)
        .await?;
    Ok(StaleGatesOutcome {
        marked: count(&marked),
    })
}

/// What one stale-gate pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StaleGatesOutcome {
    /// Gates marked stale.
    pub marked: u64,
}

impl Outcome for StaleGatesOutcome {
    fn actions(&self) -> Vec<(&'static str, u64)> {
        vec![("gates_marked_stale", self.marked)]
    }
}

/// The sweep's decision for one pending gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staleness {
    /// Pending for no longer than the threshold.
    Fresh,
    /// Pending for longer than the threshold: mark it.
    MarkStale,
    /// Marked before: a gate is marked once.
    AlreadyMarked,
}

/// The decision for `gate` at `now`: stale once pending for strictly longer than `after`.
pub fn staleness(gate: &PendingGateView, now: DateTime<Utc>, after: Duration) -> Staleness {
    let after = TimeDelta::from_std(after).unwrap_or(TimeDelta::MAX);
    if gate.stale_marked_at.is_some() {
        Staleness::AlreadyMarked
    } else if now.signed_duration_since(gate.requested_at) > after {
        Staleness::MarkStale
    } else {
        Staleness::Fresh
    }
}

#[cfg(test)]
mod tests {
    use leasehold_core::ids::{NodeId, RunId};
    use uuid::Uuid;

    use super::*;

    const AFTER: Duration = Duration::from_secs(24 * 60 * 60);

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid timestamp")
    }

    fn gate(pending_ms: i64, marked: bool) -> PendingGateView {
        PendingGateView {
            gate_id: Uuid::now_v7(),
            run_id: RunId::new(),
            node_id: NodeId::from("approve"),
            requested_at: t0() - TimeDelta::milliseconds(pending_ms),
            stale_marked_at: marked.then(t0),
        }
    }

    fn check(gate: &PendingGateView, want: Staleness) {
        assert_eq!(staleness(gate, t0(), AFTER), want, "{gate:?}");
    }

    #[test]
    fn stale_on_both_sides_of_the_threshold() {
        let after_ms = i64::try_from(AFTER.as_millis()).expect("small");
        check(&gate(after_ms - 1, false), Staleness::Fresh);
        check(&gate(after_ms, false), Staleness::Fresh);
        check(&gate(after_ms + 1, false), Staleness::MarkStale);
    }

    #[test]
    fn a_gate_is_marked_once() {
        check(&gate(10 * 24 * 3_600_000, true), Staleness::AlreadyMarked);
        check(&gate(0, true), Staleness::AlreadyMarked);
    }
}
