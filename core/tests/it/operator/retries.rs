//! Operator calls retried with their request id: a retry of a move that landed is answered as
//! the first call was, and moves nothing again.

use leasehold_core::run::{RunStatus, Transition};
use leasehold_core::store::RequestError;
use leasehold_testkit::fixtures::setup_run;

fn refused(e: RequestError) -> Transition {
    match e {
        RequestError::Transition(illegal) => illegal.transition,
        other => panic!("refused for the run's state, not {other:?}"),
    }
}

#[tokio::test]
async fn a_retried_cancel_succeeds_and_a_fresh_one_is_refused() {
    let (b, _, run_id) = setup_run("retry-cancel").await;
    let cancel = |request_id: Option<&'static str>| {
        b.store
            .cancel_run(&b.tenant, run_id, "stop", "ops", request_id)
    };
    cancel(Some("req-1")).await.expect("cancel");
    let seq = b.run(run_id).await.event_seq;
    cancel(Some("req-1"))
        .await
        .expect("the retry is answered as the first call was");
    assert_eq!(
        b.run(run_id).await.event_seq,
        seq,
        "the retry moved nothing"
    );
    assert_eq!(b.event_count(run_id, "run_cancelled").await, 1);
    assert_eq!(b.last_event(run_id).await.metadata["request_id"], "req-1");

    let fresh = cancel(Some("req-2")).await.expect_err("a new call");
    assert_eq!(refused(fresh), Transition::Cancel);
    let bare = cancel(None).await.expect_err("no request id");
    assert_eq!(refused(bare), Transition::Cancel);
}

#[tokio::test]
async fn a_retried_resume_does_not_undo_a_later_pause() {
    let (b, _, run_id) = setup_run("retry-resume").await;
    b.pause(run_id, "hold").await;
    let resume = || {
        b.store
            .resume_run(&b.tenant, run_id, "go", "ops", Some("resume-7"))
    };
    resume().await.expect("resume");
    b.pause(run_id, "hold again").await;
    let seq = b.run(run_id).await.event_seq;

    resume()
        .await
        .expect("the late retry of the first resume succeeds");
    let run = b.run(run_id).await;
    assert_eq!(run.status, RunStatus::Paused, "and does not resume again");
    assert_eq!(run.event_seq, seq);
    assert_eq!(b.event_count(run_id, "run_resumed").await, 1);

    // A request id names one move: the pause's retry is not answered by the resume's event.
    let paused_again = b
        .store
        .pause_run(&b.tenant, run_id, "hold", "ops", Some("resume-7"))
        .await
        .expect_err("a pause of a paused run");
    assert_eq!(refused(paused_again), Transition::RequestPause);
}

#[tokio::test]
async fn a_retried_pause_of_a_held_run_and_a_retried_recover_succeed() {
    let (b, _, run_id) = setup_run("retry-pause").await;
    b.claim_one("w1").await;
    let pause = || {
        b.store
            .pause_run(&b.tenant, run_id, "hold", "ops", Some("p-1"))
    };
    pause().await.expect("pause requested");
    assert_eq!(b.run(run_id).await.status, RunStatus::Pausing);
    pause().await.expect("retry of the request");
    assert_eq!(b.event_count(run_id, "run_pause_requested").await, 1);

    b.cancel(run_id, "give up").await;
    let (b2, _, failed) = setup_run("retry-recover").await;
    b2.update_run(failed, "status = 'failed', finished_at = now()")
        .await;
    let recover = || {
        b2.store
            .recover_run(&b2.tenant, failed, "again", "ops", Some("r-1"))
    };
    recover().await.expect("recover");
    recover().await.expect("retry of the recover");
    assert_eq!(b2.event_count(failed, "run_recovered").await, 1);
    assert_eq!(b2.run(failed).await.status, RunStatus::Queued);
}
