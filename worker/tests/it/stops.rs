//! Cancels and pauses that land at once (a NOTIFY tells the holder, the heartbeat is the
//! fallback), and attempts interrupted by a clean stop that do not count.

use std::path::Path;
use std::time::Duration;

use crate::bundle::{Bundle, DEADLINE, config, setup};
use crate::worker::{pid_alive, read_pids, tempdir};
use leasehold_core::ids::RunId;
use leasehold_core::run::{CLEAN_INTERRUPTIONS_CAP, NodeStatus, RunStatus};
use leasehold_testkit::wait_for;
use leasehold_worker::{Config, Outcome};

/// Well under a heartbeat interval of the long lease below (20 s): a stop seen within it came
/// from the notification, not from a heartbeat.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// A lease of 60 s, so that the heartbeat (every 20 s) cannot be what stops a node in a test.
fn long_lease(name: &str) -> Config {
    let mut config = config(name).with_lease(Duration::from_secs(60));
    config.shutdown_grace = Duration::from_secs(5);
    config.validated().expect("test config")
}

/// An exec node of one attempt whose shell writes its own pid and a grandchild's, then waits.
fn hanging_exec(id: &str, pid_file: &Path) -> String {
    let pids = pid_file.display();
    format!(
        "id: {id}
nodes:
  - id: hang
    kind: exec
    max_attempts: 1
    timeout_ms: 600000
    input:
      argv: [/bin/sh, -c, 'sleep 300 & echo $$ $! > {pids}.tmp; mv {pids}.tmp {pids}; wait']
"
    )
}

async fn group_gone(pids: &[i32]) {
    wait_for(
        STOP_DEADLINE,
        "the exec process group to be gone",
        || async { pids.iter().all(|p| !pid_alive(*p)).then_some(()) },
    )
    .await;
}

/// What the run's rows and history look like, to compare before and after.
async fn written(b: &Bundle, run_id: RunId) -> (String, String, Vec<String>) {
    (
        format!("{:?}", b.run(run_id).await),
        format!("{:?}", b.checkpoint(run_id).await),
        b.event_names(run_id).await,
    )
}

#[tokio::test]
async fn a_cancel_reaches_the_holder_at_once_and_kills_the_exec_process_group() {
    let b = setup().await;
    let pid_file = tempdir().join("pids");
    let automation = b.automation(&hanging_exec("cancel-now", &pid_file)).await;
    let worker = b.spawn_worker(long_lease("w1"));
    let run_id = b.start(&automation).await;
    let pids = read_pids(&pid_file).await;
    assert!(pids.iter().all(|p| pid_alive(*p)));

    b.cancel(run_id, "user asked").await;
    group_gone(&pids).await;
    let after_cancel = written(&b, run_id).await;
    let report = worker.stop().await;

    assert_eq!(report.outcomes, vec![Outcome::LeaseLost]);
    assert_eq!(b.status(run_id).await, RunStatus::Cancelled);
    assert_eq!(
        written(&b, run_id).await,
        after_cancel,
        "the worker wrote nothing for the run after the cancel"
    );
    assert_eq!(
        after_cancel.2.last().map(String::as_str),
        Some("run_cancelled")
    );
}

#[tokio::test]
async fn a_pause_stops_the_running_exec_node_at_once_and_its_attempt_does_not_count() {
    let b = setup().await;
    let pid_file = tempdir().join("pids");
    let automation = b.automation(&hanging_exec("pause-now", &pid_file)).await;
    let worker = b.spawn_worker(long_lease("w1"));
    let run_id = b.start(&automation).await;
    let pids = read_pids(&pid_file).await;

    b.pause(run_id, "hold on").await;
    group_gone(&pids).await;
    b.wait_status(run_id, RunStatus::Paused).await;
    let run = b.run(run_id).await;
    assert_eq!(run.claimant_id, None, "the lease was given up");
    let node = &b.checkpoint(run_id).await[0];
    assert_eq!(node.status, NodeStatus::Failed);
    assert_eq!((node.attempts, node.clean_interruptions), (1, 1));
    assert_eq!(node.last_error_retryable, Some(true));
    let paused = b.last_event(run_id).await;
    assert_eq!(paused.event, "run_paused");
    assert_eq!(
        paused.metadata["interrupted"],
        serde_json::json!([{"node_id": "hang", "attempt": 1, "clean_interruptions": 1}])
    );

    // Resumed, the node of one attempt runs again: the pause did not use its attempt up. (A
    // new worker, since a worker caches the pinned spec this changes.)
    assert_eq!(worker.stop().await.outcomes, vec![Outcome::Paused]);
    b.sql
        .execute(
            "UPDATE automation_versions
             SET spec = jsonb_set(spec, '{nodes,0,input,argv}', '[\"/bin/sh\", \"-c\", \"true\"]')",
            &[],
        )
        .await
        .expect("make the node quick");
    b.store
        .resume_run(&b.tenant, run_id, "go on", "tester", None)
        .await
        .expect("resume");
    let worker = b.spawn_worker(long_lease("w2"));
    b.wait_status(run_id, RunStatus::Completed).await;
    worker.stop().await;
    let node = &b.checkpoint(run_id).await[0];
    assert_eq!(
        (node.status, node.attempts, node.clean_interruptions),
        (NodeStatus::Completed, 2, 1)
    );
}

