//! Schema, automations, starting runs, events, and the named queries, against a real Postgres.

use leasehold_core::ids::{AutomationId, NodeId};
use leasehold_core::run::RunStatus;
use leasehold_core::store::{Error, RequestError, StartRun, Stored};
use leasehold_testkit::fixtures::{diamond, setup, setup_diamond, setup_run, spec};
use serde_json::json;

#[tokio::test]
async fn every_named_query_prepares() {
    let b = setup().await;
    let prepared = b.store.check_queries().await.expect("all queries prepare");
    assert!(prepared >= 25, "only {prepared} queries");
}

#[tokio::test]
async fn automation_versions_are_immutable_and_runs_pin_theirs() {
    let b = setup().await;
    let v1 = diamond("report");
    assert_eq!(
        b.store
            .create_automation(&b.tenant, &v1)
            .await
            .expect("create"),
        1
    );
    assert!(matches!(
        b.store.create_automation(&b.tenant, &v1).await,
        Err(RequestError::AutomationExists(_))
    ));
    let automation = AutomationId::from("report");
    let pinned_v1 = b.start(&automation).await;

    let v2 = spec("id: report\nnodes:\n  - {id: only, kind: echo, input: {x: 1}}\n");
    // Re-applying the same spec, keys in any order, adds no version; a new spec adds one.
    for (spec, version, created) in [(&v1, 1, false), (&v2, 2, true)] {
        let stored = b
            .store
            .apply_automation(&b.tenant, spec)
            .await
            .expect("apply");
        assert_eq!(stored, Stored { version, created });
    }
    let pinned_v2 = b.start(&automation).await;

    let run1 = b.run(pinned_v1).await;
    let run2 = b.run(pinned_v2).await;
    assert_eq!((run1.automation_version, run2.automation_version), (1, 2));
    let read_v1 = b
        .store
        .automation_version(&b.tenant, &automation, Some(1))
        .await
        .expect("v1");
    assert_eq!(read_v1.spec, v1);
    let current = b
        .store
        .automation_version(&b.tenant, &automation, None)
        .await
        .expect("current");
    assert_eq!((current.version, current.spec), (2, v2));
}

#[tokio::test]
async fn an_unreadable_stored_spec_is_an_error_not_a_panic() {
    let (b, automation) = setup_diamond("corrupt").await;
    b.corrupt_spec(&automation).await;
    let result = b
        .store
        .automation_version(&b.tenant, &automation, None)
        .await;
    assert!(
        matches!(
            result,
            Err(RequestError::Store(Error::UnreadableSpec {
                version: 1,
                ..
            }))
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn starting_a_run_is_idempotent_on_its_key() {
    let (b, automation) = setup_diamond("idem").await;
    let request = StartRun {
        idempotency_key: Some("req-1".into()),
        inputs: json!({"b": 2, "a": 1}),
        ..b.start_request(&automation)
    };
    let first = b.store.start_run(&request).await.expect("start");
    assert!(first.created);
    let repeat = b.store.start_run(&request).await.expect("repeat");
    assert_eq!(repeat.run_id, first.run_id);
    assert!(!repeat.created);

    let other_body = StartRun {
        inputs: json!({"a": 2}),
        ..request.clone()
    };
    let refused = b.store.start_run(&other_body).await;
    assert!(
        matches!(refused, Err(RequestError::IdempotencyConflict { .. })),
        "{refused:?}"
    );

    let runs = b.count("SELECT count(*) FROM runs").await;
    assert_eq!(runs, 1, "the refused request changed nothing");
    let run = b.store.run(&b.tenant, first.run_id).await.expect("run");
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(b.event_names(first.run_id).await, vec!["run_started"]);
}

#[tokio::test]
async fn starting_a_run_of_a_missing_automation_is_refused() {
    let b = setup().await;
    let result = b
        .store
        .start_run(&b.start_request(&AutomationId::from("nope")))
        .await;
    assert!(
        matches!(result, Err(RequestError::AutomationNotFound(_))),
        "{result:?}"
    );
}

/// Asserts that `result` is the store's refusal of a priority out of range, naming the constraint.
pub(crate) fn assert_priority_out_of_range<T: std::fmt::Debug>(result: Result<T, RequestError>) {
    match result {
        Err(RequestError::Store(Error::OutOfRange { constraint })) => {
            assert!(constraint.contains("priority"), "{constraint}");
        }
        other => panic!("expected OutOfRange, got {other:?}"),
    }
}

#[tokio::test]
async fn out_of_range_values_name_the_constraint_and_store_nothing() {
    let (b, automation) = setup_diamond("range").await;
    let result = b
        .store
        .start_run(&StartRun {
            priority: 5_000,
            ..b.start_request(&automation)
        })
        .await;
    assert_priority_out_of_range(result);
    let runs = b.count("SELECT count(*) FROM runs").await;
    assert_eq!(runs, 0);
}

#[tokio::test]
async fn each_runs_events_have_gap_free_sequences_and_resume_after_a_seen_one() {
    let (b, automation, one) = setup_run("events").await;
    let two = b.start(&automation).await;
    let claim = b.claim_one("w").await.claim;
    assert_eq!(claim.run_id(), one, "the oldest run is claimed first");
    b.store
        .node_started(&claim, &NodeId::from("a"))
        .await
        .expect("start a");
    b.store
        .node_completed(&claim, &NodeId::from("a"), &json!({"a": 1}))
        .await
        .expect("complete a");

    let ones = b.store.events_after(one, 0, 100).await.expect("events");
    let seqs: Vec<(i64, &str)> = ones.iter().map(|e| (e.seq, e.event.as_str())).collect();
    assert_eq!(
        seqs,
        vec![
            (1, "run_started"),
            (2, "run_claimed"),
            (3, "node_started"),
            (4, "node_completed")
        ]
    );
    assert_eq!(b.event_names(two).await, vec!["run_started"]);

    // A watcher that saw up to 2 gets exactly the rest.
    let rest: Vec<i64> = b
        .store
        .events_after(one, 2, 100)
        .await
        .expect("rest")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(rest, vec![3, 4]);
    assert_eq!(b.run(one).await.event_seq, 4);
}
