//! Schedules: the leader fires each automation's cron schedules. For each schedule due, the
//! pure rule (`leasehold_core::schedule::due`) says which fire times run (on time, or missed and
//! kept by the catch-up policy), and the overlap policy which of them start a run; the store
//! records the decisions once, moving the schedule's cursor under the leader fence. Then every
//! fire decided to start gets its run, through the ordinary start with the fire's idempotency
//! key: one run per fire time, whoever starts it and however often.

use std::time::Duration;

use chrono::TimeDelta;
use leasehold_core::schedule::{self, Timetable};
use leasehold_core::store::{
    self, FireDecision, RequestError, ScheduleKey, ScheduleRecord, ScheduledFire, StartRun,
    Trigger, UnstartedFire,
};

use super::{Outcome, Pass};

/// How long decided fires are kept (for `schedule list`'s last fire, and to settle a late
/// second decider); runs keep their fire times for good.
pub const FIRES_KEPT: Duration = Duration::from_secs(24 * 60 * 60);

/// One pass at `pass.now` (the database's clock when `None`), under `pass.leader`.
pub async fn run_once(pass: Pass<'_>) -> Result<SchedulesOutcome, store::Error> {
    let now = pass.now().await?;
    let mut outcome = SchedulesOutcome::default();
    for schedule in pass
        .store
        .due_schedules(now, pass.config.batch_limit)
        .await?
    {
        decide(pass, &schedule, now, &mut outcome).await?;
    }
    for fire in pass.store.unstarted_fires(pass.config.batch_limit).await? {
        start(pass, &fire, &mut outcome).await?;
    }
    let before = now - TimeDelta::from_std(FIRES_KEPT).unwrap_or(TimeDelta::MAX);
    pass.store
        .prune_schedule_fires(pass.leader, before, pass.config.batch_limit)
        .await?;
    Ok(outcome)
}

/// Decides the fires of one due schedule.
async fn decide(
    pass: Pass<'_>,
    schedule: &ScheduleRecord,
    now: chrono::DateTime<chrono::Utc>,
    outcome: &mut SchedulesOutcome,
) -> Result<(), store::Error> {
    let Some(cursor) = schedule.next_fire_at else {
        return Ok(());
    };
    let spec = &schedule.spec;
    let table = match Timetable::parse(&spec.cron, &spec.timezone) {
        Ok(table) => table,
        Err(e) => {
            // Stored by a build that read it; this one cannot. It stays where it is.
            tracing::warn!(
                automation = %schedule.automation_id, schedule = %spec.id, error = %e,
                "a stored schedule cannot be read; it does not fire"
            );
            return Ok(());
        }
    };
    let due = schedule::due(
        &table,
        cursor,
        now,
        pass.config.schedule_grace,
        spec.catch_up,
    );
    let key = ScheduleKey {
        tenant: schedule.tenant.clone(),
        automation_id: schedule.automation_id.clone(),
        schedule_id: spec.id.clone(),
    };
    let mut decided = Vec::with_capacity(due.fires.len());
    if schedule.automation_active {
        let mut unfinished = pass.store.unfinished_schedule_runs(&key).await?;
        for &fire in &due.fires {
            if spec.overlap.admits(unfinished) {
                unfinished += 1;
                decided.push((fire, FireDecision::Start));
            } else {
                decided.push((fire, FireDecision::SkipOverlap));
            }
        }
    } else {
        decided.extend(due.fires.iter().map(|&f| (f, FireDecision::SkipPaused)));
    }
    if pass
        .store
        .decide_fires(pass.leader, &key, cursor, due.next, &decided, due.caught_up)
        .await?
    {
        outcome.missed_skipped += due.skipped;
        for (_, decision) in &decided {
            match decision {
                FireDecision::Start => outcome.fires_started += 1,
                FireDecision::SkipOverlap | FireDecision::SkipPaused => {
                    outcome.fires_skipped += 1;
                }
            }
        }
    }
    Ok(())
}

/// Starts the run of a fire decided to start, and records it.
async fn start(
    pass: Pass<'_>,
    fire: &UnstartedFire,
    outcome: &mut SchedulesOutcome,
) -> Result<(), store::Error> {
    let (automation, schedule_id) = (fire.key.automation_id.as_str(), &fire.key.schedule_id);
    let idempotency_key = schedule::fire_key(automation, schedule_id, fire.fire_at);
    let request = StartRun {
        tenant: fire.key.tenant.clone(),
        automation_id: fire.key.automation_id.clone(),
        inputs: fire.inputs.clone(),
        priority: 0,
        concurrency_key: fire
            .queued_one
            .then(|| schedule::concurrency_key(automation, schedule_id)),
        idempotency_key: Some(idempotency_key.clone()),
        trigger: Trigger::Schedule(ScheduledFire {
            schedule_id: schedule_id.clone(),
            fire_at: fire.fire_at,
        }),
        actor: None,
        trace: None,
        queue: None,
    };
    let run_id = match pass.store.start_run(&request).await {
        Ok(started) => {
            outcome.runs_started += u64::from(started.created);
            started.run_id
        }
        Err(RequestError::AutomationPaused(_)) => {
            return pass.store.skip_paused_fire(pass.leader, fire).await;
        }
        // The fire's run exists, started from what the schedule said then.
        Err(RequestError::IdempotencyConflict { .. }) => {
            match pass
                .store
                .run_id_by_idempotency_key(&fire.key.tenant, &idempotency_key)
                .await?
            {
                Some(run_id) => run_id,
                None => return Ok(()),
            }
        }
        Err(RequestError::Store(e)) => return Err(e),
        Err(refused) => {
            // The automation is gone (its schedules and fires go with it) or cannot start a
            // run; the next pass tries again.
            tracing::warn!(
                automation, schedule = %schedule_id, fire_at = %fire.fire_at, error = %refused,
                "a schedule's run could not start"
            );
            return Ok(());
        }
    };
    pass.store.record_fire_run(fire, run_id).await
}

/// What one schedule pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulesOutcome {
    /// Fires decided to start a run.
    pub fires_started: u64,
    /// Fires decided to start nothing: runs of earlier fires unfinished (overlap), or the
    /// automation paused.
    pub fires_skipped: u64,
    /// Missed fires the catch-up policy skipped.
    pub missed_skipped: u64,
    /// Runs started (a run already started for its fire is not counted again).
    pub runs_started: u64,
}

impl Outcome for SchedulesOutcome {
    fn actions(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("fires_started", self.fires_started),
            ("fires_skipped", self.fires_skipped),
            ("missed_fires_skipped", self.missed_skipped),
            ("scheduled_runs_started", self.runs_started),
        ]
    }
}
