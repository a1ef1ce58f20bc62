//! The leader lease against a real Postgres: acquisition, renewal, takeover, resignation, and
//! the fence every sweep write checks.

use std::time::Duration;

use leasehold_core::ids::ClaimantId;
use leasehold_core::lease::{self, LeaseView};
use leasehold_core::store::{LeaderEpoch, ReapParams};
use leasehold_testkit::fixtures::{LEADER_LEASE, LEASE, setup, setup_run};

const ROLE: &str = "sweeps";

#[tokio::test]
async fn a_live_leadership_is_renewed_by_its_holder_and_refused_to_others() {
    let b = setup().await;
    let first = b.leader_of(ROLE, "c1").await;
    assert_eq!(
        (first.name(), first.holder(), first.epoch()),
        (ROLE, "c1", LeaderEpoch(1))
    );

    let other = b
        .store
        .try_acquire_leadership(ROLE, "c2", LEADER_LEASE)
        .await
        .expect("acquire");
    assert_eq!(other, None, "another holder's lease is alive");

    // Acquiring again while alive is a renewal: same epoch.
    let again = b.leader_of(ROLE, "c1").await;
    assert_eq!(again.epoch(), first.epoch());
    assert!(again.expires_at() >= first.expires_at());
    assert!(
        b.store
            .renew_leadership(&first, LEADER_LEASE)
            .await
            .expect("renew")
    );
}

#[tokio::test]
async fn an_expired_leadership_is_taken_over_with_a_new_epoch_and_the_old_one_is_dead() {
    let b = setup().await;
    let old = b.leader_of(ROLE, "c1").await;

    b.expire_leadership(ROLE, Duration::from_millis(1)).await;
    let new = b.leader_of(ROLE, "c2").await;
    assert_eq!(new.epoch(), LeaderEpoch(2));
    assert!(
        !b.store
            .renew_leadership(&old, LEADER_LEASE)
            .await
            .expect("renew"),
        "the former leader's renewal changes nothing"
    );
    assert!(
        !b.store.resign_leadership(&old).await.expect("resign"),
        "nor does its resignation"
    );
    assert!(
        b.store
            .renew_leadership(&new, LEADER_LEASE)
            .await
            .expect("renew")
    );

    // The same holder coming back after its lease ran out starts a new term too.
    b.expire_leadership(ROLE, Duration::from_secs(1)).await;
    let back = b.leader_of(ROLE, "c2").await;
    assert_eq!(back.epoch(), LeaderEpoch(3));
    assert!(
        !b.store
            .renew_leadership(&new, LEADER_LEASE)
            .await
            .expect("renew")
    );
}

#[tokio::test]
async fn a_resigned_leadership_is_taken_over_at_once() {
    let b = setup().await;
    let first = b.leader_of(ROLE, "c1").await;
    assert!(b.store.resign_leadership(&first).await.expect("resign"));
    let second = b.leader_of(ROLE, "c2").await;
    assert_eq!((second.holder(), second.epoch()), ("c2", LeaderEpoch(2)));
    assert!(
        !b.store
            .renew_leadership(&first, LEADER_LEASE)
            .await
            .expect("renew")
    );
}

#[tokio::test]
async fn roles_are_independent() {
    let b = setup().await;
    let sweeps = b
        .store
        .try_acquire_leadership(ROLE, "c1", LEADER_LEASE)
        .await
        .expect("acquire");
    let schedules = b
        .store
        .try_acquire_leadership("schedules", "c2", LEADER_LEASE)
        .await
        .expect("acquire");
    assert!(sweeps.is_some() && schedules.is_some());
}

#[tokio::test]
async fn sweep_writes_of_a_superseded_or_lapsed_leadership_change_nothing() {
    let (b, _, run_id) = setup_run("fenced-sweeps").await;
    b.store
        .claim_runs(&ClaimantId::from("dead"), 1, LEASE)
        .await
        .expect("claim");
    b.expire_lease(run_id, Duration::from_secs(60)).await;
    let params = ReapParams {
        now: None,
        limit: 100,
        poison_limit: lease::POISON_LIMIT_DEFAULT,
    };
    let expired: Vec<LeaseView> = b.store.expired_leases(&params).await.expect("expired");
    assert_eq!(expired.len(), 1);

    let old = b.leader_of(ROLE, "c1").await;
    // Lapsed, not yet taken over: its writes change nothing already.
    b.expire_leadership(ROLE, Duration::from_millis(1)).await;
    let moved = b
        .store
        .requeue_expired_as_leader(&old, &expired, &params)
        .await
        .expect("requeue");
    assert!(moved.is_empty());

    let new = b.leader_of(ROLE, "c2").await;
    let moved = b
        .store
        .requeue_expired_as_leader(&old, &expired, &params)
        .await
        .expect("requeue");
    assert!(moved.is_empty(), "superseded");
    assert_eq!(
        b.store
            .ensure_event_partitions(&old, None, 3)
            .await
            .expect("partitions"),
        None
    );

    let moved = b
        .store
        .requeue_expired_as_leader(&new, &expired, &params)
        .await
        .expect("requeue");
    assert_eq!(moved, vec![run_id]);
    assert_eq!(
        b.event_names(run_id)
            .await
            .iter()
            .filter(|e| *e == "run_execution_claim_expired_requeued")
            .count(),
        1
    );
}
