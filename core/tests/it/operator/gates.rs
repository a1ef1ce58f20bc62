//! Gate decisions: read and list gates, approve, rework and cancel, and a race of deciders.

use std::sync::Arc;

use leasehold_core::ids::{RunId, TenantId};
use leasehold_core::run::{self, RunStatus, Transition};
use leasehold_core::store::{
    Decision, DecisionKind, GateRecord, GateStatus, PageRequest, RequestError,
};
use leasehold_testkit::fixtures::{Bundle, gated, node, setup};
use serde_json::json;
use uuid::Uuid;

use super::{check_step, checkpoint_nodes, complete, decision, ready_now, stepped, to_gate};

/// [`setup`] with one run of a `gated` automation named `automation` taken to its gate; returns
/// the run and the gate.
async fn setup_gate(automation: &str) -> (Bundle, RunId, Uuid) {
    let b = setup().await;
    let automation = b.create(&gated(automation)).await;
    let (run_id, gate_id) = to_gate(&b, &automation).await;
    (b, run_id, gate_id)
}

/// Eight deciders at once, released together by a barrier, the `i`th sending `request(i)`;
/// returns each request with its answer.
async fn race_deciders(
    b: &Bundle,
    request: impl Fn(usize) -> Decision,
) -> Vec<(Decision, Result<GateRecord, RequestError>)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = b.store.clone();
            let tenant = b.tenant.clone();
            let barrier = barrier.clone();
            let request = request(i);
            tokio::spawn(async move {
                barrier.wait().await;
                let result = store.decide_gate(&tenant, &request).await;
                (request, result)
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task"));
    }
    results
}

