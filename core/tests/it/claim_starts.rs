//! A fresh run's first nodes started by its claim (docs/lease_protocol.md, rules 1 and 8): the
//! attempts counted and the history recorded in the claim's statement, and only for a run that
//! never started a node, whose version says which nodes start with nothing but a handler.

use std::time::Duration;

use leasehold_core::ids::{ClaimantId, NodeId, RunId};
use leasehold_core::run::{NodeStatus, RunStatus};
use leasehold_core::store::{ClaimedRun, FenceError, Served, StartedNode};
use leasehold_testkit::fixtures::{Bundle, LEASE, gated, node, setup};
use serde_json::json;

use super::lease_protocol::reap;

fn lost<T>(result: &Result<T, FenceError>) -> bool {
    matches!(result, Err(FenceError::LeaseLost { .. }))
}

/// A worker's node concurrency, as the claims below are asked to start.
const STARTS_PER_RUN: usize = 4;

async fn claim_and_start(b: &Bundle, claimant: &str, starts_per_run: usize) -> ClaimedRun {
    let mut claimed = b
        .store
        .claim_and_start_runs(
            &ClaimantId::from(claimant),
            1,
            LEASE,
            starts_per_run,
            &Served::default_queue(),
        )
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "one run was due");
    claimed.remove(0)
}

fn first_attempts(ids: &[&str]) -> Vec<StartedNode> {
    ids.iter()
        .map(|id| StartedNode {
            node_id: node(id),
            attempt: 1,
        })
        .collect()
}

/// The run's events from `after` on, as (seq, event, node, attempt).
async fn history(b: &Bundle, run_id: RunId) -> Vec<(i64, String, Option<NodeId>, Option<i32>)> {
    b.store
        .events_after(run_id, 0, 100)
        .await
        .expect("events")
        .into_iter()
        .map(|e| (e.seq, e.event, e.node_id, e.attempt))
        .collect()
}

fn event(
    seq: i64,
    name: &str,
    node_id: Option<&str>,
    attempt: Option<i32>,
) -> (i64, String, Option<NodeId>, Option<i32>) {
    (seq, name.to_owned(), node_id.map(node), attempt)
}

#[tokio::test]
async fn a_fresh_one_node_runs_claim_counts_its_first_attempt_and_records_the_start() {
    let b = setup().await;
    let automation = b
        .automation("id: single\nnodes:\n  - {id: only, kind: noop}\n")
        .await;
    let run_id = b.start(&automation).await;

    let claimed = claim_and_start(&b, "w", STARTS_PER_RUN).await;
    assert_eq!(claimed.claim.run_id(), run_id);
    assert!(!claimed.resumed);
    assert_eq!(claimed.started, first_attempts(&["only"]));

    let nodes = b.checkpoint(run_id).await;
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        (nodes[0].status, nodes[0].attempts, nodes[0].epoch),
        (NodeStatus::Running, 1, claimed.claim.epoch())
    );
    assert!(nodes[0].started_at.is_some());
    let started = history(&b, run_id).await;
    let first = started[0].1.clone();
    assert_eq!(
        started[1..],
        [
            event(2, "run_claimed", None, None),
            event(3, "node_started", Some("only"), Some(1)),
        ],
        "after {first}"
    );
    assert_eq!(b.row(run_id).await.event_seq, 3);

    // The start is the claim's: repeating it under the claim counts nothing more.
    assert_eq!(
        b.store
            .node_started(&claimed.claim, &node("only"))
            .await
            .expect("repeat"),
        1
    );
    let completed = b
        .store
        .nodes_completed(&[leasehold_core::store::NodeCompletion {
            claim: claimed.claim,
            node_id: node("only"),
            output: json!({"done": true}),
            completes_run: true,
            then_start: Vec::new(),
        }])
        .await
        .expect("complete");
    assert!(matches!(completed[..], [Ok(true)]), "{completed:?}");
    assert_eq!(b.status(run_id).await, RunStatus::Completed);
    let events = history(&b, run_id).await;
    let seqs: Vec<i64> = events.iter().map(|e| e.0).collect();
    assert_eq!(seqs, (1..=5).collect::<Vec<_>>(), "gap-free: {events:?}");
    assert_eq!(events[4].1, "run_completed");
}

