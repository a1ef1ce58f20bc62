//! Starting many runs in one statement: the same rules as [`Store::start_run`], one round trip
//! for a batch instead of one per run.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tokio_postgres::error::SqlState;

use super::{Routing, RunDeadlines, run_deadlines, version_routing, version_timeouts};
use super::{RunRecord, StartRun, own_trace, read_run, run_columns, same_request};
use crate::ids::{LeaseEpoch, RunId};
use crate::run::RunStatus;
use crate::store::gated::{QUEUES_SCHEMA_VERSION, TRACE_SCHEMA_VERSION, if_traced, since_schema};
use crate::store::query::{Query, notify_queued};
use crate::store::{Error, RequestError, Store};
use crate::trace::{TraceContext, TraceState};

/// A run of a batch, as the batch left it.
#[derive(Debug, Clone, PartialEq)]
pub struct StartedRun {
    /// The run: as inserted, or as it stands for a key that returned an earlier run.
    pub run: RunRecord,
    /// False when the idempotency key returned an earlier run, or repeats a key earlier in the
    /// same batch.
    pub created: bool,
}

// Inserts a batch of runs queued, each pinned to its automation's current version, with its
// first event, in one statement. If any request's automation is missing or paused the statement
// inserts nothing, so that a refused batch stores nothing. Requests whose idempotency key has a
// run already are resolved before and never reach it, so a unique violation here means a
// concurrent start took a key meanwhile: the whole statement fails and the caller tries again.
// Idle workers are woken once per statement, not once per run.
pub(super) const START_RUNS: Query = Query {
    name: "start_runs",
    sql: concat!(
        "\
WITH request AS (
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[], $6::text[],
                         $7::smallint[], $8::text[], $9::text[]",
        if_traced!(", $10::text[], $11::text[]"),
        since_schema!(14, ", $12::text[]"),
        ")
        AS r(tenant_id, run_id, automation_id, trigger, inputs, idempotency_key, priority,
             concurrency_key, actor",
        if_traced!(", trace_parent, trace_state"),
        since_schema!(14, ", queue"),
        ")
),
automation AS (
    SELECT a.tenant_id, a.automation_id, a.current_version, a.status",
        since_schema!(14, ", v.queue AS version_queue, v.requirement_set"),
        since_schema!(18, version_timeouts!()),
        "
    FROM automations a",
        since_schema!(14, version_routing!("a")),
        "
    WHERE (a.tenant_id, a.automation_id) IN (SELECT tenant_id, automation_id FROM request)
),
refused AS (
    SELECT 1 FROM request q LEFT JOIN automation a USING (tenant_id, automation_id)
    WHERE a.status IS DISTINCT FROM 'active'
    LIMIT 1
),
inserted AS (
    INSERT INTO runs (run_id, tenant_id, automation_id, automation_version, trigger, inputs,
                      idempotency_key, status, priority, queue_reason, concurrency_key, event_seq",
        if_traced!(", trace_parent, trace_state"),
        since_schema!(14, ", queue, requirement_set"),
        since_schema!(18, ", start_deadline, run_deadline"),
        ")
    SELECT q.run_id, q.tenant_id, q.automation_id, a.current_version, q.trigger, q.inputs,
           q.idempotency_key, 'queued', q.priority, 'started', q.concurrency_key, 1",
        if_traced!(", q.trace_parent, q.trace_state"),
        since_schema!(
            14,
            ", coalesce(q.queue, a.version_queue, 'default'), coalesce(a.requirement_set, 0)"
        ),
        since_schema!(18, run_deadlines!("a")),
        "
    FROM request q JOIN automation a USING (tenant_id, automation_id)
    WHERE NOT EXISTS (SELECT 1 FROM refused)
    RETURNING run_id, tenant_id, trigger, automation_version
),
event AS (
    INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, metadata)
    SELECT i.run_id, 1, i.tenant_id, 'run_started', 'queued', 0,
           jsonb_strip_nulls(jsonb_build_object(
               'trigger', i.trigger, 'automation_version', i.automation_version,
               'actor', q.actor))
    FROM inserted i JOIN request q USING (run_id)
)
SELECT q.tenant_id, q.automation_id, a.status AS automation_status, a.current_version,",
        since_schema!(14, " a.version_queue AS queue, a.requirement_set,"),
        since_schema!(18, " a.schedule_to_start_timeout_ms, a.run_timeout_ms,"),
        "
       now() AS created_at, (SELECT count(*) FROM inserted) AS inserted,
       (SELECT ",
        notify_queued!(),
        " WHERE EXISTS (SELECT 1 FROM inserted))
           AS notified
FROM (SELECT DISTINCT tenant_id, automation_id FROM request) q
LEFT JOIN automation a USING (tenant_id, automation_id)"
    ),
};

// The earlier runs of repeated keys, as they stand, with the trigger and key that a start
// request is compared on.
pub(super) const RUNS_BY_IDEMPOTENCY_KEYS: Query = Query {
    name: "runs_by_idempotency_keys",
    sql: concat!(
        "SELECT ",
        run_columns!(),
        ", r.idempotency_key, r.trigger
FROM runs r JOIN unnest($1::text[], $2::text[]) AS k(tenant_id, idempotency_key)
  ON r.tenant_id = k.tenant_id AND r.idempotency_key = k.idempotency_key"
    ),
};

/// What the insert statement says of the runs it inserted: each automation's pinned version,
/// and the statement's time, which every inserted run was created at.
struct Inserted {
    /// Per automation: its pinned version, and where its runs go unless they name a queue.
    versions: HashMap<(String, String), (i32, Routing, RunDeadlines)>,
    created_at: DateTime<Utc>,
}

/// Where each request of a batch stands before the insert.
enum Resolved {
    /// The key's earlier run; nothing to insert.
    Earlier(Box<RunRecord>),
    /// Repeats, with the same request, the key of an earlier request of the batch that starts
    /// this new run.
    Repeat(RunId),
    /// To be inserted with this id, in this trace.
    New(RunId, TraceContext),
}

impl Store {
    /// Starts a run for each request, all in one statement, and returns them in request order.
    ///
    /// The same rules as [`Store::start_run`], for the whole batch at once: if any request
    /// would be refused (its automation missing or paused, its idempotency key used with a
    /// different request) nothing is stored, and [`RequestError::InBatch`] names the first refused
    /// request; a value out of range is [`Error::OutOfRange`] for the batch, which is not stored
    /// either. A key repeated within the batch with the same request returns the same run,
    /// `created` only for its first occurrence. Idle workers are woken once.
    ///
    /// Each run is answered as the batch left it: a new run as that statement inserted it, an
    /// earlier run of a key as it stands now.
    pub async fn start_runs(&self, requests: &[StartRun]) -> Result<Vec<StartedRun>, RequestError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        // A batch is tried again when a concurrent start took one of its keys meanwhile. The
        // retry sees that run and resolves the key against it, so each retry settles at least
        // one key: there are never more retries than keys.
        let mut retries_left = requests
            .iter()
            .filter(|r| r.idempotency_key.is_some())
            .count();
        loop {
            let resolved = self.resolve_keys(requests).await?;
            match self.insert_new(requests, &resolved).await {
                Err(e) if lost_key_race(&e) && retries_left > 0 => retries_left -= 1,
                Err(e) => return Err(e),
                Ok(inserted) => return Ok(started(requests, resolved, &inserted)),
            }
        }
    }

    /// Resolves idempotency keys against earlier runs and against earlier requests of the batch.
    async fn resolve_keys(&self, requests: &[StartRun]) -> Result<Vec<Resolved>, RequestError> {
        let (tenants, keys): (Vec<&str>, Vec<&str>) = requests
            .iter()
            .filter_map(|r| Some((r.tenant.as_str(), r.idempotency_key.as_deref()?)))
            .unzip();
        let mut earlier = HashMap::new();
        if !keys.is_empty() {
            let client = self.client().await?;
            let schema = self.schema(&client).await?;
            for row in RUNS_BY_IDEMPOTENCY_KEYS
                .for_schema(schema)
                .query(&client, &[&tenants, &keys])
                .await?
            {
                let tenant: String = row.get("tenant_id");
                let key: String = row.get("idempotency_key");
                earlier.insert((tenant, key), row);
            }
        }
        let mut first_of_key: HashMap<(&str, &str), (usize, RunId)> = HashMap::new();
        let mut resolved = Vec::with_capacity(requests.len());
        for (index, request) in requests.iter().enumerate() {
            let tenant = request.tenant.as_str();
            let Some(key) = request.idempotency_key.as_deref() else {
                resolved.push(Resolved::New(
                    RunId::new(),
                    own_trace(request.trace.as_ref()),
                ));
                continue;
            };
            let in_batch = |source| RequestError::InBatch {
                index,
                source: Box::new(source),
            };
            if let Some(row) = earlier.get(&(tenant.to_owned(), key.to_owned())) {
                same_request(request, key, row).map_err(in_batch)?;
                resolved.push(Resolved::Earlier(Box::new(read_run(row)?)));
            } else if let Some(&(first, run_id)) = first_of_key.get(&(tenant, key)) {
                if !same_fields(&requests[first], request) {
                    return Err(in_batch(RequestError::IdempotencyConflict {
                        key: key.to_owned(),
                    }));
                }
                resolved.push(Resolved::Repeat(run_id));
            } else {
                let run_id = RunId::new();
                first_of_key.insert((tenant, key), (index, run_id));
                resolved.push(Resolved::New(run_id, own_trace(request.trace.as_ref())));
            }
        }
        Ok(resolved)
    }

    /// Inserts the new runs in one statement, or none if any would be refused.
    async fn insert_new(
        &self,
        requests: &[StartRun],
        resolved: &[Resolved],
    ) -> Result<Inserted, RequestError> {
        let new: Vec<(usize, &StartRun, RunId, &TraceContext)> = requests
            .iter()
            .zip(resolved)
            .enumerate()
            .filter_map(|(index, (request, r))| match r {
                Resolved::New(run_id, trace) => Some((index, request, *run_id, trace)),
                Resolved::Earlier(_) | Resolved::Repeat(_) => None,
            })
            .collect();
        if new.is_empty() {
            // No run is new, so nothing reads these.
            return Ok(Inserted {
                versions: HashMap::new(),
                created_at: Utc::now(),
            });
        }
        let columns = StartColumns::new(new.iter().map(|(_, r, id, t)| (*r, *id, *t)));
        let client = self.client().await?;
        let schema = self.schema(&client).await?;
        let args = columns.args(schema);
        let rows = START_RUNS.for_schema(schema).query(&client, &args).await?;
        let inserted = rows.first().map_or(0, |row| row.get::<_, i64>("inserted"));
        if usize::try_from(inserted).is_ok_and(|n| n == new.len()) {
            let created_at = rows[0].get("created_at");
            let versions = rows
                .iter()
                .map(|row| {
                    let tenant: String = row.get("tenant_id");
                    let automation: String = row.get("automation_id");
                    let routing = Routing::read(row);
                    let deadlines = RunDeadlines::from_timeouts(row, created_at);
                    (
                        (tenant, automation),
                        (row.get("current_version"), routing, deadlines),
                    )
                })
                .collect();
            return Ok(Inserted {
                versions,
                created_at,
            });
        }
        // Nothing was stored: name the first request whose automation refused it.
        for (index, request, ..) in &new {
            let status = rows
                .iter()
                .find(|row| {
                    row.get::<_, &str>("tenant_id") == request.tenant.as_str()
                        && row.get::<_, &str>("automation_id") == request.automation_id.as_str()
                })
                .and_then(|row| row.get::<_, Option<&str>>("automation_status"));
            let source = match status {
                Some("active") => continue,
                Some(_) => RequestError::AutomationPaused(request.automation_id.clone()),
                None => RequestError::AutomationNotFound(request.automation_id.clone()),
            };
            return Err(RequestError::InBatch {
                index: *index,
                source: Box::new(source),
            });
        }
        Err(RequestError::RunConflict {
            run_id: new[0].2,
            reason: format!(
                "{inserted} of the {} new runs of a batch were stored",
                new.len()
            ),
        })
    }
}

