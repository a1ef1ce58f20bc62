//! Which nodes of a run can start now, from its checkpoint.

use std::collections::{BTreeMap, HashSet};

use crate::ids::{LeaseEpoch, NodeId};
use crate::spec::Spec;

/// Where a node stands in the checkpoint. A node without a row is pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// An attempt started and has not reported back.
    Running,
    /// Its output is recorded; it never runs again (but for a rework decision).
    Completed,
    /// Its last attempt failed; it may be retried if attempts remain.
    Failed,
    /// It will not run: a node it depends on failed for good.
    Skipped,
}

impl NodeStatus {
    /// The name stored in `run_nodes.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }

    /// The status stored as `s`, if this build knows it.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Running, Self::Completed, Self::Failed, Self::Skipped]
            .into_iter()
            .find(|status| status.as_str() == s)
    }
}

/// A node's recorded state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeState {
    /// Where it stands.
    pub status: NodeStatus,
    /// Attempts started so far, interrupted ones included: the attempt number of the latest.
    pub attempts: u32,
    /// For a failed node: whether another attempt may succeed. A terminal failure is final even
    /// when attempts remain, also after the run moved to another worker.
    pub retryable: bool,
    /// Of the attempts started, those a clean stop (a shutdown hand-back, a pause) interrupted:
    /// they do not count toward `max_attempts` (see [`NodeState::budget`]).
    pub clean_interruptions: u32,
}

impl NodeState {
    /// The state as a claim at `claim_epoch` sees it: a node recorded `running` under an earlier
    /// claim is an interrupted attempt, which counts, and which may run again.
    pub fn under_claim(self, recorded_epoch: LeaseEpoch, claim_epoch: LeaseEpoch) -> Self {
        if self.status == NodeStatus::Running && recorded_epoch < claim_epoch {
            Self {
                status: NodeStatus::Failed,
                retryable: true,
                ..self
            }
        } else {
            self
        }
    }

    /// Failed for good: terminally, with every counted attempt used, or interrupted by clean
    /// stops as often as the cap allows ([`NodeState::budget`] says which).
    pub fn failed_for_good(self, max_attempts: u32) -> bool {
        self.status == NodeStatus::Failed && !self.budget(max_attempts).allows_another()
    }
}

/// The recorded state of a run's nodes, by node id.
// Ordered, not hashed: a run has a handful of nodes, and comparing their short ids costs less
// than hashing them.
pub type Checkpoint = BTreeMap<NodeId, NodeState>;

/// The nodes that may start now, in spec order: every dependency completed, the node itself not
/// completed, running or skipped, and, if its last attempt failed, retryably with attempts left.
///
/// `running` means running under the current claim: see [`NodeState::under_claim`] for rows an
/// earlier claim left behind.
pub fn ready_nodes<'a>(spec: &'a Spec, checkpoint: &Checkpoint) -> Vec<&'a NodeId> {
    let completed = |id: &NodeId| {
        checkpoint
            .get(id)
            .is_some_and(|state| state.status == NodeStatus::Completed)
    };
    spec.nodes
        .iter()
        .filter(|node| match checkpoint.get(&node.id) {
            None => true,
            Some(state) => {
                state.status == NodeStatus::Failed && !state.failed_for_good(node.max_attempts)
            }
        })
        .filter(|node| node.depends_on.iter().all(completed))
        .map(|node| &node.id)
        .collect()
}

