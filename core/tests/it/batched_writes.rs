//! Node starts and completions of many runs in one statement, each still fenced on its own
//! claim, against a real Postgres.

use leasehold_core::ids::{NodeId, RunId};
use leasehold_core::run::RunStatus;
use leasehold_core::store::{Claim, Completed, FenceError, NodeCompletion, NodeStart};
use leasehold_testkit::fixtures::{Bundle, setup_diamond, setup_run};
use serde_json::json;

fn start(claim: Claim, node: &str) -> NodeStart {
    NodeStart {
        claim,
        node_id: NodeId::from(node),
    }
}

fn completion(claim: Claim, node: &str, completes_run: bool) -> NodeCompletion {
    NodeCompletion {
        claim,
        node_id: NodeId::from(node),
        output: json!({ "node": node }),
        completes_run,
        then_start: Vec::new(),
    }
}

async fn seqs(b: &Bundle, run_id: RunId) -> Vec<i64> {
    b.store
        .events_after(run_id, 0, 100)
        .await
        .expect("events")
        .iter()
        .map(|e| e.seq)
        .collect()
}

#[tokio::test]
async fn one_batch_answers_each_start_by_its_own_claim() {
    let (b, automation) = setup_diamond("diamond").await;
    b.start_many(&automation, 4).await;
    let fresh = b.claim_one("w").await.claim;
    let other = b.claim_one("w").await.claim;
    let cancelled = b.claim_one("w").await.claim;
    let pausing = b.claim_one("w").await.claim;
    b.cancel(cancelled.run_id(), "test").await;
    b.pause(pausing.run_id(), "test").await;

    let answers = b
        .store
        .nodes_started(&[
            start(fresh, "a"),
            start(cancelled, "a"),
            start(other, "a"),
            start(pausing, "a"),
            // A repeat within the batch is one start, answered twice.
            start(fresh, "a"),
        ])
        .await
        .expect("batch");
    assert_eq!(answers.len(), 5);
    assert_eq!(answers[0].as_ref().ok(), Some(&1));
    assert!(
        matches!(answers[1], Err(FenceError::LeaseLost { .. })),
        "{:?}",
        answers[1]
    );
    assert_eq!(answers[2].as_ref().ok(), Some(&1));
    assert!(
        matches!(answers[3], Err(FenceError::PauseRequested { .. })),
        "{:?}",
        answers[3]
    );
    assert_eq!(answers[4].as_ref().ok(), Some(&1));

    // Nothing was written for the refused starts.
    for run in [cancelled, pausing] {
        let nodes = b.store.checkpoint(run.run_id()).await.expect("checkpoint");
        assert!(nodes.is_empty(), "{nodes:?}");
    }
    let names = b.event_names(fresh.run_id()).await;
    assert_eq!(names, ["run_started", "run_claimed", "node_started"]);
}

#[tokio::test]
async fn a_fan_out_starts_in_one_batch_and_the_last_completion_completes_the_run() {
    let (b, _, run_id) = setup_run("diamond").await;
    let claim = b.claim_one("w").await.claim;

    b.store
        .nodes_started(&[start(claim, "a")])
        .await
        .expect("batch")
        .remove(0)
        .expect("start a");
    let done = b
        .store
        .nodes_completed(&[completion(claim, "a", false)])
        .await
        .expect("batch");
    assert_eq!(done[0].as_ref().ok(), Some(&false));

    // b and c in one statement: two attempts, two events with consecutive sequence numbers.
    let started = b
        .store
        .nodes_started(&[start(claim, "b"), start(claim, "c")])
        .await
        .expect("batch");
    assert!(started.iter().all(|a| a.as_ref().ok() == Some(&1)));
    assert_eq!(seqs(&b, run_id).await, (1..=6).collect::<Vec<_>>());

    // b asks to complete the run while c still runs: the node lands, the run goes on.
    let done = b
        .store
        .nodes_completed(&[completion(claim, "b", true)])
        .await
        .expect("batch");
    assert_eq!(done[0].as_ref().ok(), Some(&false));
    let run = b.run(run_id).await;
    assert_eq!(run.status, RunStatus::Running);

    let done = b
        .store
        .nodes_completed(&[completion(claim, "c", false)])
        .await
        .expect("batch");
    assert_eq!(done[0].as_ref().ok(), Some(&false));
    b.store
        .node_started(&claim, &NodeId::from("d"))
        .await
        .expect("start d");
    let done = b
        .store
        .nodes_completed(&[completion(claim, "d", true)])
        .await
        .expect("batch");
    assert_eq!(done[0].as_ref().ok(), Some(&true), "d completes the run");

    let run = b.run(run_id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.claimant_id, None);
    assert!(run.finished_at.is_some());
    assert_eq!(
        seqs(&b, run_id).await,
        (1..=11).collect::<Vec<_>>(),
        "start, claim, 4×2 node events, completion"
    );

    // The same completion again (its acknowledgement lost): quiet, and completing the run again
    // is quiet too; nothing is recorded twice.
    let again = b
        .store
        .nodes_completed(&[completion(claim, "d", true)])
        .await
        .expect("batch");
    assert_eq!(again[0].as_ref().ok(), Some(&false));
    b.store.complete_run(&claim).await.expect("complete again");
    let names = b.event_names(run_id).await;
    assert_eq!(names.iter().filter(|n| *n == "run_completed").count(), 1);
    assert_eq!(names.iter().filter(|n| *n == "node_completed").count(), 4);
}

