//! Deadlines: a run never claimed by its start deadline fails with why it waited; a run not
//! finished by its run deadline fails wherever it is, its holder told to stop.

use std::time::Duration;

use chrono::{DateTime, Utc};
use leasehold_coordinator::sweeps::{Deadlines, DeadlinesOutcome};
use leasehold_core::ids::RunId;
use leasehold_core::run::{RunStatus, Transition, apply};
use leasehold_core::store::Leadership;
use leasehold_testkit::fixtures::{Bundle, node, setup, worker_info};

use super::{idle_until, lead, ms, pass};

async fn deadline(b: &Bundle, run_id: RunId, column: &str) -> DateTime<Utc> {
    b.sql
        .query_one(
            &format!("SELECT {column} FROM runs WHERE run_id = $1"),
            &[&run_id.0],
        )
        .await
        .expect("run row")
        .get(0)
}

async fn setup_leading() -> (Bundle, Leadership) {
    let b = setup().await;
    let leader = lead(&b, "c1").await;
    (b, leader)
}

/// Fails `run_id` at its `column` deadline: nothing changes up to it, the pass 1 ms after it
/// fails the run with `outcome`, and a second pass changes nothing.
async fn fails_at(
    b: &Bundle,
    leader: &Leadership,
    run_id: RunId,
    column: &str,
    outcome: DeadlinesOutcome,
) {
    let at = deadline(b, run_id, column).await;
    idle_until(at, "", async |now| {
        pass(b, Deadlines, leader, Some(now)).await
    })
    .await;
    assert_eq!(pass(b, Deadlines, leader, Some(at + ms(1))).await, outcome);
    assert_eq!(
        pass(b, Deadlines, leader, Some(at + ms(1000))).await,
        DeadlinesOutcome::default(),
        "failed once"
    );
}

#[tokio::test]
async fn a_run_no_worker_can_take_fails_at_its_start_deadline_saying_why() {
    let (b, leader) = setup_leading().await;
    b.store
        .register_worker(&worker_info("w-plain", "h", "v"))
        .await
        .expect("register");
    let gpu = b
        .automation(
            "id: gpu\nschedule_to_start_timeout_ms: 5000\nnodes:\n  \
             - {id: a, kind: noop, requires: {gpu: a100}}\n",
        )
        .await;
    let run_id = b.start(&gpu).await;
    let created = b.run(run_id).await.created_at;
    assert_eq!(
        deadline(&b, run_id, "start_deadline").await,
        created + ms(5000)
    );

    fails_at(
        &b,
        &leader,
        run_id,
        "start_deadline",
        DeadlinesOutcome {
            start_missed: 1,
            run_missed: 0,
        },
    )
    .await;
    let run = b.run(run_id).await;
    let step = apply(RunStatus::Queued, Transition::MissStartDeadline).expect("legal");
    assert_eq!(run.status, step.to);
    assert_eq!(run.stop_kind.as_deref(), Some("no_capable_worker"));
    let reason = run.stop_reason.expect("reason");
    assert!(
        reason.contains("start deadline") && reason.contains("label gpu=a100"),
        "{reason}"
    );
    let event = b.last_event(run_id).await;
    assert_eq!(event.event, step.event);
    assert_eq!(event.stop_kind.as_deref(), Some("no_capable_worker"));
}

#[tokio::test]
async fn a_run_a_worker_could_take_fails_as_start_timed_out_and_one_lacking_context_says_so() {
    let (b, leader) = setup_leading().await;
    b.store
        .register_worker(&worker_info("w-plain", "h", "v"))
        .await
        .expect("register");
    let plain = b
        .automation(
            "id: plain\nschedule_to_start_timeout_ms: 1000\nnodes:\n  - {id: a, kind: noop}\n",
        )
        .await;
    let keyed = b
        .automation(
            "id: keyed\nschedule_to_start_timeout_ms: 1000\nrequires_context: [API_KEY]\n\
             nodes:\n  - {id: a, kind: noop}\n",
        )
        .await;
    let busy = b.start(&plain).await;
    let lacking = b.start(&keyed).await;
    let at = deadline(&b, lacking, "start_deadline").await + ms(1);
    let outcome = pass(&b, Deadlines, &leader, Some(at)).await;
    assert_eq!(
        outcome,
        DeadlinesOutcome {
            start_missed: 2,
            run_missed: 0,
        }
    );
    assert_eq!(
        b.run(busy).await.stop_kind.as_deref(),
        Some("start_timed_out")
    );
    assert_eq!(
        b.run(lacking).await.stop_kind.as_deref(),
        Some("startup_runtime_context_missing")
    );
}

