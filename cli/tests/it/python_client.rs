//! The Python example client (`examples/python`) against the real binaries: a database,
//! `leasehold coordinator` and `leasehold worker`, with stubs generated from the proto at test
//! time. A client written from the proto alone takes a gated run to completion.
//!
//! The virtualenv is made once under the cargo target folder and reused while
//! `examples/python/requirements.txt` is unchanged.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use leasehold_core::store::Store;
use leasehold_testkit::{TestDb, wait_for};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Starting the binaries, and the client's whole walk-through.
const DEADLINE: Duration = Duration::from_secs(60);
/// The client's own limit for its walk-through, in seconds; below [`DEADLINE`], so that the
/// client's message about what it waited for comes before the test gives up on it.
const CLIENT_TIMEOUT_S: &str = "45";
/// Making the virtualenv and installing the requirements from the package index.
const INSTALL_DEADLINE: Duration = Duration::from_secs(600);
/// What to install when the machine has no usable Python.
const INSTALL_PYTHON: &str = "install Python 3 with its venv module and pip \
    (Debian/Ubuntu: `sudo apt-get install python3 python3-venv python3-pip`; \
    macOS: `brew install python`)";
/// The line the coordinator logs once it listens, with its address after `addr=`.
const SERVING_LINE: &str = "coordinator serving gRPC";

#[tokio::test(flavor = "multi_thread")]
async fn the_python_example_takes_a_gated_run_to_completion() {
    let dir = TestDir::new();
    let python = python_env(&dir).await;
    let stubs = dir.path.join("stubs");
    generate_stubs(&python, &stubs, &dir).await;

    let db = TestDb::new().await;
    Store::connect_unchecked(db.url(), 1)
        .expect("pool")
        .migrate()
        .await
        .expect("migrate");
    // Port 0: the coordinator binds a free port itself and logs it, so no other process can
    // take it between a pick and the bind.
    let coordinator = Proc::spawn(
        &dir,
        "coordinator",
        leasehold(&db)
            .args(["coordinator", "--listen", "127.0.0.1:0"])
            .env("LEASEHOLD_LOG", "info"),
    );
    let address = serving_address(&coordinator).await;
    wait_serving(&address, &coordinator).await;
    let worker = Proc::spawn(
        &dir,
        "worker",
        leasehold(&db).args(["worker", "--poll-interval", "50ms"]),
    );

    // The token is made as a user makes one: with `leasehold token create`.
    let maker = Proc::spawn(
        &dir,
        "token",
        leasehold(&db).args(["token", "create", "--tenant", "default", "--role", "admin"]),
    );
    let made = maker.wait_exit(DEADLINE).await;
    assert!(made.success(), "token create: {}", maker.stderr());
    let token = maker.stdout().trim().to_owned();

    let client = Proc::spawn(
        &dir,
        "client",
        Command::new(&python)
            .arg(repository().join("examples/python/client.py"))
            .args(["--endpoint", &address, "--timeout", CLIENT_TIMEOUT_S])
            .env("PYTHONPATH", &stubs)
            .env("LEASEHOLD_TOKEN", &token),
    );
    let status = client.wait_exit(DEADLINE).await;
    let stdout = client.stdout();
    let report = || {
        format!(
            "client ({status}):\n{stdout}\n{}\ncoordinator:\n{}\nworker:\n{}",
            client.stderr(),
            coordinator.stderr(),
            worker.stderr()
        )
    };
    assert!(status.success(), "{}", report());
    for shown in [
        "created=True",
        "same request_id again: run",
        "field violation: requests[1].priority",
        "run RUN_STATUS_AWAITING_APPROVAL",
        "decided: GATE_STATUS_APPROVED by token-",
        "run RUN_STATUS_COMPLETED (terminal)",
    ] {
        assert!(stdout.contains(shown), "no {shown:?} in {}", report());
    }
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("run ") && last.ends_with(" completed"),
        "last line {last:?}: {}",
        report()
    );
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli sits in the repository")
        .to_path_buf()
}

/// The real `leasehold` binary, given the test database.
fn leasehold(db: &TestDb) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    command.env("LEASEHOLD_DATABASE_URL", db.url());
    command
}

