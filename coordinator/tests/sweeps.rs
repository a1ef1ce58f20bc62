//! The sweeps against a real Postgres: the reaper, pausing settlement, auto-resume, stale gates
//! and partition upkeep, each under the leader lease; and the leader loop's elections and
//! handovers between coordinators.

#[path = "common/sweeps_common.rs"]
mod sweeps_common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use leasehold_coordinator::sweeps::{
    self, AutoResume, AutoResumeOutcome, Config, Partitions, PartitionsOutcome, Pass, Pausing,
    PausingOutcome, ReapOutcome, Reaper, StaleGates, StaleGatesOutcome, Sweep,
};
use leasehold_core::ids::{ClaimantId, NodeId, RunId};
use leasehold_core::lease;
use leasehold_core::run::NodeStatus;
use leasehold_core::store::{Leadership, ReapParams};
use leasehold_testkit::wait_for;
use sweeps_common::{Bundle, LEASE, config, ms, setup};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);
const REQUEUED: &str = "run_execution_claim_expired_requeued";
const STALE_REAPED: &str = "run_stale_reaped";

/// A stale-reaped run: started, claimed, node `a` started, then its worker froze and the reaper
/// paused it. Returns it with the instant it was reaped at.
async fn stale_reaped_run(
    b: &Bundle,
    automation: &leasehold_core::ids::AutomationId,
    leader: &Leadership,
) -> (RunId, DateTime<Utc>) {
    let run_id = b.progressed(automation, "frozen").await.claim.run_id();
    b.expire_lease(run_id, Duration::from_secs(1)).await;
    let reaped = Reaper
        .run_once(Pass::new(&b.store, leader, &config(), None))
        .await
        .expect("reap");
    assert_eq!(reaped.stale_reaped, 1);
    let row = b.row(run_id).await;
    assert_eq!(
        (row.status.as_str(), row.stop_kind.as_deref()),
        ("paused", Some("stale_reaped"))
    );
    (run_id, row.stale_reaped_at.expect("reaped at"))
}

// The reaper.

#[tokio::test]
async fn reaper_acts_only_once_a_lease_has_expired() {
    let b = setup().await;
    let leader = b.leader("c1").await;
    let automation = b.diamond("horizon").await;
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

    let requeued = ReapOutcome {
        requeued: 1,
        ..ReapOutcome::default()
    };
    let stale_reaped = ReapOutcome {
        stale_reaped: 1,
        ..ReapOutcome::default()
    };
    for (run_id, want) in [(idle, requeued), (busy, stale_reaped)] {
        let expires = b.lease_expiry(run_id).await;
        for now in [expires - ms(1), expires] {
            let outcome = Reaper
                .run_once(Pass::new(&b.store, &leader, &config(), Some(now)))
                .await
                .expect("reap");
            assert_eq!(outcome, ReapOutcome::default(), "{run_id} at {now}");
        }
        let outcome = Reaper
            .run_once(Pass::new(
                &b.store,
                &leader,
                &config(),
                Some(expires + ms(1)),
            ))
            .await
            .expect("reap");
        assert_eq!(outcome, want, "{run_id} expired by 1 ms");
    }
    let row = b.row(idle).await;
    assert_eq!(
        (row.status.as_str(), row.queue_reason.as_deref()),
        ("queued", Some("claim_expired"))
    );
    assert_eq!(b.row(busy).await.status, "paused");
    let a = &b.store.checkpoint(busy).await.expect("checkpoint")[0];
    assert_eq!((a.status, a.attempts), (NodeStatus::Failed, 1));
}

#[tokio::test]
async fn reaper_never_touches_a_live_lease_nor_a_run_cancelled_meanwhile() {
    let b = setup().await;
    let leader = b.leader("c1").await;
    let automation = b.diamond("alive").await;
    let live = b.start(&automation).await;
    let cancelled_before = b.start(&automation).await;
    let cancelled_meanwhile = b.start(&automation).await;
    b.store
        .claim_runs(&ClaimantId::from("w"), 3, LEASE)
        .await
        .expect("claim");
    b.expire_lease(cancelled_before, Duration::from_secs(60))
        .await;
    b.expire_lease(cancelled_meanwhile, Duration::from_secs(60))
        .await;
    b.store
        .cancel_run(&b.tenant, cancelled_before, "stop")
        .await
        .expect("cancel");

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
    b.store
        .cancel_run(&b.tenant, cancelled_meanwhile, "stop")
        .await
        .expect("cancel");
    let moved = b
        .store
        .requeue_expired_as_leader(&leader, &expired, &params)
        .await
        .expect("requeue");
    assert!(moved.is_empty());

    let later = Utc::now() + chrono::TimeDelta::seconds(5);
    let outcome = Reaper
        .run_once(Pass::new(&b.store, &leader, &config(), Some(later)))
        .await
        .expect("reap");
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
    let b = setup().await;
    let leader = b.leader("c1").await;
    let automation = b.diamond("poison").await;
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
    let requeued = ReapOutcome {
        requeued: 1,
        ..ReapOutcome::default()
    };
    let blocked = ReapOutcome {
        blocked: 1,
        ..ReapOutcome::default()
    };
    assert_eq!(outcomes, vec![requeued, blocked]);
    let row = b.row(run_id).await;
    assert_eq!(
        (row.status.as_str(), row.stop_kind.as_deref()),
        ("blocked", Some("poisoned"))
    );
}

