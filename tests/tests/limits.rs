//! Limits across a fleet (issue 19): real workers racing for runs of a limited automation and a
//! rate-limited queue, checked over the recorded history, not sampled.
//!
//! `cargo test -p leasehold-fault-tests --test limits`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use leasehold_core::ids::RunId;
use leasehold_core::routing::Limits;
use leasehold_fault_tests::cluster::{Cluster, WorkerOpts};
use leasehold_fault_tests::scenario::{self, FINISH_DEADLINE, Line, SCENARIO_LIMIT, bounded};

/// A claim or an end of a hold, from the history of `runs`, in the order they committed where
/// the server records commit times (the test clusters do), else by their `occurred_at`. An
/// event's `occurred_at` is when its transaction began: a claim that began just before a
/// completion committed, and took the slot it freed, would seem to overlap it.
async fn claims_and_ends(c: &Cluster, runs: &[RunId]) -> Vec<(DateTime<Utc>, i64)> {
    let ids: Vec<uuid::Uuid> = runs.iter().map(|r| r.0).collect();
    let rows = c
        .sql
        .query(
            "SELECT CASE WHEN current_setting('track_commit_timestamp')::bool
                         THEN pg_xact_commit_timestamp(xmin) ELSE occurred_at END AS at,
                    CASE WHEN event = 'run_claimed' THEN 1 ELSE -1 END AS delta
             FROM run_events
             WHERE run_id = ANY($1) AND event IN ('run_claimed', 'run_completed')
             -- On a tie an end counts first: a claim that took a freed slot read its holder's
             -- end as committed, so it cannot have begun before it.
             ORDER BY at, delta",
            &[&ids],
        )
        .await
        .expect("history");
    rows.iter()
        .map(|row| (row.get("at"), i64::from(row.get::<_, i32>("delta"))))
        .collect()
}

/// Four workers race for 40 runs of an automation with `max_running: 3`, each run a 150 ms
/// sleep. Replaying every claim and completion in the order they happened, never more than 3
/// are held, and 3 are held at some point (the limit, not the workers, was the bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_never_hold_more_than_max_running() {
    let _alone = scenario::one_at_a_time().await;
    bounded("max-running", SCENARIO_LIMIT, async {
        let mut c = Cluster::start(
            "max-running",
            leasehold_fault_tests::bins!(),
            1,
            &scenario::workers(4),
        )
        .await;
        let line = max_running(&mut c).await;
        c.conclude(line).await;
    })
    .await;
}

async fn max_running(c: &mut Cluster) -> Line {
    let automation = c
        .automation(
            "id: capped\nmax_running: 3\nnodes:\n  - {id: a, kind: sleep, input: {ms: 150}}\n",
        )
        .await;
    let runs = c.start_runs(&automation, 40).await;
    c.wait_all(&runs, "completed", FINISH_DEADLINE).await;
    let history = claims_and_ends(c, &runs).await;
    assert_eq!(history.len(), 80, "one claim and one completion per run");
    let mut held = 0;
    let mut most = 0;
    for (at, delta) in &history {
        held += delta;
        assert!(held <= 3, "{held} runs held at {at}");
        most = most.max(held);
    }
    assert_eq!(most, 3, "the limit was reached");
    Line {
        scenario: "max-running",
        runs: runs.len(),
        lost: 0,
        double_completed: 0,
        recovery: Duration::ZERO,
        bound: Duration::ZERO,
        took: Duration::ZERO,
    }
}

/// The default queue limited to 50 starts per second (burst 20) starts 500 runs on four workers in no
/// less than 9.5 s, from the first claim to the last, by the database's clock; the line shows how
/// close to the rate they came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_queue_starts_no_faster_than_its_rate() {
    let _alone = scenario::one_at_a_time().await;
    bounded("rate-limit", SCENARIO_LIMIT, async {
        let mut c = Cluster::start(
            "rate-limit",
            leasehold_fault_tests::bins!(),
            1,
            &[WorkerOpts::default(); 4],
        )
        .await;
        let line = rate_limit(&mut c).await;
        c.conclude(line).await;
    })
    .await;
}

async fn rate_limit(c: &mut Cluster) -> Line {
    c.store
        .set_queue_limits(
            "default",
            &Limits {
                max_starts_per_second: Some(50.0),
                // At most 20 at once: with the first 20 at once, the 500th start comes no
                // sooner than 480 / 50 = 9.6 s after the first.
                burst: Some(20),
                ..Limits::default()
            },
        )
        .await
        .expect("limit the queue");
    let automation = c
        .automation("id: paced\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    let runs = c.start_runs(&automation, 500).await;
    c.wait_all(&runs, "completed", FINISH_DEADLINE).await;
    let claims: Vec<DateTime<Utc>> = claims_and_ends(c, &runs)
        .await
        .into_iter()
        .filter(|(_, delta)| *delta == 1)
        .map(|(at, _)| at)
        .collect();
    assert_eq!(claims.len(), 500);
    let span = (claims[499] - claims[0]).to_std().expect("claims in order");
    assert!(
        span >= Duration::from_millis(9_500),
        "500 starts at 50/s took {span:?}"
    );
    Line {
        scenario: "rate-limit",
        runs: runs.len(),
        lost: 0,
        double_completed: 0,
        recovery: span,
        bound: FINISH_DEADLINE,
        took: Duration::ZERO,
    }
}
