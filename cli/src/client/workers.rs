//! `leasehold worker list|drain|kinds`: the worker processes the coordinator knows of, and the
//! node kinds they offer.

use std::process::ExitCode;
use std::time::SystemTime;

use leasehold_proto::v1;
use serde_json::Value;

use super::Global;
use super::connect::Coordinator;
use super::json;
use super::render::{self, Table, emit, emit_json};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List workers: capacity, liveness, draining, held runs and the last heartbeat.
    List,
    /// Ask a worker to stop claiming and hand its runs back to the queue.
    Drain {
        /// The worker's claimant id (see `leasehold worker list`).
        id: String,
    },
    /// List the node kinds workers have advertised, and the built-in ones: whether a kind
    /// declares an input schema, and when a worker last advertised it.
    Kinds,
}

pub async fn run(command: Command, global: &Global) -> anyhow::Result<ExitCode> {
    let coordinator = Coordinator::connect(global).await?;
    let c = &coordinator;
    match command {
        Command::List => {
            let workers = c
                .check(c.workers().list_workers(v1::ListWorkersRequest {}).await)?
                .workers;
            if global.json {
                emit_json(&Value::Array(workers.iter().map(json::worker).collect()))?;
            } else if workers.is_empty() {
                emit("No workers have registered.\n")?;
            } else {
                emit(&table(&workers, SystemTime::now()).render())?;
            }
        }
        Command::Kinds => {
            let kinds = c
                .check(
                    c.workers()
                        .list_node_kinds(v1::ListNodeKindsRequest {})
                        .await,
                )?
                .kinds;
            if global.json {
                emit_json(&Value::Array(kinds.iter().map(json::node_kind).collect()))?;
            } else {
                emit(&kinds_table(&kinds, SystemTime::now()).render())?;
            }
        }
        Command::Drain { id } => {
            let worker = c.check(
                c.workers()
                    .drain_worker(v1::DrainWorkerRequest { claimant_id: id })
                    .await,
            )?;
            if global.json {
                emit_json(&json::worker(&worker))?;
            } else {
                emit(&format!(
                    "worker {}: draining; it stops claiming and hands back the {} run(s) it holds\n",
                    worker.claimant_id, worker.held_runs
                ))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn table(workers: &[v1::Worker], now: SystemTime) -> Table {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let mut table = Table::new(&[
        "CLAIMANT",
        "HOST",
        "PID",
        "CAPACITY",
        "HELD RUNS",
        "ALIVE",
        "DRAINING",
        "LAST HEARTBEAT",
        "QUEUES",
        "LABELS",
        "KINDS",
    ]);
    for w in workers {
        table.row(vec![
            w.claimant_id.clone(),
            w.host.clone(),
            w.pid.to_string(),
            w.capacity.to_string(),
            w.held_runs.to_string(),
            yes_no(w.alive),
            yes_no(w.draining),
            render::time(w.last_heartbeat.as_ref())
                .map(|t| format!("{} ago", render::age(t, now)))
                .unwrap_or_default(),
            if w.queues.is_empty() {
                // A worker of a release before queues claims from every one.
                "(all)".to_owned()
            } else {
                w.queues.join(",")
            },
            labels(&w.labels),
            w.handlers.join(","),
        ]);
    }
    table
}

/// Labels as the `--label` flags write them, in key order.
fn labels(labels: &std::collections::HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(",")
}

fn kinds_table(kinds: &[v1::NodeKind], now: SystemTime) -> Table {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let mut table = Table::new(&["KIND", "BUILT IN", "INPUT SCHEMA", "LAST ADVERTISED"]);
    for kind in kinds {
        table.row(vec![
            kind.kind.clone(),
            yes_no(kind.builtin),
            yes_no(kind.input_schema.is_some()),
            render::time(kind.last_advertised_at.as_ref()).map_or_else(
                || "never".to_owned(),
                |t| format!("{} ago", render::age(t, now)),
            ),
        ]);
    }
    table
}
