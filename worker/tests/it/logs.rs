//! What a handler logs lands inside its run's and its attempt's spans, so that the JSON format
//! (`cli::subscriber`, as every binary installs it) names the run, the claim and the attempt on
//! the handler's own lines.

use std::io::Write;
use std::sync::{Arc, Mutex};

use leasehold_core::run::RunStatus;
use leasehold_worker::cli::{self, LogFormat};
use leasehold_worker::{Context, Handler, HandlerError, Registry, Worker};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::bundle::{config, setup};

/// Log output kept in memory; a clone per line written.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("captured").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A kind that logs a line of its own and succeeds.
struct Say;

impl Handler for Say {
    async fn run(&self, ctx: Context) -> Result<Value, HandlerError> {
        tracing::info!(words = %ctx.input["words"], "handler says");
        Ok(json!({}))
    }
}

/// The fields of the span named `name` enclosing the line.
fn span<'a>(line: &'a Map<String, Value>, name: &str) -> &'a Map<String, Value> {
    line.get("spans")
        .and_then(Value::as_array)
        .and_then(|spans| {
            spans
                .iter()
                .filter_map(Value::as_object)
                .find(|s| s["name"] == name)
        })
        .unwrap_or_else(|| panic!("no `{name}` span on {line:?}"))
}

#[tokio::test]
async fn a_handlers_own_lines_carry_the_run_and_the_attempt() {
    let captured = Captured::default();
    let writer = captured.clone();
    // The process's logger, as a binary installs it, not one scoped to this thread: with a single
    // scoped logger, tracing decides whether a span is wanted by the default of the thread that
    // meets it first, and another test's thread, which has none, would switch the run's span off
    // for good. The other tests' lines land here too; the handler's is told apart by its message.
    tracing::subscriber::set_global_default(cli::subscriber(
        LogFormat::Json,
        EnvFilter::new("info"),
        move || writer.clone(),
        false,
    ))
    .expect("the only test that installs a logger");
    let b = setup().await;
    let automation = b
        .automation("id: talk\nnodes:\n  - {id: greet, kind: say, input: {words: hello}}\n")
        .await;
    let mut registry = Registry::new();
    registry.register("say", Say);
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(
        Worker::new(b.store.clone(), registry, config("w-logs")).run(shutdown.clone()),
    );
    let run_id = b.start(&automation).await;
    b.wait_status(run_id, RunStatus::Completed).await;
    shutdown.cancel();
    worker.await.expect("worker task").expect("worker");

    let text = String::from_utf8(captured.0.lock().expect("captured").clone()).expect("utf-8");
    let lines: Vec<Map<String, Value>> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let said = lines
        .iter()
        .find(|l| l["message"] == "handler says")
        .unwrap_or_else(|| panic!("the handler's line is missing:\n{text}"));
    assert_eq!(said["words"], "\"hello\"");
    let run = span(said, "run");
    assert_eq!(run["run_id"], run_id.to_string());
    assert_eq!(run["epoch"], 1);
    assert_eq!(run["claimant"], "w-logs");
    assert_eq!(run["tenant"], b.tenant.to_string());
    assert_eq!(run["automation"], "talk");
    let node = span(said, "node");
    assert_eq!(node["node_id"], "greet");
    assert_eq!(node["kind"], "say");
    assert_eq!(node["attempt"], 1);
}
