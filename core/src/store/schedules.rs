//! Automations' cron schedules (V23): kept in step with the stored spec, listed, paused and
//! resumed. The leader's firing is in `sweeps/schedules.rs`.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::gated::SCHEDULES_SCHEMA_VERSION;
use super::query::Query;
use super::{Error, RequestError, Store};
use crate::ids::{AutomationId, RunId, TenantId};
use crate::schedule::{CatchUp, Overlap, ScheduleSpec};

/// A schedule as stored, with its cursor and pause.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRecord {
    /// Its tenant.
    pub tenant: TenantId,
    /// Its automation.
    pub automation_id: AutomationId,
    /// What the automation's spec says of it.
    pub spec: ScheduleSpec,
    /// Paused schedules do not fire.
    pub paused: bool,
    /// Who paused it, why and when.
    pub pause: Option<SchedulePause>,
    /// The first fire time not decided yet; `None` when the pattern never fires again.
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The last fire time decided.
    pub last_fire_at: Option<DateTime<Utc>>,
    /// Whether its automation is active (a paused automation's fires start nothing).
    pub automation_active: bool,
}

/// Who paused a schedule, why and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulePause {
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub by: String,
    /// Why.
    pub reason: String,
}

/// A schedule's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScheduleKey {
    /// Its tenant.
    pub tenant: TenantId,
    /// Its automation.
    pub automation_id: AutomationId,
    /// Its id within the automation.
    pub schedule_id: String,
}

macro_rules! schedule_columns {
    () => {
        "s.tenant_id, s.automation_id, s.schedule_id, s.cron, s.timezone, s.inputs, s.overlap,
       s.catch_up, s.paused, s.paused_at, s.paused_by, s.pause_reason, s.next_fire_at,
       s.last_fire_at, a.status = 'active' AS automation_active"
    };
}
pub(super) use schedule_columns;

// Makes an automation's schedules those of its spec: new ones inserted with their first fire,
// changed ones updated (their cursor moved to the new pattern's first fire when the pattern or
// its time zone changed, kept otherwise), and those the spec no longer has deleted with their
// fires. A pause outlives changes to the spec.
const SYNC_SCHEDULES: Query = Query {
    name: "sync_schedules",
    sql: "\
WITH wanted AS (
    SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::jsonb[], $7::text[], $8::int[],
                         $9::timestamptz[])
        AS w(schedule_id, cron, timezone, inputs, overlap, catch_up, first_fire_at)
),
gone AS (
    DELETE FROM schedules s
    WHERE s.tenant_id = $1::text AND s.automation_id = $2::text
      AND s.schedule_id <> ALL($3::text[])
    RETURNING s.schedule_id
)
INSERT INTO schedules AS s (tenant_id, automation_id, schedule_id, cron, timezone, inputs,
                            overlap, catch_up, next_fire_at)
SELECT $1::text, $2::text, schedule_id, cron, timezone, inputs, overlap, catch_up, first_fire_at
FROM wanted
ON CONFLICT (tenant_id, automation_id, schedule_id) DO UPDATE
SET next_fire_at = CASE WHEN (s.cron, s.timezone) IS DISTINCT FROM (excluded.cron, excluded.timezone)
                        THEN excluded.next_fire_at ELSE s.next_fire_at END,
    cron = excluded.cron, timezone = excluded.timezone, inputs = excluded.inputs,
    overlap = excluded.overlap, catch_up = excluded.catch_up,
    updated_at = CASE WHEN (s.cron, s.timezone, s.inputs, s.overlap, s.catch_up)
                           IS DISTINCT FROM (excluded.cron, excluded.timezone, excluded.inputs,
                                             excluded.overlap, excluded.catch_up)
                      THEN now() ELSE s.updated_at END",
};

// The tenant's schedules, of one automation if $2 is set, by automation and id.
const LIST_SCHEDULES: Query = Query {
    name: "list_schedules",
    sql: concat!(
        "SELECT ",
        schedule_columns!(),
        "
FROM schedules s
JOIN automations a USING (tenant_id, automation_id)
WHERE s.tenant_id = $1::text AND ($2::text IS NULL OR s.automation_id = $2::text)
ORDER BY s.automation_id, s.schedule_id"
    ),
};

