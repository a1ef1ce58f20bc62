//! The run state machine: which transition is legal from which state, and the event it records.
//!
//! The store's statements write the same states and event names; its tests check each one
//! against [`apply`], so the SQL and this table cannot drift apart. `docs/run_states.md` draws it.

use std::fmt;
use std::str::FromStr;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// Waiting to be claimed; due once `retry_after` is null or past.
    Queued,
    /// Held by a worker under a lease.
    Running,
    /// Held, and asked to pause once the running nodes finish.
    Pausing,
    /// Stopped with a `stop_kind`; waits for a resume.
    Paused,
    /// Stopped at an approval gate; waits for a decision.
    AwaitingApproval,
    /// Every node completed.
    Completed,
    /// A node failed for good.
    Failed,
    /// Cannot proceed without an operator (unreadable data, poison guard).
    Blocked,
    /// Cancelled by a user.
    Cancelled,
}

impl RunStatus {
    /// Every status, in life order.
    pub const ALL: [RunStatus; 9] = [
        Self::Queued,
        Self::Running,
        Self::Pausing,
        Self::Paused,
        Self::AwaitingApproval,
        Self::Completed,
        Self::Failed,
        Self::Blocked,
        Self::Cancelled,
    ];

    /// The name stored in `runs.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Pausing => "pausing",
            Self::Paused => "paused",
            Self::AwaitingApproval => "awaiting_approval",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Blocked => "blocked",
            Self::Cancelled => "cancelled",
        }
    }

    /// Completed, failed and cancelled runs never change again, except by an operator's recover.
    /// Blocked runs wait for the same operator action, so they count as terminal too.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Blocked | Self::Cancelled
        )
    }

    /// A worker holds a lease on the run.
    pub fn is_held(self) -> bool {
        matches!(self, Self::Running | Self::Pausing)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored status this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown run status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for RunStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// Something that happens to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// A worker claims a due run.
    Claim,
    /// A node failed with budget left; the run waits in `queued` until `retry_after`.
    ScheduleRetry,
    /// The lease expired before any progress since the claim.
    RequeueExpiredClaim,
    /// The lease expired before any progress, too many times in a row.
    BlockPoisoned,
    /// The lease expired after a node started.
    StaleReap,
    /// A worker shutting down hands the run back with its checkpoint.
    ReleaseOnShutdown,
    /// The last node completed.
    Complete,
    /// A node failed for good.
    Fail,
    /// Stored data of the run cannot be read.
    BlockUnreadable,
    /// A user cancels the run.
    Cancel,
    /// A user pauses a running run; it stops once its running nodes finish.
    RequestPause,
    /// A user pauses a run that no worker holds.
    Pause,
    /// A pausing run's nodes finished, or its holder's lease expired.
    SettlePause,
    /// A node with an approval gate is next.
    AwaitApproval,
    /// A gate was approved.
    Approve,
    /// A gate's decider asked for nodes to run again before asking again.
    Rework,
    /// A user resumes a paused run.
    Resume,
    /// A user resumes a run that was paused while it awaited approval: it awaits the same gate.
    ResumeAtGate,
    /// The auto-resume sweep requeues a stale-reaped run.
    AutoResume,
    /// An operator requeues a failed or blocked run from its checkpoint.
    Recover,
    /// The deadline sweep fails a run never claimed by its start deadline.
    MissStartDeadline,
    /// The deadline sweep fails a run not finished by its run deadline.
    MissRunDeadline,
}

impl Transition {
    /// Every transition.
    pub const ALL: [Transition; 22] = [
        Self::Claim,
        Self::ScheduleRetry,
        Self::RequeueExpiredClaim,
        Self::BlockPoisoned,
        Self::StaleReap,
        Self::ReleaseOnShutdown,
        Self::Complete,
        Self::Fail,
        Self::BlockUnreadable,
        Self::Cancel,
        Self::RequestPause,
        Self::Pause,
        Self::SettlePause,
        Self::AwaitApproval,
        Self::Approve,
        Self::Rework,
        Self::Resume,
        Self::ResumeAtGate,
        Self::AutoResume,
        Self::Recover,
        Self::MissStartDeadline,
        Self::MissRunDeadline,
    ];

