//! Following a run: its history, then its live events, until it ends.
//!
//! The stream starts at the run's first event, so a watch of a finished run replays it. When
//! the stream drops (a coordinator restarts, a proxy times out) the watch reconnects with the
//! last sequence number it saw: the coordinator sends exactly the events after it. Each event
//! updates a [`View`] of the run's nodes; how it is shown depends on the [`Mode`]. Once the run
//! has ended, one more `GetRun` settles the view with the authoritative node states.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use leasehold_proto::v1;
use serde_json::Value;
use tonic::Code;

use super::connect::{Coordinator, status_line};
use super::json;
use super::render::{self, Table, emit};

/// How often the live view redraws (durations of running nodes move on between events).
const REDRAW_INTERVAL: Duration = Duration::from_millis(200);
/// First wait before reconnecting a dropped stream; it doubles up to [`RECONNECT_DELAY_MAX`].
const RECONNECT_DELAY_FIRST: Duration = Duration::from_millis(200);
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(5);
/// How long reconnecting may go on without a single new event before the watch gives up.
const RECONNECT_GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// Tries at reading the run once it has ended, before the watch settles for what the events
/// told.
const FINAL_STATE_TRIES: u32 = 4;
/// Node rows the live view shows; beyond it, the nodes that are not pending or completed.
const LIVE_NODE_ROWS_MAX: usize = 15;
/// Recent events the live view shows under the nodes.
const LIVE_RECENT_EVENTS: usize = 3;
/// Width of the live view when the terminal's is unknown (`COLUMNS` unset).
const LIVE_WIDTH_DEFAULT: usize = 80;

/// How a watch shows the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One line per event, then a summary line: for pipes and logs.
    Lines,
    /// A view of the nodes redrawn in place, then a summary line: for a terminal.
    Live,
    /// One JSON object per event per line.
    Json,
}

/// Follows `run_id` until it ends; the exit code is 0 when it completed, 1 otherwise.
pub async fn follow(c: &Coordinator, run_id: &str, mode: Mode) -> anyhow::Result<ExitCode> {
    let run = c.check(
        c.runs()
            .get_run(v1::GetRunRequest {
                run_id: run_id.to_owned(),
            })
            .await,
    )?;
    let mut view = View::new(&run);
    let mut screen = Screen::new(mode);
    let mut after = 0;
    // Since when the watch has been reconnecting without seeing a new event, and how often.
    let mut trouble: Option<(Instant, u32)> = None;
    loop {
        let before = after;
        let why = match stream(c, &run.run_id, &mut after, &mut view, &mut screen).await? {
            Attempt::Ended => break,
            Attempt::Dropped(why) => why,
        };
        if after > before {
            trouble = None;
        }
        let (since, tries) = trouble.get_or_insert((Instant::now(), 0));
        if since.elapsed() > RECONNECT_GIVE_UP_AFTER {
            anyhow::bail!(
                "lost the watch of run {}: {why}; no new event for {}",
                run.run_id,
                render::coarse(since.elapsed())
            );
        }
        let delay = RECONNECT_DELAY_FIRST
            .saturating_mul(2_u32.saturating_pow(*tries))
            .min(RECONNECT_DELAY_MAX);
        *tries += 1;
        screen.notice(
            &mut view,
            &format!(
                "watch: {why}; reconnecting after event {after} in {}",
                render::duration(delay)
            ),
        )?;
        tokio::time::sleep(delay).await;
    }
    let summary = match final_state(c, &run.run_id).await {
        Ok(run) => {
            view.settle(&run);
            summary(&run)
        }
        Err(e) => {
            // The events already told how the run ended; only the settled node states are lost.
            screen.notice(
                &mut view,
                &format!("watch: could not read the run's final state: {e:#}"),
            )?;
            view.summary()
        }
    };
    screen.finish(&view, &summary)?;
    Ok(if view.status == "completed" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The run once it has ended, asked for a few times: the coordinator may be restarting.
async fn final_state(c: &Coordinator, run_id: &str) -> anyhow::Result<v1::Run> {
    let mut delay = RECONNECT_DELAY_FIRST;
    for _ in 0..FINAL_STATE_TRIES {
        let request = v1::GetRunRequest {
            run_id: run_id.to_owned(),
        };
        match c.runs().get_run(request).await {
            Ok(run) => return Ok(run.into_inner()),
            Err(status) if retryable(&status) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RECONNECT_DELAY_MAX);
            }
            Err(status) => return Err(c.error(&status)),
        }
    }
    let request = v1::GetRunRequest {
        run_id: run_id.to_owned(),
    };
    c.check(c.runs().get_run(request).await)
}

enum Attempt {
    /// The stream ended after the run's terminal event.
    Ended,
    /// The stream broke or ended early; worth reconnecting.
    Dropped(String),
}

