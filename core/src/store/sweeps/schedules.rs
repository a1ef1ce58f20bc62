//! The schedule sweep's statements (V23): schedules due, each fire time decided once under the
//! leader lease and a compare-and-set of the schedule's cursor, fires decided to start that
//! have no run yet, and decided fires pruned after a day.

use chrono::{DateTime, Utc};

use super::int;
use crate::ids::{AutomationId, RunId, TenantId};
use crate::store::gated::SCHEDULES_SCHEMA_VERSION;
use crate::store::leader::leader_fence;
use crate::store::query::Query;
use crate::store::schedules::{ScheduleKey, ScheduleRecord, read_schedule, schedule_columns};
use crate::store::{Error, Leadership, Store};

/// How a fire was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireDecision {
    /// A run is started for it.
    Start,
    /// Runs of earlier fires were unfinished, and the overlap policy skips it.
    SkipOverlap,
    /// Its automation was paused.
    SkipPaused,
}

impl FireDecision {
    fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::SkipOverlap => "skip_overlap",
            Self::SkipPaused => "skip_paused",
        }
    }
}

/// A fire decided to start whose run is not recorded yet.
#[derive(Debug, Clone, PartialEq)]
pub struct UnstartedFire {
    /// Its schedule.
    pub key: ScheduleKey,
    /// Its time.
    pub fire_at: DateTime<Utc>,
    /// The schedule's inputs.
    pub inputs: serde_json::Value,
    /// Whether the schedule's runs wait for each other (`queue_one`).
    pub queued_one: bool,
}

// Schedules due at $1, not paused, earliest cursor first (schedules_due_idx).
const DUE_SCHEDULES: Query = Query {
    name: "due_schedules",
    sql: concat!(
        "SELECT ",
        schedule_columns!(),
        "
FROM schedules s
JOIN automations a USING (tenant_id, automation_id)
WHERE NOT s.paused AND s.next_fire_at <= $1::timestamptz
ORDER BY s.next_fire_at
LIMIT $2::int"
    ),
};

// Decides a schedule's fires once: the cursor moves from $4 (only if it is still there, and the
// schedule not paused) to $5, and each fire ($7) is recorded with its decision ($8), under the
// leadership. A second decider finds the cursor moved, or the fires recorded, and changes
// nothing.
const DECIDE_FIRES: Query = Query {
    name: "decide_fires",
    sql: concat!(
        "\
WITH advanced AS (
    UPDATE schedules s
    SET next_fire_at = $5::timestamptz, last_fire_at = coalesce($6::timestamptz, s.last_fire_at),
        updated_at = now()
    WHERE s.tenant_id = $1::text AND s.automation_id = $2::text AND s.schedule_id = $3::text
      AND s.next_fire_at = $4::timestamptz AND NOT s.paused
      AND ",
        leader_fence!(9, 10),
        "
    RETURNING s.tenant_id, s.automation_id, s.schedule_id
),
recorded AS (
    INSERT INTO schedule_fires (tenant_id, automation_id, schedule_id, fire_at, decision,
                                caught_up)
    SELECT a.tenant_id, a.automation_id, a.schedule_id, f.fire_at, f.decision,
           f.ordinality <= $11::int
    FROM advanced a,
         unnest($7::timestamptz[], $8::text[]) WITH ORDINALITY AS f(fire_at, decision, ordinality)
    ON CONFLICT DO NOTHING
    RETURNING decision
)
SELECT (SELECT count(*) FROM advanced) AS advanced,
       (SELECT count(*) FROM recorded) AS recorded"
    ),
};

// Fires decided to start whose run is not recorded: this pass's, and any a leader left when it
// stopped between deciding and starting (schedule_fires_unstarted_idx), oldest first.
const UNSTARTED_FIRES: Query = Query {
    name: "unstarted_fires",
    sql: "\
SELECT f.tenant_id, f.automation_id, f.schedule_id, f.fire_at, s.inputs, s.overlap
FROM schedule_fires f
JOIN schedules s USING (tenant_id, automation_id, schedule_id)
WHERE f.decision = 'start' AND f.run_id IS NULL
ORDER BY f.fire_at
LIMIT $1::int",
};

// Records the run a fire started. Not fenced: the run is the one the fire's idempotency key
// started, whoever records it.
const RECORD_FIRE_RUN: Query = Query {
    name: "record_fire_run",
    sql: "\
UPDATE schedule_fires SET run_id = $5::uuid
WHERE tenant_id = $1::text AND automation_id = $2::text AND schedule_id = $3::text
  AND fire_at = $4::timestamptz AND run_id IS NULL",
};

// A fire whose automation was paused by the time its run was to start starts nothing.
const SKIP_PAUSED_FIRE: Query = Query {
    name: "skip_paused_fire",
    sql: concat!(
        "\
UPDATE schedule_fires SET decision = 'skip_paused'
WHERE tenant_id = $1::text AND automation_id = $2::text AND schedule_id = $3::text
  AND fire_at = $4::timestamptz AND decision = 'start' AND run_id IS NULL
  AND ",
        leader_fence!(5, 6)
    ),
};