    /// The `run_events.event` name this transition records.
    pub fn event(self) -> &'static str {
        match self {
            Self::Claim => "run_claimed",
            Self::ScheduleRetry => "node_retry_backoff_scheduled",
            Self::RequeueExpiredClaim => "run_execution_claim_expired_requeued",
            Self::BlockPoisoned => "run_blocked_claims_keep_expiring",
            Self::StaleReap => "run_stale_reaped",
            Self::ReleaseOnShutdown => "run_released_shutdown",
            Self::Complete => "run_completed",
            Self::Fail => "run_failed",
            Self::BlockUnreadable => "run_blocked_unreadable",
            Self::Cancel => "run_cancelled",
            Self::RequestPause => "run_pause_requested",
            Self::Pause | Self::SettlePause => "run_paused",
            Self::AwaitApproval => "run_awaiting_approval",
            Self::Approve => "run_gate_approved",
            Self::Rework => "run_rework_requested",
            Self::Resume | Self::ResumeAtGate => "run_resumed",
            Self::AutoResume => "run_auto_resumed",
            Self::Recover => "run_recovered",
            Self::MissStartDeadline => "run_start_timed_out",
            Self::MissRunDeadline => "run_timed_out",
        }
    }

    /// Whether a run in `from` may take this transition.
    pub fn allowed_from(self, from: RunStatus) -> bool {
        use RunStatus as S;
        match self {
            Self::Claim => from == S::Queued,
            Self::ScheduleRetry
            | Self::RequeueExpiredClaim
            | Self::BlockPoisoned
            | Self::StaleReap
            | Self::ReleaseOnShutdown
            | Self::RequestPause
            | Self::AwaitApproval => from == S::Running,
            Self::Complete | Self::Fail => from.is_held(),
            Self::BlockUnreadable => from == S::Queued || from.is_held(),
            Self::Cancel | Self::MissRunDeadline => !from.is_terminal(),
            Self::MissStartDeadline => from == S::Queued,
            Self::Pause => matches!(from, S::Queued | S::AwaitingApproval),
            Self::SettlePause => from == S::Pausing,
            Self::Approve | Self::Rework => from == S::AwaitingApproval,
            Self::Resume | Self::ResumeAtGate | Self::AutoResume => from == S::Paused,
            Self::Recover => matches!(from, S::Failed | S::Blocked),
        }
    }

    /// The state this transition leads to.
    pub fn target(self) -> RunStatus {
        use RunStatus as S;
        match self {
            Self::Claim => S::Running,
            Self::ScheduleRetry
            | Self::RequeueExpiredClaim
            | Self::ReleaseOnShutdown
            | Self::Approve
            | Self::Rework
            | Self::Resume
            | Self::AutoResume
            | Self::Recover => S::Queued,
            Self::BlockPoisoned | Self::BlockUnreadable => S::Blocked,
            Self::StaleReap | Self::Pause | Self::SettlePause => S::Paused,
            Self::Complete => S::Completed,
            Self::Fail | Self::MissStartDeadline | Self::MissRunDeadline => S::Failed,
            Self::Cancel => S::Cancelled,
            Self::RequestPause => S::Pausing,
            Self::AwaitApproval | Self::ResumeAtGate => S::AwaitingApproval,
        }
    }
}

/// The outcome of a legal transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The state the run moves to.
    pub to: RunStatus,
    /// The `run_events.event` name recorded.
    pub event: &'static str,
}

/// A transition the run's state forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from} run cannot take {transition:?}")]
pub struct IllegalTransition {
    /// The run's state.
    pub from: RunStatus,
    /// What was attempted.
    pub transition: Transition,
}

/// Where `transition` takes a run that is in `from`, or why it cannot.
pub fn apply(from: RunStatus, transition: Transition) -> Result<Step, IllegalTransition> {
    if transition.allowed_from(from) {
        Ok(Step {
            to: transition.target(),
            event: transition.event(),
        })
    } else {
        Err(IllegalTransition { from, transition })
    }
}

#[cfg(test)]
mod tests {
    use super::RunStatus as S;
    use super::Transition as T;
    use super::*;

