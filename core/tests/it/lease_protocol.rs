//! The lease protocol against a real Postgres: claims, fencing, retries, hand-back, reaping.

use std::collections::HashSet;
use std::time::Duration;

use leasehold_core::ids::{ClaimantId, LeaseEpoch, RunId};
use leasehold_core::lease::{self, LeaseView, Reap};
use leasehold_core::run::{self, NodeStatus, RunStatus, Transition};
use leasehold_core::store::{Failure, FenceError, ReapParams, Store};
use leasehold_testkit::fixtures::{Bundle, LEASE, node, setup_diamond, setup_run};
use serde_json::json;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn assert_lease_lost<T: std::fmt::Debug>(result: &Result<T, FenceError>, what: &str) {
    assert!(
        matches!(result, Err(FenceError::LeaseLost { .. })),
        "{what}: expected LeaseLost, got {result:?}"
    );
}

#[tokio::test]
async fn eight_claimers_claim_each_of_ten_thousand_runs_exactly_once() {
    let (b, automation) = setup_diamond("bulk").await;
    b.queue_many(&automation, 10_000).await;

    let mut claimers = Vec::new();
    for i in 0..8 {
        let store = b.store.clone();
        claimers.push(tokio::spawn(async move {
            let claimant = ClaimantId(format!("claimer-{i}"));
            let mut mine = Vec::new();
            loop {
                let batch = store.claim_runs(&claimant, 64, LEASE).await.expect("claim");
                if batch.is_empty() {
                    return (claimant, mine);
                }
                mine.extend(batch.into_iter().map(|c| c.claim));
            }
        }));
    }
    let mut seen = HashSet::new();
    let mut held_by = Vec::new();
    for claimer in claimers {
        let (claimant, claims) = claimer.await.expect("claimer task");
        for claim in claims {
            assert_eq!(
                claim.epoch(),
                LeaseEpoch(1),
                "first claim of {}",
                claim.run_id()
            );
            assert!(
                seen.insert(claim.run_id()),
                "{} claimed twice",
                claim.run_id()
            );
            held_by.push((claim.run_id().0, claimant.0.clone()));
        }
    }
    assert_eq!(seen.len(), 10_000);

    // The rows agree with what each claimer was told.
    let (ids, claimants): (Vec<_>, Vec<_>) = held_by.into_iter().unzip();
    let agree: i64 = b
        .sql
        .query_one(
            "SELECT count(*) FROM runs r JOIN unnest($1::uuid[], $2::text[]) AS h(run_id, claimant)
             ON r.run_id = h.run_id
             WHERE r.claimant_id = h.claimant AND r.status = 'running' AND r.lease_epoch = 1",
            &[&ids, &claimants],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(agree, 10_000);
}

#[tokio::test]
async fn claims_take_highest_priority_then_oldest() {
    let (b, automation, low_old) = setup_run("order").await;
    let high = b
        .store
        .start_run(&leasehold_core::store::StartRun {
            priority: 5,
            ..b.start_request(&automation)
        })
        .await
        .expect("start")
        .run_id;
    let low_new = b.start(&automation).await;

    let order: Vec<RunId> = b
        .claim("w", 10)
        .await
        .iter()
        .map(|c| c.claim.run_id())
        .collect();
    assert_eq!(order, vec![high, low_old, low_new]);
}

#[tokio::test]
async fn stale_holder_cannot_write_after_reclaim() {
    let (b, _, run_id) = setup_run("fenced").await;

    let first = b.claim_one("worker-1").await.claim;

    // The first holder stalls; its lease runs out, the reaper requeues the run and another
    // worker claims it, all without the first holder knowing.
    b.expire_lease(run_id, ms(10)).await;
    let (requeued, _, _) = reap(&b, chrono::Utc::now() + chrono::TimeDelta::seconds(1)).await;
    assert_eq!(requeued, vec![run_id]);
    let second = b.claim_one("worker-2").await;
    assert_eq!(second.claim.epoch(), LeaseEpoch(2));
    assert_eq!(
        b.store
            .node_started(&second.claim, &node("a"))
            .await
            .expect("start a"),
        1
    );
    b.store
        .node_completed(&second.claim, &node("a"), &json!({"a": 1}))
        .await
        .expect("complete a");
    let before = b.run(run_id).await;

    let beat = b.store.heartbeat(&[first], LEASE).await.expect("heartbeat");
    assert_eq!(beat.lost, vec![first]);
    assert!(beat.renewed.is_empty());
    assert_lease_lost(
        &b.store.node_started(&first, &node("b")).await,
        "node_started",
    );
    assert_lease_lost(
        &b.store
            .node_completed(&first, &node("a"), &json!({"a": 2}))
            .await,
        "node_completed",
    );
    assert_lease_lost(
        &b.store.node_failed(&first, &node("a"), "boom", true).await,
        "node_failed",
    );
    assert_lease_lost(
        &b.store.schedule_retry(&first, &node("b"), 2, ms(10)).await,
        "schedule_retry",
    );
    assert_lease_lost(&b.store.complete_run(&first).await, "complete_run");
    let failure = Failure {
        node_id: node("b"),
        attempt: 1,
        reason: "late".into(),
    };
    assert_lease_lost(&b.store.fail_run(&first, &failure, &[]).await, "fail_run");
    let released = b
        .store
        .release_on_shutdown(&[first])
        .await
        .expect("release");
    assert_eq!(released.lost, vec![first]);
    assert!(released.released.is_empty());

    let after = b.run(run_id).await;
    assert_eq!(after, before, "no write of the stale holder landed");
    let a = b.checkpoint(run_id).await;
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].attempts, a[0].epoch), (1, LeaseEpoch(2)));
    assert_eq!(a[0].output, Some(json!({"a": 1})));

    // The current holder is unaffected.
    assert_eq!(
        b.store
            .heartbeat(&[second.claim], LEASE)
            .await
            .expect("hb")
            .renewed
            .len(),
        1
    );
}

