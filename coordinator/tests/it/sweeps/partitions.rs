//! Partition upkeep: monthly partitions of `run_events`, created ahead and idempotently.

use chrono::Utc;
use leasehold_coordinator::sweeps::PartitionsOutcome;
use leasehold_coordinator::sweeps::{Partitions, Pass, Sweep};
use leasehold_testkit::fixtures::setup;

use super::{config, lead};

#[tokio::test]
async fn partition_upkeep_creates_partitions_ahead_and_is_idempotent() {
    let b = setup().await;
    let leader = lead(&b, "c1").await;
    let before = b.partitions().await;

    // The migration created this month's partitions and the next ones.
    let today = Partitions
        .run_once(Pass::new(&b.store, &leader, &config(), None))
        .await
        .expect("upkeep");
    assert_eq!(today, PartitionsOutcome::default());

    let later = Utc::now() + chrono::TimeDelta::days(200);
    let ahead = Partitions
        .run_once(Pass::new(&b.store, &leader, &config(), Some(later)))
        .await
        .expect("upkeep");
    assert_eq!(ahead, PartitionsOutcome { created: 3 });
    assert_eq!(b.partitions().await, before + 3);
    let again = Partitions
        .run_once(Pass::new(&b.store, &leader, &config(), Some(later)))
        .await
        .expect("upkeep");
    assert_eq!(again, PartitionsOutcome::default());
    assert_eq!(b.partitions().await, before + 3);
}
