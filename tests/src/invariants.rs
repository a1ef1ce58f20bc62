//! The invariant checker, run after every scenario once its processes have stopped.
//!
//! It reads the whole database (runs, node rows, every run's events, the pinned specs) and the
//! effects ledger, and checks the design's invariants against them:
//!
//! - **No run is lost:** every run is terminal, or waits in a visible state with a reason
//!   (`queued` with a queue reason, `paused` with a stop kind, `blocked` with a stop reason,
//!   `awaiting_approval` with a pending gate), or is held by a claimant.
//! - **Epochs only rise:** each claim raises the run's epoch by exactly one; events never go
//!   back to an older epoch; for each node, later attempts ran under the same or a newer epoch.
//! - **One holder at a time:** walking a run's history in sequence, a claim is only ever made
//!   while nobody holds the run, and every write a holder makes (node started, completed,
//!   failed; retry, completion, hand-back) carries the current holder's epoch: a stale holder's
//!   write never landed.
//! - **No node completed twice**, a completed or cancelled run never changed again, and each
//!   stale reap was auto-resumed at most once (a sweep decision applied twice would show here).
//! - **Events say where the run is:** every event records a run status, and the last one's is
//!   the status the run is in.
//! - **Executions are accounted for:** every execution in the ledger ran under a claim held by
//!   the process that ran it, as an attempt the store counted before it ran (rule 8), no
//!   attempt ran twice, and no node ran more often than its attempts, nor more attempts than its
//!   `max_attempts` (invariant 5), those a clean stop (a shutdown hand-back, a pause)
//!   interrupted left out, and these no more often than their cap.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use leasehold_core::ids::RunId;
use leasehold_core::run::{CLEAN_INTERRUPTIONS_CAP, counted_attempts};
use leasehold_core::spec;
use tokio_postgres::Client;

use crate::ledger;

// name: check_runs
// Every run with the columns the checks read, and whether it waits at a pending gate.
const RUNS: &str = "\
SELECT r.run_id, r.status, r.queue_reason, r.stop_kind, r.stop_reason, r.claimant_id,
       r.lease_epoch, r.event_seq, r.automation_id, r.automation_version,
       EXISTS (SELECT 1 FROM gates g WHERE g.run_id = r.run_id AND g.status = 'pending')
           AS gate_pending
FROM runs r ORDER BY r.run_id";

// name: check_nodes
// Every node row.
const NODES: &str =
    "SELECT run_id, node_id, status, attempts, clean_interruptions, epoch FROM run_nodes";

// name: check_events
// Every event of every run, in each run's order.
const EVENTS: &str = "\
SELECT run_id, seq, event, run_status, epoch, node_id, attempt,
       metadata->>'claimant_id' AS claimant
FROM run_events ORDER BY run_id, seq";

// name: check_specs
// Every automation version's spec, for each node's max_attempts.
const SPECS: &str = "SELECT automation_id, version, spec FROM automation_versions";

/// Events that end the holder's claim.
const CLAIM_ENDS: &[&str] = &[
    "node_retry_backoff_scheduled",
    "run_execution_claim_expired_requeued",
    "run_released_shutdown",
    "run_blocked_claims_keep_expiring",
    "run_stale_reaped",
    "run_paused",
    "run_awaiting_approval",
    "run_completed",
    "run_failed",
    "run_blocked_unreadable",
    "run_cancelled",
    "run_timed_out",
];

/// Events only the current holder (or a sweep acting on the holder's lease) records: they must
/// carry the held epoch.
const HOLDER_EVENTS: &[&str] = &[
    "node_started",
    "node_completed",
    "node_failed",
    "node_retry_backoff_scheduled",
    "run_execution_claim_expired_requeued",
    "run_released_shutdown",
    "run_blocked_claims_keep_expiring",
    "run_stale_reaped",
    "run_awaiting_approval",
    "run_completed",
    "run_failed",
];

