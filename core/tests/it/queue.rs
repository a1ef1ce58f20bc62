//! The queue's standing the leader publishes as gauges: due, in backoff, held, oldest due age.

use std::time::Duration;

use leasehold_core::store::{QueueStanding, WORKER_DEMAND_SQL};
use leasehold_testkit::fixtures::{node, setup_diamond};

#[tokio::test]
async fn the_standing_counts_due_backoff_and_held_runs() {
    let (b, automation) = setup_diamond("queue").await;
    assert_eq!(
        b.store.queue_standing().await.expect("standing"),
        QueueStanding::default(),
        "an empty queue"
    );
    for _ in 0..4 {
        b.start(&automation).await;
    }
    // One claimed and kept running, one claimed and sent to backoff for an hour.
    b.claim_one("w").await;
    let retried = b.claim_one("w").await.claim;
    let attempt = b
        .store
        .node_started(&retried, &node("a"))
        .await
        .expect("start");
    b.store
        .node_failed(&retried, &node("a"), "503 from upstream", true)
        .await
        .expect("fail");
    b.store
        .schedule_retry(
            &retried,
            &node("a"),
            attempt + 1,
            Duration::from_secs(3_600),
        )
        .await
        .expect("schedule");

    let standing = b.store.queue_standing().await.expect("standing");
    assert_eq!(
        (
            standing.due,
            standing.in_backoff,
            standing.running,
            standing.pausing
        ),
        (2, 1, 1, 0),
        "{standing:?}"
    );
    assert!(standing.oldest_due_age.is_some(), "{standing:?}");

    // A due retry counts as due again, aged from its due time, not from its first queueing.
    b.backdate_retry(retried.run_id(), Duration::from_secs(90))
        .await;
    let standing = b.store.queue_standing().await.expect("standing");
    assert_eq!((standing.due, standing.in_backoff), (3, 0), "{standing:?}");
}

/// The autoscaler's query, as the store runs it and as KEDA runs its text (a plain query, no
/// parameters, one number back): due runs and held runs, never those in backoff or finished.
async fn demand(b: &leasehold_testkit::fixtures::Bundle) -> (u64, i64) {
    let by_store = b.store.worker_demand().await.expect("demand");
    let by_text: i64 = b
        .sql
        .query_one(WORKER_DEMAND_SQL, &[])
        .await
        .expect("the autoscaler's text runs as it is")
        .get(0);
    (by_store, by_text)
}

#[tokio::test]
async fn worker_demand_counts_due_and_held_runs_only() {
    let (b, automation) = setup_diamond("demand").await;
    assert_eq!(demand(&b).await, (0, 0), "an empty queue needs no worker");
    for _ in 0..5 {
        b.start(&automation).await;
    }
    assert_eq!(demand(&b).await, (5, 5), "five due runs");

    // Claiming moves a run from due to held: the demand stays.
    let held = b.claim_one("w").await.claim;
    assert_eq!(
        demand(&b).await,
        (5, 5),
        "claimed runs still need their worker"
    );

    // A run in backoff needs no worker until it is due.
    let retried = b.claim_one("w").await.claim;
    let attempt = b
        .store
        .node_started(&retried, &node("a"))
        .await
        .expect("start");
    b.store
        .node_failed(&retried, &node("a"), "503 from upstream", true)
        .await
        .expect("fail");
    b.store
        .schedule_retry(
            &retried,
            &node("a"),
            attempt + 1,
            Duration::from_secs(3_600),
        )
        .await
        .expect("schedule");
    assert_eq!(
        demand(&b).await,
        (4, 4),
        "the run in backoff is not counted"
    );

    // A finished run is not counted either; a retry that came due is.
    b.cancel(held.run_id(), "done with it").await;
    assert_eq!(demand(&b).await, (3, 3), "the cancelled run is not counted");
    b.backdate_retry(retried.run_id(), Duration::from_secs(90))
        .await;
    assert_eq!(demand(&b).await, (4, 4), "a due retry counts again");
}

#[tokio::test]
async fn a_pools_demand_counts_its_own_queue_only() {
    let b = leasehold_testkit::fixtures::setup().await;
    let gpu = b
        .automation("id: trains\nqueue: gpu\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    let plain = b
        .automation("id: plain\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    b.start_many(&gpu, 3).await;
    b.start_many(&plain, 2).await;
    let demand_of = |queue: &str| {
        let sql = leasehold_core::store::queue_demand_sql(queue).expect("a queue name");
        let b = &b;
        async move {
            b.sql
                .query_one(&sql, &[])
                .await
                .expect("the autoscaler's text runs as it is")
                .get::<_, i64>(0)
        }
    };
    assert_eq!(demand_of("gpu").await, 3);
    assert_eq!(demand_of("default").await, 2);
    // A held run still needs its pool.
    let claimed = b
        .store
        .claim_and_start_runs(
            &leasehold_core::ids::ClaimantId::from("w"),
            1,
            leasehold_testkit::fixtures::LEASE,
            0,
            &leasehold_core::store::Served::by(&leasehold_core::routing::Capabilities {
                queues: Some(["gpu".to_owned()].into()),
                kinds: ["noop".to_owned()].into(),
                ..Default::default()
            }),
        )
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(demand_of("gpu").await, 3);
    assert!(leasehold_core::store::queue_demand_sql("gpu'; DROP TABLE runs; --").is_err());
}
