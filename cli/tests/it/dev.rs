//! `leasehold dev` as the real binary: its own cluster in a temp data folder, a free `--listen`
//! port, and nothing left running afterwards.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::{env, fs, thread};

use leasehold_core::ids::{AutomationId, TenantId};
use leasehold_core::spec;
use leasehold_core::store::Store;
use leasehold_testkit::wait_for;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::free_port;

/// Generous: `initdb` and a cold start share two cores with the other tests.
const DEADLINE: Duration = Duration::from_secs(90);
/// The banner's first line.
const READY_LINE: &str = "Leasehold dev is running.";

#[tokio::test]
async fn the_hello_example_completes_and_leaves_nothing_running() {
    let dir = TestDir::new("hello");
    let mut dev = Dev::spawn(&dir, &["--example", "hello", "--exit-when-done"]);

    let status = dev.wait_exit().await;
    let (stdout, stderr) = (dev.stdout(), dev.stderr());
    assert!(status.success(), "{status:?}\n{stdout}\n{stderr}");
    assert!(stdout.contains(READY_LINE), "{stdout}");
    assert!(stdout.contains("completed"), "{stdout}");
    assert_nothing_left(&dir, None).await;
}

#[tokio::test]
async fn a_second_start_reuses_the_cluster_and_its_data() {
    let (dir, mut first) = Dev::ready_in("reuse").await;
    assert!(first.stderr().contains("initdb"), "{}", first.stderr());
    let store = Store::connect(&first.database_url(), 1)
        .await
        .expect("store");
    let spec = spec::parse_yaml("id: kept\nnodes:\n  - {id: a, kind: noop}\n").expect("spec");
    store
        .create_automation(&TenantId::default(), &spec)
        .await
        .expect("automation");
    drop(store);
    first.signal(Signal::SIGINT);
    assert!(first.wait_exit().await.success(), "{}", first.stderr());

    let mut second = Dev::ready(&dir).await;
    let stderr = second.stderr();
    assert!(
        stderr.contains("reusing the PostgreSQL cluster"),
        "{stderr}"
    );
    assert!(!stderr.contains("initdb"), "no second initdb: {stderr}");
    let store = Store::connect(&second.database_url(), 1)
        .await
        .expect("store");
    store
        .automation(&TenantId::default(), &AutomationId::from("kept"))
        .await
        .expect("the automation of the first start");
    drop(store);
    second.signal(Signal::SIGINT);
    assert!(second.wait_exit().await.success(), "{}", second.stderr());
    assert_nothing_left(&dir, None).await;
}

