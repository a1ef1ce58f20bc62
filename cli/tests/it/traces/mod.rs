//! OpenTelemetry traces with the real binaries: a coordinator and a worker export to an OTLP
//! collector in the test process, and a run started under the test's own `traceparent` comes
//! back as one connected trace; without an endpoint nothing connects, and every run still gets
//! a trace id of its own.

mod collector;

use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use leasehold_core::ids::{RunId, TenantId};
use leasehold_core::run::RunStatus;
use leasehold_core::spec;
use leasehold_core::store::Store;
use leasehold_proto::v1;
use leasehold_proto::v1::runs_client::RunsClient;
use leasehold_testkit::{TestDb, wait_for};
use nix::sys::signal::Signal;
use serde_json::Value;

use self::collector::{Collector, HeaderRecorder, Received};
use crate::support::{free_port, signal, wait_exit, wait_serving};

const DEADLINE: Duration = Duration::from_secs(30);
/// The test client's own span: the root of the trace it asks for.
const CLIENT_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// A spec of two nodes: a `noop`, then an `http` call to `url`.
fn spec_calling(url: &str) -> String {
    format!(
        "id: traced\nnodes:\n  - {{id: first, kind: noop}}\n  - {{id: call, kind: http, \
         depends_on: [first], input: {{url: \"{url}\"}}}}\n"
    )
}

/// `leasehold` with `args`, none of the test environment's `OTEL_*` variables and `env`'s
/// instead (which may replace the default `LEASEHOLD_LOG=info` too), its stderr piped.
fn spawn(args: &[&str], database_url: &str, env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    command
        .args(args)
        .env("LEASEHOLD_DATABASE_URL", database_url)
        .env("LEASEHOLD_LOG", "info")
        .env_remove("LEASEHOLD_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("OTEL_")) {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command.spawn().expect("spawn leasehold")
}

/// Reads the child's stderr to the end in a thread, so that a full pipe never stalls it.
fn capture_stderr(child: &mut Child) -> JoinHandle<String> {
    let mut stderr = child.stderr.take().expect("stderr piped");
    std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).expect("read stderr");
        text
    })
}

/// A coordinator (`--no-auth`) with `coordinator_env`, and a worker allowed to call loopback,
/// with `worker_env` and `worker_args` besides.
struct Processes {
    endpoint: String,
    coordinator: Child,
    worker: Child,
    worker_log: JoinHandle<String>,
}

impl Processes {
    async fn start(
        db: &TestDb,
        coordinator_env: &[(&str, &str)],
        worker_env: &[(&str, &str)],
        worker_args: &[&str],
    ) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let coordinator = spawn(
            &["coordinator", "--listen", &listen, "--no-auth"],
            db.url(),
            coordinator_env,
        );
        let endpoint = format!("http://{listen}");
        wait_serving(&endpoint, DEADLINE).await;
        let mut args = vec![
            "worker",
            "--log-format",
            "json",
            "--claimant-id",
            "traced-worker",
            "--poll-interval",
            "50ms",
            "--http-allow",
            "127.0.0.1",
        ];
        args.extend(worker_args);
        let mut worker = spawn(&args, db.url(), worker_env);
        let worker_log = capture_stderr(&mut worker);
        Self {
            endpoint,
            coordinator,
            worker,
            worker_log,
        }
    }

    /// Stops both gracefully (the path that flushes the last spans) and returns the worker's
    /// log.
    async fn stop(mut self) -> String {
        signal(&self.worker, Signal::SIGTERM);
        assert!(wait_exit(&mut self.worker, DEADLINE).await.success());
        signal(&self.coordinator, Signal::SIGTERM);
        assert!(wait_exit(&mut self.coordinator, DEADLINE).await.success());
        self.worker_log.join().expect("stderr reader")
    }
}

async fn migrated_store(db: &TestDb, spec_yaml: &str) -> Store {
    let store = Store::connect_unchecked(db.url(), 2).expect("pool");
    store.migrate().await.expect("migrate");
    let spec = spec::parse_yaml(spec_yaml).expect("spec");
    store
        .create_automation(&TenantId::default(), &spec)
        .await
        .expect("automation");
    store
}