/// Events that find the run not held.
const UNHELD_EVENTS: &[&str] = &[
    "run_auto_resumed",
    "run_resumed",
    "run_recovered",
    "run_gate_approved",
    "run_rework_requested",
];

/// Statuses after which a run never changes again.
const FINAL: &[&str] = &["completed", "cancelled"];

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    /// Runs in the database.
    pub runs: usize,
    /// Runs by status.
    pub by_status: BTreeMap<String, usize>,
    /// Executions in the ledger.
    pub executions: usize,
    /// `node_completed` events.
    pub completions: usize,
    /// Runs neither terminal nor waiting visibly with a reason, each with why.
    pub lost: Vec<String>,
    /// Nodes with more than one recorded completion.
    pub double_completed: Vec<String>,
    /// Every other broken invariant, one sentence each.
    pub violations: Vec<String>,
}

impl Report {
    /// Runs in `status`.
    pub fn count(&self, status: &str) -> usize {
        self.by_status.get(status).copied().unwrap_or(0)
    }

    /// Whether every invariant holds.
    pub fn holds(&self) -> bool {
        self.lost.is_empty() && self.double_completed.is_empty() && self.violations.is_empty()
    }

    /// Panics with every finding unless every invariant holds.
    ///
    /// # Panics
    /// If an invariant is broken.
    pub fn assert_holds(&self) {
        assert!(self.holds(), "invariants broken:\n{self}");
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "runs={} {:?} executions={} completions={}",
            self.runs, self.by_status, self.executions, self.completions
        )?;
        for (title, list) in [
            ("lost", &self.lost),
            ("double-completed", &self.double_completed),
            ("violations", &self.violations),
        ] {
            if list.is_empty() {
                continue;
            }
            writeln!(f, "{title} ({}):", list.len())?;
            for item in list.iter().take(50) {
                writeln!(f, "  {item}")?;
            }
            if list.len() > 50 {
                writeln!(f, "  … and {} more", list.len() - 50)?;
            }
        }
        Ok(())
    }
}

struct Run {
    id: RunId,
    status: String,
    queue_reason: Option<String>,
    stop_kind: Option<String>,
    stop_reason: Option<String>,
    claimant: Option<String>,
    lease_epoch: i64,
    event_seq: i64,
    automation: (String, i32),
    gate_pending: bool,
}

struct Node {
    status: String,
    attempts: i32,
    clean_interruptions: i32,
}

struct Event {
    seq: i64,
    event: String,
    run_status: Option<String>,
    epoch: i64,
    node_id: Option<String>,
    attempt: Option<i32>,
    claimant: Option<String>,
}

