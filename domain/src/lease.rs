//! Lease rules: the bounds of a lease, when it has expired, and what the reaper and the auto-resume
//! sweep do with a run. All take `now` (Postgres' clock, read by the caller) as an argument. Whether a
//! queued run is due is decided by the claim statement itself (`claim_runs` in the store).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::ids::{LeaseEpoch, RunId};
use crate::run::RunStatus;

/// A lease's length unless the worker is told otherwise.
pub const LEASE_DEFAULT: Duration = Duration::from_secs(30);
/// Shorter leases would expire on an ordinary network hiccup or GC pause.
pub const LEASE_MIN: Duration = Duration::from_secs(5);
/// Longer leases would leave a dead worker's runs stuck for too long.
pub const LEASE_MAX: Duration = Duration::from_secs(6 * 60 * 60);
/// Claims in a row that may expire before any progress before the run is blocked as poison.
pub const POISON_LIMIT_DEFAULT: u32 = 5;

/// A lease length within [`LEASE_MIN`]..=[`LEASE_MAX`].
pub fn clamp(lease: Duration) -> Duration {
    lease.clamp(LEASE_MIN, LEASE_MAX)
}

/// A lease is valid up to and including its expiry instant, and expired strictly after it.
pub fn is_expired(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    expires_at < now
}

/// What the reaper sees of a held run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseView {
    /// The run.
    pub run_id: RunId,
    /// The epoch of the current claim.
    pub epoch: LeaseEpoch,
    /// Its state; the reaper only acts on `running` runs.
    pub status: RunStatus,
    /// When the lease runs out.
    pub lease_expires_at: DateTime<Utc>,
    /// A node started under the current claim.
    pub progressed: bool,
    /// Claims in a row, before this one, that expired without progress.
    pub expired_claims: u32,
}

/// The reaper's decision for one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reap {
    /// The lease is alive, or the run is not the reaper's to touch.
    Leave,
    /// Expired before any progress: back to `queued`, attempts untouched.
    Requeue,
    /// Expired before any progress once too often: `blocked`, something kills every holder.
    BlockPoisoned,
    /// Expired after a node started: `paused` as stale-reaped, the interrupted attempt counted.
    StaleReap,
}

/// The reaper's decision for `view` at `now`, blocking after `poison_limit` unprogressed expiries.
pub fn reap(view: &LeaseView, now: DateTime<Utc>, poison_limit: u32) -> Reap {
    if view.status != RunStatus::Running || !is_expired(view.lease_expires_at, now) {
        Reap::Leave
    } else if view.progressed {
        Reap::StaleReap
    } else if view.expired_claims + 1 >= poison_limit {
        Reap::BlockPoisoned
    } else {
        Reap::Requeue
    }
}

/// One node of a stale-reaped run's pinned spec, as the auto-resume rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeBudget {
    /// Attempts counted so far ([`crate::run::counted_attempts`]: interrupted ones included,
    /// but for those a clean stop interrupted); 0 for a node without a row.
    pub attempts: u32,
    /// Attempts its spec allows.
    pub max_attempts: u32,
    /// Completed or skipped: it never runs again.
    pub finished: bool,
}

impl NodeBudget {
    /// The node has yet to finish and may be attempted again.
    pub fn has_budget(&self) -> bool {
        !self.finished && self.attempts < self.max_attempts
    }
}

/// What the auto-resume sweep sees of a run paused as stale-reaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleReapedView {
    /// The run.
    pub run_id: RunId,
    /// The run's event sequence when it was read. Every change to a run raises it, so applying
    /// a decision matches it and leaves alone a run that moved since.
    pub event_seq: i64,
    /// When the reaper paused it.
    pub stale_reaped_at: DateTime<Utc>,
    /// Auto-resumes it has had so far.
    pub auto_resumes: u32,
    /// Every node of its pinned spec with its attempts, or why the spec cannot be read.
    pub nodes: Result<Vec<NodeBudget>, String>,
}