#[tokio::test]
async fn a_diamond_checkpoints_to_completion_with_gap_free_events() {
    let (b, automation, run_id) = setup_run("diamond").await;
    let claimed = b.claim_one("w").await;
    let claim = claimed.claim;
    assert!(!claimed.resumed);
    let spec = b
        .store
        .automation_version(&b.tenant, &automation, Some(claimed.automation_version))
        .await
        .expect("spec")
        .spec;

    loop {
        let ready = b.ready_nodes(run_id, &spec).await;
        if ready.is_empty() {
            break;
        }
        for id in ready {
            assert_eq!(b.store.node_started(&claim, &id).await.expect("start"), 1);
            b.store
                .node_completed(&claim, &id, &json!({"node": id.as_str()}))
                .await
                .expect("complete");
        }
    }
    b.store.complete_run(&claim).await.expect("complete run");

    let run = b.run(run_id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.claimant_id, None);
    let events = b.store.events_after(run_id, 0, 100).await.expect("events");
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=11).collect::<Vec<_>>(),
        "start, claim, 4×2 node events, completion"
    );
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("run_completed")
    );
    assert_eq!(run.event_seq, 11);
    // A completed run never changes again.
    assert!(
        b.store
            .cancel_run(&b.tenant, run_id, "late", "ops", None)
            .await
            .is_err()
    );
    assert_eq!(b.run(run_id).await, run);
}

#[tokio::test]
async fn repeating_a_write_that_landed_succeeds_quietly() {
    let (b, _, run_id) = setup_run("repeat").await;
    let claim = b.claim_one("w").await.claim;

    assert_eq!(
        b.store
            .node_started(&claim, &node("a"))
            .await
            .expect("start"),
        1
    );
    assert_eq!(
        b.store
            .node_started(&claim, &node("a"))
            .await
            .expect("again"),
        1
    );
    let output = json!({"ok": true});
    b.store
        .node_completed(&claim, &node("a"), &output)
        .await
        .expect("complete");
    b.store
        .node_completed(&claim, &node("a"), &output)
        .await
        .expect("again");
    // The same node with a different outcome is not a repeat.
    assert!(matches!(
        b.store
            .node_completed(&claim, &node("a"), &json!({"ok": false}))
            .await,
        Err(FenceError::NodeConflict { .. })
    ));
    // A completed node does not start again.
    assert!(matches!(
        b.store.node_started(&claim, &node("a")).await,
        Err(FenceError::NodeConflict { .. })
    ));
    b.store.complete_run(&claim).await.expect("complete run");
    b.store
        .complete_run(&claim)
        .await
        .expect("complete run again");

    let names = b.event_names(run_id).await;
    let count = |name: &str| names.iter().filter(|n| *n == name).count();
    assert_eq!(count("node_started"), 1);
    assert_eq!(count("node_completed"), 1);
    assert_eq!(count("run_completed"), 1);
}

