//! Concurrency and rate limits in the claim (issue 19, items 4 and 5): an automation's (from its
//! spec) and a queue's (`set_queue_limits`), holding across claimers that race.

use std::time::{Duration, Instant};

use leasehold_core::ids::{AutomationId, ClaimantId, RunId};
use leasehold_core::routing::{LimitScope, Limits, WaitReason};
use leasehold_core::store::{QueueRecord, StartRun};
use leasehold_testkit::fixtures::{Bundle, LEASE, setup, worker_info};
use leasehold_testkit::wait_for;

async fn held(b: &Bundle, automation: &AutomationId) -> i64 {
    b.count(&format!(
        "SELECT count(*) FROM runs WHERE automation_id = '{automation}' AND status IN ('running', 'pausing')"
    ))
    .await
}

async fn claimed(b: &Bundle, claimant: &str, n: usize) -> Vec<RunId> {
    b.claim(claimant, n)
        .await
        .iter()
        .map(|c| c.claim.run_id())
        .collect()
}

#[tokio::test]
async fn an_automation_never_has_more_runs_held_than_its_max_running() {
    let b = setup().await;
    let capped = b
        .automation("id: capped\nmax_running: 2\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    b.start_many(&capped, 5).await;
    let first = claimed(&b, "w1", 10).await;
    assert_eq!(first.len(), 2, "two slots");
    assert!(
        claimed(&b, "w2", 10).await.is_empty(),
        "both slots are held"
    );
    // A live worker could take the others: the limit is why they wait.
    b.store
        .register_worker(&worker_info("w1", "box", "test"))
        .await
        .expect("register");
    let waiting = b.run(b.start(&capped).await).await;
    let reasons = b.store.wait_reasons([&waiting]).await.expect("reasons");
    assert_eq!(
        reasons.get(&waiting.run_id),
        Some(&WaitReason::AtMaxRunning {
            scope: LimitScope::Automation,
            name: "capped".into(),
            max_running: 2,
        })
    );
    // A run that stops being held frees its slot, without a write of its own.
    b.cancel(first[0], "done with it").await;
    assert_eq!(claimed(&b, "w2", 10).await.len(), 1);
    assert_eq!(held(&b, &capped).await, 2);
    assert!(
        b.store
            .wait_reasons([&waiting])
            .await
            .expect("reasons")
            .len()
            == 1
    );
    // Unlimited runs of the same batch are not held back.
    let free = b
        .automation("id: free\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    b.start_many(&free, 3).await;
    assert_eq!(claimed(&b, "w3", 10).await.len(), 3);
}

#[tokio::test]
async fn claimers_racing_for_slots_never_hold_more_than_the_limit() {
    let b = setup().await;
    let capped = b
        .automation("id: capped\nmax_running: 3\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    b.start_many(&capped, 60).await;
    for round in 0..5 {
        let claims = (0..4).map(|w| {
            let store = b.store.clone();
            tokio::spawn(async move {
                store
                    .claim_runs(&ClaimantId(format!("w{w}")), 2, LEASE)
                    .await
                    .expect("claim")
            })
        });
        let mut taken = Vec::new();
        for claim in claims {
            taken.extend(claim.await.expect("claimer"));
        }
        let now_held = held(&b, &capped).await;
        assert!(
            (1..=3).contains(&now_held),
            "round {round}: {now_held} held"
        );
        assert_eq!(usize::try_from(now_held).expect("count"), taken.len());
        for run in taken {
            b.cancel(run.claim.run_id(), "next round").await;
        }
    }
}

#[tokio::test]
async fn a_queue_limit_holds_across_its_automations_and_can_be_lifted() {
    let b = setup().await;
    b.store
        .set_queue_limits(
            "default",
            &Limits {
                max_running: Some(1),
                ..Limits::default()
            },
        )
        .await
        .expect("limit");
    let one = b
        .automation("id: one\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    let two = b
        .automation("id: two\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    b.start_many(&one, 2).await;
    b.start_many(&two, 2).await;
    assert_eq!(claimed(&b, "w", 10).await.len(), 1);
    assert!(claimed(&b, "w", 10).await.is_empty());
    let queues = b.store.queues().await.expect("queues");
    assert_eq!(
        queues,
        [QueueRecord {
            queue: "default".into(),
            due: 3,
            queued: 3,
            held: 1,
            oldest_due_age: queues[0].oldest_due_age,
            limits: Limits {
                max_running: Some(1),
                ..Limits::default()
            },
        }]
    );
    assert!(queues[0].oldest_due_age.is_some());
    // No limits: the row goes, and so does the cap.
    b.store
        .set_queue_limits("default", &Limits::default())
        .await
        .expect("lift");
    assert_eq!(claimed(&b, "w", 10).await.len(), 3);
    assert!(b.store.queues().await.expect("queues")[0].limits == Limits::default());
}

#[tokio::test]
async fn a_rate_limit_grants_its_burst_then_one_start_per_refill() {
    let b = setup().await;
    // One start every two seconds, two at once after a quiet spell.
    let slow = b
        .automation(
            "id: slow\nmax_starts_per_second: 0.5\nburst: 2\nnodes:\n  - {id: a, kind: noop}\n",
        )
        .await;
    let started = Instant::now();
    b.start_many(&slow, 5).await;
    assert_eq!(claimed(&b, "w", 10).await.len(), 2, "the burst");
    assert!(claimed(&b, "w", 10).await.is_empty(), "the bucket is empty");
    b.store
        .register_worker(&worker_info("w", "box", "test"))
        .await
        .expect("register");
    let waiting = b.run(b.start(&slow).await).await;
    let reasons = b.store.wait_reasons([&waiting]).await.expect("reasons");
    assert_eq!(reasons[&waiting.run_id].code(), "rate_limit");
    let next = wait_for(Duration::from_secs(10), "a token", || async {
        let got = claimed(&b, "w", 10).await;
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(next.len(), 1);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "a token comes after about two seconds, not {:?}",
        started.elapsed()
    );
    // A new spec without the rate lifts it.
    b.store
        .apply_automation(
            &b.tenant,
            &leasehold_testkit::fixtures::spec("id: slow\nnodes:\n  - {id: a, kind: noop}\n"),
        )
        .await
        .expect("apply");
    let runs = b
        .store
        .start_run(&StartRun {
            ..b.start_request(&slow)
        })
        .await
        .expect("start");
    let rest = claimed(&b, "w", 10).await;
    assert!(rest.contains(&runs.run_id));
    assert_eq!(rest.len(), 4);
}
