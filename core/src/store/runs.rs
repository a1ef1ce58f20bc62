//! Starting runs and reading them back.

mod batch;
mod each;

pub use batch::StartedRun;
pub use each::StartOutcome;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::control::OperatorRequest;
use super::gated::{
    QUEUES_SCHEMA_VERSION, SCHEDULES_SCHEMA_VERSION, TRACE_SCHEMA_VERSION, if_traced, since_schema,
};
use super::query::{
    Query, clear_lease, close_open_work, notify_queued, notify_stopped, operator_request_id,
};
use super::{Error, RequestError, Store};
use crate::ids::{AutomationId, ClaimantId, LeaseEpoch, NodeId, RunId, TenantId};
use crate::routing::DEFAULT_QUEUE;
use crate::run::deadline::DeadlineView;
use crate::run::{RunStatus, Transition};
use crate::trace::{TraceContext, TraceParent, TraceState};

/// What set a run going.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A person, through the CLI.
    Manual,
    /// A schedule fired (or was triggered by hand) for this fire time.
    Schedule(ScheduledFire),
    /// A program, through the API.
    Api,
}

/// The schedule and fire time a run was started for (V23).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledFire {
    /// The automation's schedule.
    pub schedule_id: String,
    /// The fire time (for a manual trigger, when it was asked for).
    pub fire_at: DateTime<Utc>,
}

impl Trigger {
    /// The name runs.trigger stores.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Schedule(_) => "schedule",
            Self::Api => "api",
        }
    }

    /// The schedule and fire time, for a run a schedule started.
    fn scheduled(&self) -> (Option<&str>, Option<DateTime<Utc>>) {
        match self {
            Self::Schedule(fire) => (Some(fire.schedule_id.as_str()), Some(fire.fire_at)),
            Self::Manual | Self::Api => (None, None),
        }
    }
}

/// A request to start a run of an automation's current version.
#[derive(Debug, Clone, PartialEq)]
pub struct StartRun {
    /// The tenant.
    pub tenant: TenantId,
    /// The automation.
    pub automation_id: AutomationId,
    /// Inputs handed to the run's nodes.
    pub inputs: serde_json::Value,
    /// Higher is claimed first; -1000..=1000.
    pub priority: i16,
    /// Runs sharing a key never overlap.
    pub concurrency_key: Option<String>,
    /// The same key with the same request returns the same run; with another request it is refused.
    pub idempotency_key: Option<String>,
    /// What set it going.
    pub trigger: Trigger,
    /// Who asked (the calling token's name), recorded on the run's first event; `None` when no
    /// person or program asked, as for a schedule.
    pub actor: Option<String>,
    /// The trace the run's work continues; `None` starts a trace of the run's own, so that
    /// every run has a trace id.
    pub trace: Option<TraceContext>,
    /// The queue the run goes to; `None`: its automation's.
    pub queue: Option<String>,
}

