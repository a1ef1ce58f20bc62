//! A rolling upgrade from release N (schema 9) to N+1 (schema 10, a contract step raising the
//! floor to 2, and the expand steps after it), with runs in flight throughout.

use std::fs;

use leasehold_core::ids::ClaimantId;
use leasehold_testkit::{TestDb, wait_for};

use super::{DEADLINE, Proc, all_complete, log_dir, migrate, sleeper, start_runs, worker_args};
use crate::support::free_port;

/// Release N's schema: this build with V10 held back.
const RELEASE_N: i32 = 9;

/// Release N's coordinator and worker run runs; N+1 migrates while they do, and its coordinator
/// and worker start beside them; N's worker, restarted after N+1 migrated, starts and works. No
/// run fails or is lost, and nothing is refused. Then a binary that knows only schema 1, below
/// the floor N+1 raised, refuses to start with both numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_n_keeps_running_restarting_and_scaling_beside_n_plus_1() {
    let dir = log_dir("rolling-upgrade");
    let db = TestDb::empty().await;
    let migrated = String::from_utf8_lossy(&migrate(&db, Some(RELEASE_N)).stdout).into_owned();
    assert!(
        migrated.contains("schema is at version 9, floor 1"),
        "{migrated}"
    );
    let (store, automation) = sleeper(&db, 200).await;
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let coordinator_n = Proc::start(
        &dir,
        "coordinator-n",
        &["coordinator", "--listen", &listen],
        db.url(),
        Some(RELEASE_N),
    );
    let worker_n_args = worker_args("worker-n", "30s");
    let worker_n_args: Vec<&str> = worker_n_args.iter().map(String::as_str).collect();
    let mut worker_n = Proc::start(&dir, "worker-n", &worker_n_args, db.url(), Some(RELEASE_N));
    let mut runs = start_runs(&store, &automation, 20).await;
    registered(&store, "worker-n").await;

    // N+1 migrates while N's processes hold runs.
    let upgraded = String::from_utf8_lossy(&migrate(&db, None).stdout).into_owned();
    assert!(
        upgraded.contains("applied V10__drop_v1_idempotency_constraint")
            && upgraded.contains(&format!(
                "schema is at version {}, floor 2",
                leasehold_core::store::known_version().expect("known")
            )),
        "{upgraded}"
    );
    runs.extend(start_runs(&store, &automation, 20).await);

    // N+1's processes start beside N's.
    let listen_next = format!("127.0.0.1:{}", free_port());
    let coordinator_next = Proc::start(
        &dir,
        "coordinator-n+1",
        &["coordinator", "--listen", &listen_next],
        db.url(),
        None,
    );
    let worker_next_args = worker_args("worker-n+1", "30s");
    let worker_next_args: Vec<&str> = worker_next_args.iter().map(String::as_str).collect();
    let worker_next = Proc::start(&dir, "worker-n+1", &worker_next_args, db.url(), None);
    registered(&store, "worker-n+1").await;

    // N's worker, restarted on N+1's schema, starts and claims again.
    worker_n.assert_running();
    worker_n.stop().await;
    let mut worker_n = Proc::start(&dir, "worker-n", &worker_n_args, db.url(), Some(RELEASE_N));
    registered(&store, "worker-n").await;
    runs.extend(start_runs(&store, &automation, 20).await);
    all_complete(&store, &runs).await;
    worker_n.assert_running();

    // A binary below the floor refuses, saying both numbers and what to do.
    let too_old_args = worker_args("worker-too-old", "30s");
    let too_old_args: Vec<&str> = too_old_args.iter().map(String::as_str).collect();
    let (status, log) = Proc::start(&dir, "worker-too-old", &too_old_args, db.url(), Some(1))
        .exit()
        .await;
    assert!(!status.success(), "{log}");
    for says in [
        "knows schema 1",
        "schema 2 or later",
        "upgrade this binary to a release that knows schema 2 or later",
    ] {
        assert!(log.contains(says), "{log}");
    }

    let logs: Vec<String> = [&coordinator_n, &coordinator_next, &worker_n, &worker_next]
        .iter()
        .map(|p| p.log())
        .collect();
    for proc in [coordinator_n, coordinator_next, worker_n, worker_next] {
        proc.stop().await;
    }
    for log in &logs {
        assert!(
            !log.contains("accepts only releases") && !log.contains("leasehold migrate"),
            "a refusal:\n{log}"
        );
    }
    fs::remove_dir_all(&dir).expect("remove the logs");
}

/// Waits until a worker of `claimant` has registered and is not draining.
async fn registered(store: &leasehold_core::store::Store, claimant: &str) {
    let claimant = ClaimantId::from(claimant);
    wait_for(DEADLINE, "the worker to register", || async {
        store.worker_heartbeat(&claimant).await.ok()?.map(|_| ())
    })
    .await;
}
