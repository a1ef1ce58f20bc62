//! `leasehold queue list|set-limit`: the queues runs wait in, across tenants, and their limits.

use std::process::ExitCode;
use std::time::Duration;

use leasehold_proto::v1;
use serde_json::{Value, json};

use super::Global;
use super::connect::Coordinator;
use super::render::{self, Table, emit, emit_json};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List queues: runs due and queued, runs held, limits, the oldest due run's age, and the
    /// workers that claim from each.
    List,
    /// Limit a queue's runs across all workers; without a limit flag, remove its limits.
    SetLimit {
        /// The queue.
        name: String,
        /// Runs held at once.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_running: Option<u32>,
        /// Runs started (claimed) per second.
        #[arg(long, value_name = "RATE")]
        max_starts_per_second: Option<f64>,
        /// Starts the rate allows at once after a quiet spell [default: one second's worth, the
        /// rate rounded up].
        #[arg(long, value_name = "N", requires = "max_starts_per_second", value_parser = clap::value_parser!(u32).range(1..))]
        burst: Option<u32>,
    },
}

pub async fn run(command: Command, global: &Global) -> anyhow::Result<ExitCode> {
    let coordinator = Coordinator::connect(global).await?;
    let c = &coordinator;
    match command {
        Command::List => {
            let queues = c
                .check(c.workers().list_queues(v1::ListQueuesRequest {}).await)?
                .queues;
            if global.json {
                emit_json(&Value::Array(queues.iter().map(queue_json).collect()))?;
            } else if queues.is_empty() {
                emit("No queue has runs, a limit or a worker.\n")?;
            } else {
                emit(&table(&queues).render())?;
            }
        }
        Command::SetLimit {
            name,
            max_running,
            max_starts_per_second,
            burst,
        } => {
            let queue = c
                .check(
                    c.workers()
                        .set_queue_limits(v1::SetQueueLimitsRequest {
                            queue: name,
                            max_running: max_running.unwrap_or(0),
                            max_starts_per_second: max_starts_per_second.unwrap_or(0.0),
                            burst: burst.unwrap_or(0),
                        })
                        .await,
                )?
                .queue
                .unwrap_or_default();
            if global.json {
                emit_json(&queue_json(&queue))?;
            } else {
                emit(&format!("queue {}: {}\n", queue.queue, limits(&queue)))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A queue's limits in words.
fn limits(q: &v1::Queue) -> String {
    let mut parts = Vec::new();
    if q.max_running > 0 {
        parts.push(format!("at most {} running", q.max_running));
    }
    if q.max_starts_per_second > 0.0 {
        parts.push(format!(
            "at most {} starts/s (burst {})",
            q.max_starts_per_second, q.burst
        ));
    }
    if parts.is_empty() {
        "no limits".to_owned()
    } else {
        parts.join(", ")
    }
}

fn table(queues: &[v1::Queue]) -> Table {
    let mut table = Table::new(&[
        "QUEUE",
        "DUE",
        "QUEUED",
        "HELD",
        "OLDEST DUE",
        "LIMITS",
        "WORKERS",
    ]);
    for q in queues {
        table.row(vec![
            q.queue.clone(),
            q.due.to_string(),
            q.queued.to_string(),
            q.held.to_string(),
            if q.due > 0 {
                render::duration(Duration::from_secs_f64(q.oldest_due_age_seconds.max(0.0)))
            } else {
                String::new()
            },
            limits(q),
            q.workers.len().to_string(),
        ]);
    }
    table
}

fn queue_json(q: &v1::Queue) -> Value {
    let unless_zero = |n: u32| (n > 0).then_some(n);
    json!({
        "queue": q.queue,
        "due": q.due,
        "queued": q.queued,
        "held": q.held,
        "oldest_due_age_seconds": q.oldest_due_age_seconds,
        "max_running": unless_zero(q.max_running),
        "max_starts_per_second": (q.max_starts_per_second > 0.0).then_some(q.max_starts_per_second),
        "burst": (q.max_starts_per_second > 0.0).then_some(q.burst),
        "workers": q.workers,
    })
}