#[tokio::test]
async fn two_reapers_at_once_move_each_expired_run_exactly_once() {
    let b = setup().await;
    let automation = b.diamond("crowd").await;
    let mut runs = Vec::new();
    for _ in 0..120 {
        runs.push(b.start(&automation).await);
    }
    let claimed = b
        .store
        .claim_runs(&ClaimantId::from("w"), 120, LEASE)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 120);
    for c in claimed.iter().step_by(2) {
        b.store
            .node_started(&c.claim, &NodeId::from("a"))
            .await
            .expect("start a");
    }
    b.sql
        .execute(
            "UPDATE runs SET lease_expires_at = now() - interval '1 minute'",
            &[],
        )
        .await
        .expect("expire");

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

// A former leader.

#[tokio::test]
async fn a_paused_former_leader_changes_nothing() {
    let b = setup().await;
    let old = b.leader("c1").await;
    let automation = b.diamond("zombie").await;
    let (stale, _) = stale_reaped_run(&b, &automation, &old).await;
    let idle = b.start(&automation).await;
    b.claim_one("idle").await;
    let busy = b.progressed(&automation, "busy").await.claim.run_id();
    let pausing = b.progressed(&automation, "pauser").await;
    b.store
        .pause_run(&b.tenant, pausing.claim.run_id(), "hold on")
        .await
        .expect("pause");
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
    let new = b.leader("c2").await;
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
            .renew_leadership(&old, sweeps_common::LEADER_LEASE)
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

// Pausing settlement.

#[tokio::test]
async fn a_pausing_run_whose_holder_died_is_settled_into_paused() {
    let b = setup().await;
    let leader = b.leader("c1").await;
    let automation = b.diamond("pausing").await;
    let run_id = b.progressed(&automation, "dying").await.claim.run_id();
    b.store
        .pause_run(&b.tenant, run_id, "maintenance")
        .await
        .expect("pause");
    assert_eq!(b.row(run_id).await.status, "pausing");
    let expires = b.lease_expiry(run_id).await;

    for now in [expires - ms(1), expires] {
        let outcome = Pausing
            .run_once(Pass::new(&b.store, &leader, &config(), Some(now)))
            .await
            .expect("settle");
        assert_eq!(outcome, PausingOutcome::default(), "at {now}");
    }
    // The reaper leaves pausing runs to this sweep.
    let reaped = Reaper
        .run_once(Pass::new(
            &b.store,
            &leader,
            &config(),
            Some(expires + ms(1)),
        ))
        .await
        .expect("reap");
    assert_eq!(reaped, ReapOutcome::default());
    let outcome = Pausing
        .run_once(Pass::new(
            &b.store,
            &leader,
            &config(),
            Some(expires + ms(1)),
        ))
        .await
        .expect("settle");
    assert_eq!(outcome, PausingOutcome { paused: 1 });
    let again = Pausing
        .run_once(Pass::new(
            &b.store,
            &leader,
            &config(),
            Some(expires + ms(1)),
        ))
        .await
        .expect("settle");
    assert_eq!(again, PausingOutcome::default());

    let row = b.row(run_id).await;
    assert_eq!(
        (
            row.status.as_str(),
            row.stop_kind.as_deref(),
            row.claimant_id
        ),
        ("paused", Some("operator_paused"), None)
    );
    let event = b.last_event(run_id).await;
    assert_eq!(event.event, "run_paused");
    assert_eq!(event.reason.as_deref(), Some("maintenance"));
    assert_eq!(event.metadata["settled_by"], "lease_expired");
    assert_eq!(event.metadata["claimant_id"], "dying");
    assert_eq!(
        event.metadata["interrupted"],
        serde_json::json!([{"node_id": "a", "attempt": 1}])
    );
    let a = &b.store.checkpoint(run_id).await.expect("checkpoint")[0];
    assert_eq!((a.status, a.attempts), (NodeStatus::Failed, 1));
    assert_eq!(
        a.last_error.as_deref(),
        Some("attempt interrupted: the lease expired")
    );
}

// Auto-resume.

#[tokio::test]
async fn a_recent_stale_reap_with_budget_is_auto_resumed() {
    let b = setup().await;
    let leader = b.leader("c1").await;
    let automation = b.diamond("resume").await;
    let (run_id, reaped_at) = stale_reaped_run(&b, &automation, &leader).await;

    let outcome = AutoResume
        .run_once(Pass::new(&b.store, &leader, &config(), None))
        .await
        .expect("resume");
    assert_eq!(
        outcome,
        AutoResumeOutcome {
            resumed: 1,
            ..AutoResumeOutcome::default()
        }
    );
    let row = b.row(run_id).await;
    assert_eq!(row.status, "queued");
    assert_eq!(row.queue_reason.as_deref(), Some("auto_resumed"));
    assert_eq!((row.auto_resumes, row.stop_kind), (1, None));
    let event = b.last_event(run_id).await;
    assert_eq!(event.event, "run_auto_resumed");
    assert_eq!(event.seq, row.event_seq);
    let window_ms = sweeps::AUTO_RESUME_WINDOW_DEFAULT.as_millis();
    assert_eq!(
        event.metadata["window_ms"].as_u64().map(u128::from),
        Some(window_ms)
    );
    let recorded: DateTime<Utc> =
        serde_json::from_value(event.metadata["stale_reaped_at"].clone()).expect("timestamp");
    assert_eq!(recorded, reaped_at);

    // Nothing twice; and a worker picks it up from its checkpoint.
    let again = AutoResume
        .run_once(Pass::new(&b.store, &leader, &config(), None))
        .await
        .expect("resume");
    assert_eq!(again, AutoResumeOutcome::default());
    let claimed = b.claim_one("rescuer").await;
    assert_eq!(claimed.claim.run_id(), run_id);
    assert!(claimed.resumed);
}

#[tokio::test]
async fn auto_resume_on_both_sides_of_the_window() {
    let b = setup().await;
    let leader = b.leader("c1").await;
    let automation = b.diamond("window").await;
    let (run_id, reaped_at) = stale_reaped_run(&b, &automation, &leader).await;
    let window = chrono::TimeDelta::from_std(sweeps::AUTO_RESUME_WINDOW_DEFAULT).expect("small");

    let late = AutoResume
        .run_once(Pass::new(
            &b.store,
            &leader,
            &config(),
            Some(reaped_at + window + ms(1)),
        ))
        .await
        .expect("resume");
    assert_eq!(late, AutoResumeOutcome::default(), "window passed by 1 ms");
    assert_eq!(b.row(run_id).await.status, "paused");

    let at_horizon = AutoResume
        .run_once(Pass::new(
            &b.store,
            &leader,
            &config(),
            Some(reaped_at + window),
        ))
        .await
        .expect("resume");
    assert_eq!(at_horizon.resumed, 1, "at the window's last instant");
    assert_eq!(b.row(run_id).await.status, "queued");
}

#[tokio::test]
async fn auto_resume_leaves_a_run_at_the_cap() {
    let b = setup().await;
    let leader = b.leader("c1").await;
    let automation = b.diamond("capped").await;
    let (run_id, _) = stale_reaped_run(&b, &automation, &leader).await;
    b.sql
        .execute(
            "UPDATE runs SET auto_resumes = $2 WHERE run_id = $1",
            &[
                &run_id.0,
                &i32::try_from(sweeps::AUTO_RESUME_CAP_DEFAULT).expect("small"),
            ],
        )
        .await
        .expect("set auto_resumes");

    let outcome = AutoResume
        .run_once(Pass::new(&b.store, &leader, &config(), None))
        .await
        .expect("resume");
    assert_eq!(
        outcome,
        AutoResumeOutcome {
            cap_reached: 1,
            ..AutoResumeOutcome::default()
        }
    );
    assert_eq!(b.row(run_id).await.status, "paused");
    assert_eq!(b.event_count(run_id, "run_auto_resumed").await, 0);
}

#[tokio::test]
async fn auto_resume_leaves_a_run_whose_nodes_have_no_attempts_left() {
    let b = setup().await;
    let leader = b.leader("c1").await;
    let automation = b
        .automation(
            "id: once
nodes:
  - {id: a, kind: noop, max_attempts: 1}
",
        )
        .await;
    let (run_id, _) = stale_reaped_run(&b, &automation, &leader).await;
    let a = &b.store.checkpoint(run_id).await.expect("checkpoint")[0];
    assert_eq!(a.attempts, 1, "the interrupted attempt was the last");

    let outcome = AutoResume
        .run_once(Pass::new(&b.store, &leader, &config(), None))
        .await
        .expect("resume");
    assert_eq!(
        outcome,
        AutoResumeOutcome {
            no_budget: 1,
            ..AutoResumeOutcome::default()
        }
    );
    assert_eq!(b.row(run_id).await.status, "paused");
}

#[tokio::test]
async fn auto_resume_leaves_a_run_whose_spec_cannot_be_read() {
    let b = setup().await;
    let leader = b.leader("c1").await;
    let automation = b.diamond("corrupt").await;
    let (run_id, _) = stale_reaped_run(&b, &automation, &leader).await;
    b.sql
        .execute(
            "UPDATE automation_versions SET spec = '{\"id\": \"corrupt\", \"nodes\": 7}'
             WHERE automation_id = $1",
            &[&automation.as_str()],
        )
        .await
        .expect("corrupt the spec");

    let outcome = AutoResume
        .run_once(Pass::new(&b.store, &leader, &config(), None))
        .await
        .expect("an unreadable spec is not an error of the pass");
    assert_eq!(
        outcome,
        AutoResumeOutcome {
            unreadable_spec: 1,
            ..AutoResumeOutcome::default()
        }
    );
    assert_eq!(b.row(run_id).await.status, "paused");
}

#[tokio::test]
async fn auto_resume_switched_off_leaves_runs_alone() {
    let b = setup().await;
    let leader = b.leader("c1").await;
    let automation = b.diamond("off").await;
    let (run_id, _) = stale_reaped_run(&b, &automation, &leader).await;
    let off = Config {
        auto_resume_enabled: false,
        ..config()
    };
    let outcome = AutoResume
        .run_once(Pass::new(&b.store, &leader, &off, None))
        .await
        .expect("resume");
    assert_eq!(outcome, AutoResumeOutcome::default());
    assert_eq!(b.row(run_id).await.status, "paused");
}

// Stale gates.

#[tokio::test]
async fn a_gate_pending_too_long_is_marked_stale_once() {
    let b = setup().await;
    let leader = b.leader("c1").await;
    let automation = b.diamond("gated").await;
    let claimed = b.start_and_claim(&automation).await;
    let run_id = claimed.claim.run_id();
    let gate_id = b
        .store
        .await_approval(&claimed.claim, &NodeId::from("a"), "ship it?")
        .await
        .expect("gate");
    let requested_at: DateTime<Utc> = b
        .sql
        .query_one(
            "SELECT requested_at FROM gates WHERE gate_id = $1",
            &[&gate_id],
        )
        .await
        .expect("gate row")
        .get(0);
    let after = chrono::TimeDelta::from_std(sweeps::STALE_GATE_AFTER_DEFAULT).expect("small");

    for now in [requested_at + after - ms(1), requested_at + after] {
        let outcome = StaleGates
            .run_once(Pass::new(&b.store, &leader, &config(), Some(now)))
            .await
            .expect("gates");
        assert_eq!(outcome, StaleGatesOutcome::default(), "at {now}");
    }
    let past = requested_at + after + ms(1);
    let outcome = StaleGates
        .run_once(Pass::new(&b.store, &leader, &config(), Some(past)))
        .await
        .expect("gates");
    assert_eq!(outcome, StaleGatesOutcome { marked: 1 });
    let again = StaleGates
        .run_once(Pass::new(&b.store, &leader, &config(), Some(past + after)))
        .await
        .expect("gates");
    assert_eq!(again, StaleGatesOutcome::default(), "marked once");

    let gate = b
        .sql
        .query_one(
            "SELECT status, stale_marked_at IS NOT NULL FROM gates WHERE gate_id = $1",
            &[&gate_id],
        )
        .await
        .expect("gate row");
    assert_eq!(
        (gate.get::<_, String>(0), gate.get::<_, bool>(1)),
        ("pending".to_owned(), true),
        "no decision is taken"
    );
    let row = b.row(run_id).await;
    assert_eq!(row.status, "awaiting_approval");
    let detail = row.detail.expect("detail");
    assert!(
        detail.contains("node a") && detail.contains("stale"),
        "{detail}"
    );
    assert_eq!(b.event_count(run_id, "gate_marked_stale").await, 1);
    let event = b.last_event(run_id).await;
    assert_eq!(event.event, "gate_marked_stale");
    assert_eq!(event.seq, row.event_seq);
    assert_eq!(event.node_id, Some(NodeId::from("a")));
    assert_eq!(event.metadata["gate_id"], gate_id.to_string());
}

#[tokio::test]
async fn stale_gates_of_one_run_get_consecutive_events() {
    let b = setup().await;
    let leader = b.leader("c1").await;
    let automation = b.diamond("two-gates").await;
    let claimed = b.start_and_claim(&automation).await;
    let run_id = claimed.claim.run_id();
    b.store
        .await_approval(&claimed.claim, &NodeId::from("b"), "first?")
        .await
        .expect("gate");
    // A second pending gate on the same run, as parallel gated nodes would leave.
    b.sql
        .execute(
            "INSERT INTO gates (gate_id, tenant_id, run_id, node_id, prompt, requested_epoch)
             SELECT gen_random_uuid(), tenant_id, run_id, 'c', 'second?', lease_epoch
             FROM runs WHERE run_id = $1",
            &[&run_id.0],
        )
        .await
        .expect("second gate");
    b.sql
        .execute(
            "UPDATE gates SET requested_at = now() - interval '25 hours'",
            &[],
        )
        .await
        .expect("backdate gates");

    let outcome = StaleGates
        .run_once(Pass::new(&b.store, &leader, &config(), None))
        .await
        .expect("gates");
    assert_eq!(outcome, StaleGatesOutcome { marked: 2 });
    let events = b.events(run_id).await;
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let last = i64::try_from(seqs.len()).expect("few");
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "gap-free");
    assert_eq!(b.event_count(run_id, "gate_marked_stale").await, 2);
    assert_eq!(b.row(run_id).await.event_seq, *seqs.last().expect("events"));
}