#[tokio::test]
async fn without_postgresql_binaries_it_says_what_to_install() {
    let dir = TestDir::new("nobin");
    let data = dir.path.join("data");
    let output = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(["dev", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(&data)
        // No PostgreSQL on PATH, and the search confined to a folder that does not exist.
        .env("PATH", dir.path.join("empty-path"))
        .env("LEASEHOLD_PG_BINDIR", dir.path.join("no-postgresql-here"))
        .stdin(Stdio::null())
        .output()
        .expect("run leasehold dev");

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("sudo apt-get install postgresql"),
        "{stderr}"
    );
    assert!(stderr.contains("brew install postgresql@16"), "{stderr}");
    assert!(!data.exists(), "nothing was created");
}

#[tokio::test]
async fn sigint_stops_postgres_and_exits_zero() {
    let (dir, mut dev) = Dev::ready_in("sigint").await;
    let postmaster = dir.postmaster_pid().expect("a running server");
    // The banner names the metrics endpoint, on loopback; the leader's gauges are there.
    let stdout = dev.stdout();
    let metrics: std::net::SocketAddr = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("metrics        http://"))
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics line in {stdout}"))
        .parse()
        .expect("metrics address");
    assert!(metrics.ip().is_loopback(), "{metrics}");
    wait_for(DEADLINE, "dev's leader gauge", || async {
        let (status, body) = crate::exposition::get(metrics, "/metrics").await.ok()?;
        assert_eq!(status, 200, "{body}");
        let exposition = crate::exposition::parse(&body).expect("exposition");
        (exposition.sum("leasehold_leader", &[]) == 1.0).then_some(())
    })
    .await;

    dev.signal(Signal::SIGINT);
    let status = dev.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", dev.stderr());
    assert_nothing_left(&dir, Some(postmaster)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_requires_a_token_and_client_commands_on_the_machine_find_its_own() {
    let dir = TestDir::new("token");
    // A token in dev's own environment must not reach the PostgreSQL it starts.
    let inherited = format!("lh_00000000000000aa_{}", "0f".repeat(32));
    let mut dev = Dev::spawn_with(&dir, &[], &[("LEASEHOLD_TOKEN", &inherited)]);
    dev.wait_ready().await;
    let token = dev.token();
    assert!(token.starts_with("lh_"), "{token}");

    // Kept in the data folder and in the credentials file, each for its owner only.
    let mode = |path: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    };
    let kept = dir.data().join("token");
    assert_eq!(fs::read_to_string(&kept).expect("kept").trim(), token);
    assert_eq!(mode(&kept), 0o600);
    let credentials = dir.config_home().join("leasehold/credentials");
    let saved: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&credentials).expect("saved")).expect("json");
    assert_eq!(saved["tokens"][dev.endpoint.as_str()], token.as_str());
    assert_eq!(mode(&credentials), 0o600);

    // Another shell: no flag but where dev listens (LEASEHOLD_ENDPOINT), no token.
    let mut shell = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    shell
        .args(["stats", "--json"])
        .env("LEASEHOLD_ENDPOINT", &dev.endpoint)
        .env_remove("LEASEHOLD_TOKEN")
        .env("XDG_CONFIG_HOME", dir.config_home());
    let output = tokio::task::spawn_blocking(move || shell.output())
        .await
        .expect("join")
        .expect("run leasehold");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Without the credentials file, dev refuses the call: authentication is on.
    let mut stranger = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    stranger
        .args(["--endpoint", &dev.endpoint, "stats"])
        .env_remove("LEASEHOLD_TOKEN")
        .env("XDG_CONFIG_HOME", dir.path.join("elsewhere"));
    let output = tokio::task::spawn_blocking(move || stranger.output())
        .await
        .expect("join")
        .expect("run leasehold");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");

    let postmaster = dir.postmaster_pid().expect("a running server");
    let environ =
        fs::read(format!("/proc/{postmaster}/environ")).expect("the server's environment");
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.contains("PATH="), "the environment was read");
    assert!(!environ.contains("LEASEHOLD_TOKEN"), "{environ}");

    // The next start keeps the token.
    dev.signal(Signal::SIGINT);
    assert!(dev.wait_exit().await.success(), "{}", dev.stderr());
    let mut second = Dev::ready(&dir).await;
    assert_eq!(second.token(), token);
    second.signal(Signal::SIGINT);
    assert!(second.wait_exit().await.success(), "{}", second.stderr());
}

