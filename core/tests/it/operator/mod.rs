//! Operator actions against a real Postgres: automations (read, list, pause, delete), resume and
//! recover, gate decisions (including a race of deciders), keyset listings, stats and workers.

mod automations;
mod control;
mod gates;
mod listing;
mod retries;

use leasehold_core::ids::{AutomationId, NodeId, RunId};
use leasehold_core::run::{self, RunStatus, Transition};
use leasehold_core::spec::Spec;
use leasehold_core::store::{Claim, Decision, DecisionKind, Event, Failure, RunRecord};
use leasehold_testkit::fixtures::{Bundle, node};
use serde_json::json;
use uuid::Uuid;

fn decision(gate_id: Uuid, kind: DecisionKind, request_id: &str) -> Decision {
    Decision {
        gate_id,
        kind,
        reason: Some("looked fine".into()),
        decided_by: "alice".into(),
        request_id: Some(request_id.into()),
    }
}

/// Asserts that the state machine takes `from` by `transition` to `status`, recording `event`.
fn check_step(from: RunStatus, transition: Transition, status: RunStatus, event: &str) {
    let step = run::apply(from, transition).expect("legal in the state machine");
    assert_eq!(
        (step.to, step.event),
        (status, event),
        "{from} + {transition:?}"
    );
}

/// The run and its last event, once asserted that the state machine takes `from` by `transition`
/// to the run's status, recording that event.
async fn stepped(
    b: &Bundle,
    run_id: RunId,
    from: RunStatus,
    transition: Transition,
) -> (RunRecord, Event) {
    let run = b.run(run_id).await;
    let event = b.last_event(run_id).await;
    check_step(from, transition, run.status, &event.event);
    assert_eq!(
        event.run_status,
        Some(run.status),
        "{} records the status the run is in after it",
        event.event
    );
    (run, event)
}

async fn complete(b: &Bundle, claim: &Claim, id: &str) {
    b.store.node_started(claim, &node(id)).await.expect("start");
    b.store
        .node_completed(claim, &node(id), &json!({"done": id}))
        .await
        .expect("complete");
}

/// Fails `id` for good and the run with it, skipping `skipped`.
async fn fail(b: &Bundle, claim: &Claim, id: &str, skipped: &[&str]) {
    let attempt = b.store.node_started(claim, &node(id)).await.expect("start");
    b.store
        .node_failed(claim, &node(id), "boom", false)
        .await
        .expect("node failed");
    let skipped: Vec<NodeId> = skipped.iter().map(|s| node(s)).collect();
    b.store
        .fail_run(
            claim,
            &Failure {
                node_id: node(id),
                attempt,
                reason: "boom".into(),
            },
            &skipped,
        )
        .await
        .expect("fail run");
}

/// Starts a run of a `gated` automation and takes it to its gate; returns the run and gate.
async fn to_gate(b: &Bundle, automation: &AutomationId) -> (RunId, Uuid) {
    let run_id = b.start(automation).await;
    let claimed = b.claim_one("w-gate").await;
    assert_eq!(claimed.claim.run_id(), run_id);
    for id in ["a", "b", "c"] {
        complete(b, &claimed.claim, id).await;
    }
    let gate_id = b
        .store
        .await_approval(&claimed.claim, &node("gate"), "Ship it?")
        .await
        .expect("await approval");
    (run_id, gate_id)
}

/// What a worker that claims the run now would start, by the ready rule.
async fn ready_now(b: &Bundle, run_id: RunId, spec: &Spec) -> Vec<String> {
    b.ready_nodes(run_id, spec)
        .await
        .into_iter()
        .map(|id| id.0)
        .collect()
}

async fn checkpoint_nodes(b: &Bundle, run_id: RunId) -> Vec<String> {
    b.store
        .checkpoint(run_id)
        .await
        .expect("checkpoint")
        .into_iter()
        .map(|n| n.node_id.0)
        .collect()
}
