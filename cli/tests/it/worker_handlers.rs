//! The built-in handlers' limits, in `leasehold worker` as the real binary: `http` refuses the
//! worker's own networks, an `exec` child finds no secret in its parent's environment and dies
//! with its worker, and an output too large for the checkpoint fails its node.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use leasehold_core::ids::{AutomationId, NodeId, RunId};
use leasehold_core::run::{NodeStatus, RunStatus};
use leasehold_core::spec;
use leasehold_core::store::NodeRecord;
use leasehold_testkit::fixtures::{self, Bundle};
use leasehold_testkit::wait_for;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const DEADLINE: Duration = Duration::from_secs(20);

/// `leasehold worker` with `flags`, its database URL in `LEASEHOLD_DATABASE_URL` and `env` set
/// too; killed when dropped.
struct Worker(Child);

impl Worker {
    fn start(b: &Bundle, flags: &[&str], env: &[(&str, &str)]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
            .args(["worker", "--poll-interval", "50ms"])
            .args(flags)
            // The test's own server URL is no business of the worker's.
            .env_remove("LEASEHOLD_TEST_DATABASE_URL")
            .env("LEASEHOLD_DATABASE_URL", b.db.url())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn leasehold worker");
        Self(child)
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).expect("pid")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An automation made of `nodes` (JSON node specs).
async fn automation(b: &Bundle, nodes: Value) -> AutomationId {
    let spec = json!({ "id": "handlers", "nodes": nodes });
    b.create(&spec::parse_json(&spec.to_string()).expect("spec"))
        .await
}

/// A run of an automation made of `nodes`, started.
async fn start_run(b: &Bundle, nodes: Value) -> RunId {
    let automation = automation(b, nodes).await;
    b.start(&automation).await
}

/// The run's status once it has ended.
async fn ended(b: &Bundle, run_id: RunId) -> RunStatus {
    wait_for(DEADLINE, "the run to end", || async {
        let status = b.status(run_id).await;
        matches!(
            status,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Blocked | RunStatus::Cancelled
        )
        .then_some(status)
    })
    .await
}

async fn node(b: &Bundle, run_id: RunId, id: &str) -> NodeRecord {
    b.checkpoint(run_id)
        .await
        .into_iter()
        .find(|n| n.node_id == NodeId::from(id))
        .unwrap_or_else(|| panic!("node {id} has no checkpoint"))
}

/// `node`'s error, asserting that it failed for good.
async fn terminal_error(b: &Bundle, run_id: RunId, id: &str) -> String {
    let node = node(b, run_id, id).await;
    assert_eq!(node.status, NodeStatus::Failed, "{node:?}");
    assert_eq!(node.last_error_retryable, Some(false), "{node:?}");
    node.last_error.expect("an error")
}

/// An HTTP server on `ip` answering every request with `response`, and how many it received.
async fn serve(ip: &str, response: String) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let received = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&received);
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.expect("accept");
            count.fetch_add(1, Ordering::SeqCst);
            let response = response.clone();
            tokio::spawn(async move {
                // Requests without a body: the head is all there is to read.
                let mut head = Vec::new();
                let mut buf = [0; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (port, received)
}

fn ok_json(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn redirect(location: &str) -> String {
    format!(
        "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
}

fn http_node(url: &str) -> Value {
    json!([{ "id": "get", "kind": "http", "input": { "url": url } }])
}

#[tokio::test]
async fn http_cannot_reach_loopback_unless_the_worker_allows_it() {
    let b = fixtures::setup().await;
    let (port, received) = serve("127.0.0.1", ok_json(r#"{"secret": "s3"}"#)).await;
    let url = format!("http://127.0.0.1:{port}/latest/meta-data");

    let automation = automation(&b, http_node(&url)).await;

    let refused = b.start(&automation).await;
    let worker = Worker::start(&b, &[], &[]);
    assert_eq!(ended(&b, refused).await, RunStatus::Failed);
    drop(worker);
    let error = terminal_error(&b, refused, "get").await;
    assert!(
        error.contains("127.0.0.1 is a loopback address; refused (allow it with --http-allow)"),
        "{error}"
    );
    assert_eq!(received.load(Ordering::SeqCst), 0, "the server was reached");

    let allowed = b.start(&automation).await;
    let _worker = Worker::start(&b, &["--http-allow", "127.0.0.1"], &[]);
    assert_eq!(ended(&b, allowed).await, RunStatus::Completed);
    assert_eq!(
        node(&b, allowed, "get").await.output,
        Some(json!({ "status": 200, "body": { "secret": "s3" } }))
    );
}

#[tokio::test]
async fn http_refuses_a_redirect_from_an_allowed_host_to_a_refused_one() {
    let b = fixtures::setup().await;
    // 127.0.0.2 is loopback too, and not allowed: only 127.0.0.1 is.
    let (target, reached) = serve("127.0.0.2", ok_json(r#"{"secret": "s3"}"#)).await;
    let (port, _) = serve(
        "127.0.0.1",
        redirect(&format!("http://127.0.0.2:{target}/")),
    )
    .await;

    let run_id = start_run(&b, http_node(&format!("http://127.0.0.1:{port}/"))).await;
    let _worker = Worker::start(&b, &["--http-allow", "127.0.0.1"], &[]);

    assert_eq!(ended(&b, run_id).await, RunStatus::Failed);
    let error = terminal_error(&b, run_id, "get").await;
    assert!(
        error.contains("127.0.0.2 is a loopback address; refused"),
        "{error}"
    );
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "the redirect's target was reached"
    );
}

/// A folder for a test's scripts, removed when dropped.
struct Scripts(PathBuf);

impl Scripts {
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("leasehold-handlers-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scripts folder");
        Self(dir)
    }

    /// Writes `script` as `name`; returns its path.
    fn write(&self, name: &str, script: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, script).expect("script");
        path.to_str().expect("a UTF-8 path").to_owned()
    }
}

impl Drop for Scripts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Prints the worker's (its parent's) environment and command line, in hex; exits 3 if it may
/// not read them.
const READ_PARENT: &str = r#"
cat /proc/$PPID/environ /proc/$PPID/cmdline > /dev/null || exit 3
hex() { od -An -v -tx1 "$1" | tr -d ' \n'; }
printf '{"environ": "%s", "cmdline": "%s"}' "$(hex /proc/$PPID/environ)" "$(hex /proc/$PPID/cmdline)"
"#;

fn unhex(hex: &str) -> String {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    String::from_utf8_lossy(&bytes).replace('\0', "\n")
}

/// Runs [`READ_PARENT`] in a worker started with `flags` and `env`; the worker's environment
/// and command line as its `exec` child read them, or the node's error if it could not.
async fn what_a_child_reads(
    b: &Bundle,
    test: &str,
    flags: &[&str],
    env: &[(&str, &str)],
) -> Result<(String, String), String> {
    let scripts = Scripts::new(test);
    let script = scripts.write("read-parent.sh", READ_PARENT);
    // The interpreter is allowed with this script only.
    let allow = format!("/bin/sh '{script}'");
    let run_id = start_run(
        b,
        json!([{
            "id": "read",
            "kind": "exec",
            "input": { "argv": ["/bin/sh", script], "terminal_exit_codes": [3] },
        }]),
    )
    .await;
    let mut all_flags = vec!["--exec-allow", allow.as_str()];
    all_flags.extend_from_slice(flags);
    let _worker = Worker::start(b, &all_flags, env);

    if ended(b, run_id).await == RunStatus::Completed {
        let output = node(b, run_id, "read").await.output.expect("output");
        let field = |name: &str| unhex(output[name].as_str().expect("hex text"));
        Ok((field("environ"), field("cmdline")))
    } else {
        Err(terminal_error(b, run_id, "read").await)
    }
}

/// Asserts that `seen` holds no database URL (nor any other: the test's own server URL is kept
/// from the worker) and none of the secret variables.
fn assert_no_secret(seen: &str, url: &str) {
    for secret in [
        url,
        "postgres://",
        "LEASEHOLD_DATABASE_URL=",
        "PGPASSWORD",
        "pg-password-for-the-test",
    ] {
        assert!(!seen.contains(secret), "{secret:?} is readable in:\n{seen}");
    }
}

#[tokio::test]
async fn an_exec_child_finds_no_secret_in_the_environment_of_its_worker() {
    let b = fixtures::setup().await;
    let env = [
        ("PGPASSWORD", "pg-password-for-the-test"),
        ("LEASEHOLD_TEST_MARKER", "seen-by-the-child"),
    ];
    let read = what_a_child_reads(&b, "environ", &[], &env).await;

    // Root may read any process's environment: then the child reads it, and it holds the
    // harmless variables only. Anyone else may not read a non-dumpable process's at all.
    if nix::unistd::geteuid().is_root() {
        let (environ, cmdline) = read.expect("root reads its parent's environment");
        assert!(
            environ.contains("LEASEHOLD_TEST_MARKER=seen-by-the-child"),
            "the child did not read its worker's environment: {environ}"
        );
        assert_no_secret(&environ, b.db.url());
        assert_no_secret(&cmdline, b.db.url());
    } else {
        let error = read.expect_err("a non-root child may not read a non-dumpable parent");
        assert!(error.contains("Permission denied"), "{error}");
    }
}

#[tokio::test]
async fn a_database_url_given_on_the_command_line_leaves_it() {
    let b = fixtures::setup().await;
    let flag = format!("--database-url={}", b.db.url());
    // `LEASEHOLD_DATABASE_URL` is set too, by `Worker::start`; the flag wins, and both go.
    let read = what_a_child_reads(&b, "cmdline", &[&flag], &[]).await;

    if nix::unistd::geteuid().is_root() {
        let (environ, cmdline) = read.expect("root reads its parent's command line");
        assert!(
            cmdline.contains("worker\n--poll-interval\n50ms"),
            "the child did not read its worker's command line: {cmdline}"
        );
        assert_no_secret(&cmdline, b.db.url());
        assert_no_secret(&environ, b.db.url());
    } else {
        let error = read.expect_err("a non-root child may not read a non-dumpable parent");
        assert!(error.contains("Permission denied"), "{error}");
    }
}

/// The pids of `parent`'s children whose command is `comm`.
fn children(parent: i32, comm: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Some((name, ppid)) =
                stat(*pid).and_then(|(name, state, ppid)| (state != 'Z').then_some((name, ppid)))
            else {
                return false;
            };
            name == comm && ppid == parent
        })
        .collect()
}

/// The command, state and parent of `pid`, from `/proc/<pid>/stat` (`pid (comm) state ppid …`).
fn stat(pid: i32) -> Option<(String, char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = text.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((name, state, ppid))
}

/// Whether `pid` has exited; a zombie has, and only waits for whoever adopted it to reap it.
fn is_gone(pid: i32) -> bool {
    stat(pid).is_none_or(|(_, state, _)| state == 'Z')
}

#[tokio::test]
async fn an_exec_child_dies_with_a_worker_killed_by_sigkill() {
    let b = fixtures::setup().await;
    let run_id = start_run(
        &b,
        json!([{ "id": "long", "kind": "exec", "input": { "argv": ["sleep", "600"] } }]),
    )
    .await;
    let mut worker = Worker::start(&b, &["--exec-allow", "sleep 600"], &[]);
    let worker_pid = worker.pid();

    let sleep = wait_for(DEADLINE, "the exec child to start", || async {
        children(worker_pid, "sleep").first().copied()
    })
    .await;
    assert_eq!(b.status(run_id).await, RunStatus::Running);

    kill(Pid::from_raw(worker_pid), Signal::SIGKILL).expect("kill the worker");
    worker.0.wait().expect("reap the worker");
    wait_for(
        DEADLINE,
        "the exec child to die with its worker",
        || async { is_gone(sleep).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn an_output_too_large_as_stored_fails_its_node_and_the_run_goes_on() {
    let b = fixtures::setup().await;
    let scripts = Scripts::new("oversize");
    // `[0,0,…,0]` with 400 000 zeros: 800 001 bytes of JSON, under the 1 MiB limit, but
    // 1 200 000 as jsonb writes it back (`[0, 0, …]`), over it.
    let script = scripts.write(
        "zeros.sh",
        "printf '['; yes 0, | head -n 399999 | tr -d '\\n'; printf '0]'\n",
    );
    let run_id = start_run(
        &b,
        json!([
            { "id": "big", "kind": "exec", "input": { "argv": ["/bin/sh", script] } },
            { "id": "after", "kind": "noop", "depends_on": ["big"] },
            { "id": "beside", "kind": "sleep", "input": { "ms": 300 } },
        ]),
    )
    .await;
    let allow = format!("/bin/sh '{script}'");
    let _worker = Worker::start(&b, &["--exec-allow", &allow], &[]);

    assert_eq!(ended(&b, run_id).await, RunStatus::Failed);
    let error = terminal_error(&b, run_id, "big").await;
    assert!(
        error.contains("output too large: 1200000 bytes as stored (jsonb text)"),
        "{error}"
    );
    let checkpoint = b.checkpoint(run_id).await;
    let status = |id: &str| {
        checkpoint
            .iter()
            .find(|n| n.node_id == NodeId::from(id))
            .map(|n| n.status)
    };
    assert_eq!(
        status("beside"),
        Some(NodeStatus::Completed),
        "{checkpoint:?}"
    );
    assert_eq!(
        status("after"),
        Some(NodeStatus::Skipped),
        "a node after a failed one never starts: {checkpoint:?}"
    );
}