/// Starts a run of `traced` over gRPC, with `traceparent` metadata when given.
async fn start_run(endpoint: &str, traceparent: Option<&str>) -> v1::Run {
    let mut client = RunsClient::connect(endpoint.to_owned())
        .await
        .expect("connect");
    let mut request = tonic::Request::new(v1::StartRunRequest {
        automation_id: "traced".into(),
        ..Default::default()
    });
    if let Some(traceparent) = traceparent {
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().expect("ascii"));
        request
            .metadata_mut()
            .insert("tracestate", "test=client".parse().expect("ascii"));
    }
    let answer = client.start_run(request).await.expect("start run");
    answer.into_inner().run.expect("run")
}

async fn wait_completed(store: &Store, run: &v1::Run) {
    let run_id = RunId(run.run_id.parse().expect("run id"));
    wait_for(DEADLINE, "the run to complete", || async {
        (store.run(&TenantId::default(), run_id).await.ok()?.status == RunStatus::Completed)
            .then_some(())
    })
    .await;
}

/// The span of `spans` named `name` whose parent is `parent`, if one arrived.
fn child<'a>(spans: &'a [Received], name: &str, parent: &str) -> Option<&'a Received> {
    spans
        .iter()
        .find(|s| s.name == name && s.parent_span_id == parent)
}

/// The run's spans, once they form the tree client → StartRun → run (the claim) → one span per
/// node attempt, all in the client's trace: (StartRun, run, [first, call]).
fn connected_tree(spans: &[Received]) -> Option<(Received, Received, Vec<Received>)> {
    let start = child(spans, "leasehold.v1.Runs/StartRun", CLIENT_SPAN_ID)?;
    let run = child(spans, "run", &start.span_id)?;
    let nodes: Vec<Received> = ["first", "call"]
        .iter()
        .map(|id| {
            spans
                .iter()
                .find(|s| {
                    s.name == "node"
                        && s.parent_span_id == run.span_id
                        && s.attribute("node_id") == Some(id)
                })
                .cloned()
        })
        .collect::<Option<_>>()?;
    Some((start.clone(), run.clone(), nodes))
}

