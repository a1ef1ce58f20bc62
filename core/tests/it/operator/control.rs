//! Resume and recover: an operator moves a paused, failed or blocked run on.

use std::time::Duration;

use leasehold_core::ids::{RunId, TenantId};
use leasehold_core::run::{self, RunStatus, Transition};
use leasehold_core::store::{ReapParams, RequestError};
use leasehold_testkit::fixtures::{diamond, fragile, node, setup, setup_diamond, setup_run};

use super::{checkpoint_nodes, complete, fail, ready_now, stepped};

#[tokio::test]
async fn resume_requeues_an_operator_paused_run() {
    let (b, _, run_id) = setup_run("pausable").await;
    b.pause(run_id, "hold on").await;
    assert_eq!(
        b.run(run_id).await.stop_kind.as_deref(),
        Some("operator_paused")
    );

    b.store
        .resume_run(&b.tenant, run_id, "go on", "ops", None)
        .await
        .expect("resume");
    let (run, event) = stepped(&b, run_id, RunStatus::Paused, Transition::Resume).await;
    assert_eq!(run.queue_reason.as_deref(), Some("resumed"));
    assert_eq!(run.stop_kind, None);
    assert_eq!(event.reason.as_deref(), Some("go on"));
    assert_eq!(event.metadata["stop_kind"], "operator_paused");
    assert_eq!(event.seq, run.event_seq);
    assert_eq!(b.claim_one("w1").await.claim.run_id(), run_id);
}

#[tokio::test]
async fn resume_requeues_a_stale_reaped_run_whose_interrupted_node_is_ready_again() {
    let (b, _, run_id) = setup_run("reaped").await;
    let claimed = b.claim_one("w1").await;
    b.store
        .node_started(&claimed.claim, &node("a"))
        .await
        .expect("start a");
    b.expire_lease(run_id, Duration::from_secs(1)).await;
    let params = ReapParams {
        now: None,
        limit: 10,
        poison_limit: 5,
    };
    let expired = b.store.expired_leases(&params).await.expect("expired");
    let leader = b.leader_of("test-reaper", "test").await;
    let reaped = b
        .store
        .stale_reap_as_leader(&leader, &expired, &params)
        .await
        .expect("reap");
    assert_eq!(reaped, vec![run_id]);
    let run = b.run(run_id).await;
    assert_eq!(
        (run.status, run.stop_kind.as_deref()),
        (RunStatus::Paused, Some("stale_reaped"))
    );

    b.store
        .resume_run(&b.tenant, run_id, "the worker is gone", "ops", None)
        .await
        .expect("resume");
    let (_, event) = stepped(&b, run_id, RunStatus::Paused, Transition::Resume).await;
    assert_eq!(event.metadata["stop_kind"], "stale_reaped");
    b.claim_one("w2").await;
    assert_eq!(
        ready_now(&b, run_id, &diamond("reaped")).await,
        vec!["a"],
        "the interrupted attempt counted, and attempts remain"
    );
}

#[tokio::test]
async fn resume_refuses_runs_that_are_not_paused() {
    let (b, _, run_id) = setup_run("unpaused").await;
    let refused = b
        .store
        .resume_run(&b.tenant, run_id, "why", "ops", None)
        .await;
    assert!(
        matches!(
            refused,
            Err(RequestError::Transition(run::IllegalTransition {
                from: RunStatus::Queued,
                transition: Transition::Resume
            }))
        ),
        "{refused:?}"
    );
    assert_eq!(b.event_names(run_id).await, vec!["run_started"]);
    assert!(matches!(
        b.store
            .resume_run(&b.tenant, RunId::new(), "why", "ops", None)
            .await,
        Err(RequestError::RunNotFound(_))
    ));
    assert!(matches!(
        b.store
            .resume_run(&TenantId::from("other"), run_id, "why", "ops", None)
            .await,
        Err(RequestError::RunNotFound(_))
    ));
}

