//! `leasehold run …`: start, list, show, watch and steer runs.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::SystemTime;

use leasehold_core::run::RunStatus;
use leasehold_proto::v1;
use serde_json::{Map, Value};

use super::Global;
use super::automation::PAGE_SIZE_MAX;
use super::connect::Coordinator;
use super::render::{self, Table, emit, emit_json, fields};
use super::watch::{self, Mode};
use super::{json, names};

/// Runs `run list` shows unless told otherwise.
const LIST_LIMIT_DEFAULT: u32 = 50;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Start a run of an automation's current version.
    Start(StartArgs),
    /// List runs, newest first, optionally filtered.
    List {
        /// Only runs in this status; repeat it for runs in any of several.
        #[arg(long, value_name = "STATUS", value_parser = clap::builder::PossibleValuesParser::new(RunStatus::ALL.map(RunStatus::as_str)))]
        status: Vec<String>,
        /// Only runs of this automation.
        #[arg(long, value_name = "AUTOMATION")]
        automation: Option<String>,
        /// Show at most this many runs.
        #[arg(long, value_name = "N", default_value_t = LIST_LIMIT_DEFAULT, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Show a run: status, lease, why it stopped, and each node with its attempts and errors.
    Show {
        /// The run's id.
        id: String,
    },
    /// Follow a run live until it ends. Exits 0 if it completed, 1 otherwise.
    ///
    /// On a terminal the view redraws in place; otherwise each event is one line (`--json`: one
    /// JSON object per line), then a summary line. A dropped stream is resumed from the last
    /// event seen, so nothing is missed or shown twice. Times are UTC.
    Watch {
        /// The run's id.
        id: String,
    },
    /// Cancel a run; a worker holding it stops its nodes.
    Cancel(ActArgs),
    /// Pause a run: at once if no worker holds it, after its running nodes if one does.
    Pause(ActArgs),
    /// Resume a paused run: it goes back to the queue.
    Resume(ActArgs),
    /// Requeue a failed or blocked run from its checkpoint; completed nodes do not run again.
    Recover(ActArgs),
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The automation to run.
    automation: String,
    /// An input, as KEY=VALUE (repeat the flag). A VALUE that parses as JSON (`3`, `true`,
    /// `{"a":1}`) is that JSON; anything else is a string.
    #[arg(long = "input", value_name = "KEY=VALUE", value_parser = parse_input)]
    inputs: Vec<(String, Value)>,
    /// A file holding a JSON object of inputs; `--input` values are laid over it.
    #[arg(long, value_name = "FILE", value_parser = read_input_file)]
    input_file: Option<Map<String, Value>>,
    /// Higher is claimed first, from -1000 to 1000.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-1000..=1000))]
    priority: i32,
    /// Idempotency key: starting again with the same key and the same arguments returns the
    /// run the first start made instead of starting another.
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
    /// The queue the run goes to, instead of its automation's.
    #[arg(long, value_name = "NAME")]
    queue: Option<String>,
    /// Then follow the run like `run watch`, and exit with its exit code. With --json the
    /// output is one JSON object per line: the started run, then its events.
    #[arg(long)]
    watch: bool,
}

#[derive(Debug, clap::Args)]
pub struct ActArgs {
    /// The run's id.
    id: String,
    /// Why, recorded in the run's history.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// Your id for this call (at most 256 characters). Run the command again with the same id
    /// after an answer was lost, and it succeeds if the first call landed, instead of being
    /// refused for the state that call put the run in.
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
}

