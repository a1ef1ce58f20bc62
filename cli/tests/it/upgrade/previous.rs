//! A rolling upgrade from the previous release, its own binary built from its commit, to this
//! build: the previous release's coordinator and worker keep running, registering, starting and
//! completing runs while this build migrates the database and starts beside them.
//!
//! The previous release is [`PREVIOUS_RELEASE`]; move it forward when a release is cut. Its
//! `leasehold` is built once per checkout into `target/previous-release/` (a few minutes the first
//! time, nothing after), or taken from `LEASEHOLD_PREVIOUS_RELEASE_BIN`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use leasehold_core::ids::{NodeId, RunId, TenantId};
use leasehold_core::run::NodeStatus;
use leasehold_core::store::Store;
use leasehold_testkit::{RUNTIME_ROLE, TestDb};

use super::{DEADLINE, Proc, all_complete, log_dir, migrate, worker_args};
use crate::support::{free_port, wait_serving};

/// The commit of the release before this build.
const PREVIOUS_RELEASE: &str = "caf677196c3212e7290a20f553a920900747877b";

/// A `leasehold` binary of [`PREVIOUS_RELEASE`] to use instead of building one.
const PREVIOUS_RELEASE_BIN_ENV: &str = "LEASEHOLD_PREVIOUS_RELEASE_BIN";

/// Every node of `examples/hello.yaml`.
const HELLO_NODES: [&str; 4] = ["greet", "left", "right", "join"];

/// The previous release migrates and runs runs; this build migrates while they run and starts
/// its own coordinator and worker beside them. Runs are started through both coordinators, the
/// previous release registers an automation version on the new schema, and its worker,
/// restarted, claims again. Every run completes, each node exactly once, with a gap-free
/// history; no process refuses the schema or logs an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_keeps_working_while_this_one_migrates_and_starts_beside_it() {
    let previous = previous_release_binary();
    let dir = log_dir("previous-release");
    let db = TestDb::empty().await;
    let output = Command::new(&previous)
        .args(["migrate", "--runtime-role", RUNTIME_ROLE])
        .env("LEASEHOLD_DATABASE_URL", db.owner_url())
        .output()
        .expect("run the previous release's migrate");
    assert!(output.status.success(), "{output:?}");

    let old = Endpoint::new();
    let coordinator_old = Proc::start_binary(
        &previous,
        &dir,
        "coordinator-previous",
        &["coordinator", "--listen", &old.listen, "--no-auth"],
        db.url(),
    );
    wait_serving(&old.url, DEADLINE).await;
    let worker_old_args = worker_args("worker-previous", "30s");
    let worker_old_args: Vec<&str> = worker_old_args.iter().map(String::as_str).collect();
    let start_worker_old = || {
        Proc::start_binary(
            &previous,
            &dir,
            "worker-previous",
            &worker_old_args,
            db.url(),
        )
    };
    let worker_old = start_worker_old();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let sleeper = dir.join("sleeper.yaml");
    fs::write(&sleeper, sleeper_spec(200)).expect("sleeper spec");
    let hello_spec = examples.join("hello.yaml");
    apply(&previous, &old, &hello_spec);
    apply(&previous, &old, &sleeper);
    let mut hello = start_runs(&previous, &old, "hello", 5);
    let mut sleepers = start_runs(&previous, &old, "sleeper", 10);

    // This build migrates while the previous release's processes hold runs.
    migrate(&db, None);
    let store = Store::connect_unchecked(db.url(), 4).expect("pool");

    let new = Endpoint::new();
    let coordinator_new = Proc::start(
        &dir,
        "coordinator-new",
        &["coordinator", "--listen", &new.listen, "--no-auth"],
        db.url(),
        None,
    );
    wait_serving(&new.url, DEADLINE).await;
    let worker_new_args = worker_args("worker-new", "30s");
    let worker_new_args: Vec<&str> = worker_new_args.iter().map(String::as_str).collect();
    let worker_new = Proc::start(&dir, "worker-new", &worker_new_args, db.url(), None);
    let this = Path::new(env!("CARGO_BIN_EXE_leasehold"));
    hello.extend(start_runs(this, &new, "hello", 5));

    // The previous release goes on, on the new schema: a new version registered, runs started.
    fs::write(&sleeper, sleeper_spec(100)).expect("sleeper spec");
    apply(&previous, &old, &sleeper);
    hello.extend(start_runs(&previous, &old, "hello", 5));
    sleepers.extend(start_runs(&previous, &old, "sleeper", 10));

    // Its worker, restarted on the new schema, registers and claims again.
    worker_old.stop().await;
    let worker_old = start_worker_old();
    hello.extend(start_runs(this, &new, "hello", 5));
    sleepers.extend(start_runs(this, &new, "sleeper", 10));

    all_complete(&store, &hello).await;
    all_complete(&store, &sleepers).await;
    for run in &hello {
        assert_each_node_ran_once(&store, *run, &HELLO_NODES).await;
    }
    for run in &sleepers {
        assert_each_node_ran_once(&store, *run, &["nap"]).await;
    }

    let procs = [coordinator_old, worker_old, coordinator_new, worker_new];
    let logs: Vec<String> = procs.iter().map(Proc::log).collect();
    for proc in procs {
        proc.stop().await;
    }
    for log in &logs {
        assert!(
            !log.contains("ERROR") && !log.contains("accepts only releases"),
            "an error or a refusal:\n{log}"
        );
    }
    fs::remove_dir_all(&dir).expect("remove the logs");
}

