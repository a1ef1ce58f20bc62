//! The client commands as the real binary against an in-process coordinator on port 0 and a
//! real Postgres: what they print, with and without `--json`, and how they fail.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold_coordinator::api::Auth;
use leasehold_core::ids::{ClaimantId, NodeId, RunId, TenantId};
use leasehold_core::store::{NewToken, PageRequest, Role, RunFilter, Store, WorkerInfo};
use leasehold_testkit::fixtures::{claim_one, serve_in_process, worker_info};
use leasehold_testkit::{TestDb, wait_for};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(30);
const LEASE: Duration = Duration::from_secs(60);

const HELLO: &str = "\
id: hello
description: two steps
nodes:
  - {id: a, kind: echo, input: {message: hi}}
  - {id: b, kind: noop, depends_on: [a]}
";

struct Bundle {
    store: Store,
    endpoint: String,
    /// An admin token of the default tenant, which every command of [`Bundle::leasehold`]
    /// sends through `LEASEHOLD_TOKEN`.
    token: String,
    cancel: CancellationToken,
    dir: PathBuf,
    _db: TestDb,
}

impl Drop for Bundle {
    fn drop(&mut self) {
        self.cancel.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn setup(name: &str) -> Bundle {
    let db = TestDb::new().await;
    let store = Store::connect_unchecked(db.url(), 8).expect("pool");
    store.migrate().await.expect("migrate");
    let (addr, cancel) = serve_in_process(|listener, cancel| {
        leasehold_coordinator::api::serve(
            listener,
            store.clone(),
            Auth::Tokens(store.clone()),
            cancel,
        )
    })
    .await;
    let token = admin_token(&store, "cli-test").await;
    let dir = std::env::temp_dir().join(format!(
        "leasehold-cli-test-{}-{name}-{}",
        std::process::id(),
        RunId::new()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    Bundle {
        store,
        endpoint: format!("http://{addr}"),
        token,
        cancel,
        dir,
        _db: db,
    }
}

/// What one run of the binary printed.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn ok(self) -> String {
        assert_eq!(self.code, Some(0), "stderr: {}", self.stderr);
        self.stdout
    }

    fn json(self) -> Value {
        let stdout = self.ok();
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    }
}

/// A new admin token of the default tenant named `name`, as its text.
async fn admin_token(store: &Store, name: &str) -> String {
    let (_, secret) = store
        .create_token(&NewToken {
            tenant: TenantId::default(),
            role: Role::Admin,
            name: Some(name.to_owned()),
            expires_in: None,
        })
        .await
        .expect("token");
    secret.expose()
}

/// The binary against `endpoint`, sending `token` through `LEASEHOLD_TOKEN` if given, and
/// blind to any credentials file of the machine's user.
fn command(endpoint: &str, token: Option<&str>, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    command
        .args(["--endpoint", endpoint])
        .args(args)
        .env_remove("LEASEHOLD_ENDPOINT")
        .env_remove("LEASEHOLD_TOKEN")
        .env(
            "XDG_CONFIG_HOME",
            std::env::temp_dir().join("leasehold-cli-test-no-credentials"),
        )
        .stdin(Stdio::null());
    if let Some(token) = token {
        command.env("LEASEHOLD_TOKEN", token);
    }
    command
}

fn finished(output: Output) -> Ran {
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("utf-8 stderr"),
    }
}

/// Runs the binary to the end off the runtime's threads: the coordinator it talks to runs on
/// them.
async fn leasehold_at(endpoint: &str, token: Option<&str>, args: &[&str]) -> Ran {
    let mut command = command(endpoint, token, args);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run leasehold");
    finished(output)
}

/// Starts the binary in the background; the handle gives what it printed once it exits.
fn spawn_leasehold(
    endpoint: &str,
    token: Option<&str>,
    args: &[&str],
) -> tokio::task::JoinHandle<Ran> {
    let mut command = command(endpoint, token, args);
    tokio::task::spawn_blocking(move || finished(command.output().expect("run leasehold")))
}

/// Starts the binary in the background and hands over each line it prints as it prints it.
/// The handle gives the exit status and what it printed on stderr.
fn spawn_reading_lines(
    endpoint: &str,
    token: Option<&str>,
    args: &[&str],
) -> (
    tokio::sync::mpsc::UnboundedReceiver<String>,
    tokio::task::JoinHandle<(std::process::ExitStatus, String)>,
) {
    let mut command = command(endpoint, token, args);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let handle = tokio::task::spawn_blocking(move || {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn leasehold");
        let stdout = child.stdout.take().expect("stdout");
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.expect("a line of UTF-8"));
        }
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("read stderr");
        (child.wait().expect("wait"), stderr)
    });
    (rx, handle)
}

