//! The worker registry: stated leases, liveness by each worker's own lease, and the node kinds
//! workers advertise with their input schemas.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use leasehold_core::kinds::Schema;
use leasehold_core::store::{AdvertisedKind, WorkerInfo, WorkerRecord};
use leasehold_testkit::fixtures::{Bundle, setup, worker_info};
use serde_json::{Value, json};

fn kind(name: &str, schema: Option<Value>) -> AdvertisedKind {
    AdvertisedKind {
        kind: name.to_owned(),
        input_schema: schema.map(|s| Schema::new(s).expect("a valid schema")),
    }
}

fn info(claimant: &str, lease: Duration, kinds: Vec<AdvertisedKind>) -> WorkerInfo {
    WorkerInfo {
        lease,
        kinds,
        ..worker_info(claimant, "host-1", "0.1.0")
    }
}

async fn worker(b: &Bundle, claimant: &str, now: Option<DateTime<Utc>>) -> WorkerRecord {
    b.store
        .list_workers(now)
        .await
        .expect("workers")
        .into_iter()
        .find(|w| w.claimant_id.as_str() == claimant)
        .expect("registered")
}

fn ms(n: i64) -> TimeDelta {
    TimeDelta::milliseconds(n)
}

#[tokio::test]
async fn a_worker_is_alive_until_its_own_lease_has_passed_since_its_last_heartbeat() {
    let b = setup().await;
    for (name, lease) in [("w-short", 10), ("w-long", 600)] {
        b.store
            .register_worker(&info(name, Duration::from_secs(lease), Vec::new()))
            .await
            .expect("register");
    }
    for (name, lease) in [("w-short", 10_000_i64), ("w-long", 600_000)] {
        let w = worker(&b, name, None).await;
        assert_eq!(w.lease, Some(Duration::from_millis(lease.unsigned_abs())));
        assert!(w.alive, "{name} just registered");
        let beat = w.last_heartbeat;
        let just_before = worker(&b, name, Some(beat + ms(lease) - ms(1))).await;
        assert!(just_before.alive, "{name}, 1 ms before its lease passed");
        let at = worker(&b, name, Some(beat + ms(lease))).await;
        assert!(!at.alive, "{name}, once its lease passed");
    }
    // The short lease has passed where the long one has not.
    let beat = worker(&b, "w-short", None).await.last_heartbeat;
    let later = Some(beat + ms(60_000));
    assert!(!worker(&b, "w-short", later).await.alive);
    assert!(worker(&b, "w-long", later).await.alive);
}

#[tokio::test]
async fn a_worker_that_stated_no_lease_is_alive_for_the_old_minute() {
    let b = setup().await;
    // As a worker of the previous release registers: its statement knows no lease.
    b.sql
        .execute(
            "INSERT INTO workers (claimant_id, host, pid, version, capacity, handlers)
             VALUES ('w-old', 'host-1', 1, '0.0.9', 4, '{noop}')",
            &[],
        )
        .await
        .expect("register as the previous release");
    let w = worker(&b, "w-old", None).await;
    assert_eq!(w.lease, None);
    let beat = w.last_heartbeat;
    assert!(worker(&b, "w-old", Some(beat + ms(59_999))).await.alive);
    assert!(!worker(&b, "w-old", Some(beat + ms(60_000))).await.alive);
}

#[tokio::test]
async fn registering_advertises_kinds_and_the_latest_schema_wins() {
    let b = setup().await;
    let v1 = json!({"type": "object", "required": ["from"]});
    let v2 = json!({"type": "object", "required": ["from", "to"]});
    b.store
        .register_worker(&info(
            "w-1",
            Duration::from_secs(30),
            vec![kind("shout", Some(v1.clone())), kind("whisper", None)],
        ))
        .await
        .expect("register");
    let first = b.store.node_kinds(None).await.expect("kinds");
    let view: Vec<(&str, Option<&Value>)> = first
        .iter()
        .map(|k| (k.kind.as_str(), k.input_schema.as_ref()))
        .collect();
    assert_eq!(view, [("shout", Some(&v1)), ("whisper", None)]);
    assert_eq!(first[0].first_advertised_at, first[0].last_advertised_at);

    // A newer worker advertises another schema; the kind keeps when it was first seen.
    b.store
        .register_worker(&info(
            "w-2",
            Duration::from_secs(30),
            vec![kind("shout", Some(v2.clone()))],
        ))
        .await
        .expect("register");
    let shout = b
        .store
        .node_kinds(Some(&["shout".to_owned()]))
        .await
        .expect("kinds");
    assert_eq!(shout.len(), 1);
    assert_eq!(shout[0].input_schema, Some(v2));
    assert_eq!(shout[0].first_advertised_at, first[0].first_advertised_at);
    assert!(shout[0].last_advertised_at > first[0].last_advertised_at);

    // The kinds outlive the workers that advertised them.
    for w in ["w-1", "w-2"] {
        b.store
            .deregister_worker(&w.into())
            .await
            .expect("deregister");
    }
    assert_eq!(b.store.node_kinds(None).await.expect("kinds").len(), 2);
    assert!(
        b.store
            .node_kinds(Some(&["nothing".to_owned()]))
            .await
            .expect("kinds")
            .is_empty()
    );
}

#[tokio::test]
async fn workers_registering_the_same_kinds_at_once_all_register() {
    let b = setup().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let store = b.store.clone();
        // Each worker lists the kinds in another order; the statement upserts them sorted.
        let mut kinds: Vec<AdvertisedKind> = ["a", "b", "c", "d"]
            .iter()
            .map(|k| kind(k, Some(json!({"description": format!("from w-{i}")}))))
            .collect();
        kinds.rotate_left(i % 4);
        let info = info(&format!("w-{i}"), Duration::from_secs(30), kinds);
        tasks.spawn(async move { store.register_worker(&info).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task").expect("registered");
    }
    assert_eq!(b.store.list_workers(None).await.expect("workers").len(), 16);
    assert_eq!(b.store.node_kinds(None).await.expect("kinds").len(), 4);
}

#[tokio::test]
async fn a_repeated_kind_in_one_registration_is_advertised_once() {
    let b = setup().await;
    let kinds = vec![kind("a", None), kind("a", Some(json!({})))];
    b.store
        .register_worker(&info("w-1", Duration::from_secs(30), kinds))
        .await
        .expect("register");
    assert_eq!(b.store.node_kinds(None).await.expect("kinds").len(), 1);
}