// Partition upkeep.

#[tokio::test]
async fn partition_upkeep_creates_partitions_ahead_and_is_idempotent() {
    let b = setup().await;
    let leader = b.leader("c1").await;
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

// The leader loop.

/// Sweeps often and hands leadership over quickly, so that the loop tests finish in seconds.
fn fast_config() -> Config {
    Config {
        leader_lease: Duration::from_secs(1),
        reaper_interval: Duration::from_millis(20),
        pausing_interval: Duration::from_millis(20),
        auto_resume_interval: Duration::from_millis(20),
        stale_gate_interval: Duration::from_millis(20),
        ..config()
    }
    .validated()
    .expect("valid config")
}

struct Coordinator {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), sweeps::ConfigError>>,
}

fn spawn_coordinator(b: &Bundle, holder: &str, config: Config) -> Coordinator {
    let cancel = CancellationToken::new();
    let task = tokio::spawn(sweeps::run(
        b.store.clone(),
        config,
        holder.to_owned(),
        cancel.clone(),
    ));
    Coordinator { cancel, task }
}

#[tokio::test]
async fn two_coordinators_reap_each_expired_run_once() {
    let b = setup().await;
    let automation = b.diamond("shared").await;
    let mut runs = Vec::new();
    for _ in 0..40 {
        runs.push(b.start(&automation).await);
    }
    let claimed = b
        .store
        .claim_runs(&ClaimantId::from("w"), 40, LEASE)
        .await
        .expect("claim");
    for c in claimed.iter().step_by(2) {
        b.store
            .node_started(&c.claim, &NodeId::from("a"))
            .await
            .expect("start a");
    }
    let config = Config {
        auto_resume_enabled: false,
        ..fast_config()
    };
    let coordinators = [
        spawn_coordinator(&b, "c1", config.clone()),
        spawn_coordinator(&b, "c2", config),
    ];
    b.sql
        .execute(
            "UPDATE runs SET lease_expires_at = now() - interval '1 minute'",
            &[],
        )
        .await
        .expect("expire");

    wait_for(DEADLINE, "every expired run reaped", || async {
        let held: i64 = b
            .sql
            .query_one("SELECT count(*) FROM runs WHERE status = 'running'", &[])
            .await
            .expect("count")
            .get(0);
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
    remaining.cancel.cancel();
    remaining
        .task
        .await
        .expect("coordinator task")
        .expect("valid");
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

    coordinator.cancel.cancel();
    coordinator
        .task
        .await
        .expect("coordinator task")
        .expect("valid");
}

#[tokio::test]
async fn a_bad_config_or_holder_is_refused_before_anything_runs() {
    let b = setup().await;
    let bad = Config {
        leader_lease: Duration::from_millis(10),
        ..config()
    };
    let refused = sweeps::run(
        b.store.clone(),
        bad,
        "c1".to_owned(),
        CancellationToken::new(),
    )
    .await;
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
    let refused = sweeps::run(
        b.store.clone(),
        config(),
        String::new(),
        CancellationToken::new(),
    )
    .await;
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