/// A diamond's run, claimed, its root `a` started.
async fn with_a_running() -> (Bundle, RunId, Claim) {
    let (b, _, run_id) = setup_run("diamond").await;
    let claim = b.claim_one("w").await.claim;
    b.store
        .node_started(&claim, &NodeId::from("a"))
        .await
        .expect("start a");
    (b, run_id, claim)
}

fn completion_then(claim: Claim, node: &str, then_start: &[&str]) -> NodeCompletion {
    NodeCompletion {
        then_start: then_start.iter().map(|n| NodeId::from(*n)).collect(),
        ..completion(claim, node, false)
    }
}

/// `a`'s completion, asking to start `b` and `c` with it.
async fn complete_a_then_b_and_c(b: &Bundle, claim: Claim) -> Completed {
    b.store
        .nodes_completed_and_started(&[completion_then(claim, "a", &["b", "c"])])
        .await
        .expect("batch")
        .remove(0)
        .expect("a's completion lands")
}

#[tokio::test]
async fn a_completion_starts_the_nodes_it_makes_ready_in_its_statement() {
    let (b, run_id, claim) = with_a_running().await;

    // a's completion starts b and c: their attempts counted, their events after a's.
    let done = complete_a_then_b_and_c(&b, claim).await;
    assert!(!done.run_completed);
    let started: Vec<(String, u32)> = done
        .started
        .iter()
        .map(|s| (s.node_id.to_string(), s.attempt))
        .collect();
    assert_eq!(started, [("b".to_owned(), 1), ("c".to_owned(), 1)]);
    let nodes = b.store.checkpoint(run_id).await.expect("checkpoint");
    let status = |id: &str| {
        nodes
            .iter()
            .find(|n| n.node_id.as_str() == id)
            .map(|n| (n.status.as_str().to_owned(), n.attempts, n.epoch))
    };
    assert_eq!(status("a").map(|s| s.0), Some("completed".to_owned()));
    assert_eq!(status("b"), Some(("running".to_owned(), 1, claim.epoch())));
    assert_eq!(status("c"), Some(("running".to_owned(), 1, claim.epoch())));
    let names = b.event_names(run_id).await;
    assert_eq!(
        names[names.len() - 3..],
        ["node_completed", "node_started", "node_started"],
        "{names:?}"
    );
    assert_eq!(seqs(&b, run_id).await, (1..=6).collect::<Vec<_>>());
    // A start marks progress under the claim, as a batch of starts does.
    let run = b.run(run_id).await;
    assert_eq!(run.status, RunStatus::Running);

    // b's completion, repeated after a lost acknowledgement, with a start the first one did
    // not ask for: quiet, and it starts nothing.
    b.store
        .nodes_completed(&[completion(claim, "b", false)])
        .await
        .expect("batch");
    let again = b
        .store
        .nodes_completed_and_started(&[completion_then(claim, "b", &["d"])])
        .await
        .expect("batch")
        .remove(0)
        .expect("b's completion stands");
    assert!(again.started.is_empty(), "{again:?}");
    let nodes = b.store.checkpoint(run_id).await.expect("checkpoint");
    assert!(nodes.iter().all(|n| n.node_id.as_str() != "d"), "{nodes:?}");
}