#[tokio::test]
async fn a_claimed_run_has_met_its_start_deadline_even_when_queued_again() {
    let (b, leader) = setup_leading().await;
    let plain = b
        .automation(
            "id: plain\nschedule_to_start_timeout_ms: 1000\nnodes:\n  - {id: a, kind: noop}\n",
        )
        .await;
    let run_id = b.start_and_claim(&plain).await.claim.run_id();
    // Its lease expired before any progress: queued again by the reaper, but it was claimed.
    b.expire_lease(run_id, Duration::from_secs(1)).await;
    let reaped = pass(&b, leasehold_coordinator::sweeps::Reaper, &leader, None).await;
    assert_eq!(reaped.requeued, 1);
    assert_eq!(b.status(run_id).await, RunStatus::Queued);
    let at = deadline(&b, run_id, "start_deadline").await;
    assert_eq!(
        pass(&b, Deadlines, &leader, Some(at + ms(60_000))).await,
        DeadlinesOutcome::default()
    );
    assert_eq!(b.status(run_id).await, RunStatus::Queued);
}

#[tokio::test]
async fn a_held_run_past_its_run_deadline_fails_its_node_stopped_and_its_holder_fenced() {
    let (b, leader) = setup_leading().await;
    let slow = b
        .automation("id: slow\nrun_timeout_ms: 2000\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    let claimed = b.progressed(&slow, "w").await;
    let run_id = claimed.claim.run_id();
    assert_eq!(
        deadline(&b, run_id, "run_deadline").await,
        b.run(run_id).await.created_at + ms(2000)
    );

    fails_at(
        &b,
        &leader,
        run_id,
        "run_deadline",
        DeadlinesOutcome {
            start_missed: 0,
            run_missed: 1,
        },
    )
    .await;
    let run = b.run(run_id).await;
    let step = apply(RunStatus::Running, Transition::MissRunDeadline).expect("legal");
    assert_eq!(run.status, step.to);
    assert_eq!(run.stop_kind.as_deref(), Some("run_timed_out"));
    assert_eq!(run.claimant_id, None);
    assert_eq!(b.last_event(run_id).await.event, step.event);
    let a = b
        .checkpoint(run_id)
        .await
        .into_iter()
        .find(|n| n.node_id == node("a"))
        .expect("node a");
    assert_eq!(a.status, leasehold_core::run::NodeStatus::Failed);
    let beat = b
        .store
        .heartbeat(&[claimed.claim], Duration::from_secs(30))
        .await
        .expect("heartbeat");
    assert_eq!(
        beat.lost,
        vec![claimed.claim],
        "the holder learns its lease is gone"
    );
}

#[tokio::test]
async fn runs_without_deadlines_and_finished_runs_are_left_alone() {
    let (b, leader) = setup_leading().await;
    let plain = b.diamond("plain").await;
    let queued = b.start(&plain).await;
    let timed = b
        .automation("id: timed\nrun_timeout_ms: 1000\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    let cancelled = b.start(&timed).await;
    b.cancel(cancelled, "changed my mind").await;
    let far = Utc::now() + chrono::TimeDelta::days(400);
    assert_eq!(
        pass(&b, Deadlines, &leader, Some(far)).await,
        DeadlinesOutcome::default()
    );
    assert_eq!(b.status(queued).await, RunStatus::Queued);
    assert_eq!(b.status(cancelled).await, RunStatus::Cancelled);
}

#[tokio::test]
async fn a_former_leader_fails_no_run() {
    let (b, old) = setup_leading().await;
    let plain = b
        .automation(
            "id: plain\nschedule_to_start_timeout_ms: 1000\nnodes:\n  - {id: a, kind: noop}\n",
        )
        .await;
    let run_id = b.start(&plain).await;
    let past = deadline(&b, run_id, "start_deadline").await + ms(1);
    b.expire_leadership(
        leasehold_coordinator::sweeps::LEADER_NAME_DEFAULT,
        Duration::from_millis(1),
    )
    .await;
    let new = lead(&b, "c2").await;

    assert_eq!(
        pass(&b, Deadlines, &old, Some(past)).await,
        DeadlinesOutcome::default()
    );
    assert_eq!(b.status(run_id).await, RunStatus::Queued);
    assert_eq!(pass(&b, Deadlines, &new, Some(past)).await.start_missed, 1);
    assert_eq!(b.status(run_id).await, RunStatus::Failed);
}
