//! Automations: read, list, pause, delete.

use leasehold_core::ids::{AutomationId, TenantId};
use leasehold_core::run::RunStatus;
use leasehold_core::store::{AutomationStatus, DecisionKind, PageRequest, RequestError};
use leasehold_testkit::fixtures::{Bundle, diamond, gated, setup, spec};
use uuid::Uuid;

use super::{complete, decision, fail, to_gate};

async fn count(b: &Bundle, sql: &str, run_ids: &[Uuid]) -> i64 {
    b.sql
        .query_one(sql, &[&run_ids])
        .await
        .expect("count")
        .get(0)
}

#[tokio::test]
async fn automations_are_read_listed_and_paused() {
    let b = setup().await;
    for id in ["alpha", "beta", "gamma"] {
        b.create(&diamond(id)).await;
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
    let paused = b.set_automation_paused(&beta, true).await;
    assert_eq!(paused.status, AutomationStatus::Paused);
    assert!(paused.updated_at >= read.updated_at);
    assert!(matches!(
        b.store.start_run(&b.start_request(&beta)).await,
        Err(RequestError::AutomationPaused(_))
    ));
    let again = b.set_automation_paused(&beta, true).await;
    assert_eq!(again, paused, "a repeated pause is a no-op");
    let active = b.set_automation_paused(&beta, false).await;
    assert_eq!(active.status, AutomationStatus::Active);
    b.start(&beta).await;

    let nope = AutomationId::from("nope");
    assert!(matches!(
        b.store.automation(&b.tenant, &nope).await,
        Err(RequestError::AutomationNotFound(_))
    ));
    assert!(matches!(
        b.store.set_automation_status(&b.tenant, &nope, true).await,
        Err(RequestError::AutomationNotFound(_))
    ));
    assert!(matches!(
        b.store.automation(&other, &beta).await,
        Err(RequestError::AutomationNotFound(_))
    ));
}

#[tokio::test]
async fn an_automation_with_unfinished_runs_is_not_deleted() {
    let b = setup().await;
    let automation = b.create(&diamond("busy")).await;
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
            Err(RequestError::AutomationHasUnfinishedRuns { unfinished: 2, .. })
        ),
        "{refused:?}"
    );
    b.store
        .automation(&b.tenant, &automation)
        .await
        .expect("still there");
    assert_eq!(b.run(blocked).await.status, RunStatus::Blocked);
    assert_eq!(b.run(queued).await.status, RunStatus::Queued);
    assert!(matches!(
        b.store
            .delete_automation(&b.tenant, &AutomationId::from("nope"))
            .await,
        Err(RequestError::AutomationNotFound(_))
    ));
}

#[tokio::test]
async fn deleting_an_automation_takes_its_finished_runs_and_their_history() {
    let b = setup().await;
    let automation = b.create(&gated("done")).await;
    let keep = b.create(&diamond("keep")).await;

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
    b.cancel(cancelled, "not needed").await;
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
    let versions = b
        .count("SELECT count(*) FROM automation_versions WHERE automation_id = 'done'")
        .await;
    assert_eq!(versions, 0);
    assert!(matches!(
        b.store.automation(&b.tenant, &automation).await,
        Err(RequestError::AutomationNotFound(_))
    ));
    assert!(matches!(
        b.store.delete_automation(&b.tenant, &automation).await,
        Err(RequestError::AutomationNotFound(_))
    ));
    // Another automation's run and its history are untouched.
    assert_eq!(b.run(kept).await.status, RunStatus::Queued);
    assert_eq!(b.event_names(kept).await, vec!["run_started"]);
}