/// The batch's answer, in request order.
fn started(requests: &[StartRun], resolved: Vec<Resolved>, inserted: &Inserted) -> Vec<StartedRun> {
    let mut new_runs: HashMap<RunId, RunRecord> = HashMap::new();
    let mut answer = Vec::with_capacity(requests.len());
    for (request, resolved) in requests.iter().zip(resolved) {
        let started = match resolved {
            Resolved::Earlier(run) => StartedRun {
                run: *run,
                created: false,
            },
            Resolved::New(run_id, trace) => {
                let run = inserted_run(request, run_id, Some(&trace), inserted);
                new_runs.insert(run_id, run.clone());
                StartedRun { run, created: true }
            }
            Resolved::Repeat(run_id) => StartedRun {
                run: new_runs
                    .get(&run_id)
                    .cloned()
                    .unwrap_or_else(|| inserted_run(request, run_id, None, inserted)),
                created: false,
            },
        };
        answer.push(started);
    }
    answer
}

/// A new run as START_RUNS inserted it: the request's fields, the version the statement pinned,
/// and what every new run starts with (queued, its `run_started` event, no lease yet).
fn inserted_run(
    request: &StartRun,
    run_id: RunId,
    trace: Option<&TraceContext>,
    inserted: &Inserted,
) -> RunRecord {
    let key = (
        request.tenant.as_str().to_owned(),
        request.automation_id.as_str().to_owned(),
    );
    // The statement answers one row per automation of the batch.
    let (version, routing, deadlines) = inserted.versions.get(&key).cloned().unwrap_or_default();
    let routing = routing.for_request(request);
    new_run_record(
        request,
        run_id,
        version,
        inserted.created_at,
        trace,
        routing,
        deadlines,
    )
}

