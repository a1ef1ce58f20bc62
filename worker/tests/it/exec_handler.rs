//! The `exec` handler running `/bin/sh` scripts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use leasehold_core::ids::NodeId;
use leasehold_worker::handlers::{Exec, ExecPolicy, ExecUser, ExecUserError, builtin};
use leasehold_worker::{Context, Handler};

use crate::handler_errors::{assert_retryable, assert_terminal, context};
use serde_json::{Value, json};

fn ctx(input: Value) -> Context {
    Context {
        run_inputs: json!({ "customer": "c-1" }),
        upstream: BTreeMap::from([(NodeId::from("fetch"), json!({ "price": 10 }))]),
        ..context("script", 2, input)
    }
}

/// `sh` and `/bin/sh` allowed, with `PATH` so that scripts find `sleep` and `head`.
fn exec() -> Exec {
    Exec::new(ExecPolicy {
        allowed_programs: vec!["sh".into(), "/bin/sh".into()],
        allowed_env: vec!["PATH".into()],
        ..ExecPolicy::default()
    })
}

fn sh(script: &str) -> Value {
    json!({ "argv": ["sh", "-c", script] })
}

/// A file for a script to report pids in, unique to the test.
struct PidFile(PathBuf);

impl PidFile {
    fn new(test: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("leasehold-exec-{}-{test}.pids", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }

    /// A script that starts a grandchild, reports its own pid and the grandchild's, and sleeps.
    fn script(&self) -> Value {
        sh(&format!(
            "sleep 300 & echo \"$$ $!\" > {}; sleep 300",
            self.0.display()
        ))
    }

    /// The shell's pid and the grandchild's, once the script has written them.
    async fn pids(&self) -> (i32, i32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.0)
                && text.ends_with('\n')
            {
                let mut pids = text.split_whitespace().map(|p| p.parse().unwrap());
                return (pids.next().unwrap(), pids.next().unwrap());
            }
            assert!(Instant::now() < deadline, "the script never wrote its pids");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether `pid` has exited. A zombie has: it only waits for a parent (here, often whatever
/// adopted the orphaned grandchild) to reap it.
fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

async fn assert_gone(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pids.iter().all(|pid| is_gone(*pid)) {
        assert!(Instant::now() < deadline, "still running: {pids:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn stdout_json_is_the_output() {
    let result = exec()
        .run(ctx(sh(r#"echo '{"total": 42, "items": ["a", "b"]}'"#)))
        .await;

    assert_eq!(result, Ok(json!({ "total": 42, "items": ["a", "b"] })));
}

#[tokio::test]
async fn empty_stdout_is_null() {
    assert_eq!(exec().run(ctx(sh("true"))).await, Ok(Value::Null));
}

#[tokio::test]
async fn stdin_carries_the_input_and_upstream() {
    let ctx = ctx(json!({ "argv": ["/bin/sh", "-c", "cat"], "timeout_ms": 10_000 }));
    let want = json!({
        "run_id": ctx.run_id,
        "node_id": "script",
        "attempt": 2,
        "input": ctx.input,
        "run_inputs": { "customer": "c-1" },
        "upstream": { "fetch": { "price": 10 } },
    });

    assert_eq!(exec().run(ctx).await, Ok(want));
}

/// Prints the names of the variables in the child's environment, as a JSON array. The shell
/// exports `PWD` itself, so it is left out.
const PRINT_ENV_NAMES: &str = r#"
    printf '['; sep=''
    for name in $(export -p | sed -n 's/^export \([A-Za-z_][A-Za-z0-9_]*\).*/\1/p'); do
        [ "$name" = PWD ] && continue
        printf '%s"%s"' "$sep" "$name"; sep=,
    done
    printf ']'
"#;

/// The names of the variables in the child's environment.
async fn child_env_names(allowed_env: &[&str]) -> Vec<String> {
    let handler = Exec::new(ExecPolicy {
        allowed_programs: vec!["sh".into()],
        allowed_env: allowed_env.iter().map(|&name| name.to_owned()).collect(),
        ..ExecPolicy::default()
    });
    let names = handler.run(ctx(sh(PRINT_ENV_NAMES))).await.unwrap();
    let mut names: Vec<String> = serde_json::from_value(names).unwrap();
    names.sort();
    names
}

const LEASEHOLD_VARIABLES: [&str; 4] = [
    "LEASEHOLD_ATTEMPT",
    "LEASEHOLD_IDEMPOTENCY_KEY",
    "LEASEHOLD_NODE_ID",
    "LEASEHOLD_RUN_ID",
];

#[tokio::test]
async fn child_environment_is_only_the_allow_list_and_leasehold_variables() {
    // Cargo sets CARGO_* variables for test processes, and HOME and PATH are usually set: none
    // of them may reach the child unless allowed.
    let names = child_env_names(&[]).await;

    assert_eq!(names, LEASEHOLD_VARIABLES);
}

#[tokio::test]
async fn allowed_variables_reach_the_child_when_set() {
    let names =
        child_env_names(&["PATH", "CARGO_PKG_NAME", "LEASEHOLD_TEST_NOT_SET_ANYWHERE"]).await;

    let mut want = LEASEHOLD_VARIABLES.to_vec();
    want.push("PATH");
    if std::env::var_os("CARGO_PKG_NAME").is_some() {
        want.push("CARGO_PKG_NAME");
    }
    want.sort_unstable();
    assert_eq!(names, want);
}

#[tokio::test]
async fn leasehold_variables_describe_the_attempt() {
    let script = r#"printf '{"run":"%s","node":"%s","attempt":"%s","key":"%s"}' \
        "$LEASEHOLD_RUN_ID" "$LEASEHOLD_NODE_ID" "$LEASEHOLD_ATTEMPT" "$LEASEHOLD_IDEMPOTENCY_KEY""#;
    let ctx = ctx(sh(script));
    let want = json!({
        "run": ctx.run_id.to_string(),
        "node": "script",
        "attempt": "2",
        "key": ctx.idempotency_key,
    });

    assert_eq!(exec().run(ctx).await, Ok(want));
}

#[tokio::test]
async fn program_outside_the_allow_list_is_terminal() {
    let result = exec()
        .run(ctx(json!({ "argv": ["bash", "-c", "echo 1"] })))
        .await;

    assert_terminal(&result, "\"bash\"");
    assert_terminal(&result, "--exec-allow");
}

#[tokio::test]
async fn allow_list_matches_exact_strings() {
    let handler = Exec::new(ExecPolicy {
        allowed_programs: vec!["/bin/sh".into()],
        ..ExecPolicy::default()
    });

    let result = handler.run(ctx(sh("echo 1"))).await;

    assert_terminal(&result, "--exec-allow");
}

#[tokio::test]
async fn missing_or_unrunnable_program_is_terminal() {
    let handler = Exec::new(ExecPolicy {
        allowed_programs: vec!["leasehold-no-such-program".into(), "/dev/null".into()],
        ..ExecPolicy::default()
    });

    let missing = handler
        .run(ctx(json!({ "argv": ["leasehold-no-such-program"] })))
        .await;
    let unrunnable = handler.run(ctx(json!({ "argv": ["/dev/null"] }))).await;

    assert_terminal(&missing, "not found");
    assert_terminal(&unrunnable, "cannot start");
}

#[tokio::test]
async fn failing_exit_is_retryable_with_stderr() {
    let result = exec().run(ctx(sh("echo 'disk full' >&2; exit 3"))).await;

    assert_retryable(&result, "exited with code 3");
    assert_retryable(&result, "disk full");
}

#[tokio::test]
async fn exit_code_listed_as_terminal_is_terminal() {
    let input = json!({
        "argv": ["sh", "-c", "echo 'bad card' >&2; exit 3"],
        "terminal_exit_codes": [2, 3],
    });

    let result = exec().run(ctx(input)).await;

    assert_terminal(&result, "exited with code 3");
    assert_terminal(&result, "bad card");
}

#[tokio::test]
async fn stdout_that_is_not_json_is_terminal() {
    let result = exec().run(ctx(sh("echo hello world"))).await;

    assert_terminal(&result, "stdout is not JSON");
    assert_terminal(&result, "hello world");
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let pids = PidFile::new("timeout");
    let mut input = pids.script();
    input["timeout_ms"] = json!(500);

    let result = exec().run(ctx(input)).await;

    assert_retryable(&result, "timed out after 500 ms");
    let (child, grandchild) = pids.pids().await;
    assert_gone(&[child, grandchild]).await;
}

#[tokio::test]
async fn cancel_kills_the_whole_process_group() {
    let pids = PidFile::new("cancel");
    let ctx = ctx(pids.script());
    let cancel = ctx.cancel.clone();
    let run = tokio::spawn(async move { exec().run(ctx).await });

    let (child, grandchild) = pids.pids().await;
    cancel.cancel();
    let result = run.await.unwrap();

    assert_retryable(&result, "cancelled");
    assert_gone(&[child, grandchild]).await;
}

#[tokio::test]
async fn dropping_the_attempt_kills_the_whole_process_group() {
    let pids = PidFile::new("drop");
    let handler = exec();
    // Boxed, so that dropping `run` drops the future itself.
    let mut run = Box::pin(handler.run(ctx(pids.script())));

    let (child, grandchild) = tokio::select! {
        result = &mut run => panic!("the script ended early: {result:?}"),
        pids = pids.pids() => pids,
    };
    drop(run);

    assert_gone(&[child, grandchild]).await;
}

#[tokio::test]
async fn exit_kills_what_the_program_left_running() {
    // The background sleep keeps stdout open: without the kill the attempt would never end.
    let pids = PidFile::new("leftover");
    let script = format!(
        "sleep 300 & echo \"$$ $!\" > {}; echo '{{}}'",
        pids.0.display()
    );

    let result = tokio::time::timeout(Duration::from_secs(10), exec().run(ctx(sh(&script))))
        .await
        .expect("the attempt ends when the program does");

    assert_eq!(result, Ok(json!({})));
    let (_, grandchild) = pids.pids().await;
    assert_gone(&[grandchild]).await;
}

#[tokio::test]
async fn huge_stdout_is_truncated_without_hanging() {
    let handler = Exec::new(ExecPolicy {
        allowed_programs: vec!["sh".into()],
        allowed_env: vec!["PATH".into()],
        max_output_bytes: 1000,
        ..ExecPolicy::default()
    });

    let result = tokio::time::timeout(
        Duration::from_secs(20),
        handler.run(ctx(sh("head -c 50000000 /dev/zero"))),
    )
    .await
    .expect("the output is drained, not left to block the child");

    assert_terminal(&result, "stdout longer than 1000 bytes");
}

#[tokio::test]
async fn huge_stderr_is_truncated_in_the_message() {
    let handler = Exec::new(ExecPolicy {
        allowed_programs: vec!["sh".into()],
        allowed_env: vec!["PATH".into()],
        max_output_bytes: 1000,
        ..ExecPolicy::default()
    });

    let result = handler
        .run(ctx(sh(
            "head -c 50000000 /dev/zero | tr '\\0' x >&2; exit 1",
        )))
        .await;

    assert_retryable(&result, "exited with code 1");
    assert_retryable(&result, "stderr truncated at 1000 bytes");
}

#[tokio::test]
async fn exec_is_registered_only_with_an_allow_list() {
    let without = builtin(ExecPolicy::default()).kinds();
    let with = builtin(ExecPolicy {
        allowed_programs: vec!["sh".into()],
        ..ExecPolicy::default()
    })
    .kinds();

    assert!(without.contains(&"http".to_owned()) && !without.contains(&"exec".to_owned()));
    assert!(with.contains(&"http".to_owned()) && with.contains(&"exec".to_owned()));
}

#[tokio::test]
async fn an_entry_with_arguments_allows_only_argv_that_starts_with_them() {
    let handler = Exec::new(ExecPolicy {
        allowed_programs: vec!["sh -c 'echo 1'".into()],
        ..ExecPolicy::default()
    });

    let exact = handler.run(ctx(sh("echo 1"))).await;
    let other_script = handler.run(ctx(sh("echo 2"))).await;
    let bare = handler.run(ctx(json!({ "argv": ["sh"] }))).await;

    assert_eq!(exact, Ok(json!(1)));
    assert_terminal(&other_script, "allowed only with the arguments");
    assert_terminal(&bare, "allowed only with the arguments");
}

#[tokio::test]
async fn more_arguments_may_follow_the_allowed_ones() {
    let handler = Exec::new(ExecPolicy {
        allowed_programs: vec!["sh -c 'echo $#'".into()],
        ..ExecPolicy::default()
    });

    let result = handler
        .run(ctx(
            json!({ "argv": ["sh", "-c", "echo $#", "zero", "a", "b"] }),
        ))
        .await;

    assert_eq!(result, Ok(json!(2)));
}

#[tokio::test]
async fn a_malformed_entry_allows_nothing() {
    let handler = Exec::new(ExecPolicy {
        allowed_programs: vec!["'sh".into()],
        ..ExecPolicy::default()
    });

    let result = handler.run(ctx(sh("true"))).await;

    assert_terminal(&result, "--exec-allow");
}

#[tokio::test]
async fn exec_user_runs_children_as_that_user_and_needs_root() {
    let lookup = ExecUser::lookup("nobody");
    if !nix::unistd::geteuid().is_root() {
        assert!(
            matches!(lookup, Err(ExecUserError::NotRoot { .. })),
            "{lookup:?}"
        );
        return;
    }
    let nobody = lookup.expect("the nobody user");
    assert_ne!(nobody.uid, 0);
    assert!(matches!(
        ExecUser::lookup("root"),
        Err(ExecUserError::Root(_))
    ));
    assert!(matches!(ExecUser::lookup("0"), Err(ExecUserError::Root(_))));
    let handler = Exec::new(ExecPolicy {
        allowed_programs: vec!["sh".into()],
        user: Some(nobody.clone()),
        ..ExecPolicy::default()
    });
    // The real, effective and saved ids, every group, and the user's variables.
    let script = r#"set -- $(sed -n 's/^Uid:\t//p; s/^Gid:\t//p; s/^Groups:\t*//p' /proc/self/status)
        printf '{"ids": "%s", "home": "%s", "user": "%s"}' "$*" "$HOME" "$USER""#;

    let output = handler.run(ctx(sh(script))).await.unwrap();

    let (u, g) = (nobody.uid, nobody.gid);
    assert_eq!(
        output,
        json!({
            "ids": format!("{u} {u} {u} {u} {g} {g} {g} {g}"),
            "home": nobody.home.display().to_string(),
            "user": nobody.name,
        }),
        "no supplementary groups are left"
    );
}