#[tokio::test]
async fn a_run_started_under_a_clients_traceparent_is_one_connected_trace() {
    let db = TestDb::new().await;
    let collector = Collector::start().await;
    let downstream = HeaderRecorder::start().await;
    let store = migrated_store(&db, &spec_calling(&downstream.url)).await;
    // Batches leave every 100 ms instead of every 5 s; the run's spans arrive while the
    // processes still run, and the flush at exit sends the rest.
    let batches = ("OTEL_BSP_SCHEDULE_DELAY", "100");
    // The coordinator is given the collector by the standard variable, the worker by its flag.
    let coordinator_env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
        batches,
    ];
    let worker_env = [
        batches,
        // The worker logs a line inside the run's span as the run leaves it.
        ("LEASEHOLD_LOG", "info,leasehold_worker::execute=debug"),
    ];
    let worker_args = ["--otlp-endpoint", collector.endpoint.as_str()];
    let processes = Processes::start(&db, &coordinator_env, &worker_env, &worker_args).await;

    let client_parent = format!("00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01");
    let run = start_run(&processes.endpoint, Some(&client_parent)).await;
    assert_eq!(
        run.trace_id, CLIENT_TRACE_ID,
        "the run joins the client's trace"
    );
    wait_completed(&store, &run).await;
    let (start, claimed, nodes) = wait_for(DEADLINE, "a connected trace", || async {
        connected_tree(&collector.spans())
    })
    .await;

    for span in [&start, &claimed, &nodes[0], &nodes[1]] {
        assert_eq!(span.trace_id, CLIENT_TRACE_ID, "{span:?}");
    }
    assert_eq!(start.service, "leasehold-coordinator");
    assert_eq!(start.attribute("rpc.method"), Some("StartRun"));
    assert_eq!(start.attribute("rpc.grpc.status_code"), Some("0"));
    assert_eq!(claimed.service, "leasehold-worker");
    assert_eq!(claimed.attribute("run_id"), Some(run.run_id.as_str()));
    assert_eq!(claimed.attribute("epoch"), Some("1"));
    for (node, kind) in nodes.iter().zip(["noop", "http"]) {
        assert_eq!(
            node.attribute("run_id"),
            Some(run.run_id.as_str()),
            "{node:?}"
        );
        assert_eq!(node.attribute("kind"), Some(kind), "{node:?}");
        assert_eq!(node.attribute("attempt"), Some("1"), "{node:?}");
        assert_eq!(node.attribute("outcome"), Some("completed"), "{node:?}");
    }
    // The claim statement's span is a trace of its own, which the run's span links to.
    let (link_trace, link_span) = claimed.links.first().expect("a link to the claim").clone();
    let spans = collector.spans();
    let batch = spans
        .iter()
        .find(|s| s.span_id == link_span && s.trace_id == link_trace)
        .expect("the claim's span arrived");
    assert_eq!(batch.name, "claim");
    assert_eq!(batch.parent_span_id, "", "{batch:?}");
    assert_eq!(batch.attribute("claimant"), Some("traced-worker"));

    // The http node sent its attempt's span downstream.
    let call = &nodes[1];
    assert_eq!(
        downstream.seen(),
        [format!("00-{CLIENT_TRACE_ID}-{}-01", call.span_id)]
    );

    // Every JSON line about the run names its trace.
    let log = processes.stop().await;
    let run_lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["name"] == "run"))
        })
        .collect();
    assert!(!run_lines.is_empty(), "{log}");
    for line in &run_lines {
        let run_span = line["spans"]
            .as_array()
            .and_then(|spans| spans.iter().find(|s| s["name"] == "run"))
            .expect("run span");
        assert_eq!(run_span["trace_id"], CLIENT_TRACE_ID, "{line}");
    }
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_each_run_has_a_trace_id_of_its_own() {
    let db = TestDb::new().await;
    let collector = Collector::start().await;
    let downstream = HeaderRecorder::start().await;
    let store = migrated_store(&db, &spec_calling(&downstream.url)).await;
    // The collector listens, but nothing names it.
    let processes = Processes::start(&db, &[], &[], &[]).await;

    let plain = start_run(&processes.endpoint, None).await;
    // Upper case breaks the specification: the value is ignored, never refused.
    let malformed = format!(
        "00-{}-{CLIENT_SPAN_ID}-01",
        CLIENT_TRACE_ID.to_ascii_uppercase()
    );
    let ignored = start_run(&processes.endpoint, Some(&malformed)).await;
    let honoured = start_run(
        &processes.endpoint,
        Some(&format!("00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01")),
    )
    .await;
    for run in [&plain, &ignored, &honoured] {
        wait_completed(&store, run).await;
    }
    let is_trace_id = |id: &str| {
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    assert!(is_trace_id(&plain.trace_id), "{plain:?}");
    assert!(is_trace_id(&ignored.trace_id), "{ignored:?}");
    assert_ne!(plain.trace_id, ignored.trace_id);
    assert_ne!(ignored.trace_id, CLIENT_TRACE_ID.to_owned());
    // Even with traces off, a valid traceparent is kept with the run.
    assert_eq!(honoured.trace_id, CLIENT_TRACE_ID);

    // `run show` shows it.
    let shown = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args([
            "run",
            "show",
            &plain.run_id,
            "--endpoint",
            &processes.endpoint,
        ])
        .output()
        .expect("run show");
    let shown_text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{shown:?}");
    assert!(
        shown_text
            .lines()
            .any(|l| l.starts_with("trace") && l.trim_end().ends_with(&plain.trace_id)),
        "{shown_text}"
    );

    // With traces off the http node sends no traceparent, and after both processes stopped
    // gracefully (when a flush would have happened) the collector never saw a connection.
    let _ = processes.stop().await;
    assert_eq!(downstream.seen(), ["", "", ""]);
    assert_eq!(collector.connections(), 0);
    assert!(collector.spans().is_empty());
}