/// A repeat whose first attempt landed reads the row on the connection it wrote with: a pool
/// whose every connection is taken by such repeats (a cut that lost as many acknowledgements)
/// would otherwise wait for one more connection until the worker self-fences.
#[tokio::test]
async fn a_repeat_that_landed_needs_no_second_connection() {
    let (b, automation) = setup_diamond("repeat-one").await;
    b.start(&automation).await;
    let store = Store::connect(b.db.url(), 1).await.expect("a pool of one");
    let claim = store
        .claim_runs(&ClaimantId::from("w"), 1, LEASE)
        .await
        .expect("claim")
        .remove(0)
        .claim;
    let output = json!({"ok": true});
    let failure = Failure {
        node_id: node("b"),
        attempt: 1,
        reason: "for good".into(),
    };
    let repeats = async {
        for _ in 0..2 {
            store.node_started(&claim, &node("a")).await?;
        }
        for _ in 0..2 {
            store.node_completed(&claim, &node("a"), &output).await?;
        }
        store.node_started(&claim, &node("b")).await?;
        for _ in 0..2 {
            store
                .node_failed(&claim, &node("b"), "for good", false)
                .await?;
        }
        for _ in 0..2 {
            store.fail_run(&claim, &failure, &[node("d")]).await?;
        }
        Ok::<_, FenceError>(())
    };
    tokio::time::timeout(Duration::from_secs(10), repeats)
        .await
        .expect("every repeat answers on a pool of one connection")
        .expect("every repeat succeeds quietly");
}

#[tokio::test]
async fn a_run_is_not_completed_while_a_node_runs() {
    let (b, automation) = setup_diamond("busy").await;
    b.start(&automation).await;
    let claim = b.claim_one("w").await.claim;
    b.store
        .node_started(&claim, &node("a"))
        .await
        .expect("start");
    assert!(matches!(
        b.store.complete_run(&claim).await,
        Err(FenceError::RunConflict { .. })
    ));
}

#[tokio::test]
async fn retries_wait_in_the_queue_until_retry_after() {
    let (b, _, run_id) = setup_run("retry").await;
    let claimant = ClaimantId::from("w");
    let claim = b.claim_one("w").await.claim;
    let attempt = b
        .store
        .node_started(&claim, &node("a"))
        .await
        .expect("start");
    b.store
        .node_failed(&claim, &node("a"), "503 from upstream", true)
        .await
        .expect("fail");
    b.store
        .schedule_retry(&claim, &node("a"), attempt + 1, Duration::from_secs(3_600))
        .await
        .expect("schedule");
    // Repeating the same scheduling is a lost acknowledgement, not a failure.
    b.store
        .schedule_retry(&claim, &node("a"), attempt + 1, Duration::from_secs(3_600))
        .await
        .expect("schedule again");

    let run = b.run(run_id).await;
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(run.queue_reason.as_deref(), Some("retry_backoff"));
    assert_eq!(run.retry_node_id, Some(node("a")));
    assert_eq!(run.retry_attempt, Some(2));
    assert_eq!(run.claimant_id, None, "no worker waits for a backoff");
    let due_in_an_hour = b
        .store
        .claim_runs(&claimant, 10, LEASE)
        .await
        .expect("claim");
    assert!(
        due_in_an_hour.is_empty(),
        "not claimable before retry_after"
    );

    b.backdate_retry(run_id, ms(1)).await;
    let again = b.claim_one("w").await;
    assert_eq!(again.claim.epoch(), LeaseEpoch(2));
    assert_eq!(again.retry_node_id, Some(node("a")));
    let checkpoint = b.checkpoint(run_id).await;
    assert_eq!(checkpoint[0].status, NodeStatus::Failed);
    assert_eq!(
        checkpoint[0].last_error.as_deref(),
        Some("503 from upstream")
    );
    assert_eq!(
        b.store
            .node_started(&again.claim, &node("a"))
            .await
            .expect("start"),
        2,
        "the retry is the second attempt"
    );
    let names = b.event_names(run_id).await;
    assert!(
        names.contains(&"node_retry_backoff_scheduled".to_owned()),
        "{names:?}"
    );
}

