//! Schedules: fires decided once and started once, under a former leader and after a leader
//! stopped between deciding and starting; catch-up after downtime; overlap; pauses.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use leasehold_coordinator::sweeps::{self, Config, Pass, Schedules, SchedulesOutcome, Sweep};
use leasehold_core::ids::AutomationId;
use leasehold_core::schedule::{CatchUp, Overlap, ScheduleSpec, Timetable};
use leasehold_core::store::{FireDecision, Leadership, ScheduleKey, Trigger};
use leasehold_testkit::fixtures::Bundle;

use super::{config, lead, setup_leading};

const GRACE: Duration = Duration::from_secs(2);

fn every_second(overlap: Overlap, catch_up: CatchUp) -> ScheduleSpec {
    ScheduleSpec {
        id: "tick".to_owned(),
        cron: "* * * * * *".to_owned(),
        timezone: "UTC".to_owned(),
        inputs: serde_json::json!({"from": "schedule"}),
        overlap,
        catch_up,
    }
}

fn key(b: &Bundle, automation: &AutomationId) -> ScheduleKey {
    ScheduleKey {
        tenant: b.tenant.clone(),
        automation_id: automation.clone(),
        schedule_id: "tick".to_owned(),
    }
}

/// Stores `schedule` for `automation` with its cursor at `cursor`.
async fn schedule(
    b: &Bundle,
    automation: &AutomationId,
    spec: ScheduleSpec,
    cursor: DateTime<Utc>,
) {
    b.store
        .sync_schedules(&b.tenant, automation, &[spec], &[Some(cursor)])
        .await
        .expect("sync");
}

async fn tick(b: &Bundle, leader: &Leadership, now: DateTime<Utc>) -> SchedulesOutcome {
    let config = Config {
        schedule_grace: GRACE,
        ..config()
    };
    Schedules
        .run_once(Pass::new(&b.store, leader, &config, Some(now)))
        .await
        .expect("schedules pass")
}

/// The fire times of the automation's runs, oldest first, each checked to be a schedule's.
async fn fired(b: &Bundle, automation: &AutomationId) -> Vec<DateTime<Utc>> {
    let ids: Vec<uuid::Uuid> = b
        .sql
        .query(
            "SELECT run_id FROM runs WHERE automation_id = $1 ORDER BY scheduled_for",
            &[&automation.as_str()],
        )
        .await
        .expect("runs")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut times = Vec::new();
    for id in ids {
        let run = b.run(leasehold_core::ids::RunId(id)).await;
        match run.trigger {
            Trigger::Schedule(fire) => {
                assert_eq!(fire.schedule_id, "tick");
                assert_eq!(run.inputs, serde_json::json!({"from": "schedule"}));
                times.push(fire.fire_at);
            }
            other => panic!("run {id} was started by {other:?}"),
        }
    }
    times
}

/// Cancels every unfinished run of `automation`.
async fn finish_all(b: &Bundle, automation: &AutomationId) {
    let ids: Vec<uuid::Uuid> = b
        .sql
        .query(
            "SELECT run_id FROM runs WHERE automation_id = $1 AND status = 'queued'",
            &[&automation.as_str()],
        )
        .await
        .expect("runs")
        .iter()
        .map(|row| row.get(0))
        .collect();
    for id in ids {
        b.cancel(leasehold_core::ids::RunId(id), "done").await;
    }
}

fn at(base: DateTime<Utc>, ms: i64) -> DateTime<Utc> {
    base + TimeDelta::milliseconds(ms)
}

/// A whole second a little ahead.
fn base() -> DateTime<Utc> {
    let now = Utc::now() + TimeDelta::seconds(5);
    DateTime::from_timestamp(now.timestamp(), 0).expect("a second")
}

#[tokio::test]
async fn each_fire_time_starts_one_run_once() {
    let (b, leader, automation) = setup_leading("ticking").await;
    let t0 = base();
    schedule(
        &b,
        &automation,
        every_second(Overlap::Allow, CatchUp::default()),
        t0,
    )
    .await;

    assert_eq!(
        tick(&b, &leader, at(t0, -1)).await,
        SchedulesOutcome::default()
    );
    let first = tick(&b, &leader, at(t0, 500)).await;
    assert_eq!(
        first,
        SchedulesOutcome {
            fires_started: 1,
            runs_started: 1,
            ..SchedulesOutcome::default()
        }
    );
    assert_eq!(
        tick(&b, &leader, at(t0, 900)).await,
        SchedulesOutcome::default()
    );
    let later = tick(&b, &leader, at(t0, 3_500)).await;
    assert_eq!(later.runs_started, 3);
    assert_eq!(
        fired(&b, &automation).await,
        (0..4).map(|s| at(t0, s * 1000)).collect::<Vec<_>>()
    );
    let listed = b.store.list_schedules(&b.tenant, None).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].next_fire_at, Some(at(t0, 4_000)));
    assert_eq!(listed[0].last_fire_at, Some(at(t0, 3_000)));
}