/// A TCP proxy in front of the coordinator whose connections the test can cut, as a restarting
/// coordinator or an idle-timeout in a load balancer would.
struct Proxy {
    endpoint: String,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("upstream address");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                held.lock().expect("lock").push(task.abort_handle());
            }
        });
        Self {
            endpoint,
            connections,
        }
    }

    /// Drops every open connection; new ones are still let through.
    fn cut(&self) {
        for connection in self.connections.lock().expect("lock").drain(..) {
            connection.abort();
        }
    }
}

async fn exited(handle: tokio::task::JoinHandle<Ran>) -> Ran {
    tokio::time::timeout(DEADLINE, handle)
        .await
        .expect("leasehold exits in time")
        .expect("join")
}

impl Bundle {
    async fn leasehold(&self, args: &[&str]) -> Ran {
        leasehold_at(&self.endpoint, Some(&self.token), args).await
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("write file");
        path.to_str().expect("utf-8 path").to_owned()
    }

    async fn apply_hello(&self) {
        let spec = self.file("hello.yaml", HELLO);
        self.leasehold(&["automation", "apply", "-f", &spec])
            .await
            .ok();
    }

    async fn start(&self, automation: &str) -> String {
        let started = self
            .leasehold(&["run", "start", automation, "--json"])
            .await
            .json();
        started["run_id"].as_str().expect("run_id").to_owned()
    }

    /// Completes the run the way a worker would: claim, each node started and completed, then
    /// the run.
    async fn complete(&self, nodes: &[&str]) {
        let claim = claim_one(&self.store, "w").await.claim;
        for node in nodes {
            let node = NodeId::from(*node);
            self.store
                .node_started(&claim, &node)
                .await
                .expect("node started");
            self.store
                .node_completed(&claim, &node, &serde_json::json!({"ok": true}))
                .await
                .expect("node completed");
        }
        self.store.complete_run(&claim).await.expect("complete run");
    }
}

