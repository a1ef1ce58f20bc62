//! `leasehold migrate`, run as the real binary against a real Postgres.

use std::process::{Command, Output};

use leasehold_core::store::{SCHEMA_CEILING_ENV, Store};
use leasehold_testkit::{RUNTIME_ROLE, TestDb};

fn leasehold(args: &[&str], database_url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(args)
        .env("LEASEHOLD_DATABASE_URL", database_url)
        .output()
        .expect("run leasehold")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn dry_run_lists_then_migrate_applies_then_nothing_is_left() {
    let db = TestDb::empty().await;

    // The dry run lists every migration, then the migration applies each, saying what kind of
    // step it is and how long it took.
    for (args, says) in [
        (&["migrate", "--dry-run"][..], "would apply"),
        (&["migrate"][..], "applied"),
    ] {
        let output = leasehold(args, db.owner_url());
        assert!(output.status.success(), "{output:?}");
        for migration in [
            "V1__initial_schema",
            "V2__leaner_run_writes",
            "V10__drop_v1",
        ] {
            assert!(
                stdout(&output).contains(&format!("{says} {migration}")),
                "{}",
                stdout(&output)
            );
        }
        for plan in [
            "V9__runs_concurrency_key_index: expand, outside a transaction",
            "V10__drop_v1_idempotency_constraint: contract (raises the floor to 2), outside a \
             transaction",
            "V12__run_trace_context: expand, in a transaction",
        ] {
            assert!(stdout(&output).contains(plan), "{}", stdout(&output));
        }
    }
    let applied = stdout(&leasehold(&["migrate", "--dry-run"], db.owner_url()));
    assert!(applied.contains("nothing to apply"), "{applied}");
    let newest = leasehold_core::store::known_version().expect("known");
    assert!(
        applied.contains(&format!("version {newest}, floor 2")),
        "{applied}"
    );
}

#[tokio::test]
async fn migrate_grants_the_runtime_role_which_then_serves_but_cannot_migrate() {
    let db = TestDb::empty().await;
    let output = leasehold(&["migrate", "--runtime-role", RUNTIME_ROLE], db.owner_url());
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout(&output).contains(&format!("granted the runtime role {RUNTIME_ROLE}")),
        "{}",
        stdout(&output)
    );
    Store::connect(db.url(), 1)
        .await
        .expect("the runtime role reads the schema's bookkeeping");
    let refused = leasehold(
        &["migrate", "--runtime-role", "no_such_role_here"],
        db.owner_url(),
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("\"no_such_role_here\" does not exist"),
        "{stderr}"
    );
}

/// A binary rehearsing as a release below the floor refuses, naming both numbers and what to do.
#[tokio::test]
async fn a_binary_below_the_floor_refuses_naming_both_numbers() {
    let db = TestDb::new().await;
    let refused = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(["migrate", "--dry-run"])
        .env("LEASEHOLD_DATABASE_URL", db.owner_url())
        .env(SCHEMA_CEILING_ENV, "1")
        .output()
        .expect("run leasehold");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    for says in [
        "knows schema 1",
        "schema 2 or later",
        "upgrade this binary to a release that knows schema 2 or later",
    ] {
        assert!(stderr.contains(says), "{stderr}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(["migrate", "--dry-run"])
        .env("LEASEHOLD_DATABASE_URL", db.owner_url())
        .env(SCHEMA_CEILING_ENV, "eleven")
        .output()
        .expect("run leasehold");
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains(SCHEMA_CEILING_ENV), "{stderr}");
}

#[tokio::test]
async fn an_unreachable_database_is_reported_without_the_password() {
    let refused = leasehold(
        &["migrate", "--dry-run"],
        "postgres://app:s3cret@127.0.0.1:1/nowhere",
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}
