//! `leasehold migrate`, run as the real binary against a real Postgres.

use std::process::{Command, Output};

use leasehold_testkit::TestDb;

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
    let db = TestDb::new().await;

    // The dry run lists every migration, then the migration applies each.
    for (args, says) in [
        (&["migrate", "--dry-run"][..], "would apply"),
        (&["migrate"][..], "applied"),
    ] {
        let output = leasehold(args, db.url());
        assert!(output.status.success(), "{output:?}");
        for migration in ["V1__initial_schema", "V2__leaner_run_writes"] {
            assert!(
                stdout(&output).contains(&format!("{says} {migration}")),
                "{}",
                stdout(&output)
            );
        }
    }

    let again = leasehold(&["migrate", "--dry-run"], db.url());
    assert!(
        stdout(&again).contains("nothing to apply"),
        "{}",
        stdout(&again)
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused_with_a_message_that_says_so() {
    let db = TestDb::new().await;
    assert!(leasehold(&["migrate"], db.url()).status.success());
    let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
             VALUES (9999, 'from_the_future', '2030-01-01T00:00:00Z', '0')",
            &[],
        )
        .await
        .expect("fake a newer migration");

    let refused = leasehold(&["migrate"], db.url());
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("newer than this build knows"), "{stderr}");
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