/// Reads the database and the ledger and checks every invariant; see the module docs.
///
/// # Panics
/// If the database cannot be read.
pub async fn check(sql: &Client) -> Report {
    let runs: Vec<Run> = sql
        .query(RUNS, &[])
        .await
        .expect("read runs")
        .iter()
        .map(|row| Run {
            id: RunId(row.get("run_id")),
            status: row.get("status"),
            queue_reason: row.get("queue_reason"),
            stop_kind: row.get("stop_kind"),
            stop_reason: row.get("stop_reason"),
            claimant: row.get("claimant_id"),
            lease_epoch: row.get("lease_epoch"),
            event_seq: row.get("event_seq"),
            automation: (row.get("automation_id"), row.get("automation_version")),
            gate_pending: row.get("gate_pending"),
        })
        .collect();
    let mut nodes: HashMap<(RunId, String), Node> = HashMap::new();
    for row in sql.query(NODES, &[]).await.expect("read run_nodes") {
        nodes.insert(
            (RunId(row.get("run_id")), row.get("node_id")),
            Node {
                status: row.get("status"),
                attempts: row.get("attempts"),
                clean_interruptions: row.get("clean_interruptions"),
            },
        );
    }
    let mut events: HashMap<RunId, Vec<Event>> = HashMap::new();
    for row in sql.query(EVENTS, &[]).await.expect("read run_events") {
        events
            .entry(RunId(row.get("run_id")))
            .or_default()
            .push(Event {
                seq: row.get("seq"),
                event: row.get("event"),
                run_status: row.get("run_status"),
                epoch: row.get("epoch"),
                node_id: row.get("node_id"),
                attempt: row.get("attempt"),
                claimant: row.get("claimant"),
            });
    }
    let mut max_attempts: HashMap<(String, i32), HashMap<String, u32>> = HashMap::new();
    for row in sql.query(SPECS, &[]).await.expect("read specs") {
        let spec = spec::from_stored(row.get("spec")).expect("stored spec reads");
        max_attempts.insert(
            (row.get("automation_id"), row.get("version")),
            spec.nodes
                .iter()
                .map(|n| (n.id.as_str().to_owned(), n.max_attempts))
                .collect(),
        );
    }
    let executions = ledger::all(sql).await;

    let mut report = Report {
        runs: runs.len(),
        executions: executions.len(),
        ..Report::default()
    };
    let empty = Vec::new();
    for run in &runs {
        *report.by_status.entry(run.status.clone()).or_default() += 1;
        if let Some(why) = not_visible(run) {
            report
                .lost
                .push(format!("run {} is {}: {why}", run.id, run.status));
        }
        check_history(run, events.get(&run.id).unwrap_or(&empty), &mut report);
    }
    check_nodes(&runs, &nodes, &events, &max_attempts, &mut report);
    check_executions(&executions, &nodes, &events, &mut report);
    report
}

/// Why a run is neither terminal nor visibly waiting, if it is not.
fn not_visible(run: &Run) -> Option<&'static str> {
    match run.status.as_str() {
        "completed" | "failed" | "cancelled" => None,
        "blocked" => run
            .stop_reason
            .is_none()
            .then_some("blocked without a reason"),
        "queued" => run
            .queue_reason
            .is_none()
            .then_some("queued without a reason"),
        "paused" => run
            .stop_kind
            .is_none()
            .then_some("paused without a stop kind"),
        "awaiting_approval" => {
            (!run.gate_pending).then_some("awaiting approval with no pending gate")
        }
        "running" | "pausing" => run.claimant.is_none().then_some("held by nobody"),
        _ => Some("in a state the suite does not know"),
    }
}

