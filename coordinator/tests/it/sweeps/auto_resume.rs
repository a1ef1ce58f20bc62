//! Auto-resume: recent stale reaps with budget go back to the queue; the window, the cap, spent
//! attempts, an unreadable spec and the switch leave runs alone.

use chrono::{DateTime, Utc};
use leasehold_coordinator::sweeps::{self, AutoResumeOutcome, Config};
use leasehold_coordinator::sweeps::{AutoResume, Pass, Sweep};
use leasehold_core::ids::RunId;
use leasehold_core::store::Leadership;
use leasehold_testkit::fixtures::{Bundle, setup};

use super::{config, lead, ms, pass, setup_leading, stale_reaped_run};

/// Runs one auto-resume pass with the default settings; asserts its outcome, that the run
/// stayed paused with the decline and its reason in its history, and that the next pass does not
/// read it again.
async fn left_paused(
    b: &Bundle,
    leader: &Leadership,
    run_id: RunId,
    want: AutoResumeOutcome,
    what: &str,
) {
    let config = config();
    let pass_once = || AutoResume.run_once(Pass::new(&b.store, leader, &config, None));
    let outcome = pass_once().await.expect(what);
    assert_eq!(
        outcome,
        AutoResumeOutcome {
            declined: 1,
            ..want
        }
    );
    let row = b.row(run_id).await;
    assert_eq!(row.status, "paused");
    let event = b.last_event(run_id).await;
    assert_eq!(
        (event.event.as_str(), event.seq),
        ("run_auto_resume_declined", row.event_seq)
    );
    assert!(
        event
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("auto-resume declined: ")),
        "{event:?}"
    );
    assert_eq!(
        pass_once().await.expect("again"),
        AutoResumeOutcome::default(),
        "a declined run leaves the candidates"
    );
}

#[tokio::test]
async fn a_recent_stale_reap_with_budget_is_auto_resumed() {
    let (b, leader, automation) = setup_leading("resume").await;
    let (run_id, reaped_at) = stale_reaped_run(&b, &automation, &leader).await;

    let outcome = pass(&b, AutoResume, &leader, None).await;
    assert_eq!(
        outcome,
        AutoResumeOutcome {
            resumed: 1,
            ..AutoResumeOutcome::default()
        }
    );
    let row = b.row(run_id).await;
    assert_eq!(row.status, "queued");
    assert_eq!(row.queue_reason.as_deref(), Some("auto_resumed"));
    assert_eq!((row.auto_resumes, row.stop_kind), (1, None));
    let event = b.last_event(run_id).await;
    assert_eq!(event.event, "run_auto_resumed");
    assert_eq!(event.seq, row.event_seq);
    let window_ms = sweeps::AUTO_RESUME_WINDOW_DEFAULT.as_millis();
    assert_eq!(
        event.metadata["window_ms"].as_u64().map(u128::from),
        Some(window_ms)
    );
    let recorded: DateTime<Utc> =
        serde_json::from_value(event.metadata["stale_reaped_at"].clone()).expect("timestamp");
    assert_eq!(recorded, reaped_at);

    // Nothing twice; and a worker picks it up from its checkpoint.
    let again = pass(&b, AutoResume, &leader, None).await;
    assert_eq!(again, AutoResumeOutcome::default());
    let claimed = b.claim_one("rescuer").await;
    assert_eq!(claimed.claim.run_id(), run_id);
    assert!(claimed.resumed);
}

#[tokio::test]
async fn auto_resume_on_both_sides_of_the_window() {
    let (b, leader, automation) = setup_leading("window").await;
    let (run_id, reaped_at) = stale_reaped_run(&b, &automation, &leader).await;
    let window = chrono::TimeDelta::from_std(sweeps::AUTO_RESUME_WINDOW_DEFAULT).expect("small");

    let late = pass(&b, AutoResume, &leader, Some(reaped_at + window + ms(1))).await;
    assert_eq!(late, AutoResumeOutcome::default(), "window passed by 1 ms");
    assert_eq!(b.row(run_id).await.status, "paused");

    let at_horizon = pass(&b, AutoResume, &leader, Some(reaped_at + window)).await;
    assert_eq!(at_horizon.resumed, 1, "at the window's last instant");
    assert_eq!(b.row(run_id).await.status, "queued");
}

