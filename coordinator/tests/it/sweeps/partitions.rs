//! Partition upkeep: monthly partitions of `run_events`, created ahead and idempotently.

use chrono::Utc;
use leasehold_coordinator::sweeps::Partitions;
use leasehold_coordinator::sweeps::PartitionsOutcome;
use leasehold_testkit::fixtures::setup;

use super::{lead, pass};

#[tokio::test]
async fn partition_upkeep_creates_partitions_ahead_and_is_idempotent() {
    let b = setup().await;
    let leader = lead(&b, "c1").await;
    let before = b.partitions().await;

    // The migration created this month's partitions and the next ones.
    let today = pass(&b, Partitions, &leader, None).await;
    assert_eq!(today, PartitionsOutcome::default());

    let later = Utc::now() + chrono::TimeDelta::days(200);
    let ahead = pass(&b, Partitions, &leader, Some(later)).await;
    assert_eq!(ahead, PartitionsOutcome { created: 3 });
    assert_eq!(b.partitions().await, before + 3);
    let again = pass(&b, Partitions, &leader, Some(later)).await;
    assert_eq!(again, PartitionsOutcome::default());
    assert_eq!(b.partitions().await, before + 3);
}