/// The nodes that depend on `failed`, directly or through others, in spec order: the nodes a
/// failure of `failed` leaves unrun.
pub fn downstream<'a>(spec: &'a Spec, failed: &NodeId) -> Vec<&'a NodeId> {
    let mut reached: HashSet<&NodeId> = HashSet::from([failed]);
    // Specs are validated acyclic, so passes over the nodes until nothing changes terminate,
    // each adding at least one node; a spec in dependency order needs one pass.
    loop {
        let before = reached.len();
        for node in &spec.nodes {
            if !reached.contains(&node.id) && node.depends_on.iter().any(|d| reached.contains(d)) {
                reached.insert(&node.id);
            }
        }
        if reached.len() == before {
            break;
        }
    }
    spec.nodes
        .iter()
        .map(|node| &node.id)
        .filter(|id| *id != failed && reached.contains(id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::NodeSpec;

    fn node(id: &str, deps: &[&str]) -> NodeSpec {
        NodeSpec {
            id: id.into(),
            kind: "noop".into(),
            input: serde_json::Value::Null,
            depends_on: deps.iter().map(|d| NodeId::from(*d)).collect(),
            max_attempts: 2,
            backoff: Default::default(),
            timeout_ms: 1_000,
            approval: None,
            requires: Default::default(),
        }
    }

    /// a → {b, c} → d
    fn diamond() -> Spec {
        Spec {
            id: "diamond".into(),
            description: None,
            queue: None,
            requires_context: Vec::new(),
            nodes: vec![
                node("a", &[]),
                node("b", &["a"]),
                node("c", &["a"]),
                node("d", &["b", "c"]),
            ],
            max_running: None,
            max_starts_per_second: None,
            burst: None,
            schedule_to_start_timeout_ms: None,
            run_timeout_ms: None,
            schedules: Vec::new(),
        }
    }

    fn check(states: &[(&str, NodeStatus, u32)], want: &[&str]) {
        let spec = diamond();
        let checkpoint: Checkpoint = states
            .iter()
            .map(|(id, status, attempts)| {
                (
                    NodeId::from(*id),
                    NodeState {
                        status: *status,
                        attempts: *attempts,
                        retryable: true,
                        clean_interruptions: 0,
                    },
                )
            })
            .collect();
        let got: Vec<&str> = ready_nodes(&spec, &checkpoint)
            .into_iter()
            .map(NodeId::as_str)
            .collect();
        assert_eq!(got, want, "checkpoint {states:?}");
    }

    use NodeStatus::{Completed, Failed, Running, Skipped};

    #[test]
    fn diamond_in_dependency_order() {
        check(&[], &["a"]);
        check(&[("a", Running, 1)], &[]);
        check(&[("a", Completed, 1)], &["b", "c"]);
        check(&[("a", Completed, 1), ("b", Completed, 1)], &["c"]);
        check(
            &[("a", Completed, 1), ("b", Completed, 1), ("c", Running, 1)],
            &[],
        );
        check(
            &[
                ("a", Completed, 1),
                ("b", Completed, 1),
                ("c", Completed, 1),
            ],
            &["d"],
        );
        let all_done: Vec<_> = ["a", "b", "c", "d"].map(|id| (id, Completed, 1)).into();
        check(&all_done, &[]);
    }

    #[test]
    fn failed_nodes_are_ready_while_attempts_remain() {
        check(&[("a", Failed, 1)], &["a"]);
        check(&[("a", Failed, 2)], &[]);
    }

    #[test]
    fn attempts_a_clean_stop_interrupted_leave_a_failed_node_ready() {
        let spec = diamond();
        let handed_back = NodeState {
            status: Failed,
            attempts: 2,
            retryable: true,
            clean_interruptions: 1,
        };
        let checkpoint: Checkpoint = [(NodeId::from("a"), handed_back)].into();
        assert_eq!(ready_nodes(&spec, &checkpoint), vec![&NodeId::from("a")]);
        let capped = NodeState {
            attempts: crate::run::CLEAN_INTERRUPTIONS_CAP,
            clean_interruptions: crate::run::CLEAN_INTERRUPTIONS_CAP,
            ..handed_back
        };
        let checkpoint: Checkpoint = [(NodeId::from("a"), capped)].into();
        assert!(ready_nodes(&spec, &checkpoint).is_empty());
    }

    #[test]
    fn downstream_follows_dependencies_transitively() {
        let spec = diamond();
        let ids = |failed: &str| -> Vec<&str> {
            downstream(&spec, &NodeId::from(failed))
                .into_iter()
                .map(NodeId::as_str)
                .collect()
        };
        assert_eq!(ids("a"), vec!["b", "c", "d"]);
        assert_eq!(ids("b"), vec!["d"]);
        assert_eq!(ids("d"), Vec::<&str>::new());
    }

    #[test]
    fn a_terminal_failure_is_final_even_with_attempts_left() {
        let spec = diamond();
        let failed = NodeState {
            status: Failed,
            attempts: 1,
            retryable: false,
            clean_interruptions: 0,
        };
        let checkpoint: Checkpoint = [(NodeId::from("a"), failed)].into();
        assert!(ready_nodes(&spec, &checkpoint).is_empty());
        assert!(failed.failed_for_good(5));
    }

    #[test]
    fn a_running_row_of_an_earlier_claim_is_an_interrupted_attempt() {
        let running = NodeState {
            status: Running,
            attempts: 1,
            retryable: true,
            clean_interruptions: 0,
        };
        let seen = running.under_claim(LeaseEpoch(1), LeaseEpoch(2));
        assert_eq!((seen.status, seen.attempts), (Failed, 1));
        assert_eq!(running.under_claim(LeaseEpoch(2), LeaseEpoch(2)), running);
    }

    #[test]
    fn skipped_nodes_never_run_and_block_their_dependants() {
        check(&[("a", Completed, 1), ("b", Skipped, 0)], &["c"]);
        check(
            &[("a", Completed, 1), ("b", Skipped, 0), ("c", Completed, 1)],
            &[],
        );
    }
}