// Pauses ($4 true, with who and why) or resumes a schedule. A resumed schedule's cursor moves
// to its first fire after the resume ($7): the fires while it was paused are not missed, they
// were not wanted.
const SET_SCHEDULE_PAUSED: Query = Query {
    name: "set_schedule_paused",
    sql: concat!(
        "\
WITH changed AS (
    UPDATE schedules s
    SET paused = $4::boolean,
        paused_at = CASE WHEN $4::boolean THEN coalesce(s.paused_at, now()) END,
        paused_by = CASE WHEN $4::boolean THEN coalesce(s.paused_by, $5::text) END,
        pause_reason = CASE WHEN $4::boolean THEN coalesce(s.pause_reason, $6::text) END,
        next_fire_at = CASE WHEN s.paused AND NOT $4::boolean THEN $7::timestamptz
                            ELSE s.next_fire_at END,
        updated_at = now()
    WHERE s.tenant_id = $1::text AND s.automation_id = $2::text AND s.schedule_id = $3::text
    RETURNING s.*
)
SELECT ",
        schedule_columns!(),
        "
FROM changed s JOIN automations a USING (tenant_id, automation_id)"
    ),
};

// A schedule's runs that have not finished (runs_schedule_unfinished_idx), for its overlap.
const UNFINISHED_SCHEDULE_RUNS: Query = Query {
    name: "unfinished_schedule_runs",
    sql: "\
SELECT count(*) AS n FROM runs
WHERE tenant_id = $1::text AND automation_id = $2::text AND schedule_id = $3::text
  AND status NOT IN ('completed', 'failed', 'blocked', 'cancelled')",
};

// The run an idempotency key started.
const RUN_ID_BY_KEY: Query = Query {
    name: "run_id_by_key",
    sql: "SELECT run_id FROM runs WHERE tenant_id = $1::text AND idempotency_key = $2::text",
};

pub(super) const QUERIES: &[Query] = &[
    SYNC_SCHEDULES,
    LIST_SCHEDULES,
    SET_SCHEDULE_PAUSED,
    UNFINISHED_SCHEDULE_RUNS,
    RUN_ID_BY_KEY,
];

pub(super) fn read_schedule(row: &Row) -> Result<ScheduleRecord, Error> {
    let schedule_id: String = row.get("schedule_id");
    let overlap: &str = row.get("overlap");
    let overlap: Overlap = overlap
        .parse()
        .map_err(|reason| Error::UnreadableSchedule {
            schedule_id: schedule_id.clone(),
            reason,
        })?;
    let paused_at: Option<DateTime<Utc>> = row.get("paused_at");
    Ok(ScheduleRecord {
        tenant: TenantId(row.get("tenant_id")),
        automation_id: AutomationId(row.get("automation_id")),
        spec: ScheduleSpec {
            id: schedule_id,
            cron: row.get("cron"),
            timezone: row.get("timezone"),
            inputs: row.get("inputs"),
            overlap,
            catch_up: CatchUp::from_latest(row.get::<_, i32>("catch_up").unsigned_abs()),
        },
        paused: row.get("paused"),
        pause: paused_at.map(|at| SchedulePause {
            at,
            by: row
                .get::<_, Option<String>>("paused_by")
                .unwrap_or_default(),
            reason: row
                .get::<_, Option<String>>("pause_reason")
                .unwrap_or_default(),
        }),
        next_fire_at: row.get("next_fire_at"),
        last_fire_at: row.get("last_fire_at"),
        automation_active: row.get("automation_active"),
    })
}

