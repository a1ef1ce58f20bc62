//! Routing in the claim (issue 19): a claim takes runs of the queues its worker serves, whose
//! requirement set (kinds, labels, context) the worker meets; a run nobody can serve waits, says
//! why, and never keeps a claim from the runs behind it.

use std::collections::BTreeSet;

use leasehold_core::ids::{AutomationId, ClaimantId, RunId};
use leasehold_core::routing::{Capabilities, Requirement, WaitReason};
use leasehold_core::store::{RequestError, Served, StartRun, WorkerInfo};
use leasehold_testkit::fixtures::{Bundle, LEASE, setup, worker_info};

/// What a worker of `queues` with `kinds` and `labels` may claim.
fn worker(queues: &[&str], kinds: &[&str], labels: &[(&str, &str)]) -> Capabilities {
    Capabilities {
        queues: Some(queues.iter().map(|q| (*q).to_owned()).collect()),
        kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        context: BTreeSet::new(),
    }
}

/// The runs a claim for `capabilities` takes, up to 100, sorted.
async fn claim_for(b: &Bundle, claimant: &str, capabilities: &Capabilities) -> Vec<RunId> {
    let mut claimed: Vec<RunId> = b
        .store
        .claim_and_start_runs(
            &ClaimantId::from(claimant),
            100,
            LEASE,
            0,
            &Served::by(capabilities),
        )
        .await
        .expect("claim")
        .iter()
        .map(|c| c.claim.run_id())
        .collect();
    claimed.sort();
    claimed
}

fn sorted(mut runs: Vec<RunId>) -> Vec<RunId> {
    runs.sort();
    runs
}

async fn start_in(
    b: &Bundle,
    automation: &leasehold_core::ids::AutomationId,
    queue: &str,
) -> RunId {
    b.store
        .start_run(&StartRun {
            queue: Some(queue.to_owned()),
            ..b.start_request(automation)
        })
        .await
        .expect("start")
        .run_id
}

/// Registers a live worker with `capabilities`' queues and labels, advertising `kinds`.
async fn register(b: &Bundle, claimant: &str, capabilities: &Capabilities) {
    let info = WorkerInfo {
        kinds: capabilities
            .kinds
            .iter()
            .map(|kind| leasehold_core::store::AdvertisedKind {
                kind: kind.clone(),
                input_schema: None,
            })
            .collect(),
        queues: capabilities.queues.clone().unwrap_or_default(),
        labels: capabilities.labels.clone(),
        ..worker_info(claimant, "host", "test")
    };
    b.store.register_worker(&info).await.expect("register");
}

