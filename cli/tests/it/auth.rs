//! Tokens as users handle them, with the real binaries: `leasehold token create|list|revoke`
//! against the database, a `leasehold coordinator` that requires tokens, and client commands
//! that send them (`LEASEHOLD_TOKEN`, `--token`).

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use leasehold_core::store::Store;
use leasehold_testkit::TestDb;
use serde_json::Value;

use crate::support::{free_port, wait_serving};

const DEADLINE: Duration = Duration::from_secs(30);

/// The binary with nothing inherited that would change what it authenticates with.
fn leasehold(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    command
        .args(args)
        .env_remove("LEASEHOLD_TOKEN")
        .env_remove("LEASEHOLD_ENDPOINT")
        .env(
            "XDG_CONFIG_HOME",
            std::env::temp_dir().join("leasehold-auth-test-no-credentials"),
        )
        .stdin(Stdio::null());
    command
}

/// What a finished command printed.
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn ran(mut command: Command) -> Ran {
    let output: Output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run leasehold");
    Ran {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A running coordinator, killed when dropped.
struct Coordinator(Child);

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Setup {
    db: TestDb,
    endpoint: String,
    _coordinator: Coordinator,
}

impl Setup {
    async fn new() -> Setup {
        let db = TestDb::new().await;
        Store::connect_unchecked(db.url(), 1)
            .expect("pool")
            .migrate()
            .await
            .expect("migrate");
        let listen = format!("127.0.0.1:{}", free_port());
        // Without the token cache, so that a revoked token is refused from the next call on.
        let child = leasehold(&[
            "coordinator",
            "--listen",
            &listen,
            "--token-cache-ttl",
            "0s",
        ])
        .env("LEASEHOLD_DATABASE_URL", db.url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn coordinator");
        let endpoint = format!("http://{listen}");
        wait_serving(&endpoint, DEADLINE).await;
        Setup {
            db,
            endpoint,
            _coordinator: Coordinator(child),
        }
    }

    /// `leasehold token create` with `args`; the token it printed.
    async fn create_token(&self, args: &[&str]) -> String {
        let mut command = leasehold(&["token", "create"]);
        command.args(args).args(["--database-url", self.db.url()]);
        let created = ran(command).await;
        assert!(created.ok, "{}", created.stderr);
        assert!(
            created.stderr.contains("shown only this once"),
            "{}",
            created.stderr
        );
        let token = created.stdout.trim().to_owned();
        assert!(
            token.starts_with("lh_") && !token.contains('\n'),
            "the token alone on stdout: {token}"
        );
        token
    }

    /// A client command sending `token` through `LEASEHOLD_TOKEN`.
    async fn client(&self, token: Option<&str>, args: &[&str]) -> Ran {
        let mut command = leasehold(&["--endpoint", &self.endpoint]);
        command.args(args);
        if let Some(token) = token {
            command.env("LEASEHOLD_TOKEN", token);
        }
        ran(command).await
    }

    async fn json(&self, token: &str, args: &[&str]) -> Value {
        let done = self.client(Some(token), args).await;
        assert!(done.ok, "{args:?}: {}", done.stderr);
        serde_json::from_str(&done.stdout).expect("json")
    }
}

fn hello() -> String {
    format!("{}/../examples/hello.yaml", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_made_by_the_cli_authenticate_limit_and_scope_client_commands() {
    let s = Setup::new().await;
    let a_admin = s
        .create_token(&["--tenant", "team-a", "--role", "admin", "--name", "ann"])
        .await;
    let a_viewer = s
        .create_token(&["--tenant", "team-a", "--role", "viewer", "--expires", "90d"])
        .await;
    let b_admin = s
        .create_token(&["--tenant", "team-b", "--role", "admin", "--name", "bob"])
        .await;

    let mut list = leasehold(&["token", "list", "--json", "--database-url", s.db.url()]);
    list.stdin(Stdio::null());
    let listed = ran(list).await;
    assert!(listed.ok, "{}", listed.stderr);
    let tokens: Value = serde_json::from_str(&listed.stdout).expect("json");
    let tokens = tokens.as_array().expect("array");
    assert_eq!(tokens.len(), 3);
    for token in [&a_admin, &a_viewer, &b_admin] {
        let secret = token.rsplit('_').next().expect("secret");
        assert!(!listed.stdout.contains(secret), "a secret listed");
    }
    let viewer_id = tokens
        .iter()
        .find(|t| t["role"] == "viewer")
        .and_then(|t| t["token_id"].as_str())
        .expect("the viewer's id")
        .to_owned();
    assert!(
        tokens
            .iter()
            .any(|t| t["role"] == "viewer" && t["expires_at"].is_string())
    );

    // No token: UNAUTHENTICATED, and the message says how to give one.
    let anonymous = s.client(None, &["run", "list"]).await;
    assert!(!anonymous.ok);
    assert!(
        anonymous.stderr.contains("UNAUTHENTICATED"),
        "{}",
        anonymous.stderr
    );
    assert!(anonymous.stderr.contains("--token"), "{}", anonymous.stderr);

    for token in [&a_admin, &b_admin] {
        let applied = s
            .client(Some(token), &["automation", "apply", "-f", &hello()])
            .await;
        assert!(applied.ok, "{}", applied.stderr);
    }
    let b_run = s.json(&b_admin, &["run", "start", "hello", "--json"]).await["run_id"]
        .as_str()
        .expect("run_id")
        .to_owned();
    let a_run = s.json(&a_admin, &["run", "start", "hello", "--json"]).await["run_id"]
        .as_str()
        .expect("run_id")
        .to_owned();

    // A viewer starts nothing.
    let refused = s.client(Some(&a_viewer), &["run", "start", "hello"]).await;
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("PERMISSION_DENIED"),
        "{}",
        refused.stderr
    );

    // Team A sees its own run, and nothing of team B's.
    let theirs = s.client(Some(&a_admin), &["run", "show", &b_run]).await;
    assert!(!theirs.ok);
    assert!(theirs.stderr.contains("NOT_FOUND"), "{}", theirs.stderr);
    let listed = s.json(&a_viewer, &["run", "list", "--json"]).await;
    let ids: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["run_id"].as_str())
        .collect();
    assert_eq!(ids, [a_run.as_str()]);
    let stats = s.json(&a_viewer, &["stats", "--json"]).await;
    let counted: i64 = stats["runs_by_status"]
        .as_object()
        .expect("counts")
        .values()
        .filter_map(Value::as_i64)
        .sum();
    assert_eq!(counted, 1, "{stats}");

    // --token works as the variable does, and wins over it.
    let mut flagged = leasehold(&["--endpoint", &s.endpoint, "--token", &b_admin]);
    flagged
        .args(["run", "show", &b_run])
        .env("LEASEHOLD_TOKEN", &a_admin);
    let shown = ran(flagged).await;
    assert!(shown.ok, "{}", shown.stderr);

    // Revoked: refused from the next call on (the coordinator keeps no token).
    let mut revoke = leasehold(&["token", "revoke", &viewer_id, "--database-url", s.db.url()]);
    revoke.stdin(Stdio::null());
    let revoked = ran(revoke).await;
    assert!(revoked.ok, "{}", revoked.stderr);
    let after = s.client(Some(&a_viewer), &["run", "list"]).await;
    assert!(!after.ok);
    assert!(after.stderr.contains("UNAUTHENTICATED"), "{}", after.stderr);
    assert!(after.stderr.contains("revoked"), "{}", after.stderr);
}

#[tokio::test]
async fn a_malformed_token_is_refused_without_being_shown() {
    let secret = "not-a-token-but-secret";
    let mut command = leasehold(&["--endpoint", "http://127.0.0.1:1", "run", "list"]);
    command.env("LEASEHOLD_TOKEN", secret);
    let refused = ran(command).await;
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("LEASEHOLD_TOKEN"),
        "{}",
        refused.stderr
    );
    assert!(!refused.stderr.contains(secret), "{}", refused.stderr);
    // Nor does --help show the variable's value.
    let mut help = leasehold(&["run", "list", "--help"]);
    help.env("LEASEHOLD_TOKEN", secret);
    let help = ran(help).await;
    assert!(help.ok, "{}", help.stderr);
    assert!(help.stdout.contains("--token"), "{}", help.stdout);
    assert!(!help.stdout.contains(secret), "{}", help.stdout);
}

#[tokio::test]
async fn token_commands_refuse_bad_input_by_name() {
    let db = TestDb::new().await;
    Store::connect_unchecked(db.url(), 1)
        .expect("pool")
        .migrate()
        .await
        .expect("migrate");
    let url = db.url();
    for (args, wanted) in [
        (
            vec!["create", "--tenant", "t", "--role", "root"],
            "not a role",
        ),
        (
            vec![
                "create",
                "--tenant",
                "t",
                "--role",
                "viewer",
                "--expires",
                "0s",
            ],
            "--expires",
        ),
        (
            vec!["create", "--tenant", "a b", "--role", "viewer"],
            "tenant",
        ),
        (
            vec!["revoke", "00000000000000ff"],
            "no token 00000000000000ff",
        ),
        (vec!["revoke", "nope"], "not a token id"),
    ] {
        let mut command = leasehold(&["token"]);
        command.args(&args).args(["--database-url", url]);
        let refused = ran(command).await;
        assert!(!refused.ok, "{args:?}");
        assert!(
            refused.stderr.contains(wanted),
            "{args:?}: {}",
            refused.stderr
        );
    }
    let mut list = leasehold(&["token", "list", "--database-url", url]);
    list.stdin(Stdio::null());
    let listed = ran(list).await;
    assert!(listed.ok, "{}", listed.stderr);
    assert!(listed.stdout.starts_with("No tokens"), "{}", listed.stdout);
}