impl Store {
    /// Makes `automation`'s schedules those of `schedules`, each with its first fire time
    /// (`first_fires`, in the same order: the first fire after now of its timetable), keeping
    /// the cursor and pause of those whose pattern did not change. Nothing on a schema without
    /// schedules (below V23) when `schedules` is empty; [`RequestError::NeedsMigration`] when
    /// it is not.
    pub async fn sync_schedules(
        &self,
        tenant: &TenantId,
        automation: &AutomationId,
        schedules: &[ScheduleSpec],
        first_fires: &[Option<DateTime<Utc>>],
    ) -> Result<(), RequestError> {
        let client = self.client().await?;
        if self.schema(&client).await? < SCHEDULES_SCHEMA_VERSION {
            if schedules.is_empty() {
                return Ok(());
            }
            return Err(RequestError::NeedsMigration {
                what: "schedules",
                version: SCHEDULES_SCHEMA_VERSION,
            });
        }
        let ids: Vec<&str> = schedules.iter().map(|s| s.id.as_str()).collect();
        let crons: Vec<&str> = schedules.iter().map(|s| s.cron.as_str()).collect();
        let zones: Vec<&str> = schedules.iter().map(|s| s.timezone.as_str()).collect();
        let inputs: Vec<&serde_json::Value> = schedules.iter().map(|s| &s.inputs).collect();
        let overlaps: Vec<&str> = schedules.iter().map(|s| s.overlap.as_str()).collect();
        let catch_ups: Vec<i32> = schedules
            .iter()
            .map(|s| i32::try_from(s.catch_up.latest()).unwrap_or(i32::MAX))
            .collect();
        SYNC_SCHEDULES
            .execute(
                &client,
                &[
                    &tenant.as_str(),
                    &automation.as_str(),
                    &ids,
                    &crons,
                    &zones,
                    &inputs,
                    &overlaps,
                    &catch_ups,
                    &first_fires,
                ],
            )
            .await?;
        Ok(())
    }

    /// The tenant's schedules, of `automation` only if given, by automation and id. None on a
    /// schema without schedules (below V23).
    pub async fn list_schedules(
        &self,
        tenant: &TenantId,
        automation: Option<&AutomationId>,
    ) -> Result<Vec<ScheduleRecord>, Error> {
        let client = self.client().await?;
        if self.schema(&client).await? < SCHEDULES_SCHEMA_VERSION {
            return Ok(Vec::new());
        }
        let rows = LIST_SCHEDULES
            .query(
                &client,
                &[&tenant.as_str(), &automation.map(AutomationId::as_str)],
            )
            .await?;
        rows.iter().map(read_schedule).collect()
    }

    /// Pauses (with `actor` and `reason`) or resumes a schedule; a resumed one's next fire is
    /// `resume_from` (its first fire after now). Repeating either changes nothing; a schedule
    /// already paused keeps who paused it first. `None` when there is no such schedule.
    pub async fn set_schedule_paused(
        &self,
        key: &ScheduleKey,
        paused: bool,
        actor: &str,
        reason: &str,
        resume_from: Option<DateTime<Utc>>,
    ) -> Result<Option<ScheduleRecord>, Error> {
        let client = self.client().await?;
        if self.schema(&client).await? < SCHEDULES_SCHEMA_VERSION {
            return Ok(None);
        }
        let row = SET_SCHEDULE_PAUSED
            .query_opt(
                &client,
                &[
                    &key.tenant.as_str(),
                    &key.automation_id.as_str(),
                    &key.schedule_id,
                    &paused,
                    &actor,
                    &reason,
                    &resume_from,
                ],
            )
            .await?;
        row.as_ref().map(read_schedule).transpose()
    }

    /// How many runs the schedule started have not finished (blocked ones count as finished:
    /// they wait for a person, not for the schedule).
    pub async fn unfinished_schedule_runs(&self, key: &ScheduleKey) -> Result<u64, Error> {
        let client = self.client().await?;
        let row = UNFINISHED_SCHEDULE_RUNS
            .query_one(
                &client,
                &[
                    &key.tenant.as_str(),
                    &key.automation_id.as_str(),
                    &key.schedule_id,
                ],
            )
            .await?;
        Ok(row.get::<_, i64>("n").unsigned_abs())
    }

    /// The run the idempotency key `key` started in `tenant`, if any.
    pub async fn run_id_by_idempotency_key(
        &self,
        tenant: &TenantId,
        key: &str,
    ) -> Result<Option<RunId>, Error> {
        let client = self.client().await?;
        let row = RUN_ID_BY_KEY
            .query_opt(&client, &[&tenant.as_str(), &key])
            .await?;
        Ok(row.map(|row| RunId(row.get("run_id"))))
    }
}
