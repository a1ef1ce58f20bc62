//! Run deadlines (issues 19 and 20) with the real binaries: the coordinator's deadline sweep
//! fails a run stuck in a long node once its run deadline passes, and its worker stops the node.
//!
//! `cargo test -p leasehold-fault-tests --test deadlines`.

use std::time::Duration;

use leasehold_fault_tests::cluster::{Cluster, WorkerOpts};
use leasehold_fault_tests::scenario::{self, FINISH_DEADLINE, Line, SCENARIO_LIMIT, bounded};

/// A run whose one node sleeps for an hour, with `run_timeout_ms: 2000`, on a worker that runs
/// one run at a time: the run fails as `run_timed_out` within a sweep interval of its deadline
/// (by the database's clock; the cluster's coordinator sweeps every 500 ms), its node's row is failed, and the worker stops the node: a run
/// started after it completes on the same worker, which had no room for it while the node ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_run_deadline_fails_and_its_node_stops() {
    let _alone = scenario::one_at_a_time().await;
    bounded("run-deadline", SCENARIO_LIMIT, async {
        let mut c = Cluster::start(
            "run-deadline",
            leasehold_fault_tests::bins!(),
            1,
            &[WorkerOpts {
                capacity: 1,
                ..WorkerOpts::default()
            }],
        )
        .await;
        let line = run_deadline(&mut c).await;
        c.conclude(line).await;
    })
    .await;
}

async fn run_deadline(c: &mut Cluster) -> Line {
    let stuck = c
        .automation(
            "id: stuck\nrun_timeout_ms: 2000\nnodes:\n  \
             - {id: nap, kind: sleep, timeout_ms: 3600000, input: {ms: 3600000}}\n",
        )
        .await;
    let plain = c
        .automation("id: plain\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    let run = c.start_runs(&stuck, 1).await[0];
    c.wait_all(&[run], "running", FINISH_DEADLINE).await;
    let next = c.start_runs(&plain, 1).await;
    c.wait_all(&[run], "failed", FINISH_DEADLINE).await;
    let row = c
        .sql
        .query_one(
            "SELECT r.stop_kind, n.status AS node_status,
                    extract(epoch FROM r.finished_at - r.run_deadline)::float8 AS late
             FROM runs r JOIN run_nodes n ON n.run_id = r.run_id AND n.node_id = 'nap'
             WHERE r.run_id = $1",
            &[&run.0],
        )
        .await
        .expect("the run and its node");
    assert_eq!(row.get::<_, String>("stop_kind"), "run_timed_out");
    assert_eq!(row.get::<_, String>("node_status"), "failed");
    // The worker had room for one run: the next completes only once the node has stopped.
    c.wait_all(&next, "completed", FINISH_DEADLINE).await;
    let late = Duration::from_secs_f64(row.get::<_, f64>("late").max(0.0));
    Line {
        scenario: "run-deadline",
        runs: 2,
        lost: 0,
        double_completed: 0,
        recovery: late,
        // A pass every sweep interval, and slack for a loaded machine.
        bound: c.timings.sweep + c.timings.margin,
        took: Duration::ZERO,
    }
}