/// The run a start request produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// The run.
    pub run_id: RunId,
    /// False when the idempotency key returned an earlier run.
    pub created: bool,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// The run.
    pub run_id: RunId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Its automation.
    pub automation_id: AutomationId,
    /// The automation version it pinned at start.
    pub automation_version: i32,
    /// Its inputs.
    pub inputs: serde_json::Value,
    /// Where it stands.
    pub status: RunStatus,
    /// Claim order: higher first.
    pub priority: i16,
    /// Why it is queued, when it is.
    pub queue_reason: Option<String>,
    /// Not due before this instant.
    pub retry_after: Option<DateTime<Utc>>,
    /// The node whose retry the run waits for.
    pub retry_node_id: Option<NodeId>,
    /// The attempt that will run at `retry_after`.
    pub retry_attempt: Option<i32>,
    /// Why the attempt before it failed.
    pub retry_error: Option<String>,
    /// The holder, while held.
    pub claimant_id: Option<ClaimantId>,
    /// The current (or last) claim's epoch.
    pub lease_epoch: LeaseEpoch,
    /// When the lease runs out, while held.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Claims in a row that expired before any progress.
    pub expired_claims: i32,
    /// Runs sharing it are never held at once.
    pub concurrency_key: Option<String>,
    /// Why the run stopped (`stale_reaped`, `node_failed`, …), when it did.
    pub stop_kind: Option<String>,
    /// The reason given with the stop.
    pub stop_reason: Option<String>,
    /// The node that failed the run.
    pub failed_node_id: Option<NodeId>,
    /// The attempt that failed it.
    pub failed_attempt: Option<i32>,
    /// The last event's sequence number.
    pub event_seq: i64,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Finished, when terminal.
    pub finished_at: Option<DateTime<Utc>>,
    /// The `traceparent` the run's work continues; `None` for a run started before runs had one.
    pub trace_parent: Option<TraceParent>,
    /// The queue it goes to.
    pub queue: String,
    /// The requirement set it needs a worker to meet; 0 for a run queued before sets (V14),
    /// which any worker may claim. See [`Store::wait_reasons`].
    pub requirement_set: i64,
    /// When it must have been claimed and finished, from its version's timeouts (V18).
    pub deadlines: RunDeadlines,
    /// When it was compacted (V20): its inputs and node outputs were dropped, past its
    /// retention's hot window.
    pub compacted_at: Option<DateTime<Utc>>,
    /// What set it going; for a schedule, which one and for what fire time (V23).
    pub trigger: Trigger,
}

impl RunRecord {
    /// What the deadline rule (`run::deadline`) judges of this run.
    pub fn deadline_view(&self) -> DeadlineView {
        DeadlineView {
            status: self.status,
            claimed: self.lease_epoch.0 > 0,
            start_deadline: self.deadlines.start,
            run_deadline: self.deadlines.run,
        }
    }
}

/// When a run must have been first claimed and when it must have finished: its start plus its
/// version's `schedule_to_start_timeout_ms` and `run_timeout_ms` (V18); `None` without one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunDeadlines {
    /// The start deadline: past it, a run never claimed fails.
    pub start: Option<DateTime<Utc>>,
    /// The run deadline: past it, a run not finished fails.
    pub run: Option<DateTime<Utc>>,
}

impl RunDeadlines {
    /// From a row's `start_deadline` and `run_deadline`; a schema before V18 has neither.
    pub(super) fn read(row: &Row) -> Self {
        let at = |column: &str| {
            row.try_get::<_, Option<DateTime<Utc>>>(column)
                .ok()
                .flatten()
        };
        Self {
            start: at("start_deadline"),
            run: at("run_deadline"),
        }
    }

    /// Those a start at `started_at` gives, from a row's version timeouts
    /// (`schedule_to_start_timeout_ms`, `run_timeout_ms`), as [`run_deadlines!`] writes them.
    pub(super) fn from_timeouts(row: &Row, started_at: DateTime<Utc>) -> Self {
        let after = |column: &str| {
            let ms = row.try_get::<_, Option<i64>>(column).ok().flatten()?;
            Some(started_at + chrono::TimeDelta::milliseconds(ms))
        };
        Self {
            start: after("schedule_to_start_timeout_ms"),
            run: after("run_timeout_ms"),
        }
    }
}

/// Where a run goes and what it needs, as a start statement answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Routing {
    queue: String,
    requirement_set: i64,
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            queue: DEFAULT_QUEUE.to_owned(),
            requirement_set: 0,
        }
    }
}

impl Routing {
    /// From a row's `queue` and `requirement_set`; a schema before V14 has neither, and every
    /// run there goes to the default queue.
    pub(super) fn read(row: &Row) -> Self {
        match (
            row.try_get::<_, Option<String>>("queue"),
            row.try_get::<_, Option<i64>>("requirement_set"),
        ) {
            (Ok(Some(queue)), Ok(set)) => Self {
                queue,
                requirement_set: set.unwrap_or(0),
            },
            _ => Self::default(),
        }
    }

    /// The routing of a run of `request`, whose automation's runs go by `self`.
    pub(super) fn for_request(self, request: &StartRun) -> Self {
        Self {
            queue: request.queue.clone().unwrap_or(self.queue),
            ..self
        }
    }
}

