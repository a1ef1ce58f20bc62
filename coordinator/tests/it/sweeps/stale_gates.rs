//! Stale gates: a gate pending too long is marked stale once.

use chrono::{DateTime, Utc};
use leasehold_coordinator::sweeps::StaleGates;
use leasehold_coordinator::sweeps::{self, StaleGatesOutcome};
use leasehold_core::ids::NodeId;

use super::{idle_until, ms, pass, setup_leading};

#[tokio::test]
async fn a_gate_pending_too_long_is_marked_stale_once() {
    let (b, leader, automation) = setup_leading("gated").await;
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

    idle_until(requested_at + after, "", async |now| {
        pass(&b, StaleGates, &leader, Some(now)).await
    })
    .await;
    let past = requested_at + after + ms(1);
    let outcome = pass(&b, StaleGates, &leader, Some(past)).await;
    assert_eq!(outcome, StaleGatesOutcome { marked: 1 });
    let again = pass(&b, StaleGates, &leader, Some(past + after)).await;
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
    let (b, leader, automation) = setup_leading("two-gates").await;
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

    let outcome = pass(&b, StaleGates, &leader, None).await;
    assert_eq!(outcome, StaleGatesOutcome { marked: 2 });
    let events = b.events(run_id).await;
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let last = i64::try_from(seqs.len()).expect("few");
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "gap-free");
    assert_eq!(b.event_count(run_id, "gate_marked_stale").await, 2);
    assert_eq!(b.row(run_id).await.event_seq, *seqs.last().expect("events"));
}