/// Whether two requests of one batch ask for the same run: the rule `same_request` applies to a
/// stored run.
fn same_fields(a: &StartRun, b: &StartRun) -> bool {
    a.automation_id == b.automation_id
        && a.inputs == b.inputs
        && a.priority == b.priority
        && a.concurrency_key == b.concurrency_key
        && a.trigger == b.trigger
        && a.queue == b.queue
}

/// A concurrent start took one of the batch's keys after they were resolved.
fn lost_key_race(e: &RequestError) -> bool {
    matches!(e, RequestError::Store(Error::Db(db)) if db.code() == Some(&SqlState::UNIQUE_VIOLATION)
        && db.as_db_error().and_then(|d| d.constraint())
            .is_some_and(|c| RUNS_IDEMPOTENCY_KEY.contains(&c)))
}

/// The unique indexes on `(tenant_id, idempotency_key)`: V1's constraint over every run and
/// V2's partial index over keyed runs. While both exist, either may report a key taken.
const RUNS_IDEMPOTENCY_KEY: [&str; 2] = [
    "runs_tenant_id_idempotency_key_key",
    "runs_idempotency_key_idx",
];

/// A run just inserted by a start statement: the request's fields, the version the statement
/// pinned and its creation time, and what every new run starts with (queued, its `run_started`
/// event, no lease yet).
pub(super) fn new_run_record(
    request: &StartRun,
    run_id: RunId,
    automation_version: i32,
    created_at: DateTime<Utc>,
    trace: Option<&TraceContext>,
    routing: Routing,
    deadlines: RunDeadlines,
) -> RunRecord {
    RunRecord {
        run_id,
        tenant: request.tenant.clone(),
        automation_id: request.automation_id.clone(),
        automation_version,
        inputs: request.inputs.clone(),
        status: RunStatus::Queued,
        priority: request.priority,
        queue_reason: Some("started".to_owned()),
        retry_after: None,
        retry_node_id: None,
        retry_attempt: None,
        retry_error: None,
        claimant_id: None,
        lease_epoch: LeaseEpoch(0),
        lease_expires_at: None,
        expired_claims: 0,
        concurrency_key: request.concurrency_key.clone(),
        stop_kind: None,
        stop_reason: None,
        failed_node_id: None,
        failed_attempt: None,
        event_seq: 1,
        created_at,
        finished_at: None,
        trace_parent: trace.map(|t| t.parent.clone()),
        queue: routing.queue,
        requirement_set: routing.requirement_set,
        deadlines,
        compacted_at: None,
        trigger: request.trigger.clone(),
    }
}

