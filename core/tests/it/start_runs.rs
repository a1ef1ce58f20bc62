//! Starting runs in batches: the same rules as one at a time, and a refused batch stores nothing.

use futures_util::StreamExt;
use leasehold_core::ids::AutomationId;
use leasehold_core::run::RunStatus;
use leasehold_core::store::{QUEUED_CHANNEL, RequestError, StartRun};
use leasehold_testkit::fixtures::{Bundle, LEASE, setup_diamond};
use serde_json::json;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::store::assert_priority_out_of_range;

fn keyed(b: &Bundle, automation: &AutomationId, key: &str, n: i64) -> StartRun {
    StartRun {
        idempotency_key: Some(key.into()),
        inputs: json!({ "n": n }),
        ..b.start_request(automation)
    }
}

#[tokio::test]
async fn a_batch_queues_every_run_in_request_order_and_wakes_workers() {
    let (b, automation) = setup_diamond("batch").await;
    let (listener, mut connection) = tokio_postgres::connect(b.db.url(), NoTls)
        .await
        .expect("listener");
    let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.channel().to_owned());
            }
        }
    });
    listener
        .batch_execute(&format!("LISTEN {QUEUED_CHANNEL}"))
        .await
        .expect("listen");

    let requests: Vec<StartRun> = (0..5)
        .map(|n| StartRun {
            inputs: json!({ "n": n }),
            priority: i16::try_from(n).expect("small"),
            ..b.start_request(&automation)
        })
        .collect();
    let started = b.store.start_runs(&requests).await.expect("start batch");
    assert_eq!(started.len(), 5);
    assert!(started.iter().all(|s| s.created));
    for (n, s) in started.iter().enumerate() {
        let run = b.store.run(&b.tenant, s.run.run_id).await.expect("run");
        assert_eq!(run.status, RunStatus::Queued);
        assert_eq!(
            run.inputs,
            json!({ "n": n }),
            "results follow request order"
        );
        assert_eq!(run.priority, i16::try_from(n).expect("small"));
        assert_eq!(run.automation_version, 1);
        assert_eq!(b.event_names(s.run.run_id).await, vec!["run_started"]);
    }
    let woken = tokio::time::timeout(LEASE, notifications.recv())
        .await
        .expect("a notification within the deadline");
    assert_eq!(woken.as_deref(), Some(QUEUED_CHANNEL));

    assert!(b.store.start_runs(&[]).await.expect("empty").is_empty());
}

#[tokio::test]
async fn keys_resolve_against_earlier_runs_and_within_the_batch() {
    let (b, automation) = setup_diamond("keys").await;
    let earlier = b
        .store
        .start_run(&keyed(&b, &automation, "k-earlier", 1))
        .await
        .expect("earlier run");

    let started = b
        .store
        .start_runs(&[
            keyed(&b, &automation, "k-new", 2),
            keyed(&b, &automation, "k-earlier", 1),
            keyed(&b, &automation, "k-new", 2),
            b.start_request(&automation),
        ])
        .await
        .expect("batch");
    assert!(started[0].created);
    assert_eq!(started[1].run.run_id, earlier.run_id);
    assert!(!started[1].created);
    assert_eq!(
        started[2].run.run_id, started[0].run.run_id,
        "a key repeated within the batch is one run"
    );
    assert!(!started[2].created);
    assert!(started[3].created);
    assert_eq!(b.count("SELECT count(*) FROM runs").await, 3);

    // A repeated key still returns its run after the automation was paused.
    b.set_automation_paused(&automation, true).await;
    let again = b
        .store
        .start_runs(&[keyed(&b, &automation, "k-new", 2)])
        .await
        .expect("repeat while paused");
    assert_eq!(again[0].run.run_id, started[0].run.run_id);
    assert!(!again[0].created);
}

