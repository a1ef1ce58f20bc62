//! `leasehold coordinator` as the real binary: it serves health once the database answers, and
//! SIGTERM stops it cleanly.

use std::process::{Command, Stdio};
use std::time::Duration;

use leasehold_testkit::TestDb;
use nix::sys::signal::Signal;

use crate::support::{free_port, signal, wait_exit, wait_serving};

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn serves_health_and_stops_on_sigterm() {
    let db = TestDb::new().await;
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(["coordinator", "--listen", &format!("127.0.0.1:{port}")])
        .env("LEASEHOLD_DATABASE_URL", db.url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn coordinator");

    wait_serving(&format!("http://127.0.0.1:{port}"), DEADLINE).await;
    // Every connection it holds, the tokens' and the health check's included, says whose it is.
    let (sql, connection) = tokio_postgres::connect(db.owner_url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let names: Vec<String> = sql
        .query(
            "SELECT application_name FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND backend_type = 'client backend'",
            &[],
        )
        .await
        .expect("sessions")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(!names.is_empty());
    assert!(
        names.iter().all(|name| name == "leasehold-coordinator"),
        "{names:?}"
    );

    signal(&child, Signal::SIGTERM);
    let status = wait_exit(&mut child, DEADLINE).await;
    assert!(status.success(), "{status:?}");
}