#[tokio::test]
async fn a_fan_outs_roots_all_start_in_the_claim_up_to_the_limit_in_spec_order() {
    let b = setup().await;
    let automation = b
        .automation(
            "id: fan
nodes:
  - {id: z, kind: noop}
  - {id: a, kind: noop}
  - {id: m, kind: noop}
  - {id: join, kind: noop, depends_on: [z, a, m]}
",
        )
        .await;
    let all = b.start(&automation).await;
    let claimed = claim_and_start(&b, "w", STARTS_PER_RUN).await;
    assert_eq!(claimed.claim.run_id(), all);
    // In node-id order, as a batch of starts records them.
    assert_eq!(claimed.started, first_attempts(&["a", "m", "z"]));
    assert_eq!(
        history(&b, all).await[1..],
        [
            event(2, "run_claimed", None, None),
            event(3, "node_started", Some("a"), Some(1)),
            event(4, "node_started", Some("m"), Some(1)),
            event(5, "node_started", Some("z"), Some(1)),
        ]
    );
    let running: Vec<_> = b
        .checkpoint(all)
        .await
        .into_iter()
        .map(|n| (n.node_id, n.status, n.attempts))
        .collect();
    assert_eq!(running.len(), 3, "the join waits: {running:?}");
    assert!(
        running
            .iter()
            .all(|(_, s, a)| *s == NodeStatus::Running && *a == 1)
    );

    // A worker that runs two nodes at once starts the first two of spec order.
    let two = b.start(&automation).await;
    let claimed = claim_and_start(&b, "w", 2).await;
    assert_eq!(claimed.claim.run_id(), two);
    assert_eq!(claimed.started, first_attempts(&["a", "z"]));
    assert_eq!(b.checkpoint(two).await.len(), 2);
    assert_eq!(b.row(two).await.event_seq, 4);

    // One that asks for none starts none: the plain claim.
    let none = b.start(&automation).await;
    let claimed = b.claim_one("w").await;
    assert_eq!(claimed.claim.run_id(), none);
    assert!(claimed.started.is_empty());
    assert!(b.checkpoint(none).await.is_empty());
    assert_eq!(b.row(none).await.event_seq, 2);
}

#[tokio::test]
async fn a_released_or_retried_run_starts_nothing_in_its_claim() {
    let b = setup().await;
    let automation = b
        .automation("id: again\nnodes:\n  - {id: only, kind: noop, max_attempts: 3}\n")
        .await;
    let run_id = b.start(&automation).await;
    let first = claim_and_start(&b, "w1", STARTS_PER_RUN).await;
    assert_eq!(first.started.len(), 1);

    // Handed back on shutdown: the next claim resumes, and the worker starts the node again.
    b.store
        .release_on_shutdown(&[first.claim])
        .await
        .expect("release");
    let resumed = claim_and_start(&b, "w2", STARTS_PER_RUN).await;
    assert!(resumed.resumed);
    assert!(resumed.started.is_empty());
    let nodes = b.checkpoint(run_id).await;
    assert_eq!(
        (nodes[0].status, nodes[0].attempts),
        (NodeStatus::Failed, 1)
    );
    assert_eq!(
        b.store
            .node_started(&resumed.claim, &node("only"))
            .await
            .expect("start again"),
        2
    );

    // Failed, retried after a backoff: the retry's claim starts nothing either.
    b.store
        .node_failed(&resumed.claim, &node("only"), "503", true)
        .await
        .expect("fail");
    b.store
        .schedule_retry(&resumed.claim, &node("only"), 3, Duration::from_millis(1))
        .await
        .expect("schedule");
    b.backdate_retry(run_id, Duration::from_millis(10)).await;
    let retry = claim_and_start(&b, "w3", STARTS_PER_RUN).await;
    assert_eq!(retry.retry_node_id, Some(node("only")));
    assert!(retry.started.is_empty());
    let nodes = b.checkpoint(run_id).await;
    assert_eq!(
        (nodes[0].status, nodes[0].attempts),
        (NodeStatus::Failed, 2)
    );
}

#[tokio::test]
async fn a_version_without_start_nodes_starts_nothing_in_its_claim() {
    let b = setup().await;
    let automation = b
        .automation("id: older\nnodes:\n  - {id: only, kind: noop}\n")
        .await;
    // As a version registered by a release before start nodes were recorded.
    b.sql
        .execute(
            "UPDATE automation_versions SET start_nodes = NULL WHERE automation_id = $1",
            &[&automation.as_str()],
        )
        .await
        .expect("forget the start nodes");
    let run_id = b.start(&automation).await;
    let claimed = claim_and_start(&b, "w", STARTS_PER_RUN).await;
    assert!(claimed.started.is_empty());
    assert!(!claimed.resumed);
    assert!(b.checkpoint(run_id).await.is_empty());
    assert_eq!(b.row(run_id).await.event_seq, 2);
    // The worker starts it as before.
    assert_eq!(
        b.store
            .node_started(&claimed.claim, &node("only"))
            .await
            .expect("start"),
        1
    );
}