/// The new runs' columns, one array per argument of `START_RUNS` and `START_EACH`, in the order
/// both statements take them.
pub(super) struct StartColumns<'a> {
    tenants: Vec<&'a str>,
    run_ids: Vec<uuid::Uuid>,
    automations: Vec<&'a str>,
    triggers: Vec<&'a str>,
    inputs: Vec<&'a serde_json::Value>,
    keys: Vec<Option<&'a str>>,
    priorities: Vec<i16>,
    concurrency_keys: Vec<Option<&'a str>>,
    actors: Vec<Option<&'a str>>,
    trace_parents: Vec<&'a str>,
    trace_states: Vec<Option<&'a str>>,
    queues: Vec<Option<&'a str>>,
}

impl<'a> StartColumns<'a> {
    /// The columns of `runs`: each request with its new run's id and trace.
    pub fn new(
        runs: impl ExactSizeIterator<Item = (&'a StartRun, RunId, &'a TraceContext)>,
    ) -> Self {
        let n = runs.len();
        let mut columns = Self {
            tenants: Vec::with_capacity(n),
            run_ids: Vec::with_capacity(n),
            automations: Vec::with_capacity(n),
            triggers: Vec::with_capacity(n),
            inputs: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            priorities: Vec::with_capacity(n),
            concurrency_keys: Vec::with_capacity(n),
            actors: Vec::with_capacity(n),
            trace_parents: Vec::with_capacity(n),
            trace_states: Vec::with_capacity(n),
            queues: Vec::with_capacity(n),
        };
        for (request, run_id, trace) in runs {
            columns.tenants.push(request.tenant.as_str());
            columns.run_ids.push(run_id.0);
            columns.automations.push(request.automation_id.as_str());
            columns.triggers.push(request.trigger.as_str());
            columns.inputs.push(&request.inputs);
            columns.keys.push(request.idempotency_key.as_deref());
            columns.priorities.push(request.priority);
            columns
                .concurrency_keys
                .push(request.concurrency_key.as_deref());
            columns.actors.push(request.actor.as_deref());
            columns.trace_parents.push(trace.parent.as_str());
            columns
                .trace_states
                .push(trace.state.as_ref().map(TraceState::as_str));
            columns.queues.push(request.queue.as_deref());
        }
        columns
    }

    /// The statement's arguments on `schema`: an older schema's statement has no place for the
    /// newer ones (the trace columns, the queue).
    pub fn args(&self, schema: i32) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        let mut args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
            &self.tenants,
            &self.run_ids,
            &self.automations,
            &self.triggers,
            &self.inputs,
            &self.keys,
            &self.priorities,
            &self.concurrency_keys,
            &self.actors,
        ];
        if schema >= TRACE_SCHEMA_VERSION {
            args.push(&self.trace_parents);
            args.push(&self.trace_states);
        }
        if schema >= QUEUES_SCHEMA_VERSION {
            args.push(&self.queues);
        }
        args
    }
}