#[tokio::test]
async fn auto_resume_leaves_a_run_at_the_cap() {
    let (b, leader, automation) = setup_leading("capped").await;
    let (run_id, _) = stale_reaped_run(&b, &automation, &leader).await;
    b.update_run(
        run_id,
        &format!("auto_resumes = {}", sweeps::AUTO_RESUME_CAP_DEFAULT),
    )
    .await;

    left_paused(
        &b,
        &leader,
        run_id,
        AutoResumeOutcome {
            cap_reached: 1,
            ..AutoResumeOutcome::default()
        },
        "resume",
    )
    .await;
    assert_eq!(b.event_count(run_id, "run_auto_resumed").await, 0);
}

#[tokio::test]
async fn auto_resume_leaves_a_run_whose_nodes_have_no_attempts_left() {
    let b = setup().await;
    let leader = lead(&b, "c1").await;
    let automation = b
        .automation(
            "id: once
nodes:
  - {id: a, kind: noop, max_attempts: 1}
",
        )
        .await;
    let (run_id, _) = stale_reaped_run(&b, &automation, &leader).await;
    let a = &b.checkpoint(run_id).await[0];
    assert_eq!(a.attempts, 1, "the interrupted attempt was the last");

    left_paused(
        &b,
        &leader,
        run_id,
        AutoResumeOutcome {
            no_budget: 1,
            ..AutoResumeOutcome::default()
        },
        "resume",
    )
    .await;
}

#[tokio::test]
async fn auto_resume_leaves_a_run_whose_spec_cannot_be_read() {
    let (b, leader, automation) = setup_leading("corrupt").await;
    let (run_id, _) = stale_reaped_run(&b, &automation, &leader).await;
    b.corrupt_spec(&automation).await;

    left_paused(
        &b,
        &leader,
        run_id,
        AutoResumeOutcome {
            unreadable_spec: 1,
            ..AutoResumeOutcome::default()
        },
        "an unreadable spec is not an error of the pass",
    )
    .await;
}

#[tokio::test]
async fn auto_resume_switched_off_leaves_runs_alone() {
    let (b, leader, automation) = setup_leading("off").await;
    let (run_id, _) = stale_reaped_run(&b, &automation, &leader).await;
    let off = Config {
        auto_resume_enabled: false,
        ..config()
    };
    let outcome = AutoResume
        .run_once(Pass::new(&b.store, &leader, &off, None))
        .await
        .expect("resume");
    assert_eq!(outcome, AutoResumeOutcome::default());
    assert_eq!(b.row(run_id).await.status, "paused");
}

#[tokio::test]
async fn runs_that_can_never_resume_do_not_starve_those_that_can() {
    let (b, leader, automation) = setup_leading("starve").await;
    let capped = Config {
        batch_limit: 2,
        ..config()
    };
    let mut stuck = Vec::new();
    for _ in 0..2 {
        let (run_id, _) = stale_reaped_run(&b, &automation, &leader).await;
        b.update_run(
            run_id,
            &format!("auto_resumes = {}", sweeps::AUTO_RESUME_CAP_DEFAULT),
        )
        .await;
        stuck.push(run_id);
    }
    // Reaped after the stuck ones, so the oldest-first read reaches it only once they are gone.
    let (resumable, _) = stale_reaped_run(&b, &automation, &leader).await;

    let pass_once = || AutoResume.run_once(Pass::new(&b.store, &leader, &capped, None));
    let first = pass_once().await.expect("first pass");
    assert_eq!(
        (first.cap_reached, first.declined, first.resumed),
        (2, 2, 0)
    );
    let second = pass_once().await.expect("second pass");
    assert_eq!(second.resumed, 1, "{second:?}");
    assert_eq!(b.row(resumable).await.status, "queued");
    for run_id in stuck {
        assert_eq!(b.row(run_id).await.status, "paused");
    }
}
