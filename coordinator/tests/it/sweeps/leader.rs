//! The leader: a paused former leader changes nothing, and the leader loop elects, hands over
//! and starts new terms between coordinators.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use leasehold_coordinator::sweeps::{
    self, AutoResumeOutcome, Config, PartitionsOutcome, PausingOutcome, ReapOutcome,
    StaleGatesOutcome,
};
use leasehold_coordinator::sweeps::{
    AutoResume, Partitions, Pass, Pausing, Reaper, StaleGates, Sweep,
};
use leasehold_core::ids::NodeId;
use leasehold_testkit::fixtures::{LEADER_LEASE, setup};
use leasehold_testkit::wait_for;
use tokio_util::sync::CancellationToken;

use super::{
    DEADLINE, REQUEUED, STALE_REAPED, config, crowd, fast_config, lead, setup_leading,
    spawn_coordinator, stale_reaped_run,
};

#[tokio::test]
async fn a_paused_former_leader_changes_nothing() {
    let (b, old, automation) = setup_leading("zombie").await;
    let (stale, _) = stale_reaped_run(&b, &automation, &old).await;
    let idle = b.start(&automation).await;
    b.claim_one("idle").await;
    let busy = b.progressed(&automation, "busy").await.claim.run_id();
    let pausing = b.progressed(&automation, "pauser").await;
    b.pause(pausing.claim.run_id(), "hold on").await;
    let gated = b.progressed(&automation, "gated").await;
    b.store
        .node_completed(&gated.claim, &NodeId::from("a"), &serde_json::json!(1))
        .await
        .expect("complete a");
    b.store
        .await_approval(&gated.claim, &NodeId::from("b"), "ship it?")
        .await
        .expect("gate");
    for run_id in [idle, busy, pausing.claim.run_id()] {
        b.expire_lease(run_id, Duration::from_secs(1)).await;
    }
    let later = Utc::now() + chrono::TimeDelta::days(200);

    // The old leader froze past its lease and another coordinator took over.
    b.expire_leadership(sweeps::LEADER_NAME_DEFAULT, Duration::from_millis(1))
        .await;
    let new = lead(&b, "c2").await;
    assert!(new.epoch() > old.epoch());

    // The old leader wakes up and sweeps as if nothing happened.
    let before = b.snapshot().await;
    let partitions_before = b.partitions().await;
    let cfg = config();
    let reaped = Reaper.run_once(Pass::new(&b.store, &old, &cfg, None)).await;
    let paused = Pausing
        .run_once(Pass::new(&b.store, &old, &cfg, None))
        .await;
    let resumed = AutoResume
        .run_once(Pass::new(&b.store, &old, &cfg, None))
        .await;
    let marked = StaleGates
        .run_once(Pass::new(&b.store, &old, &cfg, Some(later)))
        .await;
    let created = Partitions
        .run_once(Pass::new(&b.store, &old, &cfg, Some(later)))
        .await;
    assert_eq!(reaped.expect("reap"), ReapOutcome::default());
    assert_eq!(paused.expect("pausing"), PausingOutcome::default());
    assert_eq!(resumed.expect("resume"), AutoResumeOutcome::default());
    assert_eq!(marked.expect("gates"), StaleGatesOutcome::default());
    assert_eq!(created.expect("partitions"), PartitionsOutcome::default());
    assert_eq!(b.snapshot().await, before, "nothing changed");
    assert_eq!(b.partitions().await, partitions_before);
    assert!(
        !b.store
            .renew_leadership(&old, LEADER_LEASE)
            .await
            .expect("renew"),
    );

    // The new leader's passes do the work.
    let reaped = Reaper
        .run_once(Pass::new(&b.store, &new, &cfg, None))
        .await
        .expect("reap");
    assert_eq!(
        reaped,
        ReapOutcome {
            requeued: 1,
            stale_reaped: 1,
            blocked: 0
        }
    );
    let paused = Pausing
        .run_once(Pass::new(&b.store, &new, &cfg, None))
        .await
        .expect("pausing");
    assert_eq!(paused.paused, 1);
    let resumed = AutoResume
        .run_once(Pass::new(&b.store, &new, &cfg, None))
        .await
        .expect("resume");
    assert_eq!(resumed.resumed, 2, "{resumed:?}");
    let marked = StaleGates
        .run_once(Pass::new(&b.store, &new, &cfg, Some(later)))
        .await
        .expect("gates");
    assert_eq!(marked.marked, 1);
    let created = Partitions
        .run_once(Pass::new(&b.store, &new, &cfg, Some(later)))
        .await
        .expect("partitions");
    assert_eq!(created.created, 3);
    assert_eq!(b.row(stale).await.status, "queued");
}

#[tokio::test]
async fn two_coordinators_reap_each_expired_run_once() {
    let (b, runs) = crowd("shared", 40).await;
    let config = Config {
        auto_resume_enabled: false,
        ..fast_config()
    };
    let coordinators = [
        spawn_coordinator(&b, "c1", config.clone()),
        spawn_coordinator(&b, "c2", config),
    ];
    b.expire_all_leases(Duration::from_secs(60)).await;

    wait_for(DEADLINE, "every expired run reaped", || async {
        let held = b
            .count("SELECT count(*) FROM runs WHERE status = 'running'")
            .await;
        (held == 0).then_some(())
    })
    .await;
    for c in &coordinators {
        c.cancel.cancel();
    }
    for c in coordinators {
        c.task.await.expect("coordinator task").expect("valid");
    }
    let mut by_kind: HashMap<(usize, usize), usize> = HashMap::new();
    for run_id in runs {
        let kinds = (
            b.event_count(run_id, REQUEUED).await,
            b.event_count(run_id, STALE_REAPED).await,
        );
        *by_kind.entry(kinds).or_default() += 1;
    }
    assert_eq!(by_kind, HashMap::from([((1, 0), 20), ((0, 1), 20)]));
}