#[tokio::test]
async fn a_former_leader_decides_nothing_and_a_decided_fire_is_started_by_the_next_pass() {
    let (b, old, automation) = setup_leading("handover").await;
    let t0 = base();
    schedule(
        &b,
        &automation,
        every_second(Overlap::Allow, CatchUp::default()),
        t0,
    )
    .await;
    b.expire_leadership(sweeps::LEADER_NAME_DEFAULT, Duration::from_millis(1))
        .await;
    let new = lead(&b, "c2").await;
    assert_eq!(
        tick(&b, &old, at(t0, 500)).await,
        SchedulesOutcome::default()
    );
    assert!(fired(&b, &automation).await.is_empty());

    // The new leader decides the first fire and stops before starting its run.
    let k = key(&b, &automation);
    assert!(
        b.store
            .decide_fires(
                &new,
                &k,
                t0,
                Some(at(t0, 1_000)),
                &[(t0, FireDecision::Start)],
                0,
            )
            .await
            .expect("decide")
    );
    // Deciding it again, from the same cursor, does nothing.
    assert!(
        !b.store
            .decide_fires(
                &new,
                &k,
                t0,
                Some(at(t0, 1_000)),
                &[(t0, FireDecision::Start)],
                0,
            )
            .await
            .expect("decide again")
    );
    // The former leader may start the fire decided (its key makes it the same run) ...
    let by_old = tick(&b, &old, at(t0, 600)).await;
    assert_eq!(by_old.runs_started, 1);
    // ... and the new leader's pass finds it started.
    let by_new = tick(&b, &new, at(t0, 700)).await;
    assert_eq!(by_new, SchedulesOutcome::default());
    assert_eq!(fired(&b, &automation).await, vec![t0]);
}

#[tokio::test]
async fn after_downtime_missed_fires_run_as_the_catch_up_policy_says() {
    let (b, leader, skipping) = setup_leading("skipping").await;
    let catching = b.diamond("catching").await;
    let t0 = base();
    schedule(
        &b,
        &skipping,
        every_second(Overlap::Allow, CatchUp::from_latest(0)),
        t0,
    )
    .await;
    schedule(
        &b,
        &catching,
        every_second(Overlap::Allow, CatchUp::Latest(3)),
        t0,
    )
    .await;
    // Down for ten seconds: back at t0 + 10.5 s, with a grace of 2 s, fires t0 .. t0+8 were
    // missed (9 of them) and t0+9 .. t0+10 are on time.
    let back = at(t0, 10_500);
    let skipped = tick(&b, &leader, back).await;
    assert_eq!(skipped.missed_skipped, 9 + 6);
    assert_eq!(
        fired(&b, &skipping).await,
        vec![at(t0, 9_000), at(t0, 10_000)]
    );
    assert_eq!(
        fired(&b, &catching).await,
        (6..=10).map(|s| at(t0, s * 1000)).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn overlap_skips_or_queues_one_and_a_paused_automation_starts_nothing() {
    let (b, leader, skip) = setup_leading("skip").await;
    let queue_one = b.diamond("queue-one").await;
    let t0 = base();
    schedule(
        &b,
        &skip,
        every_second(Overlap::Skip, CatchUp::default()),
        t0,
    )
    .await;
    schedule(
        &b,
        &queue_one,
        every_second(Overlap::QueueOne, CatchUp::default()),
        t0,
    )
    .await;
    // Three fires on time; no run finishes meanwhile.
    let outcome = tick(&b, &leader, at(t0, 2_500)).await;
    assert_eq!(outcome.fires_started, 1 + 2);
    assert_eq!(outcome.fires_skipped, 2 + 1);
    assert_eq!(fired(&b, &skip).await, vec![t0]);
    assert_eq!(fired(&b, &queue_one).await, vec![t0, at(t0, 1_000)]);
    let keys: Vec<Option<String>> = b
        .sql
        .query(
            "SELECT concurrency_key FROM runs WHERE automation_id = 'queue-one'",
            &[],
        )
        .await
        .expect("keys")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(keys[0].is_some() && keys[0] == keys[1], "{keys:?}");

    // Once the run finishes, the next fire starts one again.
    finish_all(&b, &skip).await;
    // The skipping schedule's fire starts; the queue-one schedule still has two unfinished.
    assert_eq!(tick(&b, &leader, at(t0, 3_500)).await.fires_started, 1);

    // A paused automation's fires start nothing, and are not caught up later.
    b.set_automation_paused(&skip, true).await;
    let paused = tick(&b, &leader, at(t0, 4_500)).await;
    assert_eq!(paused.fires_started, 0);
    finish_all(&b, &skip).await;
    b.set_automation_paused(&skip, false).await;
    assert_eq!(tick(&b, &leader, at(t0, 5_500)).await.fires_started, 1);
    assert_eq!(
        fired(&b, &skip).await,
        vec![t0, at(t0, 3_000), at(t0, 5_000)]
    );
}

#[tokio::test]
async fn a_paused_schedule_does_not_fire_and_resumes_from_its_next_fire() {
    let (b, leader, automation) = setup_leading("pausable").await;
    let t0 = base();
    schedule(
        &b,
        &automation,
        every_second(Overlap::Allow, CatchUp::Latest(100)),
        t0,
    )
    .await;
    let k = key(&b, &automation);
    let paused = b
        .store
        .set_schedule_paused(&k, true, "ops", "maintenance", None)
        .await
        .expect("pause")
        .expect("exists");
    assert!(paused.paused);
    assert_eq!(
        paused.pause.as_ref().map(|p| p.reason.as_str()),
        Some("maintenance")
    );
    assert_eq!(
        tick(&b, &leader, at(t0, 5_500)).await,
        SchedulesOutcome::default()
    );
    let table = Timetable::parse("* * * * * *", "UTC").expect("valid");
    let resumed = b
        .store
        .set_schedule_paused(&k, false, "ops", "", table.next_after(at(t0, 5_500)))
        .await
        .expect("resume")
        .expect("exists");
    assert_eq!(resumed.next_fire_at, Some(at(t0, 6_000)));
    assert_eq!(tick(&b, &leader, at(t0, 6_500)).await.runs_started, 1);
    assert_eq!(fired(&b, &automation).await, vec![at(t0, 6_000)]);
}