/// One `WatchRun` call from `after`, read until it ends or breaks.
async fn stream(
    c: &Coordinator,
    run_id: &str,
    after: &mut i64,
    view: &mut View,
    screen: &mut Screen,
) -> anyhow::Result<Attempt> {
    let request = v1::WatchRunRequest {
        run_id: run_id.to_owned(),
        after_seq: *after,
    };
    let mut events = match c.runs().watch_run(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if retryable(&status) => return Ok(Attempt::Dropped(status_line(&status))),
        Err(status) => return Err(c.error(&status)),
    };
    let mut redraw = tokio::time::interval(REDRAW_INTERVAL);
    redraw.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            message = events.message() => match message {
                Ok(Some(event)) => {
                    *after = event.seq;
                    view.apply(&event);
                    screen.event(&event)?;
                }
                Ok(None) if view.ended => return Ok(Attempt::Ended),
                Ok(None) => {
                    return Ok(Attempt::Dropped("the stream ended before the run did".into()));
                }
                Err(status) if retryable(&status) => {
                    return Ok(Attempt::Dropped(status_line(&status)));
                }
                Err(status) => return Err(c.error(&status)),
            },
            _ = redraw.tick(), if screen.mode == Mode::Live => screen.draw(view)?,
        }
    }
}

/// Whether a failed watch is worth another try: the stream broke, or the coordinator is
/// restarting or briefly unable to answer. Answers about the request itself are final.
fn retryable(status: &tonic::Status) -> bool {
    !matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::DataLoss
    )
}

/// The run's status after `event`, for the events that change it (`docs/run_states.md`).
fn status_after(event: &str) -> Option<&'static str> {
    Some(match event {
        "run_started"
        | "node_retry_backoff_scheduled"
        | "run_execution_claim_expired_requeued"
        | "run_released_shutdown"
        | "run_gate_approved"
        | "run_rework_requested"
        | "run_resumed"
        | "run_auto_resumed"
        | "run_recovered" => "queued",
        "run_claimed" => "running",
        "run_pause_requested" => "pausing",
        "run_paused" | "run_stale_reaped" => "paused",
        "run_awaiting_approval" => "awaiting_approval",
        "run_completed" => "completed",
        "run_failed" => "failed",
        "run_cancelled" => "cancelled",
        "run_blocked_unreadable" | "run_blocked_claims_keep_expiring" => "blocked",
        _ => return None,
    })
}

/// A run's nodes as the events so far leave them.
struct View {
    run_id: String,
    automation: String,
    status: String,
    created: Option<SystemTime>,
    finished: Option<SystemTime>,
    nodes: Vec<NodeView>,
    /// The last event seen ended the run.
    ended: bool,
    /// Why the run ended, from its terminal event.
    stop: String,
    recent: VecDeque<String>,
    notice: String,
}

struct NodeView {
    id: String,
    status: String,
    attempt: i64,
    started: Option<SystemTime>,
    finished: Option<SystemTime>,
    note: String,
}

