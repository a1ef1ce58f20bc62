//! Upgrades as an operator runs them, with the real binaries against one database: release N
//! and N+1, where N is either the previous release itself, built from its commit
//! ([`previous`]), or this build with its newest migrations held back by
//! `LEASEHOLD_SCHEMA_CEILING`.

mod online_index;
mod previous;
mod rolling;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use leasehold_core::ids::{AutomationId, RunId, TenantId};
use leasehold_core::run::RunStatus;
use leasehold_core::spec;
use leasehold_core::store::{SCHEMA_CEILING_ENV, Store};
use leasehold_testkit::{RUNTIME_ROLE, TestDb, fixtures, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const DEADLINE: Duration = Duration::from_secs(60);

/// A `leasehold` process, its stderr in a log file.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    /// A test that fails leaves no process behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Proc {
    /// Starts `leasehold args…` as release `ceiling` (this build when `None`), connected to `url`.
    fn start(dir: &Path, name: &str, args: &[&str], url: &str, ceiling: Option<i32>) -> Proc {
        let mut command = Command::new(env!("CARGO_BIN_EXE_leasehold"));
        if let Some(ceiling) = ceiling {
            command.env(SCHEMA_CEILING_ENV, ceiling.to_string());
        }
        Self::spawn(command, dir, name, args, url)
    }

    /// Starts `bin args…`, another release's `leasehold`, connected to `url`.
    fn start_binary(bin: &Path, dir: &Path, name: &str, args: &[&str], url: &str) -> Proc {
        Self::spawn(Command::new(bin), dir, name, args, url)
    }

    fn spawn(mut command: Command, dir: &Path, name: &str, args: &[&str], url: &str) -> Proc {
        let log = dir.join(format!("{name}.log"));
        command
            .args(args)
            .env("LEASEHOLD_DATABASE_URL", url)
            .env("LEASEHOLD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"));
        let child = command.spawn().expect("spawn leasehold");
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it still runs; a process that exited says so with its log.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait") {
            panic!("{} exited ({status}):\n{}", self.name, self.log());
        }
    }

    /// SIGTERM, then waits for it to exit cleanly.
    async fn stop(mut self) {
        self.assert_running();
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        kill(pid, Signal::SIGTERM).expect("signal");
        let child = std::sync::Mutex::new(&mut self.child);
        let status = wait_for(DEADLINE, "the process to exit", || async {
            child.lock().expect("child").try_wait().expect("wait")
        })
        .await;
        assert!(
            status.success(),
            "{} exited {status}:\n{}",
            self.name,
            self.log()
        );
    }

    /// Waits for it to exit by itself; returns its log.
    async fn exit(mut self) -> (std::process::ExitStatus, String) {
        let child = std::sync::Mutex::new(&mut self.child);
        let status = wait_for(DEADLINE, "the process to exit", || async {
            child.lock().expect("child").try_wait().expect("wait")
        })
        .await;
        (status, self.log())
    }
}

fn worker_args(claimant: &str, lease: &str) -> Vec<String> {
    [
        "worker",
        "--claimant-id",
        claimant,
        "--lease",
        lease,
        "--poll-interval",
        "50ms",
        "--shutdown-grace",
        "10s",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A folder for the processes' logs, kept when the test fails.
fn log_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "leasehold-{test}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    fs::create_dir_all(&dir).expect("log dir");
    dir
}

/// `leasehold migrate --runtime-role` as the owner, as release `ceiling`; must succeed.
fn migrate(db: &TestDb, ceiling: Option<i32>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    command
        .args(["migrate", "--runtime-role", RUNTIME_ROLE])
        .env("LEASEHOLD_DATABASE_URL", db.owner_url());
    if let Some(ceiling) = ceiling {
        command.env(SCHEMA_CEILING_ENV, ceiling.to_string());
    }
    let output = command.output().expect("run leasehold migrate");
    assert!(output.status.success(), "{output:?}");
    output
}

/// An automation of one node that sleeps `ms`, as the runtime role.
async fn sleeper(db: &TestDb, ms: u64) -> (Store, AutomationId) {
    let store = Store::connect_unchecked(db.url(), 4).expect("pool");
    let spec = spec::parse_yaml(&format!(
        "id: sleeper\nnodes:\n  - {{id: nap, kind: sleep, input: {{ms: {ms}}}}}\n"
    ))
    .expect("spec");
    store
        .create_automation(&TenantId::default(), &spec)
        .await
        .expect("automation");
    (store, AutomationId::from("sleeper"))
}

async fn start_runs(store: &Store, automation: &AutomationId, n: usize) -> Vec<RunId> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let started = store
            .start_run(&fixtures::start_request(&TenantId::default(), automation))
            .await
            .expect("start");
        ids.push(started.run_id);
    }
    ids
}

/// Waits until every run has finished; all must have completed.
async fn all_complete(store: &Store, ids: &[RunId]) {
    let tenant = TenantId::default();
    for id in ids {
        let status = wait_for(DEADLINE, "every run to finish", || async {
            let run = store.run(&tenant, *id).await.ok()?;
            run.status.is_terminal().then_some(run.status)
        })
        .await;
        assert_eq!(status, RunStatus::Completed, "run {id}");
    }
}