    fn check(from: RunStatus, transition: Transition, want: Option<(RunStatus, &str)>) {
        let got = apply(from, transition)
            .ok()
            .map(|step| (step.to, step.event));
        assert_eq!(got, want, "{from} + {transition:?}");
    }

    #[test]
    fn the_lease_protocol_edges() {
        check(S::Queued, T::Claim, Some((S::Running, "run_claimed")));
        check(
            S::Running,
            T::ScheduleRetry,
            Some((S::Queued, "node_retry_backoff_scheduled")),
        );
        check(
            S::Running,
            T::RequeueExpiredClaim,
            Some((S::Queued, "run_execution_claim_expired_requeued")),
        );
        check(
            S::Running,
            T::StaleReap,
            Some((S::Paused, "run_stale_reaped")),
        );
        check(
            S::Running,
            T::ReleaseOnShutdown,
            Some((S::Queued, "run_released_shutdown")),
        );
        check(
            S::Running,
            T::BlockPoisoned,
            Some((S::Blocked, "run_blocked_claims_keep_expiring")),
        );
        check(
            S::Running,
            T::Complete,
            Some((S::Completed, "run_completed")),
        );
        check(
            S::Pausing,
            T::Complete,
            Some((S::Completed, "run_completed")),
        );
        check(S::Running, T::Fail, Some((S::Failed, "run_failed")));
    }

    #[test]
    fn user_and_operator_edges() {
        check(
            S::Running,
            T::RequestPause,
            Some((S::Pausing, "run_pause_requested")),
        );
        check(S::Pausing, T::SettlePause, Some((S::Paused, "run_paused")));
        check(S::Queued, T::Pause, Some((S::Paused, "run_paused")));
        check(S::Paused, T::Resume, Some((S::Queued, "run_resumed")));
        check(
            S::Paused,
            T::AutoResume,
            Some((S::Queued, "run_auto_resumed")),
        );
        check(
            S::Running,
            T::AwaitApproval,
            Some((S::AwaitingApproval, "run_awaiting_approval")),
        );
        check(
            S::AwaitingApproval,
            T::Approve,
            Some((S::Queued, "run_gate_approved")),
        );
        check(S::Failed, T::Recover, Some((S::Queued, "run_recovered")));
        check(S::Blocked, T::Recover, Some((S::Queued, "run_recovered")));
        check(
            S::Queued,
            T::BlockUnreadable,
            Some((S::Blocked, "run_blocked_unreadable")),
        );
        for from in [
            S::Queued,
            S::Running,
            S::Pausing,
            S::Paused,
            S::AwaitingApproval,
        ] {
            check(from, T::Cancel, Some((S::Cancelled, "run_cancelled")));
            check(from, T::MissRunDeadline, Some((S::Failed, "run_timed_out")));
        }
        check(
            S::Queued,
            T::MissStartDeadline,
            Some((S::Failed, "run_start_timed_out")),
        );
        check(S::Running, T::MissStartDeadline, None);
    }

    #[test]
    fn terminal_runs_change_only_by_recover() {
        for from in [S::Completed, S::Failed, S::Blocked, S::Cancelled] {
            for transition in Transition::ALL {
                let legal = apply(from, transition).is_ok();
                let recover =
                    transition == T::Recover && from != S::Completed && from != S::Cancelled;
                assert_eq!(legal, recover, "{from} + {transition:?}");
            }
        }
    }

    #[test]
    fn only_held_runs_take_worker_writes() {
        for from in RunStatus::ALL {
            for transition in [
                T::ScheduleRetry,
                T::ReleaseOnShutdown,
                T::Complete,
                T::Fail,
                T::StaleReap,
            ] {
                if apply(from, transition).is_ok() {
                    assert!(from.is_held(), "{from} + {transition:?}");
                }
            }
        }
    }

    #[test]
    fn a_run_is_claimed_only_from_queued() {
        for from in RunStatus::ALL {
            assert_eq!(apply(from, T::Claim).is_ok(), from == S::Queued, "{from}");
        }
    }

    #[test]
    fn status_names_round_trip() {
        for status in RunStatus::ALL {
            assert_eq!(status.as_str().parse::<RunStatus>(), Ok(status));
        }
        assert_eq!(
            "zombie".parse::<RunStatus>(),
            Err(UnknownStatus("zombie".into()))
        );
    }
}
