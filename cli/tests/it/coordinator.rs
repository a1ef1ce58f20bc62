//! `leasehold coordinator` as the real binary: it serves health once the database answers, and
//! SIGTERM stops it cleanly.

use std::process::{Command, Stdio};
use std::time::Duration;

use leasehold_core::store::Store;
use leasehold_testkit::{TestDb, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const DEADLINE: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

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

    let endpoint = format!("http://127.0.0.1:{port}");
    wait_for(DEADLINE, "the coordinator to report SERVING", || {
        let endpoint = endpoint.clone();
        async move {
            let channel = tonic::transport::Endpoint::from_shared(endpoint)
                .ok()?
                .connect()
                .await
                .ok()?;
            let mut health = HealthClient::new(channel);
            let reply = health
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

    kill(
        Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        Signal::SIGTERM,
    )
    .expect("signal");
    let child = std::sync::Mutex::new(&mut child);
    let status = wait_for(DEADLINE, "the coordinator to exit", || async {
        child.lock().expect("child").try_wait().expect("wait")
    })
    .await;
    assert!(status.success(), "{status:?}");
}