/// The trace a run is started in: the one asked for, or else one of the run's own, with a
/// random trace id and marked sampled, since no caller decided against recording it.
pub(super) fn own_trace(requested: Option<&TraceContext>) -> TraceContext {
    if let Some(trace) = requested {
        return trace.clone();
    }
    let trace_id = *uuid::Uuid::new_v4().as_bytes();
    let mut span_id = [0; 8];
    span_id.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
    TraceContext {
        // Random bytes are all zeros with a chance of 2^-64; a fixed id stands in then.
        parent: TraceParent::new(trace_id, span_id, true)
            .or_else(|| TraceParent::new(trace_id, [1; 8], true))
            .or_else(|| TraceParent::new([1; 16], [1; 8], true))
            .expect("non-zero ids"),
        state: None,
    }
}

/// Joins an automation row (the alias given) to its current version, for the queue and the
/// requirement set its new runs get (V14).
macro_rules! version_routing {
    ($automation:literal) => {
        concat!(
            "
    LEFT JOIN automation_versions v
      ON v.tenant_id = ",
            $automation,
            ".tenant_id AND v.automation_id = ",
            $automation,
            ".automation_id AND v.version = ",
            $automation,
            ".current_version"
        )
    };
}
pub(super) use version_routing;

/// The timeouts of the version a start pins (`v`, joined by [`version_routing!`]), V18.
macro_rules! version_timeouts {
    () => {
        ", v.schedule_to_start_timeout_ms, v.run_timeout_ms"
    };
}
pub(super) use version_timeouts;

/// A new run's deadlines (`start_deadline`, `run_deadline`) from its version's timeouts, read
/// from `$automation` (the start's CTE that selected [`version_timeouts!`]): null without one.
macro_rules! run_deadlines {
    ($automation:literal) => {
        concat!(
            ", now() + ",
            $automation,
            ".schedule_to_start_timeout_ms * interval '1 millisecond', now() + ",
            $automation,
            ".run_timeout_ms * interval '1 millisecond'"
        )
    };
}
pub(super) use run_deadlines;

// One statement: pin the current version of an active automation, insert the run queued, and
// record its first event, and wake idle workers. ON CONFLICT on the idempotency key yields zero
// rows instead of an error, and the caller then compares the earlier request with this one. The
// conflict target carries the predicate of V2's partial unique index, so that either that index
// or V1's constraint over every run settles it.
const START_RUN: Query = Query {
    name: "start_run",
    sql: concat!(
        "\
WITH automation AS (
    SELECT a.current_version, a.status",
        since_schema!(14, ", v.queue AS version_queue, v.requirement_set"),
        since_schema!(18, version_timeouts!()),
        "
    FROM automations a",
        since_schema!(14, version_routing!("a")),
        "
    WHERE a.tenant_id = $1::text AND a.automation_id = $2::text
),
inserted AS (
    INSERT INTO runs (run_id, tenant_id, automation_id, automation_version, trigger, inputs,
                      idempotency_key, status, priority, queue_reason, concurrency_key, event_seq",
        if_traced!(", trace_parent, trace_state"),
        since_schema!(14, ", queue, requirement_set"),
        since_schema!(18, ", start_deadline, run_deadline"),
        since_schema!(23, ", schedule_id, scheduled_for"),
        ")
    SELECT $3::uuid, $1::text, $2::text, current_version, $4::text, $5::jsonb,
           $6::text, 'queued', $7::smallint, 'started', $8::text, 1",
        if_traced!(", $10::text, $11::text"),
        since_schema!(
            14,
            ", coalesce($12::text, version_queue, 'default'), coalesce(requirement_set, 0)"
        ),
        since_schema!(18, run_deadlines!("automation")),
        since_schema!(23, ", $13::text, $14::timestamptz"),
        "
    FROM automation WHERE status = 'active'
    ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING run_id, automation_version
),
event AS (
    INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, metadata)
    SELECT run_id, 1, $1::text, 'run_started', 'queued', 0,
           jsonb_strip_nulls(jsonb_build_object(
               'trigger', $4::text, 'automation_version', automation_version,
               'actor', $9::text))
    FROM inserted
)
SELECT (SELECT status FROM automation) AS automation_status,
       (SELECT run_id FROM inserted) AS run_id,
       (SELECT ",
        notify_queued!(),
        " FROM inserted) AS notified"
    ),
};

