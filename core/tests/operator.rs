//! Operator actions against a real Postgres: automations (read, list, pause, delete), resume and
//! recover, gate decisions (including a race of deciders), keyset listings, stats and workers.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{Bundle, diamond, setup, spec};
use leasehold_core::ids::{AutomationId, ClaimantId, NodeId, RunId, TenantId};
use leasehold_core::run::{self, Checkpoint, RunStatus, Transition};
use leasehold_core::spec::Spec;
use leasehold_core::store::{
    AutomationStatus, Claim, Cursor, Decision, DecisionKind, Error, Event, Failure, GateRecord,
    GateStatus, PageRequest, ReapParams, RunFilter, RunRecord, WorkerInfo,
};
use serde_json::json;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Helpers of this file.

/// a → b → gate ← c, and gate → e; `gate` needs a person's approval before it runs.
fn gated(id: &str) -> Spec {
    spec(&format!(
        "id: {id}
nodes:
  - {{id: a, kind: noop}}
  - {{id: b, kind: noop, depends_on: [a]}}
  - {{id: c, kind: noop}}
  - {{id: gate, kind: noop, depends_on: [b, c], approval: {{prompt: Ship it?}}}}
  - {{id: e, kind: noop, depends_on: [gate]}}
"
    ))
}

/// The diamond, with `b` allowed a single attempt.
fn fragile(id: &str) -> Spec {
    spec(&format!(
        "id: {id}
nodes:
  - {{id: a, kind: noop}}
  - {{id: b, kind: noop, depends_on: [a], max_attempts: 1}}
  - {{id: c, kind: noop, depends_on: [a]}}
  - {{id: d, kind: noop, depends_on: [b, c]}}
"
    ))
}

fn node(id: &str) -> NodeId {
    NodeId::from(id)
}

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

async fn create(b: &Bundle, spec: &Spec) -> AutomationId {
    b.store
        .create_automation(&b.tenant, spec)
        .await
        .expect("create automation");
    spec.id.clone()
}

async fn run_of(b: &Bundle, run_id: RunId) -> RunRecord {
    b.store.run(&b.tenant, run_id).await.expect("run")
}

async fn events(b: &Bundle, run_id: RunId) -> Vec<Event> {
    b.store
        .events_after(run_id, 0, 1_000)
        .await
        .expect("events")
}

async fn last_event(b: &Bundle, run_id: RunId) -> Event {
    events(b, run_id).await.pop().expect("an event")
}

