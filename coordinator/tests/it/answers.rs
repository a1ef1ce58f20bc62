//! Answers that a client can act on without asking again: a run in backoff says what it waits
//! for, a paused run's gate keeps its id, a missing version is named as such.

use std::time::Duration;

use leasehold_core::ids::NodeId;
use leasehold_proto::v1;
use leasehold_testkit::fixtures::claim_one;
use tonic::Code;

use super::api::setup;

const FLAKY: &str =
    "id: flaky\nnodes:\n  - {id: a, kind: echo}\n  - {id: b, kind: noop, depends_on: [a]}\n";
const GATED: &str = "id: gated\nnodes:\n  - {id: ship, kind: noop, approval: {prompt: Ship?}}\n";

#[tokio::test]
async fn a_run_in_backoff_says_which_attempt_of_which_node_waits_until_when_and_why() {
    let b = setup().await;
    b.apply(FLAKY).await;
    let run = b.start("flaky", "").await.run.expect("run");
    let claim = claim_one(&b.store, "w").await.claim;
    let a = NodeId::from("a");
    b.store.node_started(&claim, &a).await.expect("start");
    b.store
        .node_failed(&claim, &a, "upstream said 503", true)
        .await
        .expect("fail");
    b.store
        .schedule_retry(&claim, &a, 2, Duration::from_secs(3_600))
        .await
        .expect("backoff");

    let shown = b
        .runs()
        .get_run(v1::GetRunRequest {
            run_id: run.run_id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        (shown.status(), shown.queue_reason()),
        (v1::RunStatus::Queued, v1::QueueReason::RetryBackoff)
    );
    let waiting = shown.waiting_retry.expect("a run in backoff says so");
    assert_eq!(
        (
            waiting.node_id.as_str(),
            waiting.next_attempt,
            waiting.error.as_str()
        ),
        ("a", 2, "upstream said 503")
    );
    let due = waiting.due_at.expect("due time");
    let in_an_hour = chrono::Utc::now().timestamp() + 3_600;
    assert!(
        (in_an_hour - 60..=in_an_hour).contains(&due.seconds),
        "{due:?}"
    );
    let statuses: Vec<(String, v1::NodeStatus)> = shown
        .nodes
        .iter()
        .map(|n| (n.node_id.clone(), n.status()))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("a".into(), v1::NodeStatus::WaitingRetry),
            ("b".into(), v1::NodeStatus::Pending)
        ]
    );
    assert!(shown.last_failure.is_none(), "the run has not failed");

    // Listings say it too.
    let listed = b
        .runs()
        .list_runs(v1::ListRunsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        listed.runs[0]
            .waiting_retry
            .as_ref()
            .map(|w| w.next_attempt),
        Some(2)
    );
}

#[tokio::test]
async fn a_paused_runs_gate_is_suspended_and_the_same_gate_is_decided_after_resume() {
    let b = setup().await;
    b.apply(GATED).await;
    let run = b.start("gated", "").await.run.expect("run");
    let claim = claim_one(&b.store, "w").await.claim;
    let gate_id = b
        .store
        .await_approval(&claim, &NodeId::from("ship"), "Ship?")
        .await
        .expect("gate")
        .to_string();
    let run_id = run.run_id.clone();
    let get = || async {
        b.runs()
            .get_run(v1::GetRunRequest {
                run_id: run_id.clone(),
            })
            .await
            .expect("get")
            .into_inner()
    };

    b.runs()
        .pause_run(v1::PauseRunRequest {
            run_id: run_id.clone(),
            reason: "wait for Monday".into(),
            ..Default::default()
        })
        .await
        .expect("pause");
    let paused = get().await;
    assert_eq!(paused.status(), v1::RunStatus::Paused);
    assert_eq!(
        (paused.gates[0].gate_id.as_str(), paused.gates[0].status()),
        (gate_id.as_str(), v1::GateStatus::Suspended)
    );
    let listed = b
        .gates()
        .list_gates(v1::ListGatesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.gates[0].status(), v1::GateStatus::Suspended);
    let refused = b
        .gates()
        .decide_gate(v1::DecideGateRequest {
            gate_id: gate_id.clone(),
            decision: v1::Decision::Approve.into(),
            ..Default::default()
        })
        .await
        .expect_err("a suspended gate is not approved");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    let resumed = b
        .runs()
        .resume_run(v1::ResumeRunRequest {
            run_id: run_id.clone(),
            reason: "Monday".into(),
            ..Default::default()
        })
        .await
        .expect("resume")
        .into_inner();
    assert_eq!(resumed.status(), v1::RunStatus::AwaitingApproval);
    assert_eq!(
        (
            resumed.gates.len(),
            resumed.gates[0].gate_id.as_str(),
            resumed.gates[0].status()
        ),
        (1, gate_id.as_str(), v1::GateStatus::Pending)
    );
    let approved = b
        .gates()
        .decide_gate(v1::DecideGateRequest {
            gate_id: gate_id.clone(),
            decision: v1::Decision::Approve.into(),
            decided_by: "ops".into(),
            ..Default::default()
        })
        .await
        .expect("the same gate is decided")
        .into_inner();
    assert_eq!(approved.status(), v1::GateStatus::Approved);
    assert_eq!(get().await.status(), v1::RunStatus::Queued);
}

#[tokio::test]
async fn a_missing_version_of_an_existing_automation_is_named_as_such() {
    let b = setup().await;
    b.apply(FLAKY).await;
    let missing = b
        .automations()
        .get_automation(v1::GetAutomationRequest {
            id: "flaky".into(),
            version: 7,
        })
        .await
        .expect_err("no version 7");
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(
        missing.message(),
        "automation flaky has no version 7; its versions are 1 to 1"
    );
    let unknown = b
        .automations()
        .get_automation(v1::GetAutomationRequest {
            id: "nope".into(),
            version: 7,
        })
        .await
        .expect_err("no automation");
    assert_eq!(
        (unknown.code(), unknown.message()),
        (Code::NotFound, "automation nope not found")
    );
}

#[tokio::test]
async fn a_retried_cancel_with_its_request_id_is_answered_as_the_first() {
    let b = setup().await;
    b.apply(FLAKY).await;
    let run = b.start("flaky", "").await.run.expect("run");
    let cancel = async |request_id: String| {
        b.runs()
            .cancel_run(v1::CancelRunRequest {
                run_id: run.run_id.clone(),
                reason: "no longer needed".into(),
                request_id,
            })
            .await
    };

    let too_long = cancel("r".repeat(257)).await.expect_err("too long");
    assert_eq!(too_long.code(), Code::InvalidArgument);
    assert!(too_long.message().contains("request_id"), "{too_long:?}");

    for attempt in ["first", "retry after a lost answer"] {
        let answer = cancel("cancel-1".into()).await.expect(attempt).into_inner();
        assert_eq!(answer.status(), v1::RunStatus::Cancelled, "{attempt}");
    }
    let fresh = cancel("cancel-2".into()).await.expect_err("another call");
    assert_eq!(fresh.code(), Code::FailedPrecondition);
}
