//! The reaper: expired leases requeued or stale-reaped, on both sides of the horizon, each run
//! moved once, poisoned runs blocked.

use std::time::Duration;

use chrono::Utc;
use leasehold_coordinator::sweeps::{Config, ReapOutcome};
use leasehold_coordinator::sweeps::{Pass, Reaper, Sweep};
use leasehold_core::lease;
use leasehold_core::run::NodeStatus;
use leasehold_core::store::ReapParams;

use super::{REQUEUED, STALE_REAPED, config, crowd, idle_until, ms, pass, setup_leading};

/// A pass's outcome: how many runs it requeued, stale-reaped and blocked.
fn reaped(requeued: u64, stale_reaped: u64, blocked: u64) -> ReapOutcome {
    ReapOutcome {
        requeued,
        stale_reaped,
        blocked,
    }
}

#[tokio::test]
async fn reaper_acts_only_once_a_lease_has_expired() {
    let (b, leader, automation) = setup_leading("horizon").await;
    let idle = b.start(&automation).await;
    b.claim_one("idle").await;
    let busy = b.progressed(&automation, "busy").await.claim.run_id();
    // Well apart, so that each run's horizon is crossed alone.
    b.sql
        .execute(
            "UPDATE runs SET lease_expires_at = lease_expires_at + interval '1 minute'
             WHERE run_id = $1",
            &[&busy.0],
        )
        .await
        .expect("push the lease out");

    for (run_id, want) in [(idle, reaped(1, 0, 0)), (busy, reaped(0, 1, 0))] {
        let expires = b.lease_expiry(run_id).await;
        idle_until(expires, &format!("{run_id} "), async |now| {
            pass(&b, Reaper, &leader, Some(now)).await
        })
        .await;
        let outcome = pass(&b, Reaper, &leader, Some(expires + ms(1))).await;
        assert_eq!(outcome, want, "{run_id} expired by 1 ms");
    }
    let row = b.row(idle).await;
    assert_eq!(
        (row.status.as_str(), row.queue_reason.as_deref()),
        ("queued", Some("claim_expired"))
    );
    assert_eq!(b.row(busy).await.status, "paused");
    let a = &b.checkpoint(busy).await[0];
    assert_eq!((a.status, a.attempts), (NodeStatus::Failed, 1));
}

#[tokio::test]
async fn reaper_never_touches_a_live_lease_nor_a_run_cancelled_meanwhile() {
    let (b, leader, automation) = setup_leading("alive").await;
    let live = b.start(&automation).await;
    let cancelled_before = b.start(&automation).await;
    let cancelled_meanwhile = b.start(&automation).await;
    b.claim("w", 3).await;
    b.expire_lease(cancelled_before, Duration::from_secs(60))
        .await;
    b.expire_lease(cancelled_meanwhile, Duration::from_secs(60))
        .await;
    b.cancel(cancelled_before, "stop").await;

    // Cancelled between the reaper's read and its write: the write re-checks and changes nothing.
    let params = ReapParams {
        now: None,
        limit: 100,
        poison_limit: lease::POISON_LIMIT_DEFAULT,
    };
    let expired = b.store.expired_leases(&params).await.expect("expired");
    assert_eq!(
        expired.iter().map(|v| v.run_id).collect::<Vec<_>>(),
        vec![cancelled_meanwhile]
    );
    b.cancel(cancelled_meanwhile, "stop").await;
    let moved = b
        .store
        .requeue_expired_as_leader(&leader, &expired, &params)
        .await
        .expect("requeue");
    assert!(moved.is_empty());

    let later = Utc::now() + chrono::TimeDelta::seconds(5);
    let outcome = pass(&b, Reaper, &leader, Some(later)).await;
    assert_eq!(outcome, ReapOutcome::default());
    assert_eq!(b.row(live).await.status, "running");
    assert_eq!(b.row(live).await.claimant_id.as_deref(), Some("w"));
    for run_id in [cancelled_before, cancelled_meanwhile] {
        assert_eq!(b.row(run_id).await.status, "cancelled");
        assert_eq!(b.event_count(run_id, REQUEUED).await, 0);
    }
}

#[tokio::test]
async fn reaper_blocks_a_run_whose_claims_keep_expiring() {
    let (b, leader, automation) = setup_leading("poison").await;
    let run_id = b.start(&automation).await;
    let config = Config {
        poison_limit: 2,
        ..config()
    };
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        b.claim_one("doomed").await;
        b.expire_lease(run_id, Duration::from_secs(1)).await;
        outcomes.push(
            Reaper
                .run_once(Pass::new(&b.store, &leader, &config, None))
                .await
                .expect("reap"),
        );
    }
    assert_eq!(outcomes, vec![reaped(1, 0, 0), reaped(0, 0, 1)]);
    let row = b.row(run_id).await;
    assert_eq!(
        (row.status.as_str(), row.stop_kind.as_deref()),
        ("blocked", Some("poisoned"))
    );
}

#[tokio::test]
async fn two_reapers_at_once_move_each_expired_run_exactly_once() {
    let (b, runs) = crowd("crowd", 120).await;
    b.expire_all_leases(Duration::from_secs(60)).await;

    // Two roles, so that both fences pass and only the row-level re-checks keep the reapers
    // from acting twice: the worst case, as if the leader lease itself had failed.
    let config = Config {
        batch_limit: 7,
        ..config()
    };
    let mut reapers = Vec::new();
    for (role, holder) in [("sweeps-a", "c1"), ("sweeps-b", "c2")] {
        let leader = b.leader_of(role, holder).await;
        let store = b.store.clone();
        let config = config.clone();
        reapers.push(tokio::spawn(async move {
            let mut total = ReapOutcome::default();
            loop {
                let pass = Reaper
                    .run_once(Pass::new(&store, &leader, &config, None))
                    .await
                    .expect("reap");
                if pass == ReapOutcome::default() {
                    return total;
                }
                total.requeued += pass.requeued;
                total.stale_reaped += pass.stale_reaped;
                total.blocked += pass.blocked;
            }
        }));
    }
    let mut total = ReapOutcome::default();
    for reaper in reapers {
        let pass = reaper.await.expect("reaper task");
        total.requeued += pass.requeued;
        total.stale_reaped += pass.stale_reaped;
    }
    assert_eq!(
        total,
        ReapOutcome {
            requeued: 60,
            stale_reaped: 60,
            blocked: 0
        }
    );
    for run_id in runs {
        let moved =
            b.event_count(run_id, REQUEUED).await + b.event_count(run_id, STALE_REAPED).await;
        assert_eq!(moved, 1, "{run_id}");
    }
}