#[tokio::test]
async fn recover_requeues_a_failed_run_and_its_failed_node_runs_again() {
    let b = setup().await;
    let spec = fragile("fragile");
    let automation = b.create(&spec).await;
    let run_id = b.start(&automation).await;
    let claimed = b.claim_one("w1").await;
    complete(&b, &claimed.claim, "a").await;
    fail(&b, &claimed.claim, "b", &["d"]).await;
    assert_eq!(
        ready_now(&b, run_id, &spec).await,
        vec!["c"],
        "b is out of attempts and d is skipped"
    );

    b.store
        .recover_run(&b.tenant, run_id, "fixed the upstream", "ops", None)
        .await
        .expect("recover");
    let (run, event) = stepped(&b, run_id, RunStatus::Failed, Transition::Recover).await;
    assert_eq!(run.queue_reason.as_deref(), Some("recovered"));
    assert_eq!(
        (
            run.stop_kind,
            run.failed_node_id,
            run.failed_attempt,
            run.finished_at
        ),
        (None, None, None, None)
    );
    assert_eq!(event.metadata["from"], "failed");
    let reset: Vec<&str> = event.metadata["reset"]
        .as_array()
        .expect("reset list")
        .iter()
        .map(|n| n["node_id"].as_str().expect("id"))
        .collect();
    assert_eq!(reset, vec!["b", "d"]);
    assert_eq!(
        checkpoint_nodes(&b, run_id).await,
        vec!["a"],
        "completed nodes stay"
    );

    let again = b.claim_one("w2").await;
    assert_eq!(again.claim.run_id(), run_id);
    assert_eq!(ready_now(&b, run_id, &spec).await, vec!["b", "c"]);
}

#[tokio::test]
async fn recover_requeues_a_blocked_run_and_clears_the_poison_count() {
    let (b, _, run_id) = setup_run("blocked").await;
    let claimed = b.claim_one("w1").await;
    b.store
        .block_unreadable(&claimed.claim, "unreadable checkpoint")
        .await
        .expect("block");
    b.update_run(run_id, "expired_claims = 4").await;

    b.store
        .recover_run(&b.tenant, run_id, "repaired", "ops", None)
        .await
        .expect("recover");
    let (run, event) = stepped(&b, run_id, RunStatus::Blocked, Transition::Recover).await;
    assert_eq!(run.expired_claims, 0);
    assert_eq!((run.stop_kind, run.stop_reason), (None, None));
    assert_eq!(event.metadata["stop_kind"], "unreadable");
    assert_eq!(event.metadata["stop_reason"], "unreadable checkpoint");
    assert_eq!(b.claim_one("w2").await.claim.run_id(), run_id);
}

#[tokio::test]
async fn recover_refuses_runs_that_neither_failed_nor_blocked() {
    let (b, automation) = setup_diamond("fine").await;
    let completed = b.start(&automation).await;
    let claimed = b.claim_one("w1").await;
    for id in ["a", "b", "c", "d"] {
        complete(&b, &claimed.claim, id).await;
    }
    b.store
        .complete_run(&claimed.claim)
        .await
        .expect("complete");
    let queued = b.start(&automation).await;
    for (run_id, from) in [
        (completed, RunStatus::Completed),
        (queued, RunStatus::Queued),
    ] {
        let before = b.run(run_id).await;
        let refused = b
            .store
            .recover_run(&b.tenant, run_id, "why", "ops", None)
            .await;
        assert!(
            matches!(
                refused,
                Err(RequestError::Transition(run::IllegalTransition { from: f, transition: Transition::Recover })) if f == from
            ),
            "{refused:?}"
        );
        assert_eq!(b.run(run_id).await, before, "nothing changed");
    }
    assert!(matches!(
        b.store
            .recover_run(&b.tenant, RunId::new(), "why", "ops", None)
            .await,
        Err(RequestError::RunNotFound(_))
    ));
}
