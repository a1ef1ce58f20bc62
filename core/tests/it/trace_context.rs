//! A run's trace context: stored at start (the one asked for, else one of the run's own), shown
//! with the run, and read with every claim, so that each claim of the run continues one trace.

use leasehold_core::store::StartRun;
use leasehold_core::trace::{TraceContext, TraceParent, TraceState};
use leasehold_testkit::fixtures;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn asked() -> TraceContext {
    TraceContext {
        parent: TraceParent::parse(PARENT).expect("valid"),
        state: TraceState::parse("congo=t61rcWkgMzE"),
    }
}

#[tokio::test]
async fn a_run_keeps_the_trace_it_was_started_in_through_every_claim() {
    let b = fixtures::setup().await;
    let automation = b.diamond("traced").await;
    let run_id = b
        .store
        .start_run(&StartRun {
            trace: Some(asked()),
            ..b.start_request(&automation)
        })
        .await
        .expect("start")
        .run_id;
    assert_eq!(b.run(run_id).await.trace_parent, Some(asked().parent));

    let first = b.claim_one("w1").await;
    assert_eq!(first.claim.run_id(), run_id);
    assert_eq!(first.trace, Some(asked()));
    // Handed back, and claimed again by another worker: the same trace.
    let released = b
        .store
        .release_on_shutdown(&[first.claim])
        .await
        .expect("release");
    assert_eq!(released.released, [run_id]);
    let second = b.claim_one("w2").await;
    assert_eq!(second.claim.epoch().0, 2);
    assert_eq!(second.trace, Some(asked()));
}

#[tokio::test]
async fn a_run_started_without_a_trace_gets_one_of_its_own() {
    let b = fixtures::setup().await;
    let automation = b.diamond("untraced").await;
    let one = b.start(&automation).await;
    let two = b.start(&automation).await;
    let (one, two) = (b.run(one).await, b.run(two).await);
    let (one_parent, two_parent) = (
        one.trace_parent.expect("a trace of its own"),
        two.trace_parent.expect("a trace of its own"),
    );
    assert_ne!(one_parent.trace_id(), two_parent.trace_id());
    assert!(one_parent.sampled(), "nobody decided against recording it");
    let claimed = b.claim_one("w").await;
    let claimed_parent = claimed.trace.expect("read with the claim").parent;
    assert!([&one_parent, &two_parent].contains(&&claimed_parent));
}

#[tokio::test]
async fn a_batch_stores_each_runs_trace() {
    let b = fixtures::setup().await;
    let automation = b.diamond("batched").await;
    let started = b
        .store
        .start_runs(&[
            StartRun {
                trace: Some(asked()),
                ..b.start_request(&automation)
            },
            b.start_request(&automation),
        ])
        .await
        .expect("start");
    assert_eq!(started[0].run.trace_parent, Some(asked().parent));
    assert_eq!(
        b.run(started[0].run.run_id).await.trace_parent,
        Some(asked().parent)
    );
    let own = started[1].run.trace_parent.clone().expect("its own");
    assert_ne!(own.trace_id(), asked().parent.trace_id());
    assert_eq!(b.run(started[1].run.run_id).await.trace_parent, Some(own));
}