pub async fn run(command: Command, global: &Global) -> anyhow::Result<ExitCode> {
    let coordinator = Coordinator::connect(global).await?;
    let c = &coordinator;
    match command {
        Command::Start(args) => return start(c, args, global).await,
        Command::List {
            status,
            automation,
            limit,
        } => list(c, status, automation, limit, global).await?,
        Command::Show { id } => {
            let run = c.check(c.runs().get_run(v1::GetRunRequest { run_id: id }).await)?;
            if global.json {
                emit_json(&json::run(&run, true))?;
            } else {
                emit(&show(&run, SystemTime::now()))?;
            }
        }
        Command::Watch { id } => return watch::follow(c, &id, mode(global)).await,
        Command::Cancel(a) => {
            let request = v1::CancelRunRequest {
                run_id: a.id,
                reason: a.reason.unwrap_or_default(),
                request_id: a.request_id.unwrap_or_default(),
            };
            acted(&c.check(c.runs().cancel_run(request).await)?, global)?;
        }
        Command::Pause(a) => {
            let request = v1::PauseRunRequest {
                run_id: a.id,
                reason: a.reason.unwrap_or_default(),
                request_id: a.request_id.unwrap_or_default(),
            };
            acted(&c.check(c.runs().pause_run(request).await)?, global)?;
        }
        Command::Resume(a) => {
            let request = v1::ResumeRunRequest {
                run_id: a.id,
                reason: a.reason.unwrap_or_default(),
                request_id: a.request_id.unwrap_or_default(),
            };
            acted(&c.check(c.runs().resume_run(request).await)?, global)?;
        }
        Command::Recover(a) => {
            let request = v1::RecoverRunRequest {
                run_id: a.id,
                reason: a.reason.unwrap_or_default(),
                request_id: a.request_id.unwrap_or_default(),
            };
            acted(&c.check(c.runs().recover_run(request).await)?, global)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Follows a run live until it ends; exit code 0 when it completed.
pub async fn watch(global: &Global, run_id: &str) -> anyhow::Result<ExitCode> {
    let coordinator = Coordinator::connect(global).await?;
    watch::follow(&coordinator, run_id, mode(global)).await
}

fn mode(global: &Global) -> Mode {
    if global.json {
        Mode::Json
    } else if std::io::stdout().is_terminal() {
        Mode::Live
    } else {
        Mode::Lines
    }
}

fn parse_input(pair: &str) -> Result<(String, Value), String> {
    let (key, raw) = pair
        .split_once('=')
        .ok_or_else(|| "expected KEY=VALUE".to_owned())?;
    if key.is_empty() {
        return Err("the KEY before `=` is empty".to_owned());
    }
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
    Ok((key.to_owned(), value))
}

/// Reads `--input-file` while the arguments are parsed, so that clap names the flag.
fn read_input_file(path: &str) -> Result<Map<String, Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    match serde_json::from_str(&text).map_err(|e| format!("{path} is not JSON: {e}"))? {
        Value::Object(map) => Ok(map),
        _ => Err(format!("{path} holds JSON but not an object of inputs")),
    }
}

async fn start(c: &Coordinator, args: StartArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let mut inputs = args.input_file.unwrap_or_default();
    inputs.extend(args.inputs);
    let started = c.check(
        c.runs()
            .start_run(v1::StartRunRequest {
                automation_id: args.automation,
                inputs: Some(json::to_struct(&inputs)),
                priority: args.priority,
                concurrency_key: String::new(),
                request_id: args.request_id.clone().unwrap_or_default(),
                queue: args.queue.clone().unwrap_or_default(),
            })
            .await,
    )?;
    let run = started.run.unwrap_or_default();
    if global.json {
        let mut out = json::run(&run, true);
        out["created"] = started.created.into();
        if args.watch {
            // With --watch the output is one JSON object per line: this one, then the events.
            emit(&format!("{out}\n"))?;
        } else {
            emit_json(&out)?;
        }
    } else if started.created {
        emit(&format!(
            "started run {} of {}@{} ({})\n",
            run.run_id,
            run.automation_id,
            run.automation_version,
            names::run_status(run.status)
        ))?;
    } else {
        emit(&format!(
            "request id {} already started run {} of {}@{} ({})\n",
            args.request_id.as_deref().unwrap_or_default(),
            run.run_id,
            run.automation_id,
            run.automation_version,
            names::run_status(run.status)
        ))?;
    }
    if args.watch {
        return watch::follow(c, &run.run_id, mode(global)).await;
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(
    c: &Coordinator,
    status: Vec<String>,
    automation: Option<String>,
    limit: u32,
    global: &Global,
) -> anyhow::Result<()> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut runs = Vec::new();
    let mut page_token = String::new();
    let more = loop {
        let want =
            i32::try_from(limit - runs.len()).map_or(PAGE_SIZE_MAX, |n| n.min(PAGE_SIZE_MAX));
        let page = c.check(
            c.runs()
                .list_runs(v1::ListRunsRequest {
                    automation_id: automation.clone().unwrap_or_default(),
                    statuses: status
                        .iter()
                        .filter_map(|s| names::parse_run_status(s))
                        .map(i32::from)
                        .collect(),
                    page_size: want,
                    page_token,
                    ..Default::default()
                })
                .await,
        )?;
        runs.extend(page.runs);
        if page.next_page_token.is_empty() {
            break false;
        }
        if runs.len() >= limit {
            break true;
        }
        page_token = page.next_page_token;
    };
    runs.truncate(limit);
    print_runs(&runs, more.then_some(limit), global)
}

/// Prints `runs` as a table (or JSON); `cut_at` says the list was cut there.
fn print_runs(runs: &[v1::Run], cut_at: Option<usize>, global: &Global) -> anyhow::Result<()> {
    if global.json {
        emit_json(&Value::Array(
            runs.iter().map(|r| json::run(r, false)).collect(),
        ))?;
        return Ok(());
    }
    if runs.is_empty() {
        emit("No runs match.\n")?;
        return Ok(());
    }
    let now = SystemTime::now();
    let mut table = Table::new(&[
        "RUN",
        "AUTOMATION",
        "STATUS",
        "PRIORITY",
        "CREATED",
        "DURATION",
        "HOLDER",
        "NOTE",
    ]);
    for run in runs {
        let created = render::time(run.created_at.as_ref());
        let finished = render::time(run.finished_at.as_ref());
        table.row(vec![
            run.run_id.clone(),
            format!("{}@{}", run.automation_id, run.automation_version),
            names::run_status(run.status),
            run.priority.to_string(),
            created
                .map(|t| format!("{} ago", render::age(t, now)))
                .unwrap_or_default(),
            if finished.is_some() {
                render::span(created, finished, now)
            } else {
                String::new()
            },
            run.lease
                .as_ref()
                .map(|l| l.claimant_id.clone())
                .unwrap_or_default(),
            note(run),
        ]);
    }
    emit(&table.render())?;
    if let Some(limit) = cut_at {
        eprintln!("(showing the first {limit} runs; more match: raise --limit)");
    }
    Ok(())
}

/// Why a run is where it is, in a few words: why it stopped, or why it waits in the queue.
fn note(run: &v1::Run) -> String {
    if let Some(failure) = &run.last_failure {
        return format!("{}: {}", failure.node_id, failure.reason);
    }
    if run.stop_kind != i32::from(v1::StopKind::Unspecified) {
        return stop(run);
    }
    if let Some(waiting) = &run.waiting_retry {
        return format!(
            "{}: attempt {} waits for its backoff",
            waiting.node_id, waiting.next_attempt
        );
    }
    if let Some(waiting) = &run.waiting {
        return waiting.message.clone();
    }
    if run.queue_reason == i32::from(v1::QueueReason::Unspecified) {
        return String::new();
    }
    names::queue_reason(run.queue_reason)
}

fn stop(run: &v1::Run) -> String {
    if run.stop_kind == i32::from(v1::StopKind::Unspecified) {
        return String::new();
    }
    let kind = names::stop_kind(run.stop_kind);
    match run.stop_reason.as_str() {
        "" => kind,
        reason => format!("{kind}: {reason}"),
    }
}

fn show(run: &v1::Run, now: SystemTime) -> String {
    let mut out = summary(run, now);
    out.push('\n');
    out.push_str(&node_table(run, now));
    if !run.gates.is_empty() {
        out.push('\n');
        out.push_str(&gate_table(run, now));
    }
    out
}

/// The run's own fields, one per line.
fn summary(run: &v1::Run, now: SystemTime) -> String {
    let created = render::time(run.created_at.as_ref());
    let finished = render::time(run.finished_at.as_ref());
    let inputs = run
        .inputs
        .as_ref()
        .map(json::object)
        .filter(|v| v.as_object().is_some_and(|m| !m.is_empty()))
        .map(|v| v.to_string())
        .unwrap_or_default();
    fields(&[
        ("run", run.run_id.clone()),
        (
            "automation",
            format!("{}@{}", run.automation_id, run.automation_version),
        ),
        ("status", names::run_status(run.status)),
        ("priority", run.priority.to_string()),
        ("queue", run.queue.clone()),
        ("created", render::when(run.created_at.as_ref(), now)),
        ("finished", render::when(run.finished_at.as_ref(), now)),
        (
            "took",
            if finished.is_some() {
                render::span(created, finished, now)
            } else {
                String::new()
            },
        ),
        ("lease", lease(run, now)),
        (
            "queued because",
            if run.queue_reason == i32::from(v1::QueueReason::Unspecified) {
                String::new()
            } else {
                names::queue_reason(run.queue_reason)
            },
        ),
        (
            "waiting",
            run.waiting
                .as_ref()
                .map(|w| w.message.clone())
                .unwrap_or_default(),
        ),
        ("retry", retry(run, now)),
        ("claim by", render::when(run.start_deadline.as_ref(), now)),
        ("finish by", render::when(run.run_deadline.as_ref(), now)),
        ("stopped", stop(run)),
        (
            "last failure",
            run.last_failure
                .as_ref()
                .map(|f| format!("node {} attempt {}: {}", f.node_id, f.attempt, f.reason))
                .unwrap_or_default(),
        ),
        ("trigger", trigger(run)),
        ("compacted", compacted(run, now)),
        ("inputs", render::truncate(&inputs, 200)),
        ("events", run.event_seq.to_string()),
        ("trace", run.trace_id.clone()),
    ])
}

/// What started the run; for a schedule, which one and for what fire time.
fn trigger(run: &v1::Run) -> String {
    match render::time(run.scheduled_for.as_ref()) {
        Some(at) => format!(
            "{} {} for {}",
            run.trigger,
            run.schedule_id,
            render::rfc3339(at)
        ),
        None => run.trigger.clone(),
    }
}

/// When the run was compacted, and what that took from it; empty while it was not.
fn compacted(run: &v1::Run, now: SystemTime) -> String {
    if run.compacted_at.is_none() {
        return String::new();
    }
    format!(
        "{}: its inputs and node outputs were dropped (retention's hot window)",
        render::when(run.compacted_at.as_ref(), now)
    )
}

/// Who holds the run, or who last did.
fn lease(run: &v1::Run, now: SystemTime) -> String {
    match &run.lease {
        Some(l) => {
            let expiry = render::time(l.expires_at.as_ref())
                .map(|t| format!(", expires {}", render::relative(t, now)))
                .unwrap_or_default();
            format!(
                "held by {} (epoch {}){expiry}",
                l.claimant_id, run.lease_epoch
            )
        }
        None if run.lease_epoch > 0 => format!("not held (last epoch {})", run.lease_epoch),
        None => "never claimed".to_owned(),
    }
}

/// The retry the run waits for, if it waits for one.
fn retry(run: &v1::Run, now: SystemTime) -> String {
    let Some(waiting) = &run.waiting_retry else {
        return String::new();
    };
    let due = render::time(waiting.due_at.as_ref())
        .map(|t| format!(", due {}", render::relative(t, now)))
        .unwrap_or_default();
    format!(
        "node {} attempt {}{due} (the last failed: {})",
        waiting.node_id,
        waiting.next_attempt,
        render::truncate(&waiting.error, 200)
    )
}

/// One line per node, with the latest gate of the node.
fn node_table(run: &v1::Run, now: SystemTime) -> String {
    let mut nodes = Table::new(&[
        "NODE",
        "STATUS",
        "ATTEMPTS",
        "DURATION",
        "LAST ERROR",
        "GATE",
    ]);
    for node in &run.nodes {
        // The latest gate of the node; reworks can ask more than once.
        let gate = run
            .gates
            .iter()
            .rfind(|g| g.node_id == node.node_id)
            .map(|g| {
                let stale = if g.stale { ", stale" } else { "" };
                format!("{}{stale}", names::gate_status(g.status))
            })
            .unwrap_or_default();
        nodes.row(vec![
            node.node_id.clone(),
            names::node_status(node.status),
            node.attempts.to_string(),
            render::span(
                render::time(node.started_at.as_ref()),
                render::time(node.finished_at.as_ref()),
                now,
            ),
            node.last_error.clone(),
            gate,
        ]);
    }
    nodes.render()
}

/// One line per gate the run has asked.
fn gate_table(run: &v1::Run, now: SystemTime) -> String {
    let mut gates = Table::new(&["GATE", "NODE", "STATUS", "PROMPT", "REQUESTED", "DECIDED"]);
    for g in &run.gates {
        let decided = match (g.decided_by.as_str(), g.reason.as_str()) {
            ("", _) => String::new(),
            (by, "") => format!("by {by}"),
            (by, reason) => format!("by {by}: {reason}"),
        };
        gates.row(vec![
            g.gate_id.clone(),
            g.node_id.clone(),
            if g.stale {
                format!("{} (stale)", names::gate_status(g.status))
            } else {
                names::gate_status(g.status)
            },
            g.prompt.clone(),
            render::time(g.requested_at.as_ref())
                .map(|t| format!("{} ago", render::age(t, now)))
                .unwrap_or_default(),
            decided,
        ]);
    }
    gates.render()
}

fn acted(run: &v1::Run, global: &Global) -> anyhow::Result<()> {
    if global.json {
        return emit_json(&json::run(run, true));
    }
    let hint = match v1::RunStatus::try_from(run.status) {
        Ok(v1::RunStatus::Pausing) => " (it pauses once its running nodes finish)",
        Ok(v1::RunStatus::Queued) => " (back in the queue)",
        Ok(v1::RunStatus::AwaitingApproval) => " (awaiting its gate's decision again)",
        _ => "",
    };
    emit(&format!(
        "run {}: {}{hint}\n",
        run.run_id,
        names::run_status(run.status)
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn input_values_are_json_when_they_parse_and_strings_otherwise() {
        let check = |pair: &str, key: &str, value: Value| {
            assert_eq!(parse_input(pair), Ok((key.to_owned(), value)));
        };
        check("n=3", "n", json!(3));
        check("ok=true", "ok", json!(true));
        check("o={\"a\":[1]}", "o", json!({"a": [1]}));
        check("s=hello world", "s", json!("hello world"));
        check("zip=007", "zip", json!("007"));
        check("empty=", "empty", json!(""));
        check("eq=a=b", "eq", json!("a=b"));
        assert!(parse_input("novalue").is_err());
        assert!(parse_input("=3").is_err());
    }
}
