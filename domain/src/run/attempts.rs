//! Which of a node's attempts count toward its `max_attempts`, and when a failed node has none
//! left.
//!
//! An attempt is counted before its handler runs (rule 8 of the lease protocol), so every
//! attempt that ran was counted. Two kinds of interruption then give the attempt back, because
//! the node did nothing wrong and a deliberate stop of the process or the run cut it short:
//!
//! - a worker's **shutdown hand-back**: its grace period ended before the node did (a rolling
//!   restart of a node longer than the grace period would otherwise fail it);
//! - an operator's **pause**: the holder stopped the node at once (a pause and a resume would
//!   otherwise use up a node of one attempt).
//!
//! The store records them in `run_nodes.clean_interruptions`. Every other interruption counts:
//! a crash, a hung or cut-off worker, a lost lease (invariant 5). A node that never fits in a
//! grace period would be handed back forever, so clean interruptions have a cap of their own,
//! [`CLEAN_INTERRUPTIONS_CAP`]; the run fails once a node reaches it.

use super::ready::{NodeState, NodeStatus};

/// How many attempts of one node clean stops (shutdown hand-backs and pauses) may interrupt
/// before the node fails for good: enough for a node of hours to outlast a long series of
/// rolling restarts, few enough that a node which never fits in a grace period stops looping
/// within a day of deploys. Each such stop ran the node for a grace period, so ten of them
/// cost at most ten grace periods of work.
pub const CLEAN_INTERRUPTIONS_CAP: u32 = 10;

/// The attempts of a node that count toward its `max_attempts`: those started, less those a
/// clean stop interrupted.
pub fn counted_attempts(started: u32, clean_interruptions: u32) -> u32 {
    started.saturating_sub(clean_interruptions)
}

/// What a node's attempts allow, read from its recorded state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// It may run (again).
    Left,
    /// Its last attempt failed terminally: no attempt may succeed.
    Terminal,
    /// Every attempt that counts is used.
    AttemptsUsed {
        /// Attempts counted.
        counted: u32,
        /// The node's `max_attempts`.
        max_attempts: u32,
    },
    /// Clean stops interrupted it [`CLEAN_INTERRUPTIONS_CAP`] times: it does not fit in a grace
    /// period, or it is paused over and over.
    InterruptionsCapped {
        /// Clean interruptions recorded.
        interruptions: u32,
    },
}

impl Budget {
    /// Whether another attempt may start.
    pub fn allows_another(self) -> bool {
        self == Self::Left
    }

    /// Why the node failed for good, for the run's failure; `None` when it did not.
    pub fn reason(self) -> Option<String> {
        match self {
            Self::Left => None,
            Self::Terminal => Some("the last attempt failed terminally".into()),
            Self::AttemptsUsed {
                counted,
                max_attempts,
            } => Some(format!(
                "no attempts left: {counted} of {max_attempts} used"
            )),
            Self::InterruptionsCapped { interruptions } => Some(format!(
                "interrupted by a shutdown or pause {interruptions} times, the cap of \
                 {CLEAN_INTERRUPTIONS_CAP}: the node does not fit in the workers' shutdown grace \
                 period"
            )),
        }
    }
}

impl NodeState {
    /// The attempts of this node that count toward `max_attempts`.
    pub fn counted_attempts(self) -> u32 {
        counted_attempts(self.attempts, self.clean_interruptions)
    }

    /// What this node's attempts allow after it failed (a node in any other status has
    /// [`Budget::Left`]: it is pending, running, or finished).
    pub fn budget(self, max_attempts: u32) -> Budget {
        if self.status != NodeStatus::Failed {
            return Budget::Left;
        }
        if !self.retryable {
            return Budget::Terminal;
        }
        if self.clean_interruptions >= CLEAN_INTERRUPTIONS_CAP {
            return Budget::InterruptionsCapped {
                interruptions: self.clean_interruptions,
            };
        }
        let counted = self.counted_attempts();
        if counted >= max_attempts {
            return Budget::AttemptsUsed {
                counted,
                max_attempts,
            };
        }
        Budget::Left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(attempts: u32, clean_interruptions: u32, retryable: bool) -> NodeState {
        NodeState {
            status: NodeStatus::Failed,
            attempts,
            retryable,
            clean_interruptions,
        }
    }

    #[test]
    fn clean_interruptions_do_not_count_and_others_do() {
        assert_eq!(counted_attempts(1, 0), 1);
        // Five hand-backs and the attempt running now.
        assert_eq!(counted_attempts(6, 5), 1);
        assert_eq!(counted_attempts(0, 0), 0);
        // A count above the starts (never written so) saturates instead of wrapping.
        assert_eq!(counted_attempts(1, 3), 0);
    }

    #[test]
    fn budget_on_both_sides_of_max_attempts() {
        let check = |state: NodeState, max, want: Budget| {
            assert_eq!(state.budget(max), want, "{state:?} of {max}");
        };
        check(failed(1, 0, true), 2, Budget::Left);
        check(
            failed(2, 0, true),
            2,
            Budget::AttemptsUsed {
                counted: 2,
                max_attempts: 2,
            },
        );
        // Two clean interruptions gave two attempts back.
        check(failed(3, 2, true), 2, Budget::Left);
        check(
            failed(4, 2, true),
            2,
            Budget::AttemptsUsed {
                counted: 2,
                max_attempts: 2,
            },
        );
        // Terminal is final, whatever is left.
        check(failed(1, 0, false), 5, Budget::Terminal);
        check(failed(6, 5, false), 5, Budget::Terminal);
    }

    #[test]
    fn budget_on_both_sides_of_the_interruption_cap() {
        let below = failed(CLEAN_INTERRUPTIONS_CAP, CLEAN_INTERRUPTIONS_CAP - 1, true);
        assert_eq!(below.budget(2), Budget::Left);
        let at = failed(CLEAN_INTERRUPTIONS_CAP, CLEAN_INTERRUPTIONS_CAP, true);
        assert_eq!(
            at.budget(2),
            Budget::InterruptionsCapped {
                interruptions: CLEAN_INTERRUPTIONS_CAP
            }
        );
        assert!(!at.budget(100).allows_another());
        assert!(at.failed_for_good(100));
        assert!(
            at.budget(2)
                .reason()
                .is_some_and(|r| r.contains("shutdown grace period")),
        );
    }

    #[test]
    fn nodes_not_failed_always_have_budget() {
        for status in [
            NodeStatus::Running,
            NodeStatus::Completed,
            NodeStatus::Skipped,
        ] {
            let state = NodeState {
                status,
                attempts: 99,
                retryable: true,
                clean_interruptions: CLEAN_INTERRUPTIONS_CAP,
            };
            assert_eq!(state.budget(1), Budget::Left);
            assert_eq!(state.budget(1).reason(), None);
        }
    }
}