#[tokio::test]
async fn a_completion_of_a_run_asked_to_pause_starts_nothing() {
    let (b, run_id, claim) = with_a_running().await;
    b.pause(run_id, "test").await;

    // a's handler ran before the pause: its completion lands, and starts nothing.
    let done = complete_a_then_b_and_c(&b, claim).await;
    assert!(done.started.is_empty(), "{done:?}");
    let nodes = b.store.checkpoint(run_id).await.expect("checkpoint");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let names = b.event_names(run_id).await;
    assert_eq!(
        names.iter().filter(|n| *n == "node_started").count(),
        1,
        "a's start only: {names:?}"
    );
    let seq = seqs(&b, run_id).await;
    assert_eq!(seq, (1..=seq.len() as i64).collect::<Vec<_>>(), "gap-free");
}

#[tokio::test]
async fn completions_of_many_runs_land_in_one_statement_and_a_stale_one_changes_nothing() {
    let (b, automation) = setup_diamond("diamond").await;
    let runs = b.start_many(&automation, 3).await;
    let claims: Vec<Claim> = {
        let mut claims = Vec::new();
        for _ in &runs {
            claims.push(b.claim_one("w").await.claim);
        }
        claims
    };
    let starts: Vec<NodeStart> = claims.iter().map(|c| start(*c, "a")).collect();
    for answer in b.store.nodes_started(&starts).await.expect("batch") {
        assert_eq!(answer.expect("start"), 1);
    }
    let stale = claims[2];
    b.cancel(stale.run_id(), "test").await;

    let completions: Vec<NodeCompletion> =
        claims.iter().map(|c| completion(*c, "a", false)).collect();
    let answers = b.store.nodes_completed(&completions).await.expect("batch");
    assert_eq!(answers[0].as_ref().ok(), Some(&false));
    assert_eq!(answers[1].as_ref().ok(), Some(&false));
    assert!(
        matches!(answers[2], Err(FenceError::LeaseLost { .. })),
        "{:?}",
        answers[2]
    );
    for claim in &claims[..2] {
        let nodes = b
            .store
            .checkpoint(claim.run_id())
            .await
            .expect("checkpoint");
        assert_eq!(nodes[0].output, Some(json!({"node": "a"})));
    }
    let nodes = b
        .store
        .checkpoint(stale.run_id())
        .await
        .expect("checkpoint");
    assert_eq!(
        nodes[0].output, None,
        "the cancelled run's node was not written"
    );
}

#[tokio::test]
async fn an_old_claim_beside_the_current_one_in_a_batch_is_refused() {
    let (b, _, run_id) = setup_run("diamond").await;
    let old = b.claim_one("w").await.claim;
    let released = b.store.release_on_shutdown(&[old]).await.expect("release");
    assert_eq!(released.released, [run_id]);
    let current = b.claim_one("w").await.claim;
    assert!(current.epoch() > old.epoch());

    // Both claims' writes of one node in one statement: only the current one lands, and the old
    // one is not answered with the current one's result.
    let answers = b
        .store
        .nodes_started(&[start(old, "a"), start(current, "a")])
        .await
        .expect("batch");
    assert!(
        matches!(answers[0], Err(FenceError::LeaseLost { .. })),
        "{:?}",
        answers[0]
    );
    assert_eq!(answers[1].as_ref().ok(), Some(&1));

    let answers = b
        .store
        .nodes_completed(&[completion(old, "a", false), completion(current, "a", false)])
        .await
        .expect("batch");
    assert!(
        matches!(answers[0], Err(FenceError::LeaseLost { .. })),
        "{:?}",
        answers[0]
    );
    assert_eq!(answers[1].as_ref().ok(), Some(&false));
    let names = b.event_names(run_id).await;
    assert_eq!(
        names.iter().filter(|n| *n == "node_started").count(),
        1,
        "a's start only: {names:?}"
    );
    assert_eq!(names.iter().filter(|n| *n == "node_completed").count(), 1);
}