// The earlier run of a repeated key, with the fields a start request sets, to compare them.
const RUN_BY_IDEMPOTENCY_KEY: Query = Query {
    name: "run_by_idempotency_key",
    sql: concat!(
        "SELECT run_id, automation_id, inputs, priority, concurrency_key, trigger",
        since_schema!(14, ", queue, requirement_set"),
        "
FROM runs WHERE tenant_id = $1::text AND idempotency_key = $2::text"
    ),
};

/// The columns of a [`RunRecord`], `r` being the runs row; every query that reads one uses them.
/// A run waiting out a retry backoff carries the error of the attempt that failed, from the
/// node's row (one primary-key lookup, and only for such a run).
macro_rules! run_columns {
    () => {
        concat!(
            "r.run_id, r.tenant_id, r.automation_id, r.automation_version, r.inputs, r.status,
       r.priority, r.queue_reason, r.retry_after, r.retry_node_id, r.retry_attempt,
       CASE WHEN r.retry_node_id IS NOT NULL THEN (
           SELECT n.last_error FROM run_nodes n
           WHERE n.run_id = r.run_id AND n.node_id = r.retry_node_id) END AS retry_error,
       r.claimant_id, r.lease_epoch, r.lease_expires_at, r.expired_claims, r.concurrency_key,
       r.stop_kind, r.stop_reason, r.failed_node_id, r.failed_attempt, r.event_seq,
       r.created_at, r.finished_at",
            $crate::store::gated::if_traced!(", r.trace_parent"),
            $crate::store::gated::since_schema!(14, ", r.queue, r.requirement_set"),
            $crate::store::gated::since_schema!(18, ", r.start_deadline, r.run_deadline"),
            $crate::store::gated::since_schema!(20, ", r.compacted_at"),
            ", r.trigger",
            $crate::store::gated::since_schema!(23, ", r.schedule_id, r.scheduled_for")
        )
    };
}
pub(super) use run_columns;

// One run by id, scoped to its tenant.
const RUN: Query = Query {
    name: "run",
    sql: concat!(
        "SELECT ",
        run_columns!(),
        "
FROM runs r WHERE r.run_id = $1::uuid AND r.tenant_id = $2::text"
    ),
};

// Cancels a run that has not ended, wherever it is. A held run loses its lease here, and its
// holder is told at commit (a NOTIFY on the stopped channel), so that it checks its lease at once
// and stops the run's nodes; its next fenced write or heartbeat finds the run no longer running
// if the notification is missed. A run that nobody holds needs no notification. A run
// waiting in backoff loses its retry_after, so nothing revives it; a pending gate is closed, so
// nobody is asked to approve a run that will never continue. The event records the actor ($4).
const CANCEL_RUN: Query = Query {
    name: "cancel_run",
    sql: concat!(
        "\
WITH target AS (
    SELECT run_id, status AS was FROM runs
    WHERE run_id = $1::uuid AND tenant_id = $2::text
      AND status NOT IN ('completed', 'failed', 'blocked', 'cancelled')
    FOR UPDATE
),
cancelled AS (
    UPDATE runs r
    SET status = 'cancelled', stop_kind = 'cancelled', stop_reason = left($3::text, 4096),
        finished_at = now(), retry_after = NULL,
        ",
        clear_lease!(),
        ",
        event_seq = r.event_seq + 1, updated_at = now()
    FROM target
    WHERE r.run_id = target.run_id
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq, target.was
),
",
        close_open_work!("cancelled", "attempt cancelled", "the run was cancelled"),
        "
INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, reason, stop_kind,
                        metadata)
