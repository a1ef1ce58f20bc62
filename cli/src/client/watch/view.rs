//! A run's nodes as the events so far leave them, and how an event reads in one line.

use std::collections::VecDeque;
use std::time::SystemTime;

use leasehold_proto::v1;
use serde_json::Value;

use super::{LIVE_NODE_ROWS_MAX, LIVE_RECENT_EVENTS};
use crate::client::render::{self, Table};
use crate::client::{json, names};

/// A run's nodes as the events so far leave them.
pub(super) struct View {
    pub(super) run_id: String,
    pub(super) automation: String,
    pub(super) status: String,
    pub(super) created: Option<SystemTime>,
    pub(super) finished: Option<SystemTime>,
    pub(super) nodes: Vec<NodeView>,
    /// The last event seen ended the run.
    pub(super) ended: bool,
    /// Why the run ended, from its terminal event.
    pub(super) stop: String,
    pub(super) recent: VecDeque<String>,
    pub(super) notice: String,
}

pub(super) struct NodeView {
    id: String,
    status: String,
    attempt: i64,
    started: Option<SystemTime>,
    finished: Option<SystemTime>,
    note: String,
}

impl NodeView {
    /// What `event`, which names this node and happened `at`, does to it.
    fn apply(&mut self, event: &v1::RunEvent, at: Option<SystemTime>, metadata: Option<&Value>) {
        match event.event.as_str() {
            "node_started" => {
                self.status = "running".into();
                self.attempt = event.attempt.into();
                self.started = at;
                self.finished = None;
                self.note.clear();
            }
            "node_completed" => {
                self.status = "completed".into();
                self.finished = at;
                self.note.clear();
            }
            "node_failed" => {
                self.status = "failed".into();
                if event.attempt > 0 {
                    self.attempt = event.attempt.into();
                }
                self.finished = at;
                self.note.clone_from(&event.reason);
            }
            "node_retry_backoff_scheduled" => {
                let wait = metadata
                    .and_then(|m| m.get("backoff_ms"))
                    .and_then(Value::as_u64)
                    .map(|ms| format!(" in {}", render::millis(ms)))
                    .unwrap_or_default();
                self.status = "retrying".into();
                self.note = format!("attempt {}{wait}; last: {}", event.attempt, self.note);
            }
            "run_awaiting_approval" => {
                self.status = "awaiting approval".into();
                self.note.clone_from(&event.reason);
            }
            "run_gate_approved" => {
                self.status = "approved".into();
                self.note.clear();
            }
            _ => {}
        }
    }
}

impl View {
    /// The run's nodes, all pending: the replayed history brings them up to date.
    pub(super) fn new(run: &v1::Run) -> Self {
        Self {
            run_id: run.run_id.clone(),
            automation: format!("{}@{}", run.automation_id, run.automation_version),
            status: names::run_status(run.status),
            created: render::time(run.created_at.as_ref()),
            finished: None,
            nodes: run
                .nodes
                .iter()
                .map(|n| NodeView {
                    id: n.node_id.clone(),
                    status: "pending".into(),
                    attempt: 0,
                    started: None,
                    finished: None,
                    note: String::new(),
                })
                .collect(),
            ended: false,
            stop: String::new(),
            recent: VecDeque::new(),
            notice: String::new(),
        }
    }

    fn node(&mut self, id: &str) -> Option<&mut NodeView> {
        if id.is_empty() {
            return None;
        }
        let at = match self.nodes.iter().position(|n| n.id == id) {
            Some(at) => at,
            None => {
                self.nodes.push(NodeView {
                    id: id.to_owned(),
                    status: "pending".into(),
                    attempt: 0,
                    started: None,
                    finished: None,
                    note: String::new(),
                });
                self.nodes.len() - 1
            }
        };
        self.nodes.get_mut(at)
    }

    pub(super) fn apply(&mut self, event: &v1::RunEvent) {
        let at = render::time(event.occurred_at.as_ref());
        // Every event says where the run stands after it (events recorded before it did say
        // nothing, and leave the status as it was).
        if event.run_status != i32::from(v1::RunStatus::Unspecified) {
            self.status = names::run_status(event.run_status);
        }
        self.ended = event.terminal;
        self.finished = if event.terminal { at } else { None };
        if event.terminal {
            self.stop = match (event.node_id.as_str(), event.reason.as_str()) {
                (_, "") => names::stop_kind(event.stop_kind),
                ("", reason) => reason.to_owned(),
                (node, reason) => format!("node {node} attempt {}: {reason}", event.attempt),
            };
        }
        self.notice.clear();
        self.apply_to_nodes(event, at);
        self.recent.push_back(event_line(event));
        while self.recent.len() > LIVE_RECENT_EVENTS {
            self.recent.pop_front();
        }
    }