#[tokio::test]
async fn a_scheduled_retry_never_revives_a_cancelled_run() {
    let (b, _, run_id) = setup_run("cancelled").await;
    let claim = b.claim_one("w").await.claim;
    b.store
        .node_started(&claim, &node("a"))
        .await
        .expect("start");

    b.cancel(run_id, "user asked").await;
    assert_lease_lost(
        &b.store
            .node_failed(&claim, &node("a"), "timeout", true)
            .await,
        "node_failed",
    );
    assert_lease_lost(
        &b.store.schedule_retry(&claim, &node("a"), 2, ms(1)).await,
        "schedule_retry",
    );
    let run = b.run(run_id).await;
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.retry_after, None);
    let claimed = b.claim("w2", 10).await;
    assert!(claimed.is_empty());
}

#[tokio::test]
async fn a_failed_node_fails_the_run_and_skips_its_dependants() {
    let (b, _, run_id) = setup_run("failing").await;
    let claim = b.claim_one("w").await.claim;
    b.store
        .node_started(&claim, &node("a"))
        .await
        .expect("start");
    b.store
        .node_failed(&claim, &node("a"), "exit status 2", false)
        .await
        .expect("fail node");
    let failure = Failure {
        node_id: node("a"),
        attempt: 1,
        reason: "exit status 2".into(),
    };
    let skipped = [node("b"), node("c"), node("d")];
    b.store
        .fail_run(&claim, &failure, &skipped)
        .await
        .expect("fail run");
    b.store
        .fail_run(&claim, &failure, &skipped)
        .await
        .expect("repeat");

    let run = b.run(run_id).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.failed_node_id, Some(node("a")));
    assert_eq!(run.failed_attempt, Some(1));
    assert_eq!(run.stop_reason.as_deref(), Some("exit status 2"));
    let statuses: Vec<(String, NodeStatus)> = b
        .checkpoint(run_id)
        .await
        .into_iter()
        .map(|n| (n.node_id.0, n.status))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("a".into(), NodeStatus::Failed),
            ("b".into(), NodeStatus::Skipped),
            ("c".into(), NodeStatus::Skipped),
            ("d".into(), NodeStatus::Skipped),
        ]
    );
}

#[tokio::test]
async fn heartbeat_renews_many_claims_in_one_round_and_reports_the_lost() {
    let (b, automation) = setup_diamond("beats").await;
    b.start_many(&automation, 3).await;
    let claims: Vec<_> = b
        .store
        .claim_runs(&ClaimantId::from("w"), 3, Duration::from_secs(5))
        .await
        .expect("claim")
        .into_iter()
        .map(|c| c.claim)
        .collect();
    let cancelled = claims[1].run_id();
    b.cancel(cancelled, "stop").await;

    let beat = b.store.heartbeat(&claims, LEASE).await.expect("heartbeat");
    assert_eq!(beat.lost, vec![claims[1]]);
    assert_eq!(beat.renewed.len(), 2);
    for renewed in &beat.renewed {
        assert_eq!(renewed.status, RunStatus::Running);
        let run = b
            .store
            .run(&b.tenant, renewed.claim.run_id())
            .await
            .expect("run");
        assert_eq!(run.lease_expires_at, Some(renewed.lease_expires_at));
        assert!(renewed.lease_expires_at > run.created_at + chrono::TimeDelta::seconds(50));
    }
}