SELECT run_id, event_seq, tenant_id, 'run_cancelled', 'cancelled', lease_epoch,
       left($3::text, 4096), 'cancelled',
       jsonb_build_object('actor', $4::text) || ",
        operator_request_id!(5),
        "
FROM cancelled
RETURNING run_id, (SELECT ",
        notify_stopped!("c.run_id"),
        " FROM cancelled c WHERE c.was IN ('running', 'pausing')) AS notified"
    ),
};

pub(super) const QUERIES: &[Query] = &[
    START_RUN,
    each::START_EACH,
    batch::START_RUNS,
    batch::RUNS_BY_IDEMPOTENCY_KEYS,
    RUN_BY_IDEMPOTENCY_KEY,
    RUN,
    CANCEL_RUN,
];

impl Store {
    /// Starts a run of the automation's current version, queued and due at once.
    pub async fn start_run(&self, request: &StartRun) -> Result<Started, RequestError> {
        let client = self.client().await?;
        let run_id = RunId::new();
        let trace = own_trace(request.trace.as_ref());
        let schema = self.schema(&client).await?;
        let (schedule_id, scheduled_for) = request.trigger.scheduled();
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 14] = [
            &request.tenant.as_str(),
            &request.automation_id.as_str(),
            &run_id.0,
            &request.trigger.as_str(),
            &request.inputs,
            &request.idempotency_key,
            &request.priority,
            &request.concurrency_key,
            &request.actor,
            &trace.parent.as_str(),
            &trace.state.as_ref().map(TraceState::as_str),
            &request.queue,
            &schedule_id,
            &scheduled_for,
        ];
        // An older schema's statement has no place for the newer arguments.
        let args = if schema >= SCHEDULES_SCHEMA_VERSION {
            &args[..]
        } else if schema >= QUEUES_SCHEMA_VERSION {
            &args[..12]
        } else if schema >= TRACE_SCHEMA_VERSION {
            &args[..11]
        } else {
            &args[..9]
        };
        let row = START_RUN
            .for_schema(schema)
            .query_one(&client, args)
            .await?;
        if let Some(id) = row.get::<_, Option<uuid::Uuid>>("run_id") {
            return Ok(Started {
                run_id: RunId(id),
                created: true,
            });
        }
        not_inserted(&client, schema, request, row.get("automation_status")).await
    }

    /// Cancels a run that has not ended. A run that has ended is [`RequestError::Transition`].
    pub async fn cancel_run(
        &self,
        tenant: &TenantId,
        run_id: RunId,
        reason: &str,
        actor: &str,
        request_id: Option<&str>,
    ) -> Result<(), RequestError> {
        let request = OperatorRequest {
            reason,
            actor,
            request_id,
        };
        self.operator_move(
            CANCEL_RUN,
            tenant,
            run_id,
            &request,
            Transition::Cancel,
            &["run_cancelled"],
        )
        .await
    }

    /// A run, read back; a stored value this build cannot read is [`Error::UnreadableRun`].
    pub async fn run(&self, tenant: &TenantId, run_id: RunId) -> Result<RunRecord, RequestError> {
        let client = self.client().await?;
        let schema = self.schema(&client).await?;
        let row = RUN
            .for_schema(schema)
            .query_opt(&client, &[&run_id.0, &tenant.as_str()])
            .await?
            .ok_or(RequestError::RunNotFound(run_id))?;
        Ok(read_run(&row)?)
    }
}

/// A start request whose statement inserted nothing, with its automation's status as the
/// statement saw it (`None`: no such automation). A repeated key returns its run even if the
/// automation was paused since.
async fn not_inserted(
    client: &deadpool_postgres::Client,
    schema: i32,
    request: &StartRun,
    automation_status: Option<&str>,
) -> Result<Started, RequestError> {
    if let Some(key) = &request.idempotency_key
        && let Some(earlier) = RUN_BY_IDEMPOTENCY_KEY
            .for_schema(schema)
            .query_opt(client, &[&request.tenant.as_str(), key])
            .await?
    {
        return same_request(request, key, &earlier);
    }
    match automation_status {
        None => Err(RequestError::AutomationNotFound(
            request.automation_id.clone(),
        )),
        Some(_) => Err(RequestError::AutomationPaused(
            request.automation_id.clone(),
        )),
    }
}