/// The auto-resume sweep's decision for one stale-reaped run. Every variant but
/// [`AutoResume::Resume`] leaves the run paused for an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoResume {
    /// Back to `queued`: reaped recently, under the cap, and a node may still run.
    Resume,
    /// Reaped longer ago than the window: something is wrong enough for a person to look.
    WindowPassed,
    /// Auto-resumed as often as allowed already.
    CapReached,
    /// No unfinished node has an attempt left: resuming could only fail the run.
    NoBudget,
    /// Its spec cannot be read, so its budget is unknown.
    UnreadableSpec,
}

impl AutoResume {
    /// Why the sweep leaves the run for an operator for good (until it is stale-reaped again),
    /// as its history records it; `None` when it resumes the run, or when the window passed
    /// (runs past the window are not read at all).
    pub fn declined_reason(self) -> Option<&'static str> {
        match self {
            Self::Resume | Self::WindowPassed => None,
            Self::CapReached => {
                Some("auto-resume declined: the run was auto-resumed as often as the cap allows")
            }
            Self::NoBudget => Some("auto-resume declined: no unfinished node has an attempt left"),
            Self::UnreadableSpec => Some("auto-resume declined: the run's spec cannot be read"),
        }
    }
}

/// The auto-resume decision for `view` at `now`: resume while `now` is at most `window` after
/// the stale reap, the run has had fewer than `cap` auto-resumes, and an unfinished node has an
/// attempt left (or every node finished, and only settling the run is left).
pub fn auto_resume(
    view: &StaleReapedView,
    now: DateTime<Utc>,
    window: Duration,
    cap: u32,
) -> AutoResume {
    let window = chrono::TimeDelta::from_std(window).unwrap_or(chrono::TimeDelta::MAX);
    if now.signed_duration_since(view.stale_reaped_at) > window {
        AutoResume::WindowPassed
    } else if view.auto_resumes >= cap {
        AutoResume::CapReached
    } else {
        match &view.nodes {
            Err(_) => AutoResume::UnreadableSpec,
            // Every node finished: only settling the run is left (its holder died between the
            // last node and the completion), which the next claim does at once.
            Ok(nodes) if nodes.iter().all(|n| n.finished) => AutoResume::Resume,
            Ok(nodes) if nodes.iter().any(NodeBudget::has_budget) => AutoResume::Resume,
            Ok(_) => AutoResume::NoBudget,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn only_a_decision_that_stands_until_the_next_reap_is_declined_with_a_reason() {
        assert_eq!(AutoResume::Resume.declined_reason(), None);
        assert_eq!(
            AutoResume::WindowPassed.declined_reason(),
            None,
            "past the window a run is not read at all"
        );
        for decision in [
            AutoResume::CapReached,
            AutoResume::NoBudget,
            AutoResume::UnreadableSpec,
        ] {
            let reason = decision.declined_reason().expect("declined");
            assert!(reason.starts_with("auto-resume declined: "), "{reason}");
        }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid timestamp")
    }

    fn ms(n: i64) -> TimeDelta {
        TimeDelta::milliseconds(n)
    }

    #[test]
    fn expiry_on_both_sides_of_the_instant() {
        assert!(!is_expired(t0(), t0() - ms(1)));
        assert!(!is_expired(t0(), t0()));
        assert!(is_expired(t0(), t0() + ms(1)));
    }

    fn view(expires_in_ms: i64, progressed: bool, expired_claims: u32) -> LeaseView {
        LeaseView {
            run_id: RunId::new(),
            epoch: LeaseEpoch(1),
            status: RunStatus::Running,
            lease_expires_at: t0() + ms(expires_in_ms),
            progressed,
            expired_claims,
        }
    }

    fn check(view: LeaseView, want: Reap) {
        assert_eq!(reap(&view, t0(), POISON_LIMIT_DEFAULT), want, "{view:?}");
    }

    #[test]
    fn reap_on_both_sides_of_the_horizon() {
        check(view(-1, false, 0), Reap::Requeue);
        check(view(1, false, 0), Reap::Leave);
        check(view(-1, true, 0), Reap::StaleReap);
        check(view(1, true, 0), Reap::Leave);
    }

    #[test]
    fn poison_guard_blocks_at_the_limit() {
        check(view(-1, false, POISON_LIMIT_DEFAULT - 2), Reap::Requeue);
        check(
            view(-1, false, POISON_LIMIT_DEFAULT - 1),
            Reap::BlockPoisoned,
        );
        // Progress clears suspicion: the run is stale-reaped, not blocked.
        check(view(-1, true, POISON_LIMIT_DEFAULT + 3), Reap::StaleReap);
    }

    #[test]
    fn reaper_leaves_runs_it_does_not_own() {
        for status in [RunStatus::Pausing, RunStatus::Cancelled, RunStatus::Queued] {
            let v = LeaseView {
                status,
                ..view(-1_000, false, 0)
            };
            check(v, Reap::Leave);
        }
    }

    #[test]
    fn lease_is_clamped() {
        assert_eq!(clamp(Duration::from_secs(1)), LEASE_MIN);
        assert_eq!(clamp(Duration::from_secs(60)), Duration::from_secs(60));
        assert_eq!(clamp(Duration::from_secs(7 * 3600)), LEASE_MAX);
    }

    const WINDOW: Duration = Duration::from_secs(20 * 60);
    const CAP: u32 = 2;

    fn budget(attempts: u32, max_attempts: u32, finished: bool) -> NodeBudget {
        NodeBudget {
            attempts,
            max_attempts,
            finished,
        }
    }

    fn stale(reaped_ms_ago: i64, auto_resumes: u32, nodes: &[NodeBudget]) -> StaleReapedView {
        StaleReapedView {
            run_id: RunId::new(),
            event_seq: 7,
            stale_reaped_at: t0() - ms(reaped_ms_ago),
            auto_resumes,
            nodes: Ok(nodes.to_vec()),
        }
    }

    fn check_resume(view: &StaleReapedView, want: AutoResume) {
        assert_eq!(auto_resume(view, t0(), WINDOW, CAP), want, "{view:?}");
    }

    #[test]
    fn auto_resume_on_both_sides_of_the_window() {
        let window_ms = i64::try_from(WINDOW.as_millis()).expect("small");
        let open = [budget(1, 3, false)];
        check_resume(&stale(0, 0, &open), AutoResume::Resume);
        check_resume(&stale(window_ms - 1, 0, &open), AutoResume::Resume);
        check_resume(&stale(window_ms, 0, &open), AutoResume::Resume);
        check_resume(&stale(window_ms + 1, 0, &open), AutoResume::WindowPassed);
    }

    #[test]
    fn auto_resume_stops_at_the_cap() {
        let open = [budget(1, 3, false)];
        check_resume(&stale(1, CAP - 1, &open), AutoResume::Resume);
        check_resume(&stale(1, CAP, &open), AutoResume::CapReached);
        check_resume(&stale(1, CAP + 1, &open), AutoResume::CapReached);
    }

    #[test]
    fn auto_resume_needs_an_unfinished_node_with_attempts_left() {
        // The interrupted node used its last attempt; the others are done.
        let spent = [budget(3, 3, false), budget(1, 3, true)];
        check_resume(&stale(1, 0, &spent), AutoResume::NoBudget);
        // One attempt left.
        check_resume(&stale(1, 0, &[budget(2, 3, false)]), AutoResume::Resume);
        // A node that never started has its whole budget.
        let pending = [budget(3, 3, false), budget(0, 1, false)];
        check_resume(&stale(1, 0, &pending), AutoResume::Resume);
        // A finished node has no use for its budget; a failed one beside it keeps the run waiting.
        let stuck = [budget(1, 3, true), budget(3, 3, false)];
        check_resume(&stale(1, 0, &stuck), AutoResume::NoBudget);
    }

    #[test]
    fn auto_resume_settles_a_run_whose_nodes_all_finished() {
        // The holder died between its last node and the run's completion.
        let done = [budget(1, 3, true), budget(2, 3, true)];
        check_resume(&stale(1, 0, &done), AutoResume::Resume);
    }

    #[test]
    fn auto_resume_leaves_a_run_whose_spec_cannot_be_read() {
        let view = StaleReapedView {
            nodes: Err("nodes[0].kind: missing field".into()),
            ..stale(1, 0, &[])
        };
        check_resume(&view, AutoResume::UnreadableSpec);
    }
}