/// A run that never made progress yet holds a node row (no path writes one today, but stored
/// data may disagree) is claimed without starting anything: the fold must not collide with the
/// row and fail the claim of every run in its batch, for every worker.
#[tokio::test]
async fn a_fresh_run_holding_a_node_row_is_claimed_without_starts_and_blocks_no_one() {
    let b = setup().await;
    let automation = b
        .automation("id: odd\nnodes:\n  - {id: only, kind: noop}\n")
        .await;
    let odd = b.start(&automation).await;
    let other = b.start(&automation).await;
    b.sql
        .execute(
            "INSERT INTO run_nodes (run_id, node_id, status, attempts, epoch) \
             VALUES ($1, 'only', 'skipped', 0, 0)",
            &[&odd.0],
        )
        .await
        .expect("a node row without progress");
    let claimed = b
        .store
        .claim_and_start_runs(
            &ClaimantId::from("w"),
            2,
            LEASE,
            STARTS_PER_RUN,
            &Served::default_queue(),
        )
        .await
        .expect("the claim succeeds");
    assert_eq!(claimed.len(), 2, "both runs claimed");
    for run in &claimed {
        if run.claim.run_id() == odd {
            assert!(run.started.is_empty(), "nothing started for the odd run");
        } else {
            assert_eq!(run.claim.run_id(), other);
            assert_eq!(run.started, first_attempts(&["only"]));
        }
    }
    assert_eq!(b.row(odd).await.event_seq, 2, "only its claim was recorded");
}

#[tokio::test]
async fn a_claim_never_starts_an_approval_gate() {
    let b = setup().await;
    let gate_first = b
        .automation(
            "id: gate-first
nodes:
  - {id: ask, kind: approval, input: {prompt: Go?}}
  - {id: ship, kind: noop, approval: {prompt: Ship it?}}
  - {id: log, kind: noop}
  - {id: after, kind: noop, depends_on: [ask]}
",
        )
        .await;
    let run_id = b.start(&gate_first).await;
    let claimed = claim_and_start(&b, "w", STARTS_PER_RUN).await;
    assert_eq!(claimed.started, first_attempts(&["log"]));
    let nodes: Vec<NodeId> = b
        .checkpoint(run_id)
        .await
        .into_iter()
        .map(|n| n.node_id)
        .collect();
    assert_eq!(nodes, vec![node("log")]);

    // Only gates at the root: the claim starts nothing, and the worker asks for approval.
    let only_gates = b
        .automation("id: only-gates\nnodes:\n  - {id: ask, kind: approval, input: {prompt: Go?}}\n")
        .await;
    let run_id = b.start(&only_gates).await;
    let claimed = claim_and_start(&b, "w", STARTS_PER_RUN).await;
    assert_eq!(claimed.claim.run_id(), run_id);
    assert!(claimed.started.is_empty());
    assert!(b.checkpoint(run_id).await.is_empty());

    // The testkit's gated spec: its plain roots start, its gate (not a root) waits.
    let gated = b.create(&gated("gated")).await;
    b.start(&gated).await;
    let claimed = claim_and_start(&b, "w", STARTS_PER_RUN).await;
    assert_eq!(claimed.started, first_attempts(&["a", "c"]));
}

#[tokio::test]
async fn a_stale_epoch_cannot_write_after_a_claim_started_its_nodes() {
    let b = setup().await;
    let automation = b
        .automation("id: stale\nnodes:\n  - {id: only, kind: noop}\n")
        .await;
    let run_id = b.start(&automation).await;
    let first = claim_and_start(&b, "w1", STARTS_PER_RUN).await;
    assert_eq!(first.started.len(), 1);

    // The claim's start is progress: an expired lease is stale-reaped, not requeued, and the
    // attempt counts.
    b.expire_lease(run_id, Duration::from_millis(10)).await;
    let (requeued, stale, _) = reap(&b, chrono::Utc::now() + chrono::TimeDelta::seconds(1)).await;
    assert_eq!((requeued, stale), (vec![], vec![run_id]));
    let before = b.run(run_id).await;
    assert_eq!(before.stop_kind.as_deref(), Some("stale_reaped"));
    let nodes_before = b.checkpoint(run_id).await;
    assert_eq!(
        (nodes_before[0].status, nodes_before[0].attempts),
        (NodeStatus::Failed, 1)
    );

    assert!(lost(
        &b.store
            .node_completed(&first.claim, &node("only"), &json!({"late": true}))
            .await
    ));
    assert!(lost(
        &b.store
            .node_failed(&first.claim, &node("only"), "late", true)
            .await
    ));
    assert!(lost(
        &b.store.node_started(&first.claim, &node("only")).await
    ));
    assert!(lost(&b.store.complete_run(&first.claim).await));
    assert_eq!(
        b.run(run_id).await,
        before,
        "no write of the stale holder landed"
    );
    assert_eq!(b.checkpoint(run_id).await, nodes_before);
}