#[tokio::test]
async fn without_notices_a_cancel_lands_at_the_next_heartbeat() {
    let b = setup().await;
    let pid_file = tempdir().join("pids");
    let automation = b.automation(&hanging_exec("cancel-beat", &pid_file)).await;
    let mut deaf = config("deaf");
    deaf.listen = false;
    let worker = b.spawn_worker(deaf);
    let run_id = b.start(&automation).await;
    let pids = read_pids(&pid_file).await;

    b.cancel(run_id, "user asked").await;
    group_gone(&pids).await;
    assert_eq!(worker.stop().await.outcomes, vec![Outcome::LeaseLost]);
    assert_eq!(b.status(run_id).await, RunStatus::Cancelled);
}

#[tokio::test]
async fn a_worker_whose_listening_connection_dropped_listens_again_and_checks_every_lease() {
    let b = setup().await;
    let pid_file = tempdir().join("pids");
    let automation = b.automation(&hanging_exec("relisten", &pid_file)).await;
    let worker = b.spawn_worker(long_lease("w1"));
    let run_id = b.start(&automation).await;
    let pids = read_pids(&pid_file).await;

    // End the listening session and cancel while nobody listens: the notice is lost, and the
    // next heartbeat is 20 s away. Listening again renews every lease at once.
    let listeners = "SELECT pid FROM pg_stat_activity
                     WHERE datname = current_database() AND query LIKE 'LISTEN leasehold_runs_stopped%'";
    wait_for(DEADLINE, "the worker to listen", || async {
        (!b.sql
            .query(listeners, &[])
            .await
            .expect("sessions")
            .is_empty())
        .then_some(())
    })
    .await;
    b.sql
        .execute(
            &format!("SELECT pg_terminate_backend(pid) FROM ({listeners}) AS l"),
            &[],
        )
        .await
        .expect("end the listening session");
    b.cancel(run_id, "user asked").await;
    group_gone(&pids).await;
    assert_eq!(worker.stop().await.outcomes, vec![Outcome::LeaseLost]);
}

#[tokio::test]
async fn a_node_interrupted_by_shutdown_at_the_cap_fails_its_run_with_the_reason() {
    let b = setup().await;
    let automation = b
        .automation(
            "id: never-fits
nodes:
  - {id: long, kind: record, max_attempts: 1, input: {sleep_ms: 600000}}
",
        )
        .await;
    let run_id = b.start(&automation).await;
    for restart in 1..=CLEAN_INTERRUPTIONS_CAP {
        let mut leaving = config(&format!("restart-{restart}"));
        leaving.shutdown_grace = Duration::from_millis(100);
        let worker = b.spawn_worker(leaving);
        let started = usize::try_from(restart).expect("small");
        wait_for(DEADLINE, "the node to start", || async {
            (b.ledger.of("long").len() == started).then_some(())
        })
        .await;
        assert_eq!(worker.stop().await.outcomes, vec![Outcome::Released]);
        let node = &b.checkpoint(run_id).await[0];
        assert_eq!(
            (node.attempts, node.clean_interruptions),
            (restart, restart),
            "a hand-back counts no attempt"
        );
    }
    assert_eq!(b.status(run_id).await, RunStatus::Queued);

    let last = b.spawn_worker(config("last"));
    b.wait_status(run_id, RunStatus::Failed).await;
    assert_eq!(last.stop().await.outcomes, vec![Outcome::Failed]);
    let ledger = b.ledger.of("long");
    assert_eq!(
        ledger.len(),
        usize::try_from(CLEAN_INTERRUPTIONS_CAP).expect("small"),
        "the node did not run an eleventh time"
    );
    assert_eq!(
        b.event_count(run_id, "run_released_shutdown").await,
        usize::try_from(CLEAN_INTERRUPTIONS_CAP).expect("small")
    );
    let failed = b.last_event(run_id).await;
    assert_eq!(failed.event, "run_failed");
    let reason = failed.reason.unwrap_or_default();
    assert!(
        reason.contains("interrupted by a shutdown or pause 10 times"),
        "{reason}"
    );
}