#[tokio::test]
async fn a_refused_request_names_its_index_and_the_batch_stores_nothing() {
    let (b, automation) = setup_diamond("refused").await;
    b.store
        .start_run(&keyed(&b, &automation, "used", 1))
        .await
        .expect("earlier run");
    let before = b.count("SELECT count(*) FROM runs").await;
    let events_before = b.count("SELECT count(*) FROM run_events").await;

    let check = |result: Result<_, RequestError>, want_index: usize, what: &str| match result {
        Err(RequestError::InBatch { index, source }) => {
            assert_eq!(index, want_index, "{what}: {source}");
            *source
        }
        other => panic!("{what}: expected InBatch, got {other:?}"),
    };

    for (requests, index, what) in [
        (
            vec![
                b.start_request(&automation),
                keyed(&b, &automation, "used", 2),
            ],
            1,
            "a key used with another request",
        ),
        (
            vec![
                keyed(&b, &automation, "twice", 1),
                b.start_request(&automation),
                keyed(&b, &automation, "twice", 2),
            ],
            2,
            "one key, two requests, one batch",
        ),
    ] {
        let source = check(b.store.start_runs(&requests).await, index, what);
        assert!(
            matches!(source, RequestError::IdempotencyConflict { .. }),
            "{source}"
        );
    }

    let missing = b
        .store
        .start_runs(&[
            b.start_request(&automation),
            b.start_request(&AutomationId::from("nope")),
        ])
        .await;
    let source = check(missing, 1, "a missing automation");
    assert!(
        matches!(source, RequestError::AutomationNotFound(_)),
        "{source}"
    );

    let paused = b.diamond("paused").await;
    b.set_automation_paused(&paused, true).await;
    let held = b
        .store
        .start_runs(&[b.start_request(&automation), b.start_request(&paused)])
        .await;
    let source = check(held, 1, "a paused automation");
    assert!(
        matches!(source, RequestError::AutomationPaused(_)),
        "{source}"
    );

    let out_of_range = b
        .store
        .start_runs(&[
            b.start_request(&automation),
            StartRun {
                priority: 5_000,
                ..b.start_request(&automation)
            },
        ])
        .await;
    assert_priority_out_of_range(out_of_range);

    assert_eq!(b.count("SELECT count(*) FROM runs").await, before);
    assert_eq!(
        b.count("SELECT count(*) FROM run_events").await,
        events_before
    );
}

#[tokio::test]
async fn concurrent_batches_sharing_a_key_start_one_run() {
    let (b, automation) = setup_diamond("race").await;
    let batch = vec![
        b.start_request(&automation),
        keyed(&b, &automation, "shared", 1),
    ];
    let results = futures_util::future::join_all((0..8).map(|_| b.store.start_runs(&batch))).await;
    let shared: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("a raced key is resolved, not refused")[1].clone())
        .collect();
    assert!(shared.iter().all(|s| s.run.run_id == shared[0].run.run_id));
    assert_eq!(shared.iter().filter(|s| s.created).count(), 1);
    assert_eq!(b.count("SELECT count(*) FROM runs").await, 8 + 1);
}

/// A start gives a run its version's deadlines (V18): start plus `schedule_to_start_timeout_ms`
/// and start plus `run_timeout_ms`. The records the batch starts answer with hold the same
/// deadlines as the stored runs, and a version without timeouts gives none.
#[tokio::test]
async fn starts_give_runs_their_versions_deadlines() {
    let (b, plain) = setup_diamond("plain").await;
    let timed = b
        .automation(
            "id: timed\nschedule_to_start_timeout_ms: 5000\nrun_timeout_ms: 60000\n\
             nodes:\n  - {id: a, kind: noop}\n",
        )
        .await;
    let batch = b
        .store
        .start_runs(&[b.start_request(&timed), b.start_request(&plain)])
        .await
        .expect("start batch");
    let each = b
        .store
        .start_each(&[b.start_request(&timed), b.start_request(&plain)])
        .await;
    let mut answered: Vec<_> = batch.into_iter().map(|s| s.run).collect();
    for outcome in each {
        match outcome.expect("start") {
            leasehold_core::store::StartOutcome::Inserted { run, .. } => answered.push(*run),
            other => panic!("not inserted: {other:?}"),
        }
    }
    let single = b.start(&timed).await;
    answered.push(b.run(single).await);
    for run in answered {
        let stored = b.run(run.run_id).await;
        assert_eq!(
            run.deadlines,
            stored.deadlines,
            "{}",
            run.automation_id.as_str()
        );
        if run.automation_id == timed {
            let ms = chrono::TimeDelta::milliseconds;
            assert_eq!(stored.deadlines.start, Some(stored.created_at + ms(5_000)));
            assert_eq!(stored.deadlines.run, Some(stored.created_at + ms(60_000)));
        } else {
            assert_eq!(stored.deadlines, Default::default());
        }
    }
}
