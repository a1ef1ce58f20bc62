//! Starting without the database: `leasehold coordinator` and `leasehold worker` as the real
//! binaries, pointed at a database that does not answer, keep trying (the coordinator's health
//! NOT_SERVING meanwhile) and go to work once it does; `--exit-on-db-unavailable` exits instead.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use leasehold_core::ids::ClaimantId;
use leasehold_core::store::Store;
use leasehold_testkit::proxy::{Mode, Proxy, server_addr};
use leasehold_testkit::{TestDb, wait_for};
use nix::sys::signal::Signal;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{free_port, health, signal, wait_exit};

const DEADLINE: Duration = Duration::from_secs(40);

/// A file for a child's log, in the target directory, fresh for this test.
fn log_file(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("startup");
    fs::create_dir_all(&dir).expect("log dir");
    let path = dir.join(format!("{name}-{}.log", std::process::id()));
    let _ = fs::remove_file(&path);
    path
}

fn spawn(args: &[&str], url: &str, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(args)
        .env("LEASEHOLD_DATABASE_URL", url)
        .env("LEASEHOLD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn leasehold")
}

async fn wait_logged(log: &Path, what: &str) {
    wait_for(
        DEADLINE,
        &format!("{what:?} in {}", log.display()),
        || async {
            fs::read_to_string(log)
                .ok()
                .filter(|text| text.contains(what))
                .map(|_| ())
        },
    )
    .await;
}

async fn health_of(port: u16) -> Option<ServingStatus> {
    health(&format!("http://127.0.0.1:{port}"), "leasehold.v1.Runs").await
}

async fn stop(child: &mut Child) -> std::process::ExitStatus {
    signal(child, Signal::SIGTERM);
    wait_exit(child, DEADLINE).await
}

#[tokio::test]
async fn a_coordinator_and_a_worker_wait_for_the_database_and_then_serve() {
    let db = TestDb::new().await;
    let store = Store::connect_unchecked(db.url(), 2).expect("pool");
    store.migrate().await.expect("migrate");
    let proxy = Proxy::start(server_addr(db.url())).await;
    proxy.set(Mode::BlackHole);
    let url = proxy.url_for(db.url());

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let coordinator_log = log_file("coordinator");
    let mut coordinator = spawn(
        &["coordinator", "--listen", &listen, "--no-auth"],
        &url,
        &coordinator_log,
    );
    let worker_log = log_file("worker");
    let mut worker = spawn(
        &["worker", "--claimant-id", "patient-worker"],
        &url,
        &worker_log,
    );

    wait_for(
        DEADLINE,
        "health NOT_SERVING while the database is away",
        || async { (health_of(port).await == Some(ServingStatus::NotServing)).then_some(()) },
    )
    .await;
    wait_logged(&coordinator_log, "database unavailable; retrying").await;
    wait_logged(&worker_log, "database unavailable; retrying").await;
    assert!(coordinator.try_wait().expect("poll").is_none(), "still up");
    assert!(worker.try_wait().expect("poll").is_none(), "still up");

    proxy.set(Mode::Pass);
    wait_for(
        DEADLINE,
        "health SERVING once the database answers",
        || async { (health_of(port).await == Some(ServingStatus::Serving)).then_some(()) },
    )
    .await;
    wait_for(DEADLINE, "the worker to register", || async {
        let workers = store.list_workers(None).await.ok()?;
        workers
            .iter()
            .any(|w| w.claimant_id == ClaimantId::from("patient-worker"))
            .then_some(())
    })
    .await;
    wait_logged(&coordinator_log, "database available again").await;

    assert!(stop(&mut worker).await.success());
    assert!(stop(&mut coordinator).await.success());
}

#[tokio::test]
async fn exit_on_db_unavailable_exits_at_once_with_the_reason() {
    let db = TestDb::new().await;
    let proxy = Proxy::start(server_addr(db.url())).await;
    proxy.set(Mode::BlackHole);
    let url = proxy.url_for(db.url());

    for (name, args) in [
        (
            "coordinator-exits",
            vec!["coordinator", "--listen", "127.0.0.1:0", "--no-auth"],
        ),
        ("worker-exits", vec!["worker"]),
    ] {
        let log = log_file(name);
        let mut args = args;
        args.push("--exit-on-db-unavailable");
        let status = wait_exit(&mut spawn(&args, &url, &log), DEADLINE).await;
        assert!(!status.success(), "{name}: {status:?}");
        let said = fs::read_to_string(&log).expect("log");
        assert!(
            said.contains("connecting to the database"),
            "{name}: {said}"
        );
    }
}