#[tokio::test]
async fn one_coordinator_leads_and_stopping_it_hands_the_sweeps_over_within_a_lease() {
    let b = setup().await;
    let config = fast_config();
    let role = config.leader_name.clone();
    let mut coordinators = HashMap::from([
        ("c1".to_owned(), spawn_coordinator(&b, "c1", config.clone())),
        ("c2".to_owned(), spawn_coordinator(&b, "c2", config.clone())),
    ]);

    let (leader, epoch, first_expiry) =
        wait_for(DEADLINE, "a leader", || async { b.leader_row(&role).await }).await;
    // Several renewals later, the same coordinator still leads in the same term: the other
    // never took over a live lease.
    let renewed_past =
        first_expiry + chrono::TimeDelta::from_std(config.leader_lease).expect("small");
    let (holder, same_epoch, _) = wait_for(DEADLINE, "renewals", || async {
        b.leader_row(&role)
            .await
            .filter(|(_, _, expires_at)| *expires_at > renewed_past)
    })
    .await;
    assert_eq!((holder.as_str(), same_epoch), (leader.as_str(), epoch));

    // Stop the leader: it resigns, and the other takes over within one leader lease.
    let stopping = coordinators.remove(&leader).expect("leader's coordinator");
    let stopped_at = Instant::now();
    stopping.cancel.cancel();
    let (successor, new_epoch, _) = wait_for(
        config.leader_lease + Duration::from_millis(500),
        "a new leader",
        || async {
            b.leader_row(&role)
                .await
                .filter(|(holder, _, _)| *holder != leader)
        },
    )
    .await;
    assert!(
        stopped_at.elapsed() <= config.leader_lease + Duration::from_millis(500),
        "took {:?}",
        stopped_at.elapsed()
    );
    assert_eq!(new_epoch, epoch + 1);
    stopping
        .task
        .await
        .expect("coordinator task")
        .expect("valid");

    // The successor sweeps.
    let automation = b.diamond("handover").await;
    let run_id = b.start(&automation).await;
    b.claim_one("dead").await;
    b.expire_lease(run_id, Duration::from_secs(1)).await;
    wait_for(DEADLINE, "the successor's reaper", || async {
        (b.row(run_id).await.status == "queued").then_some(())
    })
    .await;
    let remaining = coordinators.remove(&successor).expect("successor");
    remaining.stop().await;
}

#[tokio::test]
async fn a_leader_that_loses_its_lease_stops_and_leads_again_in_a_new_term() {
    let b = setup().await;
    let config = fast_config();
    let role = config.leader_name.clone();
    let coordinator = spawn_coordinator(&b, "c1", config.clone());
    let (_, epoch, _) = wait_for(DEADLINE, "c1 leads", || async {
        b.leader_row(&role)
            .await
            .filter(|(holder, _, _)| holder == "c1")
    })
    .await;

    // Another holder takes the role from under c1 for a moment, as if c1 had frozen past its
    // lease; meanwhile a run's lease expires. Every write of c1's first term is fenced, so the
    // run is reaped only in c1's next term, once the intruder's lease has run out.
    let automation = b.diamond("orphan").await;
    let run_id = b.start(&automation).await;
    b.claim_one("dead").await;
    b.sql
        .execute(
            "UPDATE leader_leases
             SET holder = 'intruder', epoch = epoch + 1, acquired_at = now(),
                 expires_at = now() + interval '1 second'
             WHERE name = $1",
            &[&role],
        )
        .await
        .expect("take over");
    b.expire_lease(run_id, Duration::from_secs(1)).await;

    let (_, new_epoch, _) = wait_for(DEADLINE, "c1 leads again", || async {
        b.leader_row(&role)
            .await
            .filter(|(holder, _, _)| holder == "c1")
    })
    .await;
    assert_eq!(new_epoch, epoch + 2, "a new term after the intruder's");
    wait_for(DEADLINE, "the run reaped", || async {
        (b.row(run_id).await.status == "queued").then_some(())
    })
    .await;
    let acquired_at: DateTime<Utc> = b
        .sql
        .query_one(
            "SELECT acquired_at FROM leader_leases WHERE name = $1",
            &[&role],
        )
        .await
        .expect("leader row")
        .get(0);
    let requeue = b
        .events(run_id)
        .await
        .into_iter()
        .find(|e| e.event == REQUEUED)
        .expect("requeued");
    assert!(
        requeue.occurred_at >= acquired_at,
        "requeued at {} by the first term, which ended at the takeover; new term from {acquired_at}",
        requeue.occurred_at
    );
    assert_eq!(b.event_count(run_id, REQUEUED).await, 1);

    coordinator.stop().await;
}

#[tokio::test]
async fn a_bad_config_or_holder_is_refused_before_anything_runs() {
    let b = setup().await;
    let bad = Config {
        leader_lease: Duration::from_millis(10),
        ..config()
    };
    let run = |config, holder: &str| {
        sweeps::run(
            b.store.clone(),
            config,
            holder.to_owned(),
            CancellationToken::new(),
        )
    };
    let refused = run(bad, "c1").await;
    assert!(
        matches!(
            refused,
            Err(sweeps::ConfigError::OutOfBounds {
                field: "leader_lease",
                ..
            })
        ),
        "{refused:?}"
    );
    let refused = run(config(), "").await;
    assert!(
        matches!(
            refused,
            Err(sweeps::ConfigError::BadName {
                field: "holder_id",
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(b.leader_row(sweeps::LEADER_NAME_DEFAULT).await, None);
}