/// A coordinator's address: what it listens on and what clients dial.
struct Endpoint {
    listen: String,
    url: String,
}

impl Endpoint {
    fn new() -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let url = format!("http://{listen}");
        Self { listen, url }
    }
}

fn sleeper_spec(ms: u64) -> String {
    format!("id: sleeper\nnodes:\n  - {{id: nap, kind: sleep, input: {{ms: {ms}}}}}\n")
}

/// Runs the client command `bin words…` against `endpoint`; it must succeed.
fn client(bin: &Path, endpoint: &Endpoint, words: &[&str]) -> String {
    let output = Command::new(bin)
        .args(words)
        .args(["--endpoint", &endpoint.url, "--json"])
        .env_remove("LEASEHOLD_TOKEN")
        .output()
        .expect("run a client command");
    assert!(output.status.success(), "{words:?}: {output:?}");
    String::from_utf8(output.stdout).expect("utf-8")
}

/// Registers the automation in `spec` with `bin automation apply` through `endpoint`.
fn apply(bin: &Path, endpoint: &Endpoint, spec: &Path) {
    let spec = spec.to_str().expect("a UTF-8 path");
    client(bin, endpoint, &["automation", "apply", "--file", spec]);
}

/// Starts `n` runs of `automation` with `bin run start` through `endpoint`.
fn start_runs(bin: &Path, endpoint: &Endpoint, automation: &str, n: usize) -> Vec<RunId> {
    (0..n)
        .map(|_| {
            let answer = client(bin, endpoint, &["run", "start", automation]);
            let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON answer");
            let id = answer["run_id"].as_str().expect("run_id");
            RunId(id.parse().expect("a uuid"))
        })
        .collect()
}

/// Each of `nodes` completed once, at its first attempt, and the run's history has no gap.
async fn assert_each_node_ran_once(store: &Store, run: RunId, nodes: &[&str]) {
    let events = store.events_after(run, 0, 1_000).await.expect("events");
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<i64> = (1..=i64::try_from(events.len()).expect("few")).collect();
    assert_eq!(seqs, expected, "run {run}: a gap in its history");
    let mut completions: HashMap<&str, usize> = HashMap::new();
    for event in events.iter().filter(|e| e.event == "node_completed") {
        let node = event.node_id.as_ref().expect("a node event names its node");
        *completions.entry(node.as_str()).or_default() += 1;
    }
    let checkpoint = store.checkpoint(run).await.expect("checkpoint");
    for node in nodes {
        assert_eq!(completions.get(node), Some(&1), "run {run}, node {node}");
        let record = checkpoint
            .iter()
            .find(|r| r.node_id == NodeId::from(*node))
            .unwrap_or_else(|| panic!("run {run}: no row for {node}"));
        assert_eq!(record.status, NodeStatus::Completed, "run {run}, {node}");
        assert_eq!(record.attempts, 1, "run {run}, {node}");
    }
    assert_eq!(
        store
            .run(&TenantId::default(), run)
            .await
            .expect("run")
            .status,
        leasehold_core::run::RunStatus::Completed
    );
}

/// The previous release's `leasehold`: from `LEASEHOLD_PREVIOUS_RELEASE_BIN`, or built from its
/// commit in this checkout's history, once, under a lock that concurrent tests share.
fn previous_release_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os(PREVIOUS_RELEASE_BIN_ENV) {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "{PREVIOUS_RELEASE_BIN_ENV}={} is not a file",
            bin.display()
        );
        return bin;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned();
    let home = repo
        .join("target/previous-release")
        .join(&PREVIOUS_RELEASE[..12]);
    fs::create_dir_all(&home).expect("target/previous-release");
    let lock = File::create(home.join("lock")).expect("lock file");
    lock.lock().expect("lock the previous release's build");
    let bin = home.join("target/debug/leasehold");
    let built = home.join("built");
    if built.is_file() && bin.is_file() {
        return bin;
    }
    let source = home.join("source");
    if source.exists() {
        fs::remove_dir_all(&source).expect("remove a partial source tree");
    }
    fs::create_dir_all(&source).expect("source folder");
    let mut archive = Command::new("git")
        .args(["-C"])
        .arg(&repo)
        .args(["archive", "--format=tar", PREVIOUS_RELEASE])
        .stdout(Stdio::piped())
        .spawn()
        .expect("git: needed to build the previous release");
    let unpacked = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&source)
        .stdin(archive.stdout.take().expect("git's output"))
        .status()
        .expect("tar");
    let archived = archive.wait().expect("git archive");
    assert!(
        archived.success() && unpacked.success() && source.join("Cargo.toml").is_file(),
        "the previous release, commit {PREVIOUS_RELEASE}, is not in this checkout's history: \
         fetch it (`git fetch --unshallow`), or set {PREVIOUS_RELEASE_BIN_ENV} to its `leasehold`"
    );
    let build_log = home.join("build.log");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--locked", "-p", "leasehold"])
        .current_dir(&source)
        .env("CARGO_TARGET_DIR", home.join("target"))
        .stdout(Stdio::null())
        .stderr(File::create(&build_log).expect("build log"))
        .status()
        .expect("cargo build of the previous release");
    assert!(
        status.success(),
        "building the previous release failed; see {}",
        build_log.display()
    );
    fs::write(&built, PREVIOUS_RELEASE).expect("mark the build done");
    bin
}