/// The virtualenv's python with the example's requirements installed: the one made before
/// when `requirements.txt` is unchanged, else a new one.
async fn python_env(dir: &TestDir) -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-example-venv");
    let python = venv.join("bin").join("python");
    let requirements_file = repository().join("examples/python/requirements.txt");
    let requirements = fs::read_to_string(&requirements_file).expect("requirements.txt");
    // Written last, so that a venv whose install failed or was cut short is never reused.
    let stamp = venv.join("leasehold-requirements.txt");
    if python.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s == requirements) {
        return python;
    }
    let _ = fs::remove_dir_all(&venv);

    let mut make = Command::new("python3");
    make.arg("-m").arg("venv").arg(&venv);
    let made = Proc::try_spawn(dir, "venv", &mut make).unwrap_or_else(|e| {
        panic!("cannot run python3 ({e}): {INSTALL_PYTHON}");
    });
    let status = made.wait_exit(INSTALL_DEADLINE).await;
    assert!(
        status.success(),
        "`python3 -m venv` failed ({status}): {INSTALL_PYTHON}\n{}{}",
        made.stdout(),
        made.stderr()
    );

    let mut install = Command::new(&python);
    install
        .args(["-m", "pip", "install", "--disable-pip-version-check", "-r"])
        .arg(&requirements_file);
    let pip = Proc::spawn(dir, "pip", &mut install);
    let status = pip.wait_exit(INSTALL_DEADLINE).await;
    assert!(
        status.success(),
        "pip could not install {} ({status}); it needs the package index (PyPI, or the one \
         PIP_INDEX_URL names)\n{}{}",
        requirements_file.display(),
        pip.stdout(),
        pip.stderr()
    );
    fs::write(&stamp, requirements).expect("write the venv's stamp");
    python
}

/// The Python stubs of `leasehold.v1`, generated from the proto into `out`.
async fn generate_stubs(python: &Path, out: &Path, dir: &TestDir) {
    fs::create_dir_all(out).expect("stubs folder");
    let proto = repository().join("proto");
    let mut protoc = Command::new(python);
    protoc
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .arg(proto.join("leasehold/v1/leasehold.proto"));
    let generated = Proc::spawn(dir, "protoc", &mut protoc);
    let status = generated.wait_exit(DEADLINE).await;
    assert!(
        status.success(),
        "grpc_tools.protoc failed ({status}):\n{}",
        generated.stderr()
    );
}

/// The address the coordinator logged once it listened.
async fn serving_address(coordinator: &Proc) -> String {
    wait_for(DEADLINE, "the coordinator to listen", || async {
        coordinator.assert_running();
        let log = coordinator.stderr();
        let line = log.lines().find(|l| l.contains(SERVING_LINE))?;
        let address = line.split_once("addr=")?.1.split_whitespace().next()?;
        Some(address.to_owned())
    })
    .await
}

/// Waits until the coordinator reports `leasehold.v1.Runs` SERVING: it has reached the database.
async fn wait_serving(address: &str, coordinator: &Proc) {
    let endpoint = format!("http://{address}");
    wait_for(DEADLINE, "the coordinator to report SERVING", || {
        coordinator.assert_running();
        let endpoint = endpoint.clone();
        async move {
            let channel = tonic::transport::Endpoint::from_shared(endpoint)
                .ok()?
                .connect()
                .await
                .ok()?;
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: "leasehold.v1.Runs".into(),
                })
                .await
                .ok()?
                .into_inner();
            (reply.status == ServingStatus::Serving as i32).then_some(())
        }
    })
    .await;
}

/// A child process whose output goes to files in the test folder; dropping it kills the
/// process if it still runs, so a failed test leaves nothing behind.
struct Proc {
    name: String,
    child: Mutex<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    fn try_spawn(dir: &TestDir, name: &str, command: &mut Command) -> std::io::Result<Proc> {
        let stdout = dir.path.join(format!("{name}.out"));
        let stderr = dir.path.join(format!("{name}.err"));
        let child = command
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?)
            .spawn()?;
        Ok(Proc {
            name: name.to_owned(),
            child: Mutex::new(child),
            stdout,
            stderr,
        })
    }

    fn spawn(dir: &TestDir, name: &str, command: &mut Command) -> Proc {
        Self::try_spawn(dir, name, command)
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"))
    }

    fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn exited(&self) -> Option<ExitStatus> {
        self.child.lock().expect("child").try_wait().expect("wait")
    }

    /// Panics, with what the process wrote, if it has exited.
    fn assert_running(&self) {
        if let Some(status) = self.exited() {
            panic!("{} exited ({status}):\n{}", self.name, self.stderr());
        }
    }

    async fn wait_exit(&self, deadline: Duration) -> ExitStatus {
        let what = format!("{} to exit", self.name);
        wait_for(deadline, &what, || async { self.exited() }).await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let child = self.child.get_mut().expect("child");
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A folder for the stubs and the processes' output, under the cargo target folder; removed
/// when the test passes, kept (and named) when it fails.
struct TestDir {
    path: PathBuf,
}

impl TestDir {
    fn new() -> TestDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "python-client-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create the test folder");
        TestDir { path }
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}