fn same_request(request: &StartRun, key: &str, earlier: &Row) -> Result<Started, RequestError> {
    let same = earlier.get::<_, &str>("automation_id") == request.automation_id.as_str()
        && earlier.get::<_, serde_json::Value>("inputs") == request.inputs
        && earlier.get::<_, i16>("priority") == request.priority
        && earlier.get::<_, Option<String>>("concurrency_key") == request.concurrency_key
        && earlier.get::<_, &str>("trigger") == request.trigger.as_str()
        // A request that names no queue asks for its automation's, whichever that was.
        && request
            .queue
            .as_deref()
            .is_none_or(|queue| Routing::read(earlier).queue == queue);
    if same {
        Ok(Started {
            run_id: RunId(earlier.get("run_id")),
            created: false,
        })
    } else {
        Err(RequestError::IdempotencyConflict {
            key: key.to_owned(),
        })
    }
}

/// A row's trigger; a schedule's id and fire time are absent from a schema before V23, and a
/// run a schedule started there (none did) reads with an empty id at its creation.
fn read_trigger(row: &Row) -> Trigger {
    match row.get::<_, &str>("trigger") {
        "manual" => Trigger::Manual,
        "schedule" => Trigger::Schedule(ScheduledFire {
            schedule_id: row
                .try_get::<_, Option<String>>("schedule_id")
                .ok()
                .flatten()
                .unwrap_or_default(),
            fire_at: row
                .try_get::<_, Option<DateTime<Utc>>>("scheduled_for")
                .ok()
                .flatten()
                .unwrap_or_else(|| row.get("created_at")),
        }),
        _ => Trigger::Api,
    }
}

pub(super) fn read_run(row: &Row) -> Result<RunRecord, Error> {
    let run_id = RunId(row.get("run_id"));
    let routing = Routing::read(row);
    let status = row
        .get::<_, &str>("status")
        .parse()
        .map_err(|e: crate::run::UnknownStatus| Error::UnreadableRun {
            run_id,
            reason: e.to_string(),
        })?;
    Ok(RunRecord {
        run_id,
        tenant: TenantId(row.get("tenant_id")),
        automation_id: AutomationId(row.get("automation_id")),
        automation_version: row.get("automation_version"),
        inputs: row.get("inputs"),
        status,
        priority: row.get("priority"),
        queue_reason: row.get("queue_reason"),
        retry_after: row.get("retry_after"),
        retry_node_id: row.get::<_, Option<String>>("retry_node_id").map(NodeId),
        retry_attempt: row.get("retry_attempt"),
        retry_error: row.get("retry_error"),
        claimant_id: row.get::<_, Option<String>>("claimant_id").map(ClaimantId),
        lease_epoch: LeaseEpoch(row.get("lease_epoch")),
        lease_expires_at: row.get("lease_expires_at"),
        expired_claims: row.get("expired_claims"),
        concurrency_key: row.get("concurrency_key"),
        stop_kind: row.get("stop_kind"),
        stop_reason: row.get("stop_reason"),
        failed_node_id: row.get::<_, Option<String>>("failed_node_id").map(NodeId),
        failed_attempt: row.get("failed_attempt"),
        event_seq: row.get("event_seq"),
        created_at: row.get("created_at"),
        finished_at: row.get("finished_at"),
        // Absent from a schema without the trace context.
        trace_parent: row
            .try_get::<_, Option<&str>>("trace_parent")
            .ok()
            .flatten()
            .and_then(TraceParent::parse),
        queue: routing.queue,
        requirement_set: routing.requirement_set,
        deadlines: RunDeadlines::read(row),
        trigger: read_trigger(row),
        // Absent from a schema without retention (below V20).
        compacted_at: row
            .try_get::<_, Option<DateTime<Utc>>>("compacted_at")
            .ok()
            .flatten(),
    })
}