// Deletes decided fires older than $1 (those to start only once started), at most $2, under
// the leadership: the cursor has long passed them, and runs keep their fire times.
const PRUNE_FIRES: Query = Query {
    name: "prune_schedule_fires",
    sql: concat!(
        "\
DELETE FROM schedule_fires
WHERE ctid IN (SELECT ctid FROM schedule_fires
               WHERE decided_at < $1::timestamptz AND (decision <> 'start' OR run_id IS NOT NULL)
               LIMIT $2::int)
  AND ",
        leader_fence!(3, 4)
    ),
};

pub(super) const QUERIES: &[Query] = &[
    DUE_SCHEDULES,
    DECIDE_FIRES,
    UNSTARTED_FIRES,
    RECORD_FIRE_RUN,
    SKIP_PAUSED_FIRE,
    PRUNE_FIRES,
];

impl Store {
    /// At most `limit` schedules due at `now` (cursor at or before it, not paused), earliest
    /// first. None on a schema without schedules (below V23).
    pub async fn due_schedules(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<ScheduleRecord>, Error> {
        let client = self.client().await?;
        if self.schema(&client).await? < SCHEDULES_SCHEMA_VERSION {
            return Ok(Vec::new());
        }
        let rows = DUE_SCHEDULES.query(&client, &[&now, &int(limit)]).await?;
        rows.iter().map(read_schedule).collect()
    }

    /// Under `leader`, moves `key`'s cursor from `cursor` to `next` and records `fires` with
    /// their decisions (the first `caught_up` of them missed fires the catch-up policy kept), if
    /// the cursor is still at `cursor` and the schedule not paused; returns whether it did.
    ///
    /// # Locks
    /// The schedule's row, and a share lock on the role's `leader_leases` row.
    pub async fn decide_fires(
        &self,
        leader: &Leadership,
        key: &ScheduleKey,
        cursor: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
        fires: &[(DateTime<Utc>, FireDecision)],
        caught_up: usize,
    ) -> Result<bool, Error> {
        let times: Vec<DateTime<Utc>> = fires.iter().map(|(t, _)| *t).collect();
        let decisions: Vec<&str> = fires.iter().map(|(_, d)| d.as_str()).collect();
        let last = times.last().copied();
        let (name, epoch) = (leader.name(), leader.epoch().0);
        let client = self.client().await?;
        let row = DECIDE_FIRES
            .query_one(
                &client,
                &[
                    &key.tenant.as_str(),
                    &key.automation_id.as_str(),
                    &key.schedule_id,
                    &cursor,
                    &next,
                    &last,
                    &times,
                    &decisions,
                    &name,
                    &epoch,
                    &int(caught_up),
                ],
            )
            .await?;
        Ok(row.get::<_, i64>("advanced") == 1)
    }

    /// At most `limit` fires decided to start whose run is not recorded, oldest first.
    pub async fn unstarted_fires(&self, limit: usize) -> Result<Vec<UnstartedFire>, Error> {
        let client = self.client().await?;
        if self.schema(&client).await? < SCHEDULES_SCHEMA_VERSION {
            return Ok(Vec::new());
        }
        let rows = UNSTARTED_FIRES.query(&client, &[&int(limit)]).await?;
        Ok(rows
            .iter()
            .map(|row| UnstartedFire {
                key: ScheduleKey {
                    tenant: TenantId(row.get("tenant_id")),
                    automation_id: AutomationId(row.get("automation_id")),
                    schedule_id: row.get("schedule_id"),
                },
                fire_at: row.get("fire_at"),
                inputs: row.get("inputs"),
                queued_one: row.get::<_, &str>("overlap") == "queue_one",
            })
            .collect())
    }

    /// Records that `fire`'s run is `run_id`.
    pub async fn record_fire_run(&self, fire: &UnstartedFire, run_id: RunId) -> Result<(), Error> {
        let client = self.client().await?;
        RECORD_FIRE_RUN
            .execute(
                &client,
                &[
                    &fire.key.tenant.as_str(),
                    &fire.key.automation_id.as_str(),
                    &fire.key.schedule_id,
                    &fire.fire_at,
                    &run_id.0,
                ],
            )
            .await?;
        Ok(())
    }

    /// Under `leader`, records that `fire` starts nothing: its automation is paused.
    pub async fn skip_paused_fire(
        &self,
        leader: &Leadership,
        fire: &UnstartedFire,
    ) -> Result<(), Error> {
        let (name, epoch) = (leader.name(), leader.epoch().0);
        let client = self.client().await?;
        SKIP_PAUSED_FIRE
            .execute(
                &client,
                &[
                    &fire.key.tenant.as_str(),
                    &fire.key.automation_id.as_str(),
                    &fire.key.schedule_id,
                    &fire.fire_at,
                    &name,
                    &epoch,
                ],
            )
            .await?;
        Ok(())
    }

    /// Under `leader`, deletes at most `limit` fires decided before `before` (those to start,
    /// once started); returns how many.
    pub async fn prune_schedule_fires(
        &self,
        leader: &Leadership,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, Error> {
        let client = self.client().await?;
        if self.schema(&client).await? < SCHEDULES_SCHEMA_VERSION {
            return Ok(0);
        }
        let (name, epoch) = (leader.name(), leader.epoch().0);
        let n = PRUNE_FIRES
            .execute(&client, &[&before, &int(limit), &name, &epoch])
            .await?;
        Ok(n)
    }
}
