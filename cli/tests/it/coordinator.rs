//! `leasehold coordinator` as the real binary: it serves health once the database answers, and
//! SIGTERM stops it cleanly.

use std::process::{Command, Stdio};
use std::time::Duration;

use leasehold_core::store::Store;
use leasehold_testkit::TestDb;
use nix::sys::signal::Signal;

use crate::support::{free_port, signal, wait_exit, wait_serving};

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn serves_health_and_stops_on_sigterm() {
    let db = TestDb::new().await;
    Store::connect_unchecked(db.url(), 1)
        .expect("pool")
        .migrate()
        .await
        .expect("migrate");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(["coordinator", "--listen", &format!("127.0.0.1:{port}")])
        .env("LEASEHOLD_DATABASE_URL", db.url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn coordinator");

    wait_serving(&format!("http://127.0.0.1:{port}"), DEADLINE).await;

    signal(&child, Signal::SIGTERM);
    let status = wait_exit(&mut child, DEADLINE).await;
    assert!(status.success(), "{status:?}");
}
