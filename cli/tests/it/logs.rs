//! `--log-format json` and `LEASEHOLD_LOG_FORMAT` with the real binary: every line on stderr is
//! a JSON object, and a line about a run carries the run's and the node attempt's fields.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use leasehold_core::ids::{AutomationId, TenantId};
use leasehold_core::run::RunStatus;
use leasehold_core::spec;
use leasehold_core::store::{StartRun, Store, Trigger};
use leasehold_testkit::{TestDb, fixtures, wait_for};
use nix::sys::signal::Signal;
use serde_json::{Map, Value};

use crate::support::{free_port, signal, wait_exit, wait_serving};

const DEADLINE: Duration = Duration::from_secs(30);

/// Reads the child's stderr to the end in a thread, so that a full pipe never stalls it.
fn capture_stderr(child: &mut Child) -> JoinHandle<String> {
    let mut stderr = child.stderr.take().expect("stderr piped");
    std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).expect("read stderr");
        text
    })
}

/// Every line of `text` parsed as a JSON object; panics naming the first line that is not one.
fn json_lines(text: &str) -> Vec<Map<String, Value>> {
    text.lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(object)) => object,
            other => panic!("a log line is not a JSON object ({other:?}): {line}\n\nall:\n{text}"),
        })
        .collect()
}

/// The line's message.
fn message(line: &Map<String, Value>) -> Option<&str> {
    line.get("message").and_then(Value::as_str)
}

/// The fields of the span named `name` that encloses the line.
fn span<'a>(line: &'a Map<String, Value>, name: &str) -> &'a Map<String, Value> {
    line.get("spans")
        .and_then(Value::as_array)
        .and_then(|spans| {
            spans
                .iter()
                .filter_map(Value::as_object)
                .find(|s| s.get("name").and_then(Value::as_str) == Some(name))
        })
        .unwrap_or_else(|| panic!("no `{name}` span on {line:?}"))
}

#[tokio::test]
async fn a_worker_logs_json_lines_carrying_the_run_and_the_node_attempt() {
    let db = TestDb::new().await;
    let store = Store::connect_unchecked(db.url(), 2).expect("pool");
    store.migrate().await.expect("migrate");
    let tenant = TenantId::default();
    // `http` refuses loopback without --http-allow: the one attempt fails for good, and the
    // worker logs it inside the attempt's span.
    let spec = spec::parse_yaml(
        "id: refused\nnodes:\n  - {id: call, kind: http, max_attempts: 1, input: {url: \"http://127.0.0.1:9/\"}}\n",
    )
    .expect("spec");
    store
        .create_automation(&tenant, &spec)
        .await
        .expect("automation");
    let run_id = store
        .start_run(&StartRun {
            trigger: Trigger::Manual,
            actor: None,
            ..fixtures::start_request(&tenant, &AutomationId::from("refused"))
        })
        .await
        .expect("start")
        .run_id;

    let mut child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(["worker", "--log-format", "json"])
        .args(["--claimant-id", "json-logger", "--poll-interval", "50ms"])
        .env("LEASEHOLD_DATABASE_URL", db.url())
        .env("LEASEHOLD_LOG", "info")
        .env_remove("LEASEHOLD_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn leasehold worker");
    let stderr = capture_stderr(&mut child);
    wait_for(DEADLINE, "the run to fail", || async {
        (store.run(&tenant, run_id).await.ok()?.status == RunStatus::Failed).then_some(())
    })
    .await;
    signal(&child, Signal::SIGTERM);
    let status = wait_exit(&mut child, DEADLINE).await;
    assert!(status.success(), "{status:?}");

    let lines = json_lines(&stderr.join().expect("stderr reader"));
    assert!(
        lines
            .iter()
            .any(|l| message(l) == Some("worker started") && l["level"] == "INFO"),
        "{lines:?}"
    );
    let failed = lines
        .iter()
        .find(|l| message(l) == Some("node attempt failed"))
        .unwrap_or_else(|| panic!("no `node attempt failed` line: {lines:?}"));
    let run = span(failed, "run");
    assert_eq!(run["run_id"], run_id.to_string());
    assert_eq!(run["epoch"], 1);
    assert_eq!(run["claimant"], "json-logger");
    assert_eq!(run["tenant"], tenant.to_string());
    assert_eq!(run["automation"], "refused");
    let node = span(failed, "node");
    assert_eq!(node["node_id"], "call");
    assert_eq!(node["kind"], "http");
    assert_eq!(node["attempt"], 1);
    // The event's own fields sit beside the message.
    assert_eq!(failed["retryable"], false);
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("127.0.0.1 is a loopback address; refused")),
        "{failed:?}"
    );
}

#[tokio::test]
async fn the_coordinator_logs_json_when_the_variable_says_so() {
    let db = TestDb::new().await;
    Store::connect_unchecked(db.url(), 1)
        .expect("pool")
        .migrate()
        .await
        .expect("migrate");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(["coordinator", "--listen", &format!("127.0.0.1:{port}")])
        .env("LEASEHOLD_DATABASE_URL", db.url())
        .env("LEASEHOLD_LOG", "info")
        .env("LEASEHOLD_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coordinator");
    let stderr = capture_stderr(&mut child);
    wait_serving(&format!("http://127.0.0.1:{port}"), DEADLINE).await;
    signal(&child, Signal::SIGTERM);
    let status = wait_exit(&mut child, DEADLINE).await;
    assert!(status.success(), "{status:?}");

    let lines = json_lines(&stderr.join().expect("stderr reader"));
    let serving = lines
        .iter()
        .find(|l| message(l) == Some("coordinator serving gRPC"))
        .unwrap_or_else(|| panic!("no `coordinator serving gRPC` line: {lines:?}"));
    assert_eq!(serving["addr"], format!("127.0.0.1:{port}"));
}

#[test]
fn a_bad_log_format_is_refused_naming_the_flag() {
    let output = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(["--log-format", "xml", "stats"])
        .env_remove("LEASEHOLD_LOG_FORMAT")
        .output()
        .expect("run leasehold");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("'xml'") && stderr.contains("--log-format"),
        "{stderr}"
    );
    assert!(stderr.contains("[possible values: text, json]"), "{stderr}");
}
