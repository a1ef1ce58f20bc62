//! Run deadlines: which runs the deadline sweep fails, and the stop kind that says why.
//!
//! An automation may give its runs a `schedule_to_start_timeout` (from the run's start to its
//! first claim) and a `run_timeout` (from the run's start to its end, time queued included). The
//! start writes both deadlines on the run; a run past one fails.

use chrono::{DateTime, Utc};

use super::RunStatus;
use crate::routing::WaitReason;

/// Stop kind of a run no live worker could take when its start deadline passed: none serves its
/// queue, or none has the kinds or labels it needs.
pub const NO_CAPABLE_WORKER: &str = "no_capable_worker";
/// Stop kind of a run whose closest worker lacked only context (a secret, say) at its start
/// deadline.
pub const STARTUP_RUNTIME_CONTEXT_MISSING: &str = "startup_runtime_context_missing";
/// Stop kind of a run a worker could have taken but none claimed by its start deadline (a busy
/// queue, a concurrency or rate limit).
pub const START_TIMED_OUT: &str = "start_timed_out";
/// Stop kind of a run not finished by its run deadline.
pub const RUN_TIMED_OUT: &str = "run_timed_out";

/// What the deadline sweep sees of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlineView {
    /// Where the run is.
    pub status: RunStatus,
    /// Whether a worker has ever claimed it: the start deadline holds until the first claim.
    pub claimed: bool,
    /// When it must have been claimed.
    pub start_deadline: Option<DateTime<Utc>>,
    /// When it must have finished.
    pub run_deadline: Option<DateTime<Utc>>,
}

/// A deadline a run has missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Never claimed by its start deadline.
    Start,
    /// Not finished by its run deadline.
    Run,
}

impl DeadlineView {
    /// The start deadline while it holds: the run is queued and was never claimed.
    pub fn pending_start(&self) -> Option<DateTime<Utc>> {
        self.start_deadline
            .filter(|_| self.status == RunStatus::Queued && !self.claimed)
    }

    /// The run deadline while it holds: the run has not ended.
    pub fn pending_run(&self) -> Option<DateTime<Utc>> {
        self.run_deadline.filter(|_| !self.status.is_terminal())
    }
}

/// The deadline `run` has missed at `now`, if any: a deadline is kept up to and including its
/// instant, and missed strictly after it. A run that missed both missed its run deadline, the
/// one that holds whatever happens next. A finished run misses nothing.
pub fn missed(run: &DeadlineView, now: DateTime<Utc>) -> Option<Missed> {
    let past = |deadline: Option<DateTime<Utc>>| deadline.is_some_and(|at| at < now);
    if past(run.pending_run()) {
        Some(Missed::Run)
    } else if past(run.pending_start()) {
        Some(Missed::Start)
    } else {
        None
    }
}

impl Missed {
    /// The stop kind the failed run records. For a missed start it says why the run waited
    /// (`waiting`, as [`crate::routing::wait_reason`] and `limit_reason` tell it, `None` when
    /// nothing held it back but a busy queue): whether a live worker could have taken it.
    pub fn stop_kind(self, waiting: Option<&WaitReason>) -> &'static str {
        match (self, waiting) {
            (Self::Run, _) => RUN_TIMED_OUT,
            (Self::Start, Some(reason @ WaitReason::Missing { .. })) => match reason.code() {
                STARTUP_RUNTIME_CONTEXT_MISSING => STARTUP_RUNTIME_CONTEXT_MISSING,
                _ => NO_CAPABLE_WORKER,
            },
            (Self::Start, Some(WaitReason::NoWorkerForQueue { .. })) => NO_CAPABLE_WORKER,
            (Self::Start, _) => START_TIMED_OUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;
    use crate::routing::{LimitScope, Requirement};

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid timestamp")
    }

    fn view(
        status: RunStatus,
        claimed: bool,
        start: Option<i64>,
        run: Option<i64>,
    ) -> DeadlineView {
        let at = |ms: i64| t0() + TimeDelta::milliseconds(ms);
        DeadlineView {
            status,
            claimed,
            start_deadline: start.map(at),
            run_deadline: run.map(at),
        }
    }

    #[test]
    fn a_deadline_is_kept_at_its_instant_and_missed_after_it() {
        let queued = |start, run| view(RunStatus::Queued, false, start, run);
        assert_eq!(missed(&queued(Some(0), None), t0()), None);
        assert_eq!(missed(&queued(Some(-1), None), t0()), Some(Missed::Start));
        assert_eq!(missed(&queued(None, Some(0)), t0()), None);
        assert_eq!(missed(&queued(None, Some(-1)), t0()), Some(Missed::Run));
        assert_eq!(missed(&queued(None, None), t0()), None);
    }

    #[test]
    fn the_start_deadline_holds_until_the_first_claim_only() {
        for status in [RunStatus::Running, RunStatus::Paused, RunStatus::Pausing] {
            assert_eq!(missed(&view(status, true, Some(-1), None), t0()), None);
        }
        // Requeued after a claim (a retry, a hand-back): it was started.
        assert_eq!(
            missed(&view(RunStatus::Queued, true, Some(-1), None), t0()),
            None
        );
    }

    #[test]
    fn the_run_deadline_holds_wherever_the_run_is_until_it_ends() {
        for status in [
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::Pausing,
            RunStatus::Paused,
            RunStatus::AwaitingApproval,
        ] {
            assert_eq!(
                missed(&view(status, true, Some(-5), Some(-1)), t0()),
                Some(Missed::Run),
                "{status}"
            );
        }
        for status in [
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::Blocked,
            RunStatus::Cancelled,
        ] {
            assert_eq!(missed(&view(status, true, None, Some(-1)), t0()), None);
        }
    }

    #[test]
    fn a_missed_start_says_whether_a_worker_could_have_taken_the_run() {
        let missing = |missing| WaitReason::Missing { missing };
        let kind = |waiting: Option<&WaitReason>| Missed::Start.stop_kind(waiting);
        assert_eq!(
            kind(Some(&missing(vec![Requirement::Kind("shout".into())]))),
            NO_CAPABLE_WORKER
        );
        assert_eq!(
            kind(Some(&missing(vec![
                Requirement::Label {
                    key: "gpu".into(),
                    value: "a100".into(),
                },
                Requirement::Context("KEY".into()),
            ]))),
            NO_CAPABLE_WORKER
        );
        assert_eq!(
            kind(Some(&missing(vec![Requirement::Context("KEY".into())]))),
            STARTUP_RUNTIME_CONTEXT_MISSING
        );
        assert_eq!(
            kind(Some(&WaitReason::NoWorkerForQueue {
                queue: "gpu".into()
            })),
            NO_CAPABLE_WORKER
        );
        assert_eq!(
            kind(Some(&WaitReason::AtMaxRunning {
                scope: LimitScope::Queue,
                name: "q".into(),
                max_running: 1
            })),
            START_TIMED_OUT
        );
        assert_eq!(kind(None), START_TIMED_OUT);
        assert_eq!(Missed::Run.stop_kind(None), RUN_TIMED_OUT);
    }
}
