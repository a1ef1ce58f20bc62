//! Automation specs: a DAG of nodes, parsed from YAML or JSON and validated before it is stored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{AutomationId, NodeId};
use crate::schedule::ScheduleSpec;
use crate::{retry, routing};

mod parse;
mod storable;
mod validate;

pub use parse::{MAX_TEXT_BYTES, from_stored, parse, parse_json, parse_yaml};
pub use validate::{
    MAX_ATTEMPTS_LIMIT, MAX_BACKOFF_CAP_MS, MAX_BACKOFF_FACTOR, MAX_CONTEXT_NAMES,
    MAX_DESCRIPTION_CHARS, MAX_ID_CHARS, MAX_INPUT_BYTES, MAX_KIND_CHARS, MAX_LABELS_PER_NODE,
    MAX_NODES, MAX_PROMPT_CHARS, MAX_RUN_DEADLINE_MS, MAX_TIMEOUT_MS, MIN_BACKOFF_FACTOR,
    MIN_RUN_DEADLINE_MS, SpecError, Violation, validate,
};

/// Attempts of a node unless its spec says otherwise.
pub const MAX_ATTEMPTS_DEFAULT: u32 = 3;
/// Time a node may run unless its spec says otherwise: five minutes.
pub const TIMEOUT_MS_DEFAULT: u64 = 300_000;
/// The kind of a node that is only a gate: it asks for approval, then completes.
pub const APPROVAL_KIND: &str = "approval";

/// An automation: what a run executes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The automation's id, also its name for people.
    pub id: AutomationId,
    /// Free text shown in listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The queue runs of this automation go to unless a run's start names another; none means
    /// [`routing::DEFAULT_QUEUE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Names of context (secrets or settings) the worker running a run must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires_context: Vec<String>,
    /// At most this many of its runs held at once, across all workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
    /// At most this many of its runs started (claimed) per second, across all workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_starts_per_second: Option<f64>,
    /// Starts the rate allows at once after a quiet spell; one second's worth unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// A run not claimed this long after its start fails (`no_capable_worker`,
    /// `startup_runtime_context_missing` or `start_timed_out`, by why it waited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_to_start_timeout_ms: Option<u64>,
    /// A run not finished this long after its start (time queued included) fails
    /// (`run_timed_out`), its running nodes stopped as a cancel stops them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_timeout_ms: Option<u64>,
    /// Cron schedules that start runs of it, each fire once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<ScheduleSpec>,
    /// The nodes, in the order their author wrote them.
    pub nodes: Vec<NodeSpec>,
}

/// One step of an automation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Unique within the automation.
    pub id: NodeId,
    /// The handler that executes it (`echo`, `http`, `exec`, or a kind a custom worker adds).
    pub kind: String,
    /// Handed to the handler as is.
    #[serde(default)]
    pub input: serde_json::Value,
    /// Nodes that must complete before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<NodeId>,
    /// Attempts in all, interrupted attempts included.
    #[serde(default = "max_attempts_default")]
    pub max_attempts: u32,
    /// Delay between attempts.
    #[serde(default)]
    pub backoff: retry::Policy,
    /// How long one attempt may run.
    #[serde(default = "timeout_ms_default")]
    pub timeout_ms: u64,
    /// A person must approve before this node runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// Labels the worker running this node must carry, each with this value, e.g.
    /// `requires: {gpu: a100}`. One worker runs the whole run, so it must carry every node's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requires: BTreeMap<String, String>,
}

/// An approval gate in front of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// What the approver is asked.
    pub prompt: String,
}

fn max_attempts_default() -> u32 {
    MAX_ATTEMPTS_DEFAULT
}

fn timeout_ms_default() -> u64 {
    TIMEOUT_MS_DEFAULT
}