#[tokio::test]
async fn shutdown_hands_runs_back_for_another_worker_at_once() {
    let (b, _, run_id) = setup_run("handback").await;
    let claim = b.claim_one("leaving").await.claim;
    b.store
        .node_started(&claim, &node("a"))
        .await
        .expect("start a");
    b.store
        .node_completed(&claim, &node("a"), &json!(1))
        .await
        .expect("a");
    b.store
        .node_started(&claim, &node("b"))
        .await
        .expect("start b");

    let released = b
        .store
        .release_on_shutdown(&[claim])
        .await
        .expect("release");
    assert_eq!(released.released, vec![run_id]);
    // A lost acknowledgement: the repeat reports it released, not lost.
    let again = b.store.release_on_shutdown(&[claim]).await.expect("again");
    assert_eq!(again.released, vec![run_id]);
    assert!(again.lost.is_empty());

    let next = b.claim_one("arriving").await;
    assert_eq!(next.claim.run_id(), run_id, "no lease expiry to wait for");
    assert!(next.resumed);
    let checkpoint = b.checkpoint(run_id).await;
    let state = |id: &str| {
        checkpoint
            .iter()
            .find(|n| n.node_id.as_str() == id)
            .map(|n| (n.status, n.attempts))
    };
    assert_eq!(state("a"), Some((NodeStatus::Completed, 1)));
    assert_eq!(
        state("b"),
        Some((NodeStatus::Failed, 1)),
        "interrupted attempt counted"
    );
    assert!(
        b.event_names(run_id)
            .await
            .contains(&"run_released_shutdown".to_owned())
    );
}

/// Reads the expired leases at `now`, decides with the pure rule, and applies each kind under a
/// leadership, as the coordinator's reaper does.
pub(crate) async fn reap(
    b: &Bundle,
    now: chrono::DateTime<chrono::Utc>,
) -> (Vec<RunId>, Vec<RunId>, Vec<RunId>) {
    let params = ReapParams {
        now: Some(now),
        limit: 1_000,
        poison_limit: lease::POISON_LIMIT_DEFAULT,
    };
    let leader = b.leader_of("test-reaper", "test").await;
    let expired = b.store.expired_leases(&params).await.expect("expired");
    let pick = |kind: Reap| -> Vec<LeaseView> {
        expired
            .iter()
            .filter(|v| lease::reap(v, now, params.poison_limit) == kind)
            .copied()
            .collect()
    };
    let store = &b.store;
    let requeued = store
        .requeue_expired_as_leader(&leader, &pick(Reap::Requeue), &params)
        .await
        .expect("requeue");
    let stale = store
        .stale_reap_as_leader(&leader, &pick(Reap::StaleReap), &params)
        .await
        .expect("stale");
    let blocked = store
        .block_poisoned_as_leader(&leader, &pick(Reap::BlockPoisoned), &params)
        .await
        .expect("block");
    (requeued, stale, blocked)
}

#[tokio::test]
async fn reaper_requeues_an_expired_claim_without_progress_and_only_once_expired() {
    let (b, _, run_id) = setup_run("reap").await;
    b.claim_one("dead").await;
    let expires = b.lease_expiry(run_id).await;
    let one_ms = chrono::TimeDelta::milliseconds(1);

    assert_eq!(
        reap(&b, expires - one_ms).await,
        (vec![], vec![], vec![]),
        "due in 1 ms"
    );
    assert_eq!(
        reap(&b, expires).await,
        (vec![], vec![], vec![]),
        "at the instant"
    );
    assert_eq!(
        reap(&b, expires + one_ms).await,
        (vec![run_id], vec![], vec![]),
        "expired by 1 ms"
    );
    // A second reaper, or a paused one waking up, changes nothing twice.
    assert_eq!(reap(&b, expires + one_ms).await, (vec![], vec![], vec![]));

    let run = b.run(run_id).await;
    assert_eq!(
        run.status,
        run::apply(RunStatus::Running, Transition::RequeueExpiredClaim)
            .expect("legal")
            .to
    );
    assert_eq!(run.queue_reason.as_deref(), Some("claim_expired"));
    assert_eq!(run.expired_claims, 1);
    let names = b.event_names(run_id).await;
    assert_eq!(
        names.last().map(String::as_str),
        Some(Transition::RequeueExpiredClaim.event())
    );
    assert_eq!(
        names
            .iter()
            .filter(|n| *n == "run_execution_claim_expired_requeued")
            .count(),
        1
    );
    assert_eq!(b.claim_one("alive").await.claim.epoch(), LeaseEpoch(2));
}