/// Runs a client command against `dev` as another shell of the same user would: with no token
/// given, so that it finds dev's in the credentials file; returns its exit status and stdout.
async fn client(dev: &Dev, args: &[&str]) -> (ExitStatus, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    command
        .args(["--endpoint", &dev.endpoint])
        .args(args)
        .env_remove("LEASEHOLD_TOKEN")
        .env("XDG_CONFIG_HOME", &dev.config_home);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run leasehold");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

fn example_file(name: &str) -> String {
    format!("{}/../examples/{name}.yaml", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_retry_and_approval_examples_complete_through_the_cli() {
    let (_dir, mut dev) = Dev::ready_in("examples").await;

    let (status, _) = client(&dev, &["automation", "apply", "-f", &example_file("retry")]).await;
    assert!(status.success());
    let (status, watched) = client(&dev, &["run", "start", "retry", "--watch"]).await;
    assert!(status.success(), "{watched}");
    assert_eq!(watched.matches("node_failed").count(), 2, "{watched}");
    assert_eq!(
        watched.matches("node_retry_backoff_scheduled").count(),
        2,
        "{watched}"
    );
    assert!(watched.contains("completed"), "{watched}");

    let (status, _) = client(
        &dev,
        &["automation", "apply", "-f", &example_file("approval")],
    )
    .await;
    assert!(status.success());
    let (status, started) = client(&dev, &["run", "start", "approval", "--json"]).await;
    assert!(status.success(), "{started}");
    let run: serde_json::Value = serde_json::from_str(&started).expect("json");
    let run_id = run["run_id"].as_str().expect("run_id").to_owned();
    let (_, shown) = client(&dev, &["run", "show", &run_id, "--json"]).await;
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("json");
    assert_eq!(
        shown["run_id"], run["run_id"],
        "--json of start and show agree"
    );
    let gate_id = wait_for(DEADLINE, "the run to stop at its gate", || async {
        let (_, gates) = client(&dev, &["gate", "list", "--json"]).await;
        let gates: serde_json::Value = serde_json::from_str(&gates).ok()?;
        gates
            .as_array()?
            .iter()
            .find(|g| g["run_id"] == run_id.as_str())
            .and_then(|g| g["gate_id"].as_str().map(str::to_owned))
    })
    .await;
    let (status, _) = client(&dev, &["gate", "approve", &gate_id]).await;
    assert!(status.success());
    let (status, watched) = client(&dev, &["run", "watch", &run_id]).await;
    assert!(status.success(), "{watched}");
    assert!(watched.contains("run_gate_approved"), "{watched}");

    dev.signal(Signal::SIGINT);
    assert_eq!(dev.wait_exit().await.code(), Some(0), "{}", dev.stderr());
}

#[tokio::test]
async fn a_server_left_by_a_killed_dev_is_stopped_by_the_next_start() {
    let (dir, mut first) = Dev::ready_in("killed").await;
    let leftover = dir.postmaster_pid().expect("a running server");
    first.signal(Signal::SIGKILL);
    first.wait_exit().await;
    assert!(
        alive(leftover),
        "pg_ctl detaches the server, so SIGKILL leaves it"
    );

    let mut second = Dev::ready(&dir).await;
    assert!(
        second.stderr().contains("left running"),
        "{}",
        second.stderr()
    );
    wait_dead(leftover, "the leftover server to be stopped").await;
    let current = dir.postmaster_pid().expect("a running server");
    second.signal(Signal::SIGINT);
    assert!(second.wait_exit().await.success(), "{}", second.stderr());
    assert_nothing_left(&dir, Some(current)).await;
}

#[tokio::test]
async fn a_taken_listen_port_is_named_with_its_flag() {
    let dir = TestDir::new("taken");
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let data = dir.path.join("data");
    let output = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(["dev", "--listen", &address])
        .arg("--data-dir")
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .expect("run leasehold dev");

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(&address), "{stderr}");
    assert!(stderr.contains("--listen"), "{stderr}");
    assert!(!data.exists(), "no cluster was started");
}

/// A running `leasehold dev` whose output is collected as it comes.
struct Dev {
    endpoint: String,
    /// Its `XDG_CONFIG_HOME`, where it saves the credentials file: the test folder's, so that
    /// the machine's own stays untouched.
    config_home: PathBuf,
    child: Mutex<Child>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Dev {
    fn spawn(dir: &TestDir, extra: &[&str]) -> Dev {
        Dev::spawn_with(dir, extra, &[])
    }

    /// [`Dev::spawn`] with more variables in its environment.
    fn spawn_with(dir: &TestDir, extra: &[&str], vars: &[(&str, &str)]) -> Dev {
        let listen = format!("127.0.0.1:{}", free_port());
        let config_home = dir.config_home();
        let mut child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
            .args(["dev", "--listen", &listen])
            .arg("--data-dir")
            .arg(dir.data())
            .args(extra)
            .env_remove("LEASEHOLD_TOKEN")
            .env("XDG_CONFIG_HOME", &config_home)
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn leasehold dev");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Dev {
            endpoint: format!("http://{listen}"),
            config_home,
            child: Mutex::new(child),
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().expect("stdout").clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    /// Spawns `leasehold dev` without extra arguments and waits for its banner.
    async fn ready(dir: &TestDir) -> Dev {
        let dev = Dev::spawn(dir, &[]);
        dev.wait_ready().await;
        dev
    }

    /// [`Dev::ready`] in a fresh [`TestDir`] named `name`.
    async fn ready_in(name: &str) -> (TestDir, Dev) {
        let dir = TestDir::new(name);
        let dev = Dev::ready(&dir).await;
        (dir, dev)
    }

    /// Waits for the banner; fails early, with the output, if dev exits first.
    async fn wait_ready(&self) {
        wait_for(DEADLINE, "the dev banner", || async {
            if self.stdout().contains("not for production") {
                return Some(());
            }
            let exited = self.child.lock().expect("child").try_wait().expect("wait");
            if let Some(status) = exited {
                panic!(
                    "dev exited with {status:?} before its banner:\n{}",
                    self.stderr()
                );
            }
            None
        })
        .await;
    }

    /// The API token from the banner.
    fn token(&self) -> String {
        self.stdout()
            .lines()
            .find_map(|line| line.trim().strip_prefix("API token"))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .expect("an API token line in the banner")
    }

    /// The database URL from the banner.
    fn database_url(&self) -> String {
        self.stdout()
            .lines()
            .find_map(|line| line.trim().strip_prefix("database"))
            .map(|rest| rest.trim().to_owned())
            .expect("a database line in the banner")
    }

    fn signal(&self, signal: Signal) {
        let id = self.child.lock().expect("child").id();
        kill(Pid::from_raw(i32::try_from(id).expect("pid")), signal).expect("signal");
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        let status = wait_for(DEADLINE, "dev to exit", || async {
            self.child.lock().expect("child").try_wait().expect("wait")
        })
        .await;
        // The output threads end with the pipes; the last lines may still be on their way.
        wait_for(DEADLINE, "dev's output to end", || async {
            (Arc::strong_count(&self.stdout) == 1 && Arc::strong_count(&self.stderr) == 1)
                .then_some(())
        })
        .await;
        status
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let mut child = self.child.lock().expect("child");
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Appends everything `pipe` yields to a shared string, from a thread that ends with the pipe.
fn collect(pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let shared = Arc::clone(&text);
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let mut text = shared.lock().expect("output");
            text.push_str(&line);
            text.push('\n');
        }
    });
    text
}

/// A temp folder holding a data folder. Dropping it stops any server still running there (a
/// failed test must not leave one) and removes the folder, unless the test failed.
struct TestDir {
    path: PathBuf,
}

impl TestDir {
    fn new(name: &str) -> TestDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = env::temp_dir().join(format!(
            "leasehold-dev-test-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).expect("create the test folder");
        TestDir { path }
    }

    fn data(&self) -> PathBuf {
        self.path.join("data")
    }

    /// The `XDG_CONFIG_HOME` of the processes the test starts.
    fn config_home(&self) -> PathBuf {
        self.path.join("config")
    }

    /// The server's pid from `postmaster.pid`, while it has one.
    fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data().join("pgdata/postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if let Some(pid) = self.postmaster_pid() {
            // SIGQUIT is PostgreSQL's immediate shutdown.
            let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
        }
        if thread::panicking() {
            eprintln!("kept {} for inspection", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// No server's pid file in the data folder, `postmaster` (if given) dead, and no process whose
/// command line names the folder.
async fn assert_nothing_left(dir: &TestDir, postmaster: Option<i32>) {
    assert!(
        !dir.data().join("pgdata/postmaster.pid").exists(),
        "postmaster.pid is gone"
    );
    if let Some(pid) = postmaster {
        wait_dead(pid, "the server to exit").await;
    }
    wait_for(DEADLINE, "no process naming the data folder", || async {
        processes_naming(&dir.path).is_empty().then_some(())
    })
    .await;
}

/// Whether `pid` runs. A zombie does not: an orphaned server is reaped by init, on its own time.
fn alive(pid: i32) -> bool {
    // Signal 0 checks that the process exists; EPERM means it does, but is someone else's.
    if matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH)) {
        return false;
    }
    // `/proc/<pid>/stat` is `pid (comm) state ...`; the command may hold spaces and parentheses.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    state != Some('Z')
}

/// Waits until `pid` has exited: `pg_ctl stop -w` returns once the pid file is gone, a moment
/// before the server process ends.
async fn wait_dead(pid: i32, what: &str) {
    wait_for(DEADLINE, what, || async { (!alive(pid)).then_some(()) }).await;
}

/// Command lines that mention `path`, from `/proc`, or from `pgrep` where there is no `/proc`.
fn processes_naming(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    let Ok(entries) = fs::read_dir("/proc") else {
        let output = Command::new("pgrep")
            .args(["-fl", &needle])
            .output()
            .expect("run pgrep");
        return String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|entry| fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&needle))
        .collect()
}