impl Spec {
    /// The node with this id.
    pub fn node(&self, id: &NodeId) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| &n.id == id)
    }

    /// The nodes a fresh run starts first, in spec order: those that depend on nothing and need
    /// no approval. Each such start is only "count attempt 1, run the handler", so the claim of
    /// a fresh run may count them itself (docs/lease_protocol.md, rule 8). A gated root is left
    /// out: its start waits for a decision.
    pub fn start_nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.depends_on.is_empty() && !n.needs_gate())
            .map(|n| &n.id)
    }

    /// The queue runs of this automation go to unless a run's start names another.
    pub fn queue(&self) -> &str {
        self.queue.as_deref().unwrap_or(routing::DEFAULT_QUEUE)
    }

    /// What a run of this automation needs of the one worker that runs it: a handler for every
    /// node's kind (`approval` included, since a worker completes the gate), every node's
    /// required labels, and the required context.
    ///
    /// Validation refuses two nodes that require different values of one label; were they
    /// here, the first node's value would count.
    pub fn requirements(&self) -> routing::Requirements {
        let mut labels = BTreeMap::new();
        for node in &self.nodes {
            for (key, value) in &node.requires {
                labels.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        routing::Requirements {
            kinds: self.nodes.iter().map(|n| n.kind.clone()).collect(),
            labels,
            context: self.requires_context.iter().cloned().collect(),
        }
    }

    /// The limits on its runs, across all workers.
    pub fn limits(&self) -> routing::Limits {
        routing::Limits {
            max_running: self.max_running,
            max_starts_per_second: self.max_starts_per_second,
            burst: self.burst,
        }
    }
}

impl NodeSpec {
    /// Whether a person must approve before this node runs: it has an approval, or it is an
    /// approval gate itself.
    pub fn needs_gate(&self) -> bool {
        self.approval.is_some() || self.kind == APPROVAL_KIND
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn start_nodes_are_the_ungated_roots_in_spec_order() {
        let spec = parse_yaml(
            "id: mixed
nodes:
  - {id: z, kind: noop}
  - {id: ask, kind: approval}
  - {id: a, kind: echo}
  - {id: ship, kind: noop, approval: {prompt: Ship it?}}
  - {id: after, kind: noop, depends_on: [z]}
",
        )
        .expect("valid");
        let starts: Vec<&str> = spec.start_nodes().map(NodeId::as_str).collect();
        assert_eq!(starts, ["z", "a"]);
        assert!(
            spec.node(&NodeId::from("ask"))
                .is_some_and(NodeSpec::needs_gate)
        );
        assert!(
            spec.node(&NodeId::from("ship"))
                .is_some_and(NodeSpec::needs_gate)
        );
        assert!(
            !spec
                .node(&NodeId::from("z"))
                .is_some_and(NodeSpec::needs_gate)
        );
    }

    #[test]
    fn requirements_gather_every_node_s_kind_and_labels_and_the_context() {
        let spec = parse_yaml(
            "id: train
queue: gpu
requires_context: [OPENAI_API_KEY, HF_TOKEN]
nodes:
  - {id: fetch, kind: http, requires: {zone: eu}}
  - {id: ask, kind: approval, depends_on: [fetch]}
  - {id: fit, kind: exec, depends_on: [ask], requires: {gpu: a100, zone: eu}}
  - {id: again, kind: exec, depends_on: [fit]}
",
        )
        .expect("valid");
        let set =
            |items: &[&str]| -> BTreeSet<String> { items.iter().map(|&s| s.to_owned()).collect() };
        assert_eq!(spec.queue(), "gpu");
        assert_eq!(
            spec.requirements(),
            routing::Requirements {
                kinds: set(&["approval", "exec", "http"]),
                labels: BTreeMap::from([
                    ("gpu".to_owned(), "a100".to_owned()),
                    ("zone".to_owned(), "eu".to_owned()),
                ]),
                context: set(&["HF_TOKEN", "OPENAI_API_KEY"]),
            }
        );
    }

    #[test]
    fn a_spec_without_routing_fields_goes_to_the_default_queue_and_needs_its_kinds() {
        let spec = parse_yaml("id: plain\nnodes:\n  - {id: a, kind: echo}\n").expect("valid");
        assert_eq!(spec.queue(), routing::DEFAULT_QUEUE);
        assert_eq!(
            spec.requirements(),
            routing::Requirements {
                kinds: BTreeSet::from(["echo".to_owned()]),
                ..routing::Requirements::default()
            }
        );
    }
}