#[tokio::test]
async fn reaper_stale_reaps_an_expired_claim_after_progress_and_counts_the_attempt() {
    let (b, _, run_id) = setup_run("stale").await;
    let claim = b.claim_one("frozen").await.claim;
    b.store
        .node_started(&claim, &node("a"))
        .await
        .expect("start");
    let expires = b.lease_expiry(run_id).await;
    let one_ms = chrono::TimeDelta::milliseconds(1);

    assert_eq!(
        reap(&b, expires - one_ms).await,
        (vec![], vec![], vec![]),
        "due in 1 ms"
    );
    assert_eq!(
        reap(&b, expires + one_ms).await,
        (vec![], vec![run_id], vec![]),
        "expired by 1 ms"
    );
    assert_eq!(reap(&b, expires + one_ms).await, (vec![], vec![], vec![]));

    let run = b.run(run_id).await;
    assert_eq!(
        run.status,
        run::apply(RunStatus::Running, Transition::StaleReap)
            .expect("legal")
            .to
    );
    assert_eq!(run.stop_kind.as_deref(), Some("stale_reaped"));
    let a = &b.checkpoint(run_id).await[0];
    assert_eq!((a.status, a.attempts), (NodeStatus::Failed, 1));
    assert_lease_lost(
        &b.store.node_completed(&claim, &node("a"), &json!(1)).await,
        "late output",
    );
    assert_eq!(
        b.event_names(run_id).await.last().map(String::as_str),
        Some("run_stale_reaped")
    );
}

#[tokio::test]
async fn reaper_leaves_live_leases_and_cancelled_runs_alone() {
    let (b, automation, live) = setup_run("alive").await;
    let cancelled = b.start(&automation).await;
    b.claim("w", 2).await;
    b.expire_lease(cancelled, Duration::from_secs(60)).await;
    b.cancel(cancelled, "stop").await;

    let now = chrono::Utc::now() + chrono::TimeDelta::seconds(1);
    assert_eq!(reap(&b, now).await, (vec![], vec![], vec![]));
    let run = b.run(live).await;
    assert_eq!(run.status, RunStatus::Running);
    let run = b.run(cancelled).await;
    assert_eq!(run.status, RunStatus::Cancelled);
}

#[tokio::test]
async fn a_run_whose_claims_keep_expiring_is_blocked_as_poison() {
    let (b, _, run_id) = setup_run("poison").await;
    for round in 1..=lease::POISON_LIMIT_DEFAULT {
        b.claim_one("doomed").await;
        b.expire_lease(run_id, Duration::from_secs(1)).await;
        let (requeued, _, blocked) =
            reap(&b, chrono::Utc::now() + chrono::TimeDelta::seconds(5)).await;
        if round < lease::POISON_LIMIT_DEFAULT {
            assert_eq!(requeued, vec![run_id], "round {round}");
        } else {
            assert_eq!(blocked, vec![run_id], "round {round}");
        }
    }
    let run = b.run(run_id).await;
    assert_eq!(run.status, RunStatus::Blocked);
    assert_eq!(run.stop_kind.as_deref(), Some("poisoned"));
    assert!(b.claim("w", 1).await.is_empty());
}