#[tokio::test]
async fn a_claim_takes_runs_of_the_queues_its_worker_serves_only() {
    let b = setup().await;
    let plain = b
        .automation("id: plain\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    let gpu = b
        .automation("id: trains\nqueue: gpu\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    let default_runs = b.start_many(&plain, 3).await;
    let gpu_runs = b.start_many(&gpu, 2).await;
    // A start may send a run of either automation elsewhere.
    let moved = start_in(&b, &plain, "batch").await;
    assert_eq!(b.run(moved).await.queue, "batch");
    assert_eq!(b.run(gpu_runs[0]).await.queue, "gpu");
    assert_eq!(b.run(default_runs[0]).await.queue, "default");

    let kinds = ["noop"];
    assert_eq!(
        claim_for(&b, "gpu-worker", &worker(&["gpu"], &kinds, &[])).await,
        sorted(gpu_runs)
    );
    assert_eq!(
        claim_for(&b, "plain", &worker(&["default"], &kinds, &[])).await,
        sorted(default_runs)
    );
    assert!(
        claim_for(&b, "plain-again", &worker(&["default", "gpu"], &kinds, &[]))
            .await
            .is_empty(),
        "nothing is left in the default and gpu queues"
    );
    assert_eq!(
        claim_for(&b, "batch", &worker(&["batch"], &kinds, &[])).await,
        vec![moved]
    );
}

#[tokio::test]
async fn a_claim_takes_only_runs_whose_kinds_and_labels_its_worker_has() {
    let b = setup().await;
    let shout = b
        .automation("id: shout\nnodes:\n  - {id: a, kind: noop}\n  - {id: b, kind: shout, depends_on: [a]}\n")
        .await;
    let train = b
        .automation("id: train\nnodes:\n  - {id: a, kind: noop, requires: {gpu: a100}}\n")
        .await;
    let shouting = b.start(&shout).await;
    let training = b.start(&train).await;

    let no_shout = worker(&["default"], &["noop"], &[("gpu", "h100")]);
    assert!(
        claim_for(&b, "w1", &no_shout).await.is_empty(),
        "a worker without `shout`, and with another gpu, can run neither"
    );
    let a100 = worker(&["default"], &["noop"], &[("gpu", "a100"), ("zone", "eu")]);
    assert_eq!(claim_for(&b, "w2", &a100).await, vec![training]);
    let shouter = worker(&["default"], &["noop", "shout"], &[]);
    assert_eq!(claim_for(&b, "w3", &shouter).await, vec![shouting]);
}

#[tokio::test]
async fn runs_nobody_here_can_serve_never_hold_back_the_runs_behind_them() {
    let b = setup().await;
    let shout = b
        .automation("id: shout\nnodes:\n  - {id: a, kind: shout}\n")
        .await;
    let plain = b
        .automation("id: plain\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    // Older and of higher priority: first in claim order, and unservable by the worker below.
    let blocked: Vec<RunId> = {
        let mut ids = Vec::new();
        for _ in 0..40 {
            let run = b
                .store
                .start_run(&StartRun {
                    priority: 100,
                    ..b.start_request(&shout)
                })
                .await
                .expect("start")
                .run_id;
            ids.push(run);
        }
        ids
    };
    let servable = b.start(&plain).await;
    let claimed = b
        .store
        .claim_and_start_runs(
            &ClaimantId::from("w"),
            1,
            LEASE,
            0,
            &Served::by(&worker(&["default"], &["noop"], &[])),
        )
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].claim.run_id(), servable);
    for run in &blocked[..3] {
        assert_eq!(b.status(*run).await, leasehold_core::run::RunStatus::Queued);
    }
}

#[tokio::test]
async fn a_queued_run_says_what_no_live_worker_has() {
    let b = setup().await;
    let train = b
        .automation(
            "id: train\nrequires_context: [OPENAI_API_KEY]\nnodes:\n  - {id: a, kind: shout, requires: {gpu: a100}}\n",
        )
        .await;
    let elsewhere = b
        .automation("id: elsewhere\nqueue: gpu\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    let training = b.start(&train).await;
    let parked = b.start(&elsewhere).await;

    register(
        &b,
        "plain",
        &worker(&["default"], &["noop"], &[("gpu", "h100")]),
    )
    .await;
    let runs = [b.run(training).await, b.run(parked).await];
    let reasons = b.store.wait_reasons(&runs).await.expect("reasons");
    assert_eq!(
        reasons.get(&training),
        Some(&WaitReason::Missing {
            missing: vec![
                Requirement::Kind("shout".into()),
                Requirement::Label {
                    key: "gpu".into(),
                    value: "a100".into()
                },
                Requirement::Context("OPENAI_API_KEY".into()),
            ]
        })
    );
    assert_eq!(
        reasons.get(&parked),
        Some(&WaitReason::NoWorkerForQueue {
            queue: "gpu".into()
        })
    );
    assert_eq!(
        reasons[&training].to_string(),
        "waiting for a worker with: kind shout, label gpu=a100, context OPENAI_API_KEY"
    );

    // A worker serving the queue with what the run needs: nothing to wait for.
    register(&b, "gpu", &worker(&["gpu"], &["noop"], &[])).await;
    let reasons = b.store.wait_reasons(&runs).await.expect("reasons");
    assert!(!reasons.contains_key(&parked), "{reasons:?}");
    assert!(reasons.contains_key(&training));
}

#[tokio::test]
async fn a_repeated_start_naming_another_queue_is_refused() {
    let b = setup().await;
    let plain = b
        .automation("id: plain\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    let keyed = |queue: Option<&str>| StartRun {
        idempotency_key: Some("k".into()),
        queue: queue.map(str::to_owned),
        ..b.start_request(&plain)
    };
    let first = b
        .store
        .start_run(&keyed(Some("batch")))
        .await
        .expect("start");
    let again = b
        .store
        .start_run(&keyed(Some("batch")))
        .await
        .expect("repeat");
    assert_eq!(again.run_id, first.run_id);
    assert!(!again.created);
    // Naming no queue asks for the automation's, whatever it was: the same run.
    let unnamed = b.store.start_run(&keyed(None)).await.expect("repeat");
    assert_eq!(unnamed.run_id, first.run_id);
    assert!(matches!(
        b.store.start_run(&keyed(Some("other"))).await,
        Err(RequestError::IdempotencyConflict { .. })
    ));
}

/// Starts a run of `automation` with `priority`.
async fn start_with_priority(b: &Bundle, automation: &AutomationId, priority: i16) -> RunId {
    let request = StartRun {
        priority,
        ..b.start_request(automation)
    };
    b.store.start_run(&request).await.expect("start").run_id
}

/// The claim order is the ageing rule's (`routing::claim_order`): priority orders runs queued
/// close together, a run queued long enough before outranks higher priorities, and a run
/// requeued keeps the place its first queueing gave it.
#[tokio::test]
async fn claims_follow_the_ageing_rule() {
    let b = setup().await;
    let plain = b
        .automation("id: plain\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    let start = |priority: i16| start_with_priority(&b, &plain, priority);
    let minute = leasehold_core::routing::AGEING_PER_PRIORITY_LEVEL_MICROS;
    let old_low = start(0).await;
    let new_high = start(5).await;
    let newer_high = start(1).await;
    // old_low was queued ten minutes before the others: it outranks 5 levels, not 11.
    b.sql
        .execute(
            "UPDATE runs SET first_queued_micros = first_queued_micros - $2 WHERE run_id = $1",
            &[&old_low.0, &(10 * minute)],
        )
        .await
        .expect("backdate");
    let very_high = start(11).await;
    let order: Vec<RunId> = {
        let mut order = Vec::new();
        for _ in 0..4 {
            order.push(b.claim_one("w").await.claim.run_id());
        }
        order
    };
    assert_eq!(order, vec![very_high, old_low, new_high, newer_high]);
}

/// A low-priority run under a steady stream of higher-priority runs is claimed within the ageing
/// rule's bound (`routing::AGEING_PER_PRIORITY_LEVEL_MICROS`): it waits behind the runs first
/// queued up to the priority gap × a minute after it, and no longer. Time is simulated by writing
/// each run's first queueing: a run of priority 0, then every 10 s three runs of priority 2 and
/// two claims, so the stream outruns the claims and under priority alone the low run would wait
/// forever.
#[tokio::test]
async fn a_low_priority_run_under_a_stream_of_higher_ones_is_claimed_within_its_bound() {
    const HIGH: i16 = 2;
    const TICK_MICROS: i64 = 10_000_000;
    const ARRIVALS_PER_TICK: usize = 3;
    const CLAIMS_PER_TICK: usize = 2;
    const MAX_TICKS: i64 = 100;
    let b = setup().await;
    let plain = b
        .automation("id: plain\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    let start = |priority: i16| start_with_priority(&b, &plain, priority);
    let bound = i64::from(HIGH) * leasehold_core::routing::AGEING_PER_PRIORITY_LEVEL_MICROS;
    let low = start(0).await;
    let t: i64 = b
        .sql
        .query_one(
            "SELECT first_queued_micros FROM runs WHERE run_id = $1",
            &[&low.0],
        )
        .await
        .expect("the low run's first queueing")
        .get(0);

    let mut first_queued = std::collections::HashMap::new();
    let mut claimed_before = Vec::new();
    let mut claimed_in_tick = None;
    'ticks: for tick in 0..MAX_TICKS {
        let now = t + tick * TICK_MICROS;
        for _ in 0..ARRIVALS_PER_TICK {
            let run = start(HIGH).await;
            b.sql
                .execute(
                    "UPDATE runs SET first_queued_micros = $2 WHERE run_id = $1",
                    &[&run.0, &now],
                )
                .await
                .expect("queue in simulated time");
            first_queued.insert(run, now);
        }
        for _ in 0..CLAIMS_PER_TICK {
            let run = b.claim_one("w").await.claim.run_id();
            if run == low {
                claimed_in_tick = Some(tick);
                break 'ticks;
            }
            claimed_before.push(run);
        }
    }

    let tick = claimed_in_tick.expect("the low run is claimed while the stream goes on");
    for run in &claimed_before {
        assert!(
            first_queued[run] - t <= bound,
            "{run} was first queued {} s after the low run, past the bound of {} s",
            (first_queued[run] - t) / 1_000_000,
            bound / 1_000_000
        );
    }
    // Both sides of the bound: every run first queued less than it after the low run went first.
    for (run, at) in &first_queued {
        if at - t < bound {
            assert!(
                claimed_before.contains(run),
                "{run}, queued {} s after the low run, was not claimed before it",
                (at - t) / 1_000_000
            );
        }
    }
    // The stream outran the claims: runs it queued before the low run's claim still wait, so
    // priority alone would have taken one of them instead.
    let waiting: Vec<RunId> = b
        .sql
        .query(
            "SELECT run_id FROM runs WHERE status = 'queued' AND priority = $1",
            &[&HIGH],
        )
        .await
        .expect("waiting runs")
        .iter()
        .map(|row| RunId(row.get(0)))
        .collect();
    let arrived = usize::try_from(tick + 1).expect("ticks") * ARRIVALS_PER_TICK;
    assert_eq!(waiting.len(), arrived - claimed_before.len());
    assert!(
        waiting.len() > usize::try_from(tick).expect("ticks"),
        "the stream grew by a run a tick: {} waiting after {} ticks",
        waiting.len(),
        tick + 1
    );
}