    /// What `event`, which happened `at`, does to the nodes it names.
    fn apply_to_nodes(&mut self, event: &v1::RunEvent, at: Option<SystemTime>) {
        let metadata = event.metadata.as_ref().map(json::object);
        // Events of the run as a whole name the nodes they touch in their metadata.
        let names = |key: &str| -> Vec<String> {
            metadata
                .as_ref()
                .and_then(|m| m.get(key))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        match event.event.as_str() {
            "node_started"
            | "node_completed"
            | "node_failed"
            | "node_retry_backoff_scheduled"
            | "run_awaiting_approval"
            | "run_gate_approved" => {
                if let Some(node) = self.node(&event.node_id) {
                    node.apply(event, at, metadata.as_ref());
                }
            }
            "run_rework_requested" => {
                for id in names("reset") {
                    if let Some(node) = self.node(&id) {
                        node.status = "pending".into();
                        node.started = None;
                        node.finished = None;
                        node.note = "rework".into();
                    }
                }
            }
            "run_failed" => {
                for id in names("skipped") {
                    if let Some(node) = self.node(&id) {
                        node.status = "skipped".into();
                    }
                }
            }
            _ => {}
        }
    }

    /// Takes the node states from the run itself, once it has ended.
    pub(super) fn settle(&mut self, run: &v1::Run) {
        self.status = names::run_status(run.status);
        self.finished = render::time(run.finished_at.as_ref());
        self.nodes = run
            .nodes
            .iter()
            .map(|n| NodeView {
                id: n.node_id.clone(),
                status: names::node_status(n.status),
                attempt: n.attempts.into(),
                started: render::time(n.started_at.as_ref()),
                finished: render::time(n.finished_at.as_ref()),
                note: n.last_error.clone(),
            })
            .collect();
        self.notice.clear();
    }

    /// The outcome in one line from the events alone, for when the run cannot be read.
    pub(super) fn summary(&self) -> String {
        let took = match (self.created, self.finished) {
            (Some(start), Some(end)) => format!(
                " in {}",
                render::duration(end.duration_since(start).unwrap_or_default())
            ),
            _ => String::new(),
        };
        let why = if self.status == "completed" || self.stop.is_empty() {
            String::new()
        } else {
            format!(": {}", self.stop)
        };
        format!("run {} {}{took}{why}", self.run_id, self.status)
    }

    /// The live view: a header, the nodes, recent events, and any notice.
    pub(super) fn frame(&self, now: SystemTime) -> Vec<String> {
        let mut lines = vec![format!(
            "run {}  {}  {}  {}",
            self.run_id,
            self.automation,
            self.status,
            render::span(self.created, self.finished, now)
        )];
        let mut table = Table::new(&["NODE", "STATUS", "ATTEMPT", "DURATION", "NOTE"]);
        let busy = |n: &&NodeView| !matches!(n.status.as_str(), "pending" | "completed");
        let shown: Vec<&NodeView> = if self.nodes.len() <= LIVE_NODE_ROWS_MAX {
            self.nodes.iter().collect()
        } else {
            self.nodes
                .iter()
                .filter(busy)
                .take(LIVE_NODE_ROWS_MAX)
                .collect()
        };
        for node in &shown {
            table.row(vec![
                node.id.clone(),
                node.status.clone(),
                if node.attempt > 0 {
                    node.attempt.to_string()
                } else {
                    String::new()
                },
                render::span(node.started, node.finished, now),
                node.note.clone(),
            ]);
        }
        lines.extend(table.lines().into_iter().map(|l| format!("  {l}")));
        if shown.len() < self.nodes.len() {
            lines.push(format!("  … {}", counts(&self.nodes)));
        }
        lines.extend(self.recent.iter().map(|e| format!("  {e}")));
        if !self.notice.is_empty() {
            lines.push(self.notice.clone());
        }
        lines
    }
}

/// Nodes counted by status: `12 completed, 3 pending`.
fn counts(nodes: &[NodeView]) -> String {
    let mut counted: Vec<(&str, usize)> = Vec::new();
    for node in nodes {
        match counted.iter_mut().find(|(s, _)| *s == node.status) {
            Some((_, n)) => *n += 1,
            None => counted.push((&node.status, 1)),
        }
    }
    counted
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An event as one line: `12:00:01.234  node_started  flaky  attempt 2`.
pub(super) fn event_line(event: &v1::RunEvent) -> String {
    let mut parts = vec![
        render::time(event.occurred_at.as_ref()).map_or_else(|| "-".to_owned(), render::clock),
        event.event.clone(),
    ];
    if !event.node_id.is_empty() {
        parts.push(event.node_id.clone());
    }
    if event.attempt > 0 {
        parts.push(format!("attempt {}", event.attempt));
    }
    let metadata = |key: &str| {
        event
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(key))
            .map(json::value)
    };
    if event.event == "run_claimed" {
        parts.push(format!("epoch {}", event.lease_epoch));
        if let Some(Value::String(claimant)) = metadata("claimant_id") {
            parts.push(format!("by {claimant}"));
        }
    }
    if let Some(ms) = metadata("backoff_ms").and_then(|v| v.as_u64()) {
        parts.push(format!("in {}", render::millis(ms)));
    }
    if let Some(Value::Array(nodes)) = metadata("reset") {
        let nodes: Vec<&str> = nodes.iter().filter_map(Value::as_str).collect();
        parts.push(format!("again: {}", nodes.join(", ")));
    }
    if !event.reason.is_empty() {
        parts.push(render::cell(&event.reason));
    }
    parts.join("  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event as the coordinator sends it, with the run's status after it.
    fn event(seq: i64, name: &str, node: &str, attempt: i32) -> v1::RunEvent {
        use v1::RunStatus as S;
        let run_status = match name {
            "run_claimed" | "node_started" | "node_failed" => S::Running,
            "run_cancelled" => S::Cancelled,
            "run_started" | "node_retry_backoff_scheduled" => S::Queued,
            _ => S::Unspecified,
        };
        v1::RunEvent {
            run_status: run_status.into(),
            run_id: "r".into(),
            seq,
            event: name.into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 43_200 + seq,
                nanos: 0,
            }),
            node_id: node.into(),
            attempt,
            terminal: matches!(name, "run_completed" | "run_failed" | "run_cancelled"),
            ..Default::default()
        }
    }