/// A repeat of `node_started` that waited behind the first (still in flight when its
/// acknowledgement was lost) must see the first's row, not count a second attempt.
#[tokio::test]
async fn a_repeat_that_waited_behind_the_first_write_counts_one_attempt() {
    let (b, _, run_id) = setup_run("inflight").await;
    let claim = b.claim_one("w").await.claim;

    // The first write, in flight: it holds the run's row lock and has written its node row.
    let (mut first, connection) = tokio_postgres::connect(b.db.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let tx = first.transaction().await.expect("begin");
    tx.execute(
        "UPDATE runs SET progress_epoch = lease_epoch, event_seq = event_seq + 1 WHERE run_id = $1",
        &[&run_id.0],
    )
    .await
    .expect("lock the run");
    tx.execute(
        "INSERT INTO run_nodes (run_id, node_id, status, attempts, epoch, started_at)
         VALUES ($1, 'a', 'running', 1, $2, now())",
        &[&run_id.0, &claim.epoch().0],
    )
    .await
    .expect("node row");

    // The repeat waits for the lock.
    let store = b.store.clone();
    let repeat = tokio::spawn(async move { store.node_started(&claim, &node("a")).await });
    leasehold_testkit::wait_for(
        Duration::from_secs(10),
        "the repeat to wait for the lock",
        || async {
            let waiting: i64 = b
                .sql
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (waiting > 0).then_some(())
        },
    )
    .await;
    tx.commit().await.expect("the first write lands");

    assert_eq!(repeat.await.expect("task").expect("repeat"), 1);
    let a = &b.checkpoint(run_id).await[0];
    assert_eq!(a.attempts, 1, "one attempt, counted once");
}

#[tokio::test]
async fn runs_sharing_a_concurrency_key_are_never_held_at_once() {
    let (b, automation) = setup_diamond("keyed").await;
    let keyed = |key: &str| leasehold_core::store::StartRun {
        concurrency_key: Some(key.into()),
        ..b.start_request(&automation)
    };
    let mut started = Vec::new();
    for key in ["acct-1", "acct-1", "acct-2", "acct-1"] {
        started.push(b.store.start_run(&keyed(key)).await.expect("start").run_id);
    }
    let claimant = ClaimantId::from("w");
    let first: Vec<RunId> = b
        .store
        .claim_runs(&claimant, 10, LEASE)
        .await
        .expect("claim")
        .iter()
        .map(|c| c.claim.run_id())
        .collect();
    assert_eq!(first, vec![started[0], started[2]], "one run per key");
    assert!(
        b.store
            .claim_runs(&claimant, 10, LEASE)
            .await
            .expect("claim")
            .is_empty(),
        "the held key keeps its other runs waiting"
    );

    // Once the holder finishes, the next run of the key is claimable.
    b.cancel(started[0], "done").await;
    let next = b.claim_one("w").await;
    assert_eq!(next.claim.run_id(), started[1]);
}

#[tokio::test]
async fn concurrent_claimers_never_hold_one_key_twice() {
    let (b, automation) = setup_diamond("keyed-race").await;
    for i in 0..60 {
        let request = leasehold_core::store::StartRun {
            concurrency_key: Some(format!("key-{}", i % 3)),
            ..b.start_request(&automation)
        };
        b.store.start_run(&request).await.expect("start");
    }
    let mut claimers = Vec::new();
    for i in 0..8 {
        let store = b.store.clone();
        claimers.push(tokio::spawn(async move {
            let claimant = ClaimantId(format!("claimer-{i}"));
            let mut done = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while done < 60 && tokio::time::Instant::now() < deadline {
                for run in store.claim_runs(&claimant, 4, LEASE).await.expect("claim") {
                    let claim = run.claim;
                    for id in ["a", "b", "c", "d"] {
                        store.node_started(&claim, &node(id)).await.expect("start");
                        store
                            .node_completed(&claim, &node(id), &json!(null))
                            .await
                            .expect("complete");
                    }
                    store.complete_run(&claim).await.expect("complete run");
                    done += 1;
                }
                if store
                    .stats(&leasehold_core::ids::TenantId::default(), None)
                    .await
                    .expect("stats")
                    .runs_by_status["completed"]
                    == 60
                {
                    break;
                }
            }
        }));
    }
    // Meanwhile, look again and again for a key held twice.
    let mut overlaps = 0i64;
    while !claimers.iter().all(tokio::task::JoinHandle::is_finished) {
        overlaps += b
            .sql
            .query_one(
                "SELECT count(*) FROM (SELECT concurrency_key FROM runs
                  WHERE status IN ('running', 'pausing') AND concurrency_key IS NOT NULL
                  GROUP BY concurrency_key HAVING count(*) > 1) doubled",
                &[],
            )
            .await
            .expect("look")
            .get::<_, i64>(0);
        tokio::task::yield_now().await;
    }
    for claimer in claimers {
        claimer.await.expect("claimer");
    }
    assert_eq!(overlaps, 0, "a key was held by two runs at once");
    let stats = b
        .store
        .stats(&leasehold_core::ids::TenantId::default(), None)
        .await
        .expect("stats");
    assert_eq!(stats.runs_by_status["completed"], 60, "every run completed");
}