/// Walks one run's history in order: sequence, epochs, holders, completions.
fn check_history(run: &Run, events: &[Event], report: &mut Report) {
    let id = run.id;
    let v = &mut report.violations;
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<i64> = (1..=run.event_seq).collect();
    if seqs != expected {
        v.push(format!(
            "run {id}: event sequence {seqs:?} is not 1..={}",
            run.event_seq
        ));
    }
    if let Some(e) = events.iter().find(|e| e.run_status.is_none()) {
        v.push(format!(
            "run {id} seq {} {}: no run status recorded",
            e.seq, e.event
        ));
    }
    if let Some(last) = events.last()
        && last.run_status.as_deref() != Some(run.status.as_str())
    {
        v.push(format!(
            "run {id}: the last event ({} seq {}) records status {:?}, the run is {}",
            last.event, last.seq, last.run_status, run.status
        ));
    }
    let mut held: Option<(i64, Option<String>)> = None;
    let mut last_claim = 0;
    let mut last_epoch = 0;
    let mut completed: HashMap<&str, usize> = HashMap::new();
    let mut finished_at: Option<i64> = None;
    // A stale reap not yet resumed: each allows one auto-resume, so a sweep applied twice shows.
    let mut reaped_unresumed = false;
    for e in events {
        let what = format!("run {id} seq {} {} (epoch {})", e.seq, e.event, e.epoch);
        if let Some(seq) = finished_at {
            v.push(format!("{what}: recorded after the run ended at seq {seq}"));
        }
        if e.epoch < last_epoch {
            v.push(format!("{what}: epoch fell from {last_epoch}"));
        }
        last_epoch = last_epoch.max(e.epoch);
        if e.event == "run_claimed" {
            if let Some((epoch, holder)) = &held {
                v.push(format!(
                    "{what}: claimed by {:?} while {holder:?} held epoch {epoch}",
                    e.claimant
                ));
            }
            if e.epoch != last_claim + 1 {
                v.push(format!(
                    "{what}: the claim did not raise the epoch by one (from {last_claim})"
                ));
            }
            last_claim = e.epoch;
            held = Some((e.epoch, e.claimant.clone()));
            continue;
        }
        let ev = e.event.as_str();
        if HOLDER_EVENTS.contains(&ev) {
            match &held {
                Some((epoch, _)) if *epoch == e.epoch => {}
                Some((epoch, holder)) => v.push(format!(
                    "{what}: written under a stale epoch while {holder:?} held epoch {epoch}"
                )),
                None => v.push(format!("{what}: written while nobody held the run")),
            }
        }
        if UNHELD_EVENTS.contains(&ev) && held.is_some() {
            v.push(format!("{what}: recorded while the run was held"));
        }
        match ev {
            "run_stale_reaped" => reaped_unresumed = true,
            "run_auto_resumed" if !reaped_unresumed => v.push(format!(
                "{what}: auto-resumed without a stale reap since the last resume"
            )),
            "run_auto_resumed" | "run_resumed" | "run_recovered" | "run_cancelled" => {
                reaped_unresumed = false;
            }
            _ => {}
        }
        if ev == "node_completed" {
            let node = e.node_id.as_deref().unwrap_or("?");
            *completed.entry(node).or_default() += 1;
            report.completions += 1;
        }
        if CLAIM_ENDS.contains(&ev) {
            held = None;
        }
        if matches!(ev, "run_completed" | "run_cancelled") {
            finished_at = Some(e.seq);
        }
    }
    for (node, n) in completed {
        if n > 1 {
            report
                .double_completed
                .push(format!("run {id} node {node}: {n} completions recorded"));
        }
    }
    let v = &mut report.violations;
    if run.lease_epoch != last_claim {
        v.push(format!(
            "run {id}: lease_epoch {} but the last claim recorded epoch {last_claim}",
            run.lease_epoch
        ));
    }
    let is_held = matches!(run.status.as_str(), "running" | "pausing");
    match (&held, is_held) {
        (Some((epoch, holder)), true) => {
            if *epoch != run.lease_epoch || *holder != run.claimant {
                v.push(format!(
                    "run {id}: held by {:?} at epoch {} but its history says {holder:?} at {epoch}",
                    run.claimant, run.lease_epoch
                ));
            }
        }
        (None, false) => {}
        (history, _) => v.push(format!(
            "run {id} is {} but its history says it is held by {history:?}",
            run.status
        )),
    }
    if FINAL.contains(&run.status.as_str()) && finished_at.is_none() {
        v.push(format!(
            "run {id} is {} without the event that ends it",
            run.status
        ));
    }
}

/// Node rows against the history and the spec: attempts counted once each, within budget.
fn check_nodes(
    runs: &[Run],
    nodes: &HashMap<(RunId, String), Node>,
    events: &HashMap<RunId, Vec<Event>>,
    max_attempts: &HashMap<(String, i32), HashMap<String, u32>>,
    report: &mut Report,
) {
    let automation: HashMap<RunId, &(String, i32)> =
        runs.iter().map(|r| (r.id, &r.automation)).collect();
    let mut started: HashMap<(RunId, &str), i32> = HashMap::new();
    for (run_id, list) in events {
        for e in list.iter().filter(|e| e.event == "node_started") {
            *started
                .entry((*run_id, e.node_id.as_deref().unwrap_or("?")))
                .or_default() += 1;
        }
    }
    for ((run_id, node_id), node) in nodes {
        if node.status == "skipped" {
            continue;
        }
        let counted = started
            .get(&(*run_id, node_id.as_str()))
            .copied()
            .unwrap_or(0);
        if counted != node.attempts {
            report.violations.push(format!(
                "run {run_id} node {node_id}: {} attempts recorded but {counted} node_started events",
                node.attempts
            ));
        }
        let max = automation
            .get(run_id)
            .and_then(|a| max_attempts.get(*a))
            .and_then(|m| m.get(node_id));
        let clean = node.clean_interruptions.unsigned_abs();
        if clean > CLEAN_INTERRUPTIONS_CAP {
            report.violations.push(format!(
                "run {run_id} node {node_id}: {clean} clean interruptions, more than the cap {CLEAN_INTERRUPTIONS_CAP}"
            ));
        }
        let counted = counted_attempts(node.attempts.unsigned_abs(), clean);
        match max {
            Some(&max) if counted > max => report.violations.push(format!(
                "run {run_id} node {node_id}: {counted} attempts counted ({} started, {clean} interrupted by a clean stop), more than max_attempts {max}",
                node.attempts
            )),
            Some(_) => {}
            None => report.violations.push(format!(
                "run {run_id} node {node_id}: not in the run's spec"
            )),
        }
    }
}

