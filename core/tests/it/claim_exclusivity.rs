//! Claim exclusivity as a property: many claimers with random pauses, batch sizes and leases,
//! releasing, completing or abandoning what they hold, with a reaper requeueing what expires.
//! Whatever the interleaving, a run is held by at most one claimant at a time: every claim
//! raises the epoch by one, and a run is claimed again only after its previous holder let it go
//! (released, requeued by the reaper) — never while a live lease exists. Stale holders' writes
//! never land.

use std::collections::HashMap;
use std::time::Duration;

use leasehold_core::ids::{ClaimantId, NodeId, RunId};
use leasehold_core::store::{FenceError, ReapParams};
use leasehold_testkit::fixtures::{Bundle, setup_diamond};
use proptest::prelude::*;

/// What a claimer does with a run it claimed.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Complete,
    Release,
    Abandon,
}

#[derive(Debug, Clone)]
struct Claimer {
    pause_ms: u64,
    batch: usize,
    lease_ms: u64,
    fates: Vec<Fate>,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        Just(Fate::Complete),
        Just(Fate::Release),
        Just(Fate::Abandon)
    ]
}

fn claimer() -> impl Strategy<Value = Claimer> {
    (
        0..4u64,
        1..6usize,
        20..200u64,
        prop::collection::vec(fate(), 1..8),
    )
        .prop_map(|(pause_ms, batch, lease_ms, fates)| Claimer {
            pause_ms,
            batch,
            lease_ms,
            fates,
        })
}

/// Events that let a run go; a claim must follow one of these (or the start).
const LETTING_GO: [&str; 3] = [
    "run_started",
    "run_released_shutdown",
    "run_execution_claim_expired_requeued",
];

async fn scenario(claimers: Vec<Claimer>, runs: usize) {
    let (b, automation) = setup_diamond("exclusive").await;
    let run_ids = b.start_many(&automation, runs).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let reaper = {
        let store = b.store.clone();
        tokio::spawn(async move {
            let leader = store
                .try_acquire_leadership("prop-reaper", "prop", Duration::from_secs(600))
                .await
                .expect("acquire")
                .expect("leader");
            let params = ReapParams {
                now: None,
                limit: 1_000,
                poison_limit: 1_000,
            };
            while !*stopped.borrow() {
                let expired = store.expired_leases(&params).await.expect("expired");
                let requeue: Vec<_> = expired.into_iter().filter(|v| !v.progressed).collect();
                store
                    .requeue_expired_as_leader(&leader, &requeue, &params)
                    .await
                    .expect("requeue");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let mut tasks = Vec::new();
    for (i, c) in claimers.into_iter().enumerate() {
        let store = b.store.clone();
        tasks.push(tokio::spawn(async move {
            let claimant = ClaimantId(format!("claimer-{i}"));
            let mut fates = c.fates.iter().cycle();
            for _ in 0..30 {
                let claimed = store
                    .claim_runs(&claimant, c.batch, Duration::from_millis(c.lease_ms))
                    .await
                    .expect("claim");
                for run in claimed {
                    tokio::time::sleep(Duration::from_millis(c.pause_ms)).await;
                    let claim = run.claim;
                    let result = match fates.next().copied().unwrap_or(Fate::Abandon) {
                        Fate::Abandon => Ok(()),
                        Fate::Release => store
                            .release_on_shutdown(&[claim])
                            .await
                            .map(|_| ())
                            .map_err(FenceError::from),
                        Fate::Complete => {
                            let mut ok = Ok(());
                            for node in ["a", "b", "c", "d"] {
                                let node = NodeId::from(node);
                                ok = store.node_started(&claim, &node).await.map(|_| ());
                                if ok.is_ok() {
                                    ok = store
                                        .node_completed(&claim, &node, &serde_json::json!(null))
                                        .await;
                                }
                                if ok.is_err() {
                                    break;
                                }
                            }
                            if ok.is_ok() {
                                ok = store.complete_run(&claim).await;
                            }
                            ok
                        }
                    };
                    // A holder whose lease ran out meanwhile is fenced off; nothing else fails.
                    match result {
                        Ok(()) | Err(FenceError::LeaseLost { .. }) => {}
                        Err(e) => panic!("unexpected store error: {e}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(c.pause_ms)).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("claimer");
    }
    stop.send_replace(true);
    reaper.await.expect("reaper");

    for run_id in run_ids {
        check_history(&b, run_id).await;
    }
}

/// The run's history shows one holder at a time: each claim raises the epoch by one and follows
/// a letting-go; nothing happens after completion; node events carry the epoch of the claim that
/// held the run when they happened.
async fn check_history(b: &Bundle, run_id: RunId) {
    let events = b
        .store
        .events_after(run_id, 0, 10_000)
        .await
        .expect("events");
    let mut epoch = 0;
    let mut free = false;
    let mut completed_nodes: HashMap<String, i64> = HashMap::new();
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event.seq,
            i64::try_from(i).expect("small") + 1,
            "gap-free history"
        );
        let name = event.event.as_str();
        if LETTING_GO.contains(&name) {
            free = true;
        } else if name == "run_claimed" {
            assert!(free, "run {run_id} claimed while held: {events:#?}");
            assert_eq!(
                event.epoch.0,
                epoch + 1,
                "each claim raises the epoch by one"
            );
            epoch = event.epoch.0;
            free = false;
        } else {
            assert!(!free, "{name} on run {run_id} while nobody held it");
            assert_eq!(event.epoch.0, epoch, "{name} written by the current holder");
            if name == "node_completed" {
                let node = event.node_id.clone().expect("node").0;
                let earlier = completed_nodes.insert(node.clone(), event.epoch.0);
                assert!(earlier.is_none(), "node {node} of {run_id} completed twice");
            }
            if name == "run_completed" {
                assert_eq!(i + 1, events.len(), "nothing after completion");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn a_run_is_held_by_at_most_one_claimant_at_a_time(
        claimers in prop::collection::vec(claimer(), 2..8),
        runs in 5..40usize,
    ) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(scenario(claimers, runs));
    }
}
