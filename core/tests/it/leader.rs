//! The leader lease against a real Postgres: acquisition, renewal, takeover, resignation, and
//! the fence every sweep write checks.

use std::time::Duration;

use leasehold_core::ids::RunId;
use leasehold_core::lease::{self, LeaseView};
use leasehold_core::store::{LeaderEpoch, Leadership, ReapParams};
use leasehold_testkit::fixtures::{Bundle, LEADER_LEASE, setup, setup_run};

const ROLE: &str = "sweeps";

/// Whether `leader` could renew its lease.
async fn renews(b: &Bundle, leader: &Leadership) -> bool {
    b.store
        .renew_leadership(leader, LEADER_LEASE)
        .await
        .expect("renew")
}

/// The role `name` for `holder`, if it was free.
async fn acquire(b: &Bundle, name: &str, holder: &str) -> Option<Leadership> {
    b.store
        .try_acquire_leadership(name, holder, LEADER_LEASE)
        .await
        .expect("acquire")
}

/// The runs of `expired` that `leader` requeued.
async fn requeue(
    b: &Bundle,
    leader: &Leadership,
    expired: &[LeaseView],
    params: &ReapParams,
) -> Vec<RunId> {
    b.store
        .requeue_expired_as_leader(leader, expired, params)
        .await
        .expect("requeue")
}

#[tokio::test]
async fn a_live_leadership_is_renewed_by_its_holder_and_refused_to_others() {
    let b = setup().await;
    let first = b.leader_of(ROLE, "c1").await;
    assert_eq!(
        (first.name(), first.holder(), first.epoch()),
        (ROLE, "c1", LeaderEpoch(1))
    );

    let other = acquire(&b, ROLE, "c2").await;
    assert_eq!(other, None, "another holder's lease is alive");

    // Acquiring again while alive is a renewal: same epoch.
    let again = b.leader_of(ROLE, "c1").await;
    assert_eq!(again.epoch(), first.epoch());
    assert!(again.expires_at() >= first.expires_at());
    assert!(renews(&b, &first).await);
}

#[tokio::test]
async fn an_expired_leadership_is_taken_over_with_a_new_epoch_and_the_old_one_is_dead() {
    let b = setup().await;
    let old = b.leader_of(ROLE, "c1").await;

    b.expire_leadership(ROLE, Duration::from_millis(1)).await;
    let new = b.leader_of(ROLE, "c2").await;
    assert_eq!(new.epoch(), LeaderEpoch(2));
    assert!(
        !renews(&b, &old).await,
        "the former leader's renewal changes nothing"
    );
    assert!(
        !b.store.resign_leadership(&old).await.expect("resign"),
        "nor does its resignation"
    );
    assert!(renews(&b, &new).await);

    // The same holder coming back after its lease ran out starts a new term too.
    b.expire_leadership(ROLE, Duration::from_secs(1)).await;
    let back = b.leader_of(ROLE, "c2").await;
    assert_eq!(back.epoch(), LeaderEpoch(3));
    assert!(!renews(&b, &new).await);
}

#[tokio::test]
async fn a_resigned_leadership_is_taken_over_at_once() {
    let b = setup().await;
    let first = b.leader_of(ROLE, "c1").await;
    assert!(b.store.resign_leadership(&first).await.expect("resign"));
    let second = b.leader_of(ROLE, "c2").await;
    assert_eq!((second.holder(), second.epoch()), ("c2", LeaderEpoch(2)));
    assert!(!renews(&b, &first).await);
}

#[tokio::test]
async fn roles_are_independent() {
    let b = setup().await;
    let sweeps = acquire(&b, ROLE, "c1").await;
    let schedules = acquire(&b, "schedules", "c2").await;
    assert!(sweeps.is_some() && schedules.is_some());
}

#[tokio::test]
async fn sweep_writes_of_a_superseded_or_lapsed_leadership_change_nothing() {
    let (b, _, run_id) = setup_run("fenced-sweeps").await;
    b.claim("dead", 1).await;
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
    let moved = requeue(&b, &old, &expired, &params).await;
    assert!(moved.is_empty());

    let new = b.leader_of(ROLE, "c2").await;
    let moved = requeue(&b, &old, &expired, &params).await;
    assert!(moved.is_empty(), "superseded");
    assert_eq!(
        b.store
            .ensure_event_partitions(&old, None, 3)
            .await
            .expect("partitions"),
        None
    );

    let moved = requeue(&b, &new, &expired, &params).await;
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