/// The lines of a table whose first cell is `first`.
fn rows<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(first))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn automation_apply_list_show_pause_and_activate() {
    let b = setup("automation").await;
    let spec = b.file("hello.yaml", HELLO);
    let first = b
        .leasehold(&["automation", "apply", "-f", &spec])
        .await
        .ok();
    assert!(first.contains("hello"), "{first}");
    assert!(first.contains("new version created"), "{first}");
    let again = b
        .leasehold(&["automation", "apply", "--file", &spec, "--json"])
        .await
        .json();
    assert_eq!(again["version_created"], false);
    assert_eq!(again["current_version"], 1);

    let listed = b.leasehold(&["automation", "list", "--json"]).await.json();
    let listed = listed.as_array().expect("an array");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], "hello");
    assert_eq!(listed[0]["status"], "active");
    assert_eq!(listed[0]["spec"]["nodes"][1]["depends_on"][0], "a");
    let table = b.leasehold(&["automation", "list"]).await.ok();
    assert_eq!(rows(&table, "hello").len(), 1, "{table}");

    let shown = b.leasehold(&["automation", "show", "hello"]).await.ok();
    assert!(shown.contains("two steps"), "{shown}");
    let a = rows(&shown, "a");
    let b_row = rows(&shown, "b");
    assert!(a.len() == 1 && a[0].contains("echo"), "{shown}");
    assert!(
        b_row.len() == 1 && b_row[0].contains("noop") && b_row[0].contains(" a "),
        "{shown}"
    );

    let paused = b.leasehold(&["automation", "pause", "hello"]).await.ok();
    assert!(paused.contains("paused"), "{paused}");
    let refused = b.leasehold(&["run", "start", "hello"]).await;
    assert_ne!(refused.code, Some(0));
    assert!(
        refused.stderr.starts_with("error: FAILED_PRECONDITION: "),
        "{}",
        refused.stderr
    );
    let active = b
        .leasehold(&["automation", "activate", "hello", "--json"])
        .await
        .json();
    assert_eq!(active["status"], "active");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_started_run_shows_its_inputs_and_each_node() {
    let b = setup("start").await;
    b.apply_hello().await;
    let inputs = b.file("inputs.json", r#"{"n": 1, "from_file": "yes"}"#);
    let started = b
        .leasehold(&[
            "run",
            "start",
            "hello",
            "--json",
            "--input-file",
            &inputs,
            "--input",
            "n=3",
            "--input",
            "s=hello world",
            "--input",
            "o={\"k\":[1,2]}",
            "--priority",
            "-5",
            "--request-id",
            "req-1",
        ])
        .await
        .json();
    assert_eq!(started["created"], true);
    let run_id = started["run_id"].as_str().expect("run_id");
    assert_eq!(
        started["inputs"],
        serde_json::json!({"n": 3, "from_file": "yes", "s": "hello world", "o": {"k": [1, 2]}})
    );
    assert_eq!(started["priority"], -5);

    let shown = b.leasehold(&["run", "show", run_id, "--json"]).await.json();
    assert_eq!(shown["run_id"], run_id);
    assert_eq!(shown["status"], "queued");
    assert_eq!(shown["nodes"].as_array().expect("nodes").len(), 2);

    let table = b.leasehold(&["run", "show", run_id]).await.ok();
    assert!(table.contains("hello@1"), "{table}");
    for node in ["a", "b"] {
        let row = rows(&table, node);
        assert!(
            row.len() == 1 && row[0].contains("pending"),
            "{node}: {table}"
        );
    }

    let repeat = b
        .leasehold(&["run", "start", "hello", "--request-id", "req-1"])
        .await;
    assert_ne!(repeat.code, Some(0), "same request id, other inputs");
    assert!(
        repeat.stderr.starts_with("error: FAILED_PRECONDITION"),
        "{}",
        repeat.stderr
    );

    let listed = b
        .leasehold(&["run", "list", "--automation", "hello", "--json"])
        .await
        .json();
    assert_eq!(listed.as_array().expect("array").len(), 1);
    assert_eq!(listed[0]["run_id"], run_id);
    let table = b
        .leasehold(&["run", "list", "--status", "queued"])
        .await
        .ok();
    assert_eq!(rows(&table, run_id).len(), 1, "{table}");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_list_pages_up_to_the_limit() {
    let b = setup("list").await;
    b.apply_hello().await;
    for _ in 0..3 {
        b.start("hello").await;
    }
    let two = b
        .leasehold(&["run", "list", "--limit", "2", "--json"])
        .await
        .json();
    assert_eq!(two.as_array().expect("array").len(), 2);
    let capped = b.leasehold(&["run", "list", "--limit", "2"]).await;
    assert!(capped.stderr.contains("raise --limit"), "{}", capped.stderr);
    let all = b.leasehold(&["run", "list", "--json"]).await.json();
    assert_eq!(all.as_array().expect("array").len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn watching_a_completed_run_prints_its_events_and_exits_zero() {
    let b = setup("watch-done").await;
    b.apply_hello().await;
    let run_id = b.start("hello").await;
    b.complete(&["a", "b"]).await;

    let watched = b.leasehold(&["run", "watch", &run_id]).await;
    let out = watched.ok();
    let lines: Vec<&str> = out.lines().collect();
    let events: Vec<&str> = lines.iter().filter_map(|l| l.split("  ").nth(1)).collect();
    assert_eq!(
        events,
        vec![
            "run_started",
            "run_claimed",
            "node_started",
            "node_completed",
            "node_started",
            "node_completed",
            "run_completed"
        ],
        "{out}"
    );
    assert!(out.contains("  node_started  a  attempt 1\n"), "{out}");
    let summary = lines.last().expect("a summary line");
    assert!(
        summary.starts_with(&format!("run {run_id} completed in ")),
        "{out}"
    );

    let json = b.leasehold(&["run", "watch", &run_id, "--json"]).await.ok();
    let parsed: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert_eq!(parsed.len(), 7, "{json}");
    assert_eq!(parsed[6]["event"], "run_completed");
    assert_eq!(parsed[6]["terminal"], true);
    assert_eq!(parsed[2]["node_id"], "a");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_follows_a_run_live_until_it_completes() {
    let b = setup("watch-live").await;
    b.apply_hello().await;
    let run_id = b.start("hello").await;
    let (mut lines, watch) =
        spawn_reading_lines(&b.endpoint, Some(&b.token), &["run", "watch", &run_id]);
    // The watch has caught up with the history and waits for the run to move.
    let first = tokio::time::timeout(DEADLINE, lines.recv())
        .await
        .expect("a first line in time")
        .expect("a first line");
    assert!(first.ends_with("  run_started"), "{first}");
    b.complete(&["a", "b"]).await;
    let (status, _) = tokio::time::timeout(DEADLINE, watch)
        .await
        .expect("the watch ends in time")
        .expect("join");
    let mut out = vec![first];
    while let Some(line) = lines.recv().await {
        out.push(line);
    }
    let out = out.join("\n");
    assert!(status.success(), "{status:?}: {out}");
    assert!(out.contains("  node_completed  b  attempt 1\n"), "{out}");
    assert!(out.contains("  run_completed\n"), "{out}");
    assert!(
        out.lines()
            .last()
            .is_some_and(|l| l.starts_with(&format!("run {run_id} completed in "))),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_watch_reconnects_and_misses_and_repeats_nothing() {
    let b = setup("watch-reconnect").await;
    b.apply_hello().await;
    let run_id = b.start("hello").await;
    let claim = claim_one(&b.store, "w").await.claim;
    let (a, b_node) = (NodeId::from("a"), NodeId::from("b"));
    b.store.node_started(&claim, &a).await.expect("a started");

    let proxy = Proxy::start(&b.endpoint).await;
    let (mut lines, watch) =
        spawn_reading_lines(&proxy.endpoint, Some(&b.token), &["run", "watch", &run_id]);
    let mut out = Vec::new();
    while !out.iter().any(|l: &String| l.contains("node_started  a")) {
        let line = tokio::time::timeout(DEADLINE, lines.recv())
            .await
            .expect("a line in time")
            .expect("a line");
        out.push(line);
    }
    proxy.cut();
    let output = serde_json::json!({"ok": true});
    b.store
        .node_completed(&claim, &a, &output)
        .await
        .expect("a completed");
    b.store
        .node_started(&claim, &b_node)
        .await
        .expect("b started");
    b.store
        .node_completed(&claim, &b_node, &output)
        .await
        .expect("b completed");
    b.store.complete_run(&claim).await.expect("complete run");

    let (status, stderr) = tokio::time::timeout(DEADLINE, watch)
        .await
        .expect("the watch ends in time")
        .expect("join");
    while let Some(line) = lines.recv().await {
        out.push(line);
    }
    assert!(status.success(), "{status:?}: {out:?} {stderr}");
    assert!(stderr.contains("reconnecting after event 3"), "{stderr}");
    let seen: Vec<String> = out
        .iter()
        .filter_map(|l| l.split_once("  ").map(|(_, rest)| rest.to_owned()))
        .collect();
    assert_eq!(
        seen,
        vec![
            "run_started",
            "run_claimed  epoch 1  by w",
            "node_started  a  attempt 1",
            "node_completed  a  attempt 1",
            "node_started  b  attempt 1",
            "node_completed  b  attempt 1",
            "run_completed",
        ],
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_run_is_watched_to_its_end_and_exits_non_zero() {
    let b = setup("watch-cancelled").await;
    b.apply_hello().await;
    let run_id = b.start("hello").await;
    let cancelled = b
        .leasehold(&["run", "cancel", &run_id, "--reason", "not today"])
        .await
        .ok();
    assert!(cancelled.contains("cancelled"), "{cancelled}");

    let watched = b.leasehold(&["run", "watch", &run_id]).await;
    assert_eq!(watched.code, Some(1), "{}", watched.stderr);
    assert!(
        watched.stdout.contains("run_cancelled"),
        "{}",
        watched.stdout
    );
    let summary = watched.stdout.lines().last().expect("summary");
    assert!(
        summary.starts_with(&format!("run {run_id} cancelled")) && summary.contains("not today"),
        "{summary}"
    );
    assert!(watched.stderr.is_empty(), "{}", watched.stderr);

    let shown = b
        .leasehold(&["run", "show", &run_id, "--json"])
        .await
        .json();
    assert_eq!(shown["status"], "cancelled");
    assert_eq!(shown["stop_reason"], "not today");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_pause_resume_and_start_with_watch() {
    let b = setup("steer").await;
    b.apply_hello().await;
    let run_id = b.start("hello").await;
    let paused = b.leasehold(&["run", "pause", &run_id]).await.ok();
    assert!(paused.contains(": paused"), "{paused}");
    let resumed = b
        .leasehold(&["run", "resume", &run_id, "--json"])
        .await
        .json();
    assert_eq!(resumed["status"], "queued");
    let not_failed = b.leasehold(&["run", "recover", &run_id]).await;
    assert_ne!(not_failed.code, Some(0));
    assert!(
        not_failed.stderr.starts_with("error: FAILED_PRECONDITION"),
        "{}",
        not_failed.stderr
    );

    // Cancelled from outside while `run start --watch` follows it.
    let watch = spawn_leasehold(
        &b.endpoint,
        Some(&b.token),
        &["run", "start", "hello", "--watch"],
    );
    let store = b.store.clone();
    let second = wait_for(DEADLINE, "the second run to start", || {
        let store = store.clone();
        let first = run_id.clone();
        async move { run_ids(&store).await.into_iter().find(|r| *r != first) }
    })
    .await;
    b.leasehold(&["run", "cancel", &second]).await.ok();
    let watched = exited(watch).await;
    assert_eq!(watched.code, Some(1), "{}", watched.stderr);
    assert!(
        watched
            .stdout
            .starts_with(&format!("started run {second} of hello@1")),
        "{}",
        watched.stdout
    );
    assert!(
        watched.stdout.contains("run_cancelled"),
        "{}",
        watched.stdout
    );
}

/// The ids of every run, straight from the store.
async fn run_ids(store: &Store) -> Vec<String> {
    store
        .list_runs(
            &TenantId::default(),
            &RunFilter::default(),
            &PageRequest {
                size: 100,
                after: None,
            },
        )
        .await
        .map(|page| page.items.iter().map(|r| r.run_id.to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn gates_are_listed_approved_and_rejected() {
    let b = setup("gates").await;
    let spec = b.file(
        "gated.yaml",
        "id: gated\nnodes:\n  - {id: ship, kind: noop, approval: {prompt: Ship it?}}\n",
    );
    b.leasehold(&["automation", "apply", "-f", &spec])
        .await
        .ok();
    let mut gates = Vec::new();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let run_id = b.start("gated").await;
        let claim = claim_one(&b.store, "w").await.claim;
        let gate = b
            .store
            .await_approval(&claim, &NodeId::from("ship"), "Ship it?")
            .await
            .expect("gate");
        gates.push(gate.to_string());
        runs.push(run_id);
    }

    let table = b.leasehold(&["gate", "list"]).await.ok();
    for (gate, run) in gates.iter().zip(&runs) {
        let row = rows(&table, gate);
        assert!(
            row.len() == 1 && row[0].contains(run.as_str()) && row[0].contains("Ship it?"),
            "{table}"
        );
    }
    let listed = b.leasehold(&["gate", "list", "--json"]).await.json();
    assert_eq!(listed.as_array().expect("array").len(), 2);
    assert_eq!(listed[0]["prompt"], "Ship it?");
    assert_eq!(listed[0]["stale"], false);

    let approved = b
        .leasehold(&["gate", "approve", &gates[0], "--reason", "looks good"])
        .await
        .ok();
    assert!(approved.contains("approved"), "{approved}");
    let again = b.leasehold(&["gate", "approve", &gates[0]]).await;
    assert_ne!(again.code, Some(0), "a second decision is refused");
    assert!(
        again.stderr.starts_with("error: FAILED_PRECONDITION"),
        "{}",
        again.stderr
    );
    let rejected = b
        .leasehold(&["gate", "reject", &gates[1], "--json"])
        .await
        .json();
    assert_eq!(rejected["status"], "cancelled");

    let first = b
        .leasehold(&["run", "show", &runs[0], "--json"])
        .await
        .json();
    assert_eq!(first["status"], "queued");
    assert_eq!(
        first["gates"][0]["decided_by"], "cli-test",
        "the token's name"
    );
    assert_eq!(first["gates"][0]["reason"], "looks good");
    let second = b
        .leasehold(&["run", "show", &runs[1], "--json"])
        .await
        .json();
    assert_eq!(second["status"], "cancelled");
    let none = b.leasehold(&["gate", "list"]).await.ok();
    assert!(none.contains("No gates"), "{none}");
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_are_listed_and_drained_and_stats_count_runs() {
    let b = setup("workers").await;
    b.store
        .register_worker(&worker_info("w-1", "box", "test"))
        .await
        .expect("register");
    // `worker list` and `worker drain` talk to the coordinator only: no database URL needed.
    let worker = |args: &'static [&'static str]| b.leasehold(args);

    let listed = worker(&["worker", "list", "--json"]).await.json();
    assert_eq!(listed[0]["claimant_id"], "w-1");
    assert_eq!(listed[0]["alive"], true);
    assert_eq!(listed[0]["capacity"], 4);
    let table = worker(&["worker", "list"]).await.ok();
    let row = rows(&table, "w-1");
    assert!(row.len() == 1 && row[0].contains("box"), "{table}");
    // The kinds: w-1 advertised `noop`; `http` is built in and listed though no worker has
    // advertised it.
    let kinds = worker(&["worker", "kinds", "--json"]).await.json();
    let kind = |name: &str| {
        kinds
            .as_array()
            .and_then(|all| all.iter().find(|k| k["kind"] == name))
            .unwrap_or_else(|| panic!("{name} is missing from {kinds}"))
            .clone()
    };
    let noop = kind("noop");
    assert_eq!(noop["builtin"], true);
    assert!(noop["last_advertised_at"].is_string(), "{noop}");
    let http = kind("http");
    assert_eq!(http["builtin"], true);
    assert!(http["last_advertised_at"].is_null(), "{http}");
    assert!(http["input_schema"].is_object(), "{http}");
    let table = worker(&["worker", "kinds"]).await.ok();
    assert!(
        rows(&table, "http")
            .first()
            .is_some_and(|r| r.ends_with("never")),
        "{table}"
    );
    assert!(
        rows(&table, "noop")
            .first()
            .is_some_and(|r| r.ends_with(" ago")),
        "{table}"
    );
    let drained = worker(&["worker", "drain", "w-1"]).await.ok();
    assert!(drained.contains("draining"), "{drained}");
    let unknown = worker(&["worker", "drain", "nobody"]).await;
    assert_ne!(unknown.code, Some(0));
    assert!(
        unknown.stderr.starts_with("error: NOT_FOUND"),
        "{}",
        unknown.stderr
    );

    b.apply_hello().await;
    b.start("hello").await;
    b.start("hello").await;
    b.store
        .claim_runs(&ClaimantId::from("w-1"), 1, LEASE)
        .await
        .expect("claim");
    let stats = b.leasehold(&["stats", "--json"]).await.json();
    assert_eq!(stats["runs_by_status"]["queued"], 1);
    assert_eq!(stats["runs_by_status"]["running"], 1);
    assert_eq!(stats["runs_by_status"]["completed"], 0);
    assert_eq!(stats["claimable_now"], 1);
    assert_eq!(stats["held_leases"], 1);
    let table = b.leasehold(&["stats"]).await.ok();
    assert!(
        rows(&table, "queued")
            .first()
            .is_some_and(|r| r.ends_with(" 1")),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_are_one_line_naming_the_code_and_the_field() {
    let b = setup("errors").await;
    let bad = b.file(
        "bad.yaml",
        "id: bad\nnodes:\n  - {id: a, kind: noop}\n  - {id: b, kind: noop, depends_on: [zz]}\n",
    );
    let refused = b.leasehold(&["automation", "apply", "-f", &bad]).await;
    assert_eq!(refused.code, Some(1));
    assert!(refused.stdout.is_empty(), "{}", refused.stdout);
    assert_eq!(
        refused.stderr,
        "error: INVALID_ARGUMENT: spec.text: nodes[1].depends_on[0] (node \"b\"): unknown node \"zz\"\n"
    );

    let unknown = b
        .leasehold(&["run", "show", &RunId::new().to_string()])
        .await;
    assert_eq!(unknown.code, Some(1));
    assert!(
        unknown.stderr.starts_with("error: NOT_FOUND: ") && unknown.stderr.lines().count() == 1,
        "{}",
        unknown.stderr
    );
    let junk = b.leasehold(&["run", "watch", "not-a-uuid"]).await;
    assert_eq!(
        (junk.code, junk.stderr.lines().count()),
        (Some(1), 1),
        "{}",
        junk.stderr
    );
    assert!(
        junk.stderr.starts_with("error: INVALID_ARGUMENT: run_id"),
        "{}",
        junk.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_local_input_names_the_flag() {
    let b = setup("local").await;
    let missing = b.dir.join("missing.yaml");
    let unreadable = b
        .leasehold(&[
            "automation",
            "apply",
            "-f",
            missing.to_str().expect("utf-8"),
        ])
        .await;
    assert_eq!(unreadable.code, Some(1));
    assert!(
        unreadable.stderr.starts_with("error: --file ") && unreadable.stderr.lines().count() == 1,
        "{}",
        unreadable.stderr
    );
    let input = b
        .leasehold(&["run", "start", "hello", "--input", "novalue"])
        .await;
    assert_ne!(input.code, Some(0));
    assert!(input.stderr.contains("--input"), "{}", input.stderr);
    let list = b.file("list.json", "[1, 2]");
    let not_object = b
        .leasehold(&["run", "start", "hello", "--input-file", &list])
        .await;
    assert_ne!(not_object.code, Some(0));
    assert!(
        not_object.stderr.contains("--input-file"),
        "{}",
        not_object.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_coordinator_is_reported_with_the_endpoint_tried() {
    for args in [&["stats"][..], &["run", "watch", "x"], &["gate", "list"]] {
        let ran = leasehold_at("http://127.0.0.1:1", None, args).await;
        assert_eq!(ran.code, Some(1));
        assert!(
            ran.stderr
                .starts_with("error: cannot reach the coordinator at http://127.0.0.1:1 "),
            "{}",
            ran.stderr
        );
        assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn queues_are_listed_with_their_workers_and_limited() {
    let b = setup("queues").await;
    b.store
        .register_worker(&WorkerInfo {
            queues: ["gpu".to_owned()].into(),
            ..worker_info("w-gpu", "box", "test")
        })
        .await
        .expect("register");
    b.apply_hello().await;
    b.start("hello").await;

    let set = b
        .leasehold(&[
            "queue",
            "set-limit",
            "gpu",
            "--max-running",
            "2",
            "--max-starts-per-second",
            "5",
            "--burst",
            "3",
        ])
        .await
        .ok();
    assert_eq!(
        set,
        "queue gpu: at most 2 running, at most 5 starts/s (burst 3)\n"
    );
    let listed = b.leasehold(&["queue", "list", "--json"]).await.json();
    assert_eq!(listed[0]["queue"], "default");
    assert_eq!(listed[0]["due"], 1);
    assert_eq!(listed[0]["workers"], serde_json::json!([]));
    assert!(listed[0]["max_running"].is_null());
    assert_eq!(listed[1]["queue"], "gpu");
    assert_eq!(listed[1]["due"], 0);
    assert_eq!(listed[1]["max_running"], 2);
    assert_eq!(listed[1]["max_starts_per_second"], 5.0);
    assert_eq!(listed[1]["burst"], 3);
    assert_eq!(listed[1]["workers"], serde_json::json!(["w-gpu"]));
    let table = b.leasehold(&["queue", "list"]).await.ok();
    assert!(
        rows(&table, "gpu")
            .first()
            .is_some_and(|r| r.contains("at most 2 running") && r.ends_with(" 1")),
        "{table}"
    );

    // Refused by name, and nothing changes.
    let bad = b
        .leasehold(&["queue", "set-limit", "GPU", "--max-running", "1"])
        .await;
    assert_ne!(bad.code, Some(0));
    assert!(
        bad.stderr.starts_with("error: INVALID_ARGUMENT") && bad.stderr.contains("queue"),
        "{}",
        bad.stderr
    );
    let bad = b
        .leasehold(&["queue", "set-limit", "gpu", "--max-starts-per-second=-1"])
        .await;
    assert!(
        bad.stderr.contains("max_starts_per_second"),
        "{}",
        bad.stderr
    );
    assert_eq!(
        b.leasehold(&["queue", "list", "--json"]).await.json()[1]["max_running"],
        2
    );
    // No flag: no limits.
    let lifted = b.leasehold(&["queue", "set-limit", "gpu"]).await.ok();
    assert_eq!(lifted, "queue gpu: no limits\n");
}

mod retention;
mod schedules;