    fn hello() -> v1::Run {
        v1::Run {
            run_id: "r".into(),
            automation_id: "hello".into(),
            automation_version: 1,
            status: v1::RunStatus::Queued.into(),
            nodes: ["a", "b"]
                .iter()
                .map(|id| v1::NodeState {
                    node_id: (*id).into(),
                    status: v1::NodeStatus::Pending.into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn events_move_nodes_and_the_run_along() {
        let mut view = View::new(&hello());
        for e in [
            event(1, "run_started", "", 0),
            event(2, "run_claimed", "", 0),
            event(3, "node_started", "a", 1),
            event(4, "node_failed", "a", 1),
        ] {
            view.apply(&e);
        }
        assert_eq!(view.status, "running");
        assert_eq!(
            (view.nodes[0].status.as_str(), view.nodes[0].attempt),
            ("failed", 1)
        );
        view.apply(&event(5, "node_retry_backoff_scheduled", "a", 2));
        assert_eq!(
            (view.status.as_str(), view.nodes[0].status.as_str()),
            ("queued", "retrying")
        );
        view.apply(&event(6, "run_claimed", "", 0));
        view.apply(&event(7, "node_started", "a", 2));
        assert_eq!(
            (view.nodes[0].status.as_str(), view.nodes[0].attempt),
            ("running", 2)
        );
        assert!(!view.ended);
        // An event recorded before events carried the run's status leaves it as it was.
        view.apply(&event(8, "gate_marked_stale", "a", 0));
        assert_eq!(view.status, "running");
        view.apply(&event(9, "run_cancelled", "", 0));
        assert!(view.ended);
        assert_eq!(view.status, "cancelled");
    }

    #[test]
    fn an_event_line_has_time_event_node_and_attempt() {
        assert_eq!(
            event_line(&event(1, "node_started", "flaky", 2)),
            "12:00:01.000  node_started  flaky  attempt 2"
        );
        assert_eq!(
            event_line(&event(2, "run_started", "", 0)),
            "12:00:02.000  run_started"
        );
    }
}