async fn count_events(b: &Bundle, run_id: RunId, name: &str) -> usize {
    events(b, run_id)
        .await
        .iter()
        .filter(|e| e.event == name)
        .count()
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
    let checkpoint: Checkpoint = b
        .store
        .checkpoint(run_id)
        .await
        .expect("checkpoint")
        .iter()
        .map(|n| (n.node_id.clone(), n.state()))
        .collect();
    run::ready_nodes(spec, &checkpoint)
        .into_iter()
        .map(|id| id.as_str().to_owned())
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

async fn count(b: &Bundle, sql: &str, run_ids: &[Uuid]) -> i64 {
    b.sql
        .query_one(sql, &[&run_ids])
        .await
        .expect("count")
        .get(0)
}

fn ids(runs: &[RunRecord]) -> Vec<Uuid> {
    runs.iter().map(|r| r.run_id.0).collect()
}

/// Walks every page of `filter` at `size` items a page; returns the pages' lengths and the runs.
async fn walk_runs(b: &Bundle, filter: &RunFilter, size: usize) -> (Vec<usize>, Vec<Uuid>) {
    let mut page = PageRequest::first(size);
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    loop {
        let got = b
            .store
            .list_runs(&b.tenant, filter, &page)
            .await
            .expect("page");
        sizes.push(got.items.len());
        seen.extend(ids(&got.items));
        match got.next {
            // Through the token's text, as a client would hand it back.
            Some(next) => page.after = Some(Cursor::decode(&next.encode()).expect("token")),
            None => break,
        }
    }
    (sizes, seen)
}

/// The runs of the tenant matching the SQL condition, in the listing's order.
async fn expected_runs(b: &Bundle, condition: &str) -> Vec<Uuid> {
    b.sql
        .query(
            &format!(
                "SELECT run_id FROM runs WHERE tenant_id = $1 AND ({condition})
                 ORDER BY created_at DESC, run_id DESC"
            ),
            &[&b.tenant.as_str()],
        )
        .await
        .expect("expected runs")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Automations.

#[tokio::test]
async fn automations_are_read_listed_and_paused() {
    let b = setup().await;
    for id in ["alpha", "beta", "gamma"] {
        create(&b, &diamond(id)).await;
    }
    let other = TenantId::from("other");
    b.store
        .create_automation(&other, &diamond("elsewhere"))
        .await
        .expect("other tenant");

    let beta = AutomationId::from("beta");
    let read = b.store.automation(&b.tenant, &beta).await.expect("read");
    assert_eq!(read.id, beta);
    assert_eq!(read.current_version, 1);
    assert_eq!(read.status, AutomationStatus::Active);
    assert_eq!(read.spec, diamond("beta"));

    let v2 = spec("id: beta\nnodes:\n  - {id: only, kind: noop}\n");
    b.store.apply_automation(&b.tenant, &v2).await.expect("v2");
    let read = b.store.automation(&b.tenant, &beta).await.expect("read");
    assert_eq!((read.current_version, &read.spec), (2, &v2));

    // In creation order, two a page, only this tenant's.
    let first = b
        .store
        .list_automations(&b.tenant, &PageRequest::first(2))
        .await
        .expect("page 1");
    let names: Vec<&str> = first.items.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(names, vec!["alpha", "beta"]);
    let second = b
        .store
        .list_automations(
            &b.tenant,
            &PageRequest {
                size: 2,
                after: first.next.clone(),
            },
        )
        .await
        .expect("page 2");
    let names: Vec<&str> = second.items.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(names, vec!["gamma"]);
    assert!(second.next.is_none(), "the last page says so");

    // Paused: starts no runs; pausing again changes nothing; activating starts runs again.
    let paused = b
        .store
        .set_automation_status(&b.tenant, &beta, true)
        .await
        .expect("pause");
    assert_eq!(paused.status, AutomationStatus::Paused);
    assert!(paused.updated_at >= read.updated_at);
    assert!(matches!(
        b.store.start_run(&b.start_request(&beta)).await,
        Err(Error::AutomationPaused(_))
    ));
    let again = b
        .store
        .set_automation_status(&b.tenant, &beta, true)
        .await
        .expect("pause again");
    assert_eq!(again, paused, "a repeated pause is a no-op");
    let active = b
        .store
        .set_automation_status(&b.tenant, &beta, false)
        .await
        .expect("activate");
    assert_eq!(active.status, AutomationStatus::Active);
    b.start(&beta).await;

    let nope = AutomationId::from("nope");
    assert!(matches!(
        b.store.automation(&b.tenant, &nope).await,
        Err(Error::AutomationNotFound(_))
    ));
    assert!(matches!(
        b.store.set_automation_status(&b.tenant, &nope, true).await,
        Err(Error::AutomationNotFound(_))
    ));
    assert!(matches!(
        b.store.automation(&other, &beta).await,
        Err(Error::AutomationNotFound(_))
    ));
}

#[tokio::test]
async fn an_automation_with_unfinished_runs_is_not_deleted() {
    let b = setup().await;
    let automation = create(&b, &diamond("busy")).await;
    let blocked = b.start(&automation).await;
    let queued = b.start(&automation).await;
    let claimed = b.claim_one("w1").await;
    assert_eq!(claimed.claim.run_id(), blocked);
    b.store
        .block_unreadable(&claimed.claim, "cannot read")
        .await
        .expect("block");
    // A blocked run waits for an operator, so it counts as unfinished, like a queued one.
    let refused = b.store.delete_automation(&b.tenant, &automation).await;
    assert!(
        matches!(
            refused,
            Err(Error::AutomationHasUnfinishedRuns { unfinished: 2, .. })
        ),
        "{refused:?}"
    );
    b.store
        .automation(&b.tenant, &automation)
        .await
        .expect("still there");
    assert_eq!(run_of(&b, blocked).await.status, RunStatus::Blocked);
    assert_eq!(run_of(&b, queued).await.status, RunStatus::Queued);
    assert!(matches!(
        b.store
            .delete_automation(&b.tenant, &AutomationId::from("nope"))
            .await,
        Err(Error::AutomationNotFound(_))
    ));
}

#[tokio::test]
async fn deleting_an_automation_takes_its_finished_runs_and_their_history() {
    let b = setup().await;
    let automation = create(&b, &gated("done")).await;
    let keep = create(&b, &diamond("keep")).await;

    // One failed run with node rows, one cancelled at its gate, one cancelled while queued.
    let failed = b.start(&automation).await;
    let claimed = b.claim_one("w1").await;
    complete(&b, &claimed.claim, "a").await;
    fail(&b, &claimed.claim, "b", &["gate", "e"]).await;
    let (at_gate, gate_id) = to_gate(&b, &automation).await;
    b.store
        .decide_gate(
            &b.tenant,
            &decision(gate_id, DecisionKind::Cancel, "cancel-1"),
        )
        .await
        .expect("cancel at the gate");
    let cancelled = b.start(&automation).await;
    b.store
        .cancel_run(&b.tenant, cancelled, "not needed")
        .await
        .expect("cancel");
    let kept = b.start(&keep).await;

    let deleted = b
        .store
        .delete_automation(&b.tenant, &automation)
        .await
        .expect("delete");
    assert_eq!(deleted, 3);

    let gone: Vec<Uuid> = [failed, at_gate, cancelled].iter().map(|r| r.0).collect();
    for sql in [
        "SELECT count(*) FROM runs WHERE run_id = ANY($1)",
        "SELECT count(*) FROM run_nodes WHERE run_id = ANY($1)",
        "SELECT count(*) FROM run_events WHERE run_id = ANY($1)",
        "SELECT count(*) FROM gates WHERE run_id = ANY($1)",
    ] {
        assert_eq!(count(&b, sql, &gone).await, 0, "{sql}");
    }
    let versions: i64 = b
        .sql
        .query_one(
            "SELECT count(*) FROM automation_versions WHERE automation_id = 'done'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(versions, 0);
    assert!(matches!(
        b.store.automation(&b.tenant, &automation).await,
        Err(Error::AutomationNotFound(_))
    ));
    assert!(matches!(
        b.store.delete_automation(&b.tenant, &automation).await,
        Err(Error::AutomationNotFound(_))
    ));
    // Another automation's run and its history are untouched.
    assert_eq!(run_of(&b, kept).await.status, RunStatus::Queued);
    assert_eq!(b.event_names(kept).await, vec!["run_started"]);
}

// ---------------------------------------------------------------------------------------------
// Resume and recover.

#[tokio::test]
async fn resume_requeues_an_operator_paused_run() {
    let b = setup().await;
    let automation = b.automation("pausable").await;
    let run_id = b.start(&automation).await;
    b.store
        .pause_run(&b.tenant, run_id, "hold on")
        .await
        .expect("pause");
    assert_eq!(
        run_of(&b, run_id).await.stop_kind.as_deref(),
        Some("operator_paused")
    );

    b.store
        .resume_run(&b.tenant, run_id, "go on")
        .await
        .expect("resume");
    let run = run_of(&b, run_id).await;
    check_step(
        RunStatus::Paused,
        Transition::Resume,
        run.status,
        &last_event(&b, run_id).await.event,
    );
    assert_eq!(run.queue_reason.as_deref(), Some("resumed"));
    assert_eq!(run.stop_kind, None);
    let event = last_event(&b, run_id).await;
    assert_eq!(event.reason.as_deref(), Some("go on"));
    assert_eq!(event.metadata["stop_kind"], "operator_paused");
    assert_eq!(event.seq, run.event_seq);
    assert_eq!(b.claim_one("w1").await.claim.run_id(), run_id);
}

#[tokio::test]
async fn resume_requeues_a_stale_reaped_run_whose_interrupted_node_is_ready_again() {
    let b = setup().await;
    let automation = b.automation("reaped").await;
    let run_id = b.start(&automation).await;
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
    let leader = b
        .store
        .try_acquire_leadership("test-reaper", "test", Duration::from_secs(60))
        .await
        .expect("acquire")
        .expect("no other leader");
    let reaped = b
        .store
        .stale_reap_as_leader(&leader, &expired, &params)
        .await
        .expect("reap");
    assert_eq!(reaped, vec![run_id]);
    let run = run_of(&b, run_id).await;
    assert_eq!(
        (run.status, run.stop_kind.as_deref()),
        (RunStatus::Paused, Some("stale_reaped"))
    );

    b.store
        .resume_run(&b.tenant, run_id, "the worker is gone")
        .await
        .expect("resume");
    let run = run_of(&b, run_id).await;
    let event = last_event(&b, run_id).await;
    check_step(
        RunStatus::Paused,
        Transition::Resume,
        run.status,
        &event.event,
    );
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
    let b = setup().await;
    let automation = b.automation("unpaused").await;
    let run_id = b.start(&automation).await;
    let refused = b.store.resume_run(&b.tenant, run_id, "why").await;
    assert!(
        matches!(
            refused,
            Err(Error::Transition(run::IllegalTransition {
                from: RunStatus::Queued,
                transition: Transition::Resume
            }))
        ),
        "{refused:?}"
    );
    assert_eq!(b.event_names(run_id).await, vec!["run_started"]);
    assert!(matches!(
        b.store.resume_run(&b.tenant, RunId::new(), "why").await,
        Err(Error::RunNotFound(_))
    ));
    assert!(matches!(
        b.store
            .resume_run(&TenantId::from("other"), run_id, "why")
            .await,
        Err(Error::RunNotFound(_))
    ));
}

#[tokio::test]
async fn recover_requeues_a_failed_run_and_its_failed_node_runs_again() {
    let b = setup().await;
    let spec = fragile("fragile");
    let automation = create(&b, &spec).await;
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
        .recover_run(&b.tenant, run_id, "fixed the upstream")
        .await
        .expect("recover");
    let run = run_of(&b, run_id).await;
    let event = last_event(&b, run_id).await;
    check_step(
        RunStatus::Failed,
        Transition::Recover,
        run.status,
        &event.event,
    );
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
    let b = setup().await;
    let automation = b.automation("blocked").await;
    let run_id = b.start(&automation).await;
    let claimed = b.claim_one("w1").await;
    b.store
        .block_unreadable(&claimed.claim, "unreadable checkpoint")
        .await
        .expect("block");
    b.sql
        .execute(
            "UPDATE runs SET expired_claims = 4 WHERE run_id = $1",
            &[&run_id.0],
        )
        .await
        .expect("earlier expiries");

    b.store
        .recover_run(&b.tenant, run_id, "repaired")
        .await
        .expect("recover");
    let run = run_of(&b, run_id).await;
    let event = last_event(&b, run_id).await;
    check_step(
        RunStatus::Blocked,
        Transition::Recover,
        run.status,
        &event.event,
    );
    assert_eq!(run.expired_claims, 0);
    assert_eq!((run.stop_kind, run.stop_reason), (None, None));
    assert_eq!(event.metadata["stop_kind"], "unreadable");
    assert_eq!(event.metadata["stop_reason"], "unreadable checkpoint");
    assert_eq!(b.claim_one("w2").await.claim.run_id(), run_id);
}

#[tokio::test]
async fn recover_refuses_runs_that_neither_failed_nor_blocked() {
    let b = setup().await;
    let automation = b.automation("fine").await;
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
        let before = run_of(&b, run_id).await;
        let refused = b.store.recover_run(&b.tenant, run_id, "why").await;
        assert!(
            matches!(
                refused,
                Err(Error::Transition(run::IllegalTransition { from: f, transition: Transition::Recover })) if f == from
            ),
            "{refused:?}"
        );
        assert_eq!(run_of(&b, run_id).await, before, "nothing changed");
    }
    assert!(matches!(
        b.store.recover_run(&b.tenant, RunId::new(), "why").await,
        Err(Error::RunNotFound(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Gates.

#[tokio::test]
async fn gates_are_read_and_listed() {
    let b = setup().await;
    let automation = create(&b, &gated("listed")).await;
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
        Err(Error::RunNotFound(_))
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
        Err(Error::BadPageToken(_))
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
    let automation = create(&b, &gated("hidden")).await;
    let (_run, gate_id) = to_gate(&b, &automation).await;
    let other = TenantId::from("other");
    assert!(matches!(
        b.store.gate(&b.tenant, Uuid::now_v7()).await,
        Err(Error::GateNotFound(_))
    ));
    assert!(matches!(
        b.store.gate(&other, gate_id).await,
        Err(Error::GateNotFound(id)) if id == gate_id
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
            matches!(refused, Err(Error::GateNotFound(_))),
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
    let automation = create(&b, &spec).await;
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

    let run = run_of(&b, run_id).await;
    let event = last_event(&b, run_id).await;
    check_step(
        RunStatus::AwaitingApproval,
        Transition::Approve,
        run.status,
        &event.event,
    );
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
            Err(Error::GateAlreadyDecided { gate_id: id, status }) if *id == gate_id && status == "approved"
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
            Err(Error::IdempotencyConflict { .. })
        ),
        "{same_key_other_decision:?}"
    );
    assert_eq!(count_events(&b, run_id, "run_gate_approved").await, 1);
    assert_eq!(run_of(&b, run_id).await.status, RunStatus::Queued);

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
    let b = setup().await;
    let automation = create(&b, &gated("race")).await;
    let (run_id, gate_id) = to_gate(&b, &automation).await;

    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = b.store.clone();
            let tenant = b.tenant.clone();
            let barrier = barrier.clone();
            let request = decision(gate_id, DecisionKind::Approve, &format!("req-{i}"));
            tokio::spawn(async move {
                barrier.wait().await;
                (request.clone(), store.decide_gate(&tenant, &request).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut losers = 0;
    for task in tasks {
        let (request, result) = task.await.expect("task");
        match result {
            Ok(gate) => winners.push((request, gate)),
            Err(Error::GateAlreadyDecided { status, .. }) => {
                assert_eq!(status, "approved");
                losers += 1;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one decider wins");
    assert_eq!(losers, 7);
    assert_eq!(count_events(&b, run_id, "run_gate_approved").await, 1);
    let run = run_of(&b, run_id).await;
    assert_eq!(run.status, RunStatus::Queued);

    let (request, won) = winners.pop().expect("winner");
    assert_eq!(won.request_id, request.request_id);
    let repeat = b
        .store
        .decide_gate(&b.tenant, &request)
        .await
        .expect("repeat");
    assert_eq!(repeat, won);
    assert_eq!(count_events(&b, run_id, "run_gate_approved").await, 1);
}

#[tokio::test]
async fn approve_and_cancel_racing_leave_one_consistent_outcome() {
    let b = setup().await;
    let automation = create(&b, &gated("mixed")).await;
    let (run_id, gate_id) = to_gate(&b, &automation).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = b.store.clone();
            let tenant = b.tenant.clone();
            let barrier = barrier.clone();
            let kind = if i % 2 == 0 {
                DecisionKind::Approve
            } else {
                DecisionKind::Cancel
            };
            let request = decision(gate_id, kind, &format!("mixed-{i}"));
            tokio::spawn(async move {
                barrier.wait().await;
                store.decide_gate(&tenant, &request).await
            })
        })
        .collect();
    let mut won = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            Ok(gate) => won.push(gate),
            Err(Error::GateAlreadyDecided { .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won.len(), 1);
    let (status, event) = match won[0].status {
        GateStatus::Approved => (RunStatus::Queued, "run_gate_approved"),
        GateStatus::Cancelled => (RunStatus::Cancelled, "run_cancelled"),
        other => panic!("unexpected gate status {other}"),
    };
    assert_eq!(run_of(&b, run_id).await.status, status);
    let decisions = count_events(&b, run_id, "run_gate_approved").await
        + count_events(&b, run_id, "run_cancelled").await;
    assert_eq!(decisions, 1);
    assert_eq!(last_event(&b, run_id).await.event, event);
}

#[tokio::test]
async fn rework_reruns_the_named_nodes_and_their_downstream_then_asks_again() {
    let b = setup().await;
    let spec = gated("rework");
    let automation = create(&b, &spec).await;
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

    let run = run_of(&b, run_id).await;
    let event = last_event(&b, run_id).await;
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
    let b = setup().await;
    let automation = create(&b, &gated("strict")).await;
    let (run_id, gate_id) = to_gate(&b, &automation).await;
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
        matches!(&refused, Err(Error::ReworkNodeNotInSpec { node_id, .. }) if node_id.as_str() == "zzz"),
        "{refused:?}"
    );
    assert_eq!(
        b.store.gate(&b.tenant, gate_id).await.expect("gate").status,
        GateStatus::Pending
    );
    assert_eq!(run_of(&b, run_id).await.status, RunStatus::AwaitingApproval);
    assert_eq!(checkpoint_nodes(&b, run_id).await, vec!["a", "b", "c"]);
}

#[tokio::test]
async fn a_cancel_decision_cancels_the_run() {
    let b = setup().await;
    let automation = create(&b, &gated("cancel")).await;
    let (run_id, gate_id) = to_gate(&b, &automation).await;
    let mut cancel = decision(gate_id, DecisionKind::Cancel, "c-1");
    cancel.reason = Some("wrong customer".into());
    let gate = b
        .store
        .decide_gate(&b.tenant, &cancel)
        .await
        .expect("cancel");
    assert_eq!(gate.status, GateStatus::Cancelled);

    let run = run_of(&b, run_id).await;
    let event = last_event(&b, run_id).await;
    check_step(
        RunStatus::AwaitingApproval,
        Transition::Cancel,
        run.status,
        &event.event,
    );
    assert_eq!(run.stop_kind.as_deref(), Some("cancelled"));
    assert_eq!(run.stop_reason.as_deref(), Some("wrong customer"));
    assert!(run.finished_at.is_some());
    assert_eq!(event.stop_kind.as_deref(), Some("cancelled"));
    assert!(
        b.store
            .claim_runs(&ClaimantId::from("w2"), 10, common::LEASE)
            .await
            .expect("claim")
            .is_empty()
    );
}

#[tokio::test]
async fn a_gate_of_a_paused_run_is_refused_and_asked_again_after_resume() {
    let b = setup().await;
    let automation = create(&b, &gated("paused-gate")).await;
    let (run_id, gate_id) = to_gate(&b, &automation).await;
    b.store
        .pause_run(&b.tenant, run_id, "wait")
        .await
        .expect("pause");
    let refused = b
        .store
        .decide_gate(&b.tenant, &decision(gate_id, DecisionKind::Approve, "a-1"))
        .await;
    assert!(
        matches!(
            refused,
            Err(Error::Transition(run::IllegalTransition {
                from: RunStatus::Paused,
                transition: Transition::Approve
            }))
        ),
        "{refused:?}"
    );
    assert_eq!(
        b.store.gate(&b.tenant, gate_id).await.expect("gate").status,
        GateStatus::Pending
    );

    // Resuming cancels the dangling gate, so the worker asks again without a conflict.
    b.store
        .resume_run(&b.tenant, run_id, "go")
        .await
        .expect("resume");
    assert_eq!(
        b.store.gate(&b.tenant, gate_id).await.expect("gate").status,
        GateStatus::Cancelled
    );
    assert_eq!(
        last_event(&b, run_id).await.metadata["gates_cancelled"],
        json!([gate_id])
    );
    let claimed = b.claim_one("w2").await;
    let asked = b
        .store
        .await_approval(&claimed.claim, &node("gate"), "Ship it?")
        .await
        .expect("asked again");
    assert_ne!(asked, gate_id);

    // A cancel decision also settles a run paused at its gate.
    b.store
        .pause_run(&b.tenant, run_id, "wait again")
        .await
        .expect("pause");
    b.store
        .decide_gate(&b.tenant, &decision(asked, DecisionKind::Cancel, "c-1"))
        .await
        .expect("cancel a paused run at its gate");
    assert_eq!(run_of(&b, run_id).await.status, RunStatus::Cancelled);
}

// ---------------------------------------------------------------------------------------------
// Listing runs.

#[tokio::test]
async fn runs_are_paged_newest_first_without_duplicates_or_gaps() {
    let b = setup().await;
    let automation = b.automation("paged").await;
    b.queue_many(&automation, 120).await;
    // Spread creation times, three runs to a second: ties are broken by run id.
    b.sql
        .execute(
            "UPDATE runs r SET created_at = r.created_at - (s.i / 3) * interval '1 second'
             FROM (SELECT run_id, row_number() OVER (ORDER BY run_id) AS i FROM runs) s
             WHERE s.run_id = r.run_id",
            &[],
        )
        .await
        .expect("spread");

    let (sizes, seen) = walk_runs(&b, &RunFilter::default(), 50).await;
    assert_eq!(sizes, vec![50, 50, 20]);
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        120,
        "no duplicates"
    );
    assert_eq!(
        seen,
        expected_runs(&b, "true").await,
        "newest first, no gaps"
    );

    // Exactly a page's worth: the last full page says there is no more.
    let (sizes, _) = walk_runs(&b, &RunFilter::default(), 60).await;
    assert_eq!(sizes, vec![60, 60]);
    // Size 0 is the default; sizes above the cap are capped.
    let (sizes, _) = walk_runs(&b, &RunFilter::default(), 0).await;
    assert_eq!(sizes, vec![50, 50, 20]);
    let capped = PageRequest::first(1_000_000);
    assert_eq!(capped.limit(), 1000);
}

#[tokio::test]
async fn run_filters_apply_on_every_page() {
    let b = setup().await;
    let alpha = b.automation("alpha").await;
    let beta = b.automation("beta").await;
    b.queue_many(&alpha, 70).await;
    b.queue_many(&beta, 50).await;
    b.sql
        .batch_execute(
            "UPDATE runs r SET created_at = r.created_at - (s.i / 2) * interval '1 second',
                    status = CASE WHEN s.i % 3 = 0 THEN 'cancelled' ELSE 'queued' END
             FROM (SELECT run_id, row_number() OVER (ORDER BY run_id) AS i FROM runs) s
             WHERE s.run_id = r.run_id",
        )
        .await
        .expect("spread and cancel");
    // Another tenant's runs never show.
    let other = TenantId::from("other");
    b.store
        .create_automation(&other, &diamond("alpha"))
        .await
        .expect("other");
    b.sql
        .execute(
            "INSERT INTO runs (run_id, tenant_id, automation_id, automation_version, trigger, status)
             SELECT gen_random_uuid(), 'other', 'alpha', 1, 'api', 'queued' FROM generate_series(1, 30)",
            &[],
        )
        .await
        .expect("other runs");
    let middle: chrono::DateTime<chrono::Utc> = b
        .sql
        .query_one(
            "SELECT created_at FROM runs WHERE tenant_id = 'default'
             ORDER BY created_at DESC, run_id DESC OFFSET 60 LIMIT 1",
            &[],
        )
        .await
        .expect("a middle time")
        .get(0);

    let cases = [
        (
            RunFilter {
                automation_id: Some(alpha.clone()),
                ..RunFilter::default()
            },
            "automation_id = 'alpha'".to_owned(),
        ),
        (
            RunFilter {
                status: Some(RunStatus::Cancelled),
                ..RunFilter::default()
            },
            "status = 'cancelled'".to_owned(),
        ),
        (
            RunFilter {
                automation_id: Some(beta.clone()),
                status: Some(RunStatus::Queued),
                ..RunFilter::default()
            },
            "automation_id = 'beta' AND status = 'queued'".to_owned(),
        ),
        (
            RunFilter {
                created_before: Some(middle),
                ..RunFilter::default()
            },
            format!("created_at < '{}'", middle.to_rfc3339()),
        ),
        (
            RunFilter {
                automation_id: Some(alpha.clone()),
                created_after: Some(middle),
                ..RunFilter::default()
            },
            format!(
                "automation_id = 'alpha' AND created_at > '{}'",
                middle.to_rfc3339()
            ),
        ),
        (
            RunFilter {
                status: Some(RunStatus::Failed),
                ..RunFilter::default()
            },
            "status = 'failed'".to_owned(),
        ),
    ];
    for (filter, condition) in cases {
        let want = expected_runs(&b, &condition).await;
        let (sizes, seen) = walk_runs(&b, &filter, 7).await;
        assert_eq!(seen, want, "{filter:?}");
        assert!(
            sizes.iter().rev().skip(1).all(|n| *n == 7),
            "{filter:?}: {sizes:?}"
        );
    }
    let none = b
        .store
        .list_runs(&other, &RunFilter::default(), &PageRequest::first(100))
        .await
        .expect("other tenant");
    assert_eq!(none.items.len(), 30);
}

#[tokio::test]
async fn bad_page_tokens_are_refused() {
    let b = setup().await;
    let automation = b.automation("tokens").await;
    b.queue_many(&automation, 3).await;
    for garbage in ["", "garbage", "v1:runs:notanumber:x", "v9:runs:1:x"] {
        assert!(
            matches!(Cursor::decode(garbage), Err(Error::BadPageToken(_))),
            "{garbage:?}"
        );
    }
    // Well formed, but not a run id.
    let not_a_run = Cursor::decode("v1:runs:1700000000000000:nope").expect("decodes");
    let page = PageRequest {
        size: 1,
        after: Some(not_a_run),
    };
    assert!(matches!(
        b.store
            .list_runs(&b.tenant, &RunFilter::default(), &page)
            .await,
        Err(Error::BadPageToken(_))
    ));
    // A token of the automations listing is not a position among runs.
    let automations = b
        .store
        .list_automations(&b.tenant, &PageRequest::first(1))
        .await
        .expect("automations");
    assert!(automations.next.is_none(), "one automation, one page");
    b.automation("tokens-2").await;
    let token = b
        .store
        .list_automations(&b.tenant, &PageRequest::first(1))
        .await
        .expect("automations")
        .next
        .expect("a second page");
    let page = PageRequest {
        size: 1,
        after: Some(token.clone()),
    };
    assert!(matches!(
        b.store
            .list_runs(&b.tenant, &RunFilter::default(), &page)
            .await,
        Err(Error::BadPageToken(_))
    ));
    assert_eq!(Cursor::decode(&token.encode()).expect("round trip"), token);
}

// ---------------------------------------------------------------------------------------------
// Stats and workers.

#[tokio::test]
async fn stats_count_one_tenants_runs_and_its_due_backlog() {
    let b = setup().await;
    let automation = b.automation("stats").await;
    let held = b.start(&automation).await;
    let waiting = b.start(&automation).await;
    let backoff = b.start(&automation).await;
    let paused = b.start(&automation).await;
    assert_eq!(b.claim_one("w1").await.claim.run_id(), held);
    b.store
        .pause_run(&b.tenant, paused, "hold")
        .await
        .expect("pause");
    b.sql
        .execute(
            "UPDATE runs SET queued_at = now() - interval '90 seconds' WHERE run_id = $1",
            &[&waiting.0],
        )
        .await
        .expect("backdate");
    // Waiting in backoff for an hour: queued but not due.
    b.sql
        .execute(
            "UPDATE runs SET retry_after = now() + interval '1 hour',
                             queued_at = now() - interval '2 hours' WHERE run_id = $1",
            &[&backoff.0],
        )
        .await
        .expect("backoff");
    // Another tenant's old queued run counts only there.
    let other = TenantId::from("other");
    b.store
        .create_automation(&other, &diamond("stats"))
        .await
        .expect("other");
    let foreign = b
        .store
        .start_run(&leasehold_core::store::StartRun {
            tenant: other.clone(),
            ..b.start_request(&automation)
        })
        .await
        .expect("other run")
        .run_id;
    b.sql
        .execute(
            "UPDATE runs SET queued_at = now() - interval '1 day' WHERE run_id = $1",
            &[&foreign.0],
        )
        .await
        .expect("backdate");

    let stats = b.store.stats(&b.tenant).await.expect("stats");
    assert_eq!(stats.runs_by_status.len(), RunStatus::ALL.len());
    assert_eq!(stats.runs_by_status["queued"], 2);
    assert_eq!(stats.runs_by_status["running"], 1);
    assert_eq!(stats.runs_by_status["paused"], 1);
    assert_eq!(stats.runs_by_status["completed"], 0);
    assert_eq!(stats.claimable_now, 1, "the run in backoff is not due");
    assert_eq!(stats.held_leases, 1);
    let age = stats.oldest_queued_age.expect("a due run");
    assert!(
        age >= Duration::from_secs(90) && age < Duration::from_secs(600),
        "{age:?}"
    );

    // The backoff comes due a millisecond ago: now it counts, and it is the oldest.
    b.backdate_retry(backoff, Duration::from_millis(1)).await;
    let stats = b.store.stats(&b.tenant).await.expect("stats");
    assert_eq!(stats.claimable_now, 2);
    assert!(stats.oldest_queued_age.expect("due") >= Duration::from_secs(7200));

    let empty = b
        .store
        .stats(&TenantId::from("nobody"))
        .await
        .expect("stats");
    assert_eq!(empty.runs_by_status.values().sum::<i64>(), 0);
    assert_eq!(
        (
            empty.oldest_queued_age,
            empty.claimable_now,
            empty.held_leases
        ),
        (None, 0, 0)
    );
}

#[tokio::test]
async fn workers_are_alive_only_within_the_window() {
    let b = setup().await;
    let automation = b.automation("workers").await;
    for name in ["w-fresh", "w-silent"] {
        b.store
            .register_worker(&WorkerInfo {
                claimant_id: ClaimantId::from(name),
                host: "host-1".into(),
                pid: 42,
                version: "0.1.0".into(),
                capacity: 4,
                handlers: vec!["noop".into()],
            })
            .await
            .expect("register");
    }
    b.start(&automation).await;
    b.claim_one("w-fresh").await;
    for (name, ago) in [("w-fresh", "59 seconds"), ("w-silent", "61 seconds")] {
        b.sql
            .execute(
                &format!(
                    "UPDATE workers SET last_heartbeat = now() - interval '{ago}'
                     WHERE claimant_id = $1"
                ),
                &[&name],
            )
            .await
            .expect("backdate heartbeat");
    }

    let workers = b
        .store
        .list_workers(Duration::from_secs(60))
        .await
        .expect("workers");
    let view: Vec<(&str, bool, i64)> = workers
        .iter()
        .map(|w| (w.claimant_id.as_str(), w.alive, w.held_runs))
        .collect();
    assert_eq!(view, vec![("w-fresh", true, 1), ("w-silent", false, 0)]);
    let fresh = &workers[0];
    assert_eq!(
        (
            fresh.host.as_str(),
            fresh.pid,
            fresh.capacity,
            fresh.draining
        ),
        ("host-1", 42, 4, false)
    );
    assert_eq!(fresh.handlers, vec!["noop"]);

    // A wider window takes both in.
    let all_alive = b
        .store
        .list_workers(Duration::from_secs(120))
        .await
        .expect("workers")
        .iter()
        .all(|w| w.alive);
    assert!(all_alive);
}
