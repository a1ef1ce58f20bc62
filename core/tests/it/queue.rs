//! The queue's standing the leader publishes as gauges: due, in backoff, held, oldest due age.

use std::time::Duration;

use leasehold_core::store::QueueStanding;
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