/// The ledger against the history: each execution counted, under its own process's claim, once.
fn check_executions(
    executions: &[ledger::Execution],
    nodes: &HashMap<(RunId, String), Node>,
    events: &HashMap<RunId, Vec<Event>>,
    report: &mut Report,
) {
    let v = &mut report.violations;
    let mut seen: HashSet<(RunId, &str, i32)> = HashSet::new();
    let mut per_node: HashMap<(RunId, &str), Vec<&ledger::Execution>> = HashMap::new();
    for x in executions {
        let what = format!(
            "execution of run {} node {} attempt {} (epoch {}, {} pid {})",
            x.run_id, x.node_id, x.attempt, x.epoch, x.claimant, x.pid
        );
        if !seen.insert((x.run_id, x.node_id.as_str(), x.attempt)) {
            v.push(format!("{what}: the same attempt ran twice"));
        }
        let history = events.get(&x.run_id).map_or(&[][..], Vec::as_slice);
        let counted = history.iter().any(|e| {
            e.event == "node_started"
                && e.node_id.as_deref() == Some(x.node_id.as_str())
                && e.attempt == Some(x.attempt)
                && e.epoch == x.epoch
        });
        if !counted {
            v.push(format!(
                "{what}: no node_started event counted this attempt under this epoch"
            ));
        }
        let holder = history
            .iter()
            .find(|e| e.event == "run_claimed" && e.epoch == x.epoch)
            .and_then(|e| e.claimant.as_deref());
        if holder != Some(x.claimant.as_str()) {
            v.push(format!(
                "{what}: the claim of that epoch was {holder:?}'s, not the executing process's"
            ));
        }
        per_node
            .entry((x.run_id, x.node_id.as_str()))
            .or_default()
            .push(x);
    }
    for ((run_id, node_id), mut list) in per_node {
        let Some(node) = nodes.get(&(run_id, node_id.to_owned())) else {
            v.push(format!(
                "run {run_id} node {node_id}: executed but has no node row"
            ));
            continue;
        };
        let n = i32::try_from(list.len()).unwrap_or(i32::MAX);
        if n > node.attempts {
            v.push(format!(
                "run {run_id} node {node_id}: executed {n} times but only {} attempts were counted",
                node.attempts
            ));
        }
        list.sort_by_key(|x| x.attempt);
        if let Some(x) = list.iter().find(|x| x.attempt > node.attempts) {
            v.push(format!(
                "run {run_id} node {node_id}: attempt {} executed beyond the {} counted ({})",
                x.attempt, node.attempts, node.status
            ));
        }
        if list.windows(2).any(|w| w[1].epoch < w[0].epoch) {
            let mut order = String::new();
            for x in &list {
                let _ = write!(order, " {}@{}", x.attempt, x.epoch);
            }
            v.push(format!(
                "run {run_id} node {node_id}: a later attempt ran under an older epoch:{order}"
            ));
        }
    }
}
