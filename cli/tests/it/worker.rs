//! `leasehold worker` as the real binary: SIGTERM hands runs back; a second signal exits at once.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use leasehold_core::ids::{AutomationId, RunId, TenantId};
use leasehold_core::run::RunStatus;
use leasehold_core::spec;
use leasehold_core::store::{StartRun, Store, Trigger};
use leasehold_testkit::{TestDb, fixtures, wait_for};
use nix::sys::signal::Signal;

use crate::support::{signal, wait_exit};

const DEADLINE: Duration = Duration::from_secs(20);

async fn store_with_slow_runs(db: &TestDb, runs: usize) -> (Store, Vec<RunId>) {
    let store = Store::connect_unchecked(db.url(), 2).expect("pool");
    store.migrate().await.expect("migrate");
    let tenant = TenantId::default();
    let spec =
        spec::parse_yaml("id: slow\nnodes:\n  - {id: wait, kind: sleep, input: {ms: 600000}}\n")
            .expect("spec");
    store
        .create_automation(&tenant, &spec)
        .await
        .expect("automation");
    let mut ids = Vec::new();
    for _ in 0..runs {
        let started = store
            .start_run(&StartRun {
                trigger: Trigger::Manual,
                actor: None,
                ..fixtures::start_request(&tenant, &AutomationId::from("slow"))
            })
            .await
            .expect("start");
        ids.push(started.run_id);
    }
    (store, ids)
}

fn worker(db: &TestDb, grace: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args([
            "worker",
            "--claimant-id",
            "cli-worker",
            "--poll-interval",
            "50ms",
        ])
        .args(["--shutdown-grace", grace])
        .env("LEASEHOLD_DATABASE_URL", db.url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn leasehold worker")
}

async fn wait_running(store: &Store, ids: &[RunId]) {
    let tenant = TenantId::default();
    for id in ids {
        wait_for(DEADLINE, "the worker to claim the run", || async {
            (store.run(&tenant, *id).await.ok()?.status == RunStatus::Running).then_some(())
        })
        .await;
    }
}

/// A migrated database with `runs` slow runs, and `leasehold worker` (with a shutdown grace of
/// `grace`) once it holds them all.
async fn running_worker(runs: usize, grace: &str) -> (TestDb, Store, Vec<RunId>, Child) {
    let db = TestDb::new().await;
    let (store, ids) = store_with_slow_runs(&db, runs).await;
    let child = worker(&db, grace);
    wait_running(&store, &ids).await;
    (db, store, ids, child)
}

#[tokio::test]
async fn sigterm_hands_held_runs_back_and_exits_zero() {
    let (_db, store, ids, mut child) = running_worker(2, "200ms").await;

    signal(&child, Signal::SIGTERM);
    let status = wait_exit(&mut child, DEADLINE).await;
    assert!(status.success(), "{status:?}");
    for id in &ids {
        let run = store.run(&TenantId::default(), *id).await.expect("run");
        assert_eq!(run.status, RunStatus::Queued);
        assert_eq!(run.queue_reason.as_deref(), Some("released_shutdown"));
    }
    let row = store
        .worker_heartbeat(&leasehold_core::ids::ClaimantId::from("cli-worker"))
        .await
        .expect("heartbeat");
    assert_eq!(row, None, "the worker removed its row");
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let (_db, _store, _ids, mut child) = running_worker(1, "10m").await;

    // The first signal starts a ten-minute grace period; the second cuts it short. They are
    // different signals, so the kernel delivers both even when they arrive together.
    signal(&child, Signal::SIGTERM);
    signal(&child, Signal::SIGINT);
    let status = wait_exit(&mut child, DEADLINE).await;
    assert_eq!(status.code(), Some(130));
}