#[tokio::test]
async fn gates_are_read_and_listed() {
    let b = setup().await;
    let automation = b.create(&gated("listed")).await;
    let (run1, g1) = to_gate(&b, &automation).await;
    let (_run2, g2) = to_gate(&b, &automation).await;
    let (_run3, g3) = to_gate(&b, &automation).await;

    let gate = b.store.gate(&b.tenant, g1).await.expect("gate");
    assert_eq!(
        (gate.run_id, gate.node_id.as_str(), gate.prompt.as_str()),
        (run1, "gate", "Ship it?")
    );
    assert_eq!(gate.status, GateStatus::Pending);
    assert_eq!(
        (gate.decided_at, gate.decided_by, gate.stale),
        (None, None, false)
    );

    let pending = |page: PageRequest| {
        let b = &b;
        async move {
            b.store
                .list_gates(&b.tenant, false, &page)
                .await
                .expect("pending gates")
        }
    };
    let first = pending(PageRequest::first(2)).await;
    let gate_ids = |gates: &[GateRecord]| gates.iter().map(|g| g.gate_id).collect::<Vec<_>>();
    assert_eq!(gate_ids(&first.items), vec![g1, g2], "oldest first");
    let rest = pending(PageRequest {
        size: 2,
        after: first.next,
    })
    .await;
    assert_eq!(gate_ids(&rest.items), vec![g3]);
    assert!(rest.next.is_none());

    b.store
        .decide_gate(&b.tenant, &decision(g2, DecisionKind::Approve, "r-2"))
        .await
        .expect("approve");
    b.sql
        .execute(
            "UPDATE gates SET stale_marked_at = now() WHERE gate_id = $1",
            &[&g3],
        )
        .await
        .expect("mark stale");
    let pending_now = pending(PageRequest::first(0)).await;
    assert_eq!(gate_ids(&pending_now.items), vec![g1, g3]);
    assert!(pending_now.items[1].stale);

    let mut all = Vec::new();
    let mut page = PageRequest::first(2);
    loop {
        let got = b
            .store
            .list_gates(&b.tenant, true, &page)
            .await
            .expect("all gates");
        all.extend(got.items);
        match got.next {
            Some(next) => page.after = Some(next),
            None => break,
        }
    }
    assert_eq!(gate_ids(&all), vec![g3, g2, g1], "history: newest first");
    assert_eq!(all[1].status, GateStatus::Approved);

    assert_eq!(
        gate_ids(&b.store.gates_of_run(&b.tenant, run1).await.expect("of run")),
        vec![g1]
    );
    let no_gates = b.start(&automation).await;
    assert!(
        b.store
            .gates_of_run(&b.tenant, no_gates)
            .await
            .expect("none")
            .is_empty()
    );
    assert!(matches!(
        b.store.gates_of_run(&b.tenant, RunId::new()).await,
        Err(RequestError::RunNotFound(_))
    ));
    // A token of the pending listing is refused by the history listing.
    let token = pending(PageRequest::first(1)).await.next.expect("more");
    assert!(matches!(
        b.store
            .list_gates(
                &b.tenant,
                true,
                &PageRequest {
                    size: 1,
                    after: Some(token)
                }
            )
            .await,
        Err(RequestError::BadPageToken(_))
    ));
    // Another tenant sees none of them.
    let other = TenantId::from("other");
    assert!(
        b.store
            .list_gates(&other, true, &PageRequest::default())
            .await
            .expect("other")
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn unknown_gates_are_not_found() {
    let b = setup().await;
    let automation = b.create(&gated("hidden")).await;
    let (_run, gate_id) = to_gate(&b, &automation).await;
    let other = TenantId::from("other");
    assert!(matches!(
        b.store.gate(&b.tenant, Uuid::now_v7()).await,
        Err(RequestError::GateNotFound(_))
    ));
    assert!(matches!(
        b.store.gate(&other, gate_id).await,
        Err(RequestError::GateNotFound(id)) if id == gate_id
    ));
    for kind in [
        DecisionKind::Approve,
        DecisionKind::Cancel,
        DecisionKind::Rework {
            nodes: vec![node("a")],
        },
    ] {
        let refused = b
            .store
            .decide_gate(&other, &decision(gate_id, kind, "r"))
            .await;
        assert!(
            matches!(refused, Err(RequestError::GateNotFound(_))),
            "{refused:?}"
        );
    }
    assert_eq!(
        b.store.gate(&b.tenant, gate_id).await.expect("gate").status,
        GateStatus::Pending
    );
}

#[tokio::test]
async fn approving_a_gate_requeues_its_run_and_a_repeat_gets_the_same_answer() {
    let b = setup().await;
    let spec = gated("approve");
    let automation = b.create(&spec).await;
    let (run_id, gate_id) = to_gate(&b, &automation).await;

    let approved = b
        .store
        .decide_gate(&b.tenant, &decision(gate_id, DecisionKind::Approve, "r-1"))
        .await
        .expect("approve");
    assert_eq!(approved.status, GateStatus::Approved);
    assert_eq!(approved.decided_by.as_deref(), Some("alice"));
    assert_eq!(approved.reason.as_deref(), Some("looked fine"));
    assert_eq!(approved.request_id.as_deref(), Some("r-1"));
    assert!(approved.decided_at.is_some());
    assert!(approved.rework_nodes.is_empty());
    assert_eq!(
        b.store.gate(&b.tenant, gate_id).await.expect("read"),
        approved
    );

    let (run, event) = stepped(&b, run_id, RunStatus::AwaitingApproval, Transition::Approve).await;
    assert_eq!(run.queue_reason.as_deref(), Some("gate_approved"));
    assert_eq!(event.node_id, Some(node("gate")));
    assert_eq!(event.metadata["gate_id"], gate_id.to_string());

    // The same request again: the same answer, and nothing moves twice.
    let repeat = b
        .store
        .decide_gate(&b.tenant, &decision(gate_id, DecisionKind::Approve, "r-1"))
        .await
        .expect("repeat");
    assert_eq!(repeat, approved);
    let other_request = b
        .store
        .decide_gate(&b.tenant, &decision(gate_id, DecisionKind::Approve, "r-2"))
        .await;
    assert!(
        matches!(
            &other_request,
            Err(RequestError::GateAlreadyDecided { gate_id: id, status }) if *id == gate_id && status == "approved"
        ),
        "{other_request:?}"
    );
    let same_key_other_decision = b
        .store
        .decide_gate(&b.tenant, &decision(gate_id, DecisionKind::Cancel, "r-1"))
        .await;
    assert!(
        matches!(
            same_key_other_decision,
            Err(RequestError::IdempotencyConflict { .. })
        ),
        "{same_key_other_decision:?}"
    );
    assert_eq!(b.event_count(run_id, "run_gate_approved").await, 1);
    assert_eq!(b.run(run_id).await.status, RunStatus::Queued);

    // A worker now runs the gated node without asking again.
    b.claim_one("w2").await;
    assert_eq!(
        b.store.approved_gates(run_id).await.expect("approved"),
        vec![node("gate")]
    );
    assert_eq!(ready_now(&b, run_id, &spec).await, vec!["gate"]);
}

#[tokio::test]
async fn of_eight_concurrent_deciders_exactly_one_wins() {
    let (b, run_id, gate_id) = setup_gate("race").await;

    let results = race_deciders(&b, |i| {
        decision(gate_id, DecisionKind::Approve, &format!("req-{i}"))
    })
    .await;
    let mut winners = Vec::new();
    let mut losers = 0;
    for (request, result) in results {
        match result {
            Ok(gate) => winners.push((request, gate)),
            Err(RequestError::GateAlreadyDecided { status, .. }) => {
                assert_eq!(status, "approved");
                losers += 1;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one decider wins");
    assert_eq!(losers, 7);
    assert_eq!(b.event_count(run_id, "run_gate_approved").await, 1);
    let run = b.run(run_id).await;
    assert_eq!(run.status, RunStatus::Queued);

    let (request, won) = winners.pop().expect("winner");
    assert_eq!(won.request_id, request.request_id);
    let repeat = b
        .store
        .decide_gate(&b.tenant, &request)
        .await
        .expect("repeat");
    assert_eq!(repeat, won);
    assert_eq!(b.event_count(run_id, "run_gate_approved").await, 1);
}

#[tokio::test]
async fn approve_and_cancel_racing_leave_one_consistent_outcome() {
    let (b, run_id, gate_id) = setup_gate("mixed").await;
    let results = race_deciders(&b, |i| {
        let kind = if i % 2 == 0 {
            DecisionKind::Approve
        } else {
            DecisionKind::Cancel
        };
        decision(gate_id, kind, &format!("mixed-{i}"))
    })
    .await;
    let mut won = Vec::new();
    for (_, result) in results {
        match result {
            Ok(gate) => won.push(gate),
            Err(RequestError::GateAlreadyDecided { .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won.len(), 1);
    let (status, event) = match won[0].status {
        GateStatus::Approved => (RunStatus::Queued, "run_gate_approved"),
        GateStatus::Cancelled => (RunStatus::Cancelled, "run_cancelled"),
        other => panic!("unexpected gate status {other}"),
    };
    assert_eq!(b.run(run_id).await.status, status);
    let decisions = b.event_count(run_id, "run_gate_approved").await
        + b.event_count(run_id, "run_cancelled").await;
    assert_eq!(decisions, 1);
    assert_eq!(b.last_event(run_id).await.event, event);
}

#[tokio::test]
async fn rework_reruns_the_named_nodes_and_their_downstream_then_asks_again() {
    let b = setup().await;
    let spec = gated("rework");
    let automation = b.create(&spec).await;
    let (run_id, gate_id) = to_gate(&b, &automation).await;
    assert_eq!(checkpoint_nodes(&b, run_id).await, vec!["a", "b", "c"]);

    let rework = decision(
        gate_id,
        DecisionKind::Rework {
            nodes: vec![node("b")],
        },
        "rw-1",
    );
    let rejected = b
        .store
        .decide_gate(&b.tenant, &rework)
        .await
        .expect("rework");
    assert_eq!(rejected.status, GateStatus::Rejected);
    assert_eq!(rejected.rework_nodes, vec![node("b")]);
    assert_eq!(
        b.store.gate(&b.tenant, gate_id).await.expect("read"),
        rejected,
        "the rework list reads back from the decision's event"
    );

    let run = b.run(run_id).await;
    let event = b.last_event(run_id).await;
    // The same edge as an approval, recorded under its own name.
    check_step(
        RunStatus::AwaitingApproval,
        Transition::Approve,
        run.status,
        "run_gate_approved",
    );
    assert_eq!(event.event, "run_rework_requested");
    assert_eq!(event.metadata["nodes"], json!(["b"]));
    assert_eq!(event.metadata["reset"], json!(["b", "gate", "e"]));
    assert_eq!(run.queue_reason.as_deref(), Some("rework_requested"));
    assert_eq!(checkpoint_nodes(&b, run_id).await, vec!["a", "c"]);
    assert_eq!(
        b.store
            .decide_gate(&b.tenant, &rework)
            .await
            .expect("repeat"),
        rejected
    );

    // The worker reruns b, then reaches the gate again and asks anew.
    let claimed = b.claim_one("w2").await;
    assert!(
        b.store
            .approved_gates(run_id)
            .await
            .expect("approved")
            .is_empty()
    );
    assert_eq!(ready_now(&b, run_id, &spec).await, vec!["b"]);
    complete(&b, &claimed.claim, "b").await;
    assert_eq!(ready_now(&b, run_id, &spec).await, vec!["gate"]);
    let second = b
        .store
        .await_approval(&claimed.claim, &node("gate"), "Ship it now?")
        .await
        .expect("asked again");
    let statuses: Vec<(Uuid, GateStatus)> = b
        .store
        .gates_of_run(&b.tenant, run_id)
        .await
        .expect("gates")
        .iter()
        .map(|g| (g.gate_id, g.status))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (gate_id, GateStatus::Rejected),
            (second, GateStatus::Pending)
        ]
    );
}

#[tokio::test]
async fn rework_naming_an_unknown_node_changes_nothing() {
    let (b, run_id, gate_id) = setup_gate("strict").await;
    let refused = b
        .store
        .decide_gate(
            &b.tenant,
            &decision(
                gate_id,
                DecisionKind::Rework {
                    nodes: vec![node("a"), node("zzz")],
                },
                "rw",
            ),
        )
        .await;
    assert!(
        matches!(&refused, Err(RequestError::ReworkNodeNotInSpec { node_id, .. }) if node_id.as_str() == "zzz"),
        "{refused:?}"
    );
    assert_eq!(
        b.store.gate(&b.tenant, gate_id).await.expect("gate").status,
        GateStatus::Pending
    );
    assert_eq!(b.run(run_id).await.status, RunStatus::AwaitingApproval);
    assert_eq!(checkpoint_nodes(&b, run_id).await, vec!["a", "b", "c"]);
}

#[tokio::test]
async fn a_cancel_decision_cancels_the_run() {
    let (b, run_id, gate_id) = setup_gate("cancel").await;
    let mut cancel = decision(gate_id, DecisionKind::Cancel, "c-1");
    cancel.reason = Some("wrong customer".into());
    let gate = b
        .store
        .decide_gate(&b.tenant, &cancel)
        .await
        .expect("cancel");
    assert_eq!(gate.status, GateStatus::Cancelled);

    let (run, event) = stepped(&b, run_id, RunStatus::AwaitingApproval, Transition::Cancel).await;
    assert_eq!(run.stop_kind.as_deref(), Some("cancelled"));
    assert_eq!(run.stop_reason.as_deref(), Some("wrong customer"));
    assert!(run.finished_at.is_some());
    assert_eq!(event.stop_kind.as_deref(), Some("cancelled"));
    assert!(b.claim("w2", 10).await.is_empty());
}

#[tokio::test]
async fn a_gate_of_a_paused_run_is_suspended_and_the_same_gate_awaits_after_resume() {
    let (b, run_id, gate_id) = setup_gate("paused-gate").await;
    b.pause(run_id, "wait").await;
    assert_eq!(
        b.store.gate(&b.tenant, gate_id).await.expect("gate").status,
        GateStatus::Suspended
    );
    let refused = b
        .store
        .decide_gate(&b.tenant, &decision(gate_id, DecisionKind::Approve, "a-1"))
        .await;
    assert!(
        matches!(
            refused,
            Err(RequestError::Transition(run::IllegalTransition {
                from: RunStatus::Paused,
                transition: Transition::Approve
            }))
        ),
        "{refused:?}"
    );
    assert_eq!(
        b.store.gate(&b.tenant, gate_id).await.expect("gate").status,
        GateStatus::Suspended
    );

    // Resuming goes back to the same gate: nothing to claim, the gate pending again.
    b.store
        .resume_run(&b.tenant, run_id, "go", "ops", None)
        .await
        .expect("resume");
    let (_, event) = stepped(&b, run_id, RunStatus::Paused, Transition::ResumeAtGate).await;
    assert_eq!(event.metadata["gate_id"], json!(gate_id));
    assert_eq!(event.run_status, Some(RunStatus::AwaitingApproval));
    assert_eq!(
        b.store.gate(&b.tenant, gate_id).await.expect("gate").status,
        GateStatus::Pending
    );
    assert!(
        b.claim("w2", 10).await.is_empty(),
        "nothing to run before the decision"
    );
    b.store
        .decide_gate(&b.tenant, &decision(gate_id, DecisionKind::Approve, "a-2"))
        .await
        .expect("the same gate is decided after the resume");
    assert_eq!(b.run(run_id).await.status, RunStatus::Queued);

    assert_eq!(b.claim_one("w2").await.claim.run_id(), run_id);
}

#[tokio::test]
async fn a_cancel_decision_settles_a_run_paused_at_its_gate() {
    let (b, run_id, gate_id) = setup_gate("paused-cancel").await;
    b.pause(run_id, "wait").await;
    b.store
        .decide_gate(&b.tenant, &decision(gate_id, DecisionKind::Cancel, "c-1"))
        .await
        .expect("cancel a paused run at its gate");
    assert_eq!(b.run(run_id).await.status, RunStatus::Cancelled);
    assert_eq!(
        b.store.gate(&b.tenant, gate_id).await.expect("gate").status,
        GateStatus::Cancelled
    );
}