impl View {
    /// The run's nodes, all pending: the replayed history brings them up to date.
    fn new(run: &v1::Run) -> Self {
        Self {
            run_id: run.run_id.clone(),
            automation: format!("{}@{}", run.automation_id, run.automation_version),
            status: run.status.clone(),
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

    fn apply(&mut self, event: &v1::RunEvent) {
        let at = render::time(event.occurred_at.as_ref());
        if let Some(status) = status_after(&event.event) {
            status.clone_into(&mut self.status);
        }
        self.ended = event.terminal;
        self.finished = if event.terminal { at } else { None };
        if event.terminal {
            self.stop = match (event.node_id.as_str(), event.reason.as_str()) {
                (_, "") => event.stop_kind.clone(),
                ("", reason) => reason.to_owned(),
                (node, reason) => format!("node {node} attempt {}: {reason}", event.attempt),
            };
        }
        self.notice.clear();
        let metadata = event.metadata.as_ref().map(json::object);
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
            "node_started" => {
                if let Some(node) = self.node(&event.node_id) {
                    node.status = "running".into();
                    node.attempt = event.attempt.into();
                    node.started = at;
                    node.finished = None;
                    node.note.clear();
                }
            }
            "node_completed" => {
                if let Some(node) = self.node(&event.node_id) {
                    node.status = "completed".into();
                    node.finished = at;
                    node.note.clear();
                }
            }
            "node_failed" => {
                if let Some(node) = self.node(&event.node_id) {
                    node.status = "failed".into();
                    if event.attempt > 0 {
                        node.attempt = event.attempt.into();
                    }
                    node.finished = at;
                    node.note.clone_from(&event.reason);
                }
            }
            "node_retry_backoff_scheduled" => {
                let wait = metadata
                    .as_ref()
                    .and_then(|m| m.get("backoff_ms"))
                    .and_then(Value::as_u64)
                    .map(|ms| format!(" in {}", render::millis(ms)))
                    .unwrap_or_default();
                let attempt = event.attempt;
                if let Some(node) = self.node(&event.node_id) {
                    node.status = "retrying".into();
                    node.note = format!("attempt {attempt}{wait}; last: {}", node.note);
                }
            }
            "run_awaiting_approval" => {
                if let Some(node) = self.node(&event.node_id) {
                    node.status = "awaiting approval".into();
                    node.note.clone_from(&event.reason);
                }
            }
            "run_gate_approved" => {
                if let Some(node) = self.node(&event.node_id) {
                    node.status = "approved".into();
                    node.note.clear();
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
        self.recent.push_back(event_line(event));
        while self.recent.len() > LIVE_RECENT_EVENTS {
            self.recent.pop_front();
        }
    }

    /// Takes the node states from the run itself, once it has ended.
    fn settle(&mut self, run: &v1::Run) {
        run.status.clone_into(&mut self.status);
        self.finished = render::time(run.finished_at.as_ref());
        self.nodes = run
            .nodes
            .iter()
            .map(|n| NodeView {
                id: n.node_id.clone(),
                status: n.status.clone(),
                attempt: n.attempts.into(),
                started: render::time(n.started_at.as_ref()),
                finished: render::time(n.finished_at.as_ref()),
                note: n.last_error.clone(),
            })
            .collect();
        self.notice.clear();
    }

    /// The outcome in one line from the events alone, for when the run cannot be read.
    fn summary(&self) -> String {
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
    fn frame(&self, now: SystemTime) -> Vec<String> {
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
fn event_line(event: &v1::RunEvent) -> String {
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
        parts.push(format!("epoch {}", event.epoch));
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

/// Where a watch writes, by mode.
struct Screen {
    mode: Mode,
    /// Lines of the live view on screen now, which the next draw replaces.
    drawn: usize,
    width: usize,
}

impl Screen {
    fn new(mode: Mode) -> Self {
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .filter(|&c: &usize| c >= 20)
            .unwrap_or(LIVE_WIDTH_DEFAULT);
        Self {
            mode,
            drawn: 0,
            width,
        }
    }

    fn event(&self, event: &v1::RunEvent) -> anyhow::Result<()> {
        match self.mode {
            Mode::Lines => emit(&format!("{}\n", event_line(event))),
            Mode::Json => emit(&format!("{}\n", json::event(event))),
            // Drawn on the next tick: a replayed history can be thousands of events at once.
            Mode::Live => Ok(()),
        }
    }

    /// Redraws the live view in place. Lines are cut to the terminal's width, since a wrapped
    /// line would throw off how far up the next draw starts.
    fn draw(&mut self, view: &View) -> anyhow::Result<()> {
        let lines = view.frame(SystemTime::now());
        let mut out = String::new();
        if self.drawn > 0 {
            // Up to the first line of the last frame, then clear to the end of the screen.
            out.push_str(&format!("\x1b[{}F\x1b[J", self.drawn));
        }
        for line in &lines {
            out.push_str(&render::truncate(line, self.width.saturating_sub(1)));
            out.push('\n');
        }
        self.drawn = lines.len();
        emit(&out)
    }

    /// A message about the watch itself: in the live view, on stderr otherwise.
    fn notice(&mut self, view: &mut View, text: &str) -> anyhow::Result<()> {
        if self.mode == Mode::Live {
            text.clone_into(&mut view.notice);
            self.draw(view)
        } else {
            eprintln!("{text}");
            Ok(())
        }
    }

    /// The last frame, and the summary line but for JSON.
    fn finish(&mut self, view: &View, summary: &str) -> anyhow::Result<()> {
        match self.mode {
            Mode::Json => Ok(()),
            Mode::Lines => emit(&format!("{summary}\n")),
            Mode::Live => {
                self.draw(view)?;
                emit(&format!("{summary}\n"))
            }
        }
    }
}

/// The outcome in one line: `run … completed in 1.23s`, or why it did not complete.
fn summary(run: &v1::Run) -> String {
    let took = match (
        render::time(run.created_at.as_ref()),
        render::time(run.finished_at.as_ref()),
    ) {
        (Some(start), Some(end)) => format!(
            " in {}",
            render::duration(end.duration_since(start).unwrap_or_default())
        ),
        _ => String::new(),
    };
    let why = if let Some(f) = &run.last_failure {
        format!(": node {} attempt {}: {}", f.node_id, f.attempt, f.reason)
    } else if !run.stop_reason.is_empty() {
        format!(": {}", run.stop_reason)
    } else if run.status != "completed" && !run.stop_kind.is_empty() {
        format!(": {}", run.stop_kind)
    } else {
        String::new()
    };
    format!(
        "run {} {}{took}{}",
        run.run_id,
        run.status,
        render::truncate(&why, 500)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64, name: &str, node: &str, attempt: i32) -> v1::RunEvent {
        v1::RunEvent {
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
            status: "queued".into(),
            nodes: ["a", "b"]
                .iter()
                .map(|id| v1::NodeState {
                    node_id: (*id).into(),
                    status: "pending".into(),
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
        view.apply(&event(8, "run_cancelled", "", 0));
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

    #[test]
    fn stream_failures_about_the_request_are_final() {
        assert!(retryable(&tonic::Status::unavailable("restarting")));
        assert!(retryable(&tonic::Status::internal("h2 protocol error")));
        assert!(!retryable(&tonic::Status::not_found("no such run")));
        assert!(!retryable(&tonic::Status::invalid_argument("run_id")));
    }
}
