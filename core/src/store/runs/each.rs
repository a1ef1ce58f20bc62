//! Starting many independent runs in one statement: each request is answered on its own, as
//! [`Store::start_run`] would answer it, so that one refused request never refuses another.
//! The coordinator gathers concurrent single starts into such a batch.

use tokio_postgres::Row;

use super::batch::{StartColumns, new_run_record};
use super::{Routing, RunDeadlines, run_deadlines, version_routing, version_timeouts};
use super::{RunRecord, StartRun, Started, not_inserted, own_trace};
use crate::ids::{NodeId, RunId};
use crate::store::gated::{TRACE_SCHEMA_VERSION, if_traced, since_schema};
use crate::store::query::{Query, notify_queued};
use crate::store::{RequestError, Store};
use crate::trace::TraceContext;

/// How one request of [`Store::start_each`] came out.
#[derive(Debug, Clone, PartialEq)]
pub enum StartOutcome {
    /// The batch inserted this run; a just-queued run has no node state, gate or event beyond
    /// its first, so this is all its view holds.
    Inserted {
        /// The run as inserted.
        run: Box<RunRecord>,
        /// Its version's node ids in spec order; `None` for a spec whose nodes cannot be read.
        node_ids: Option<Vec<NodeId>>,
    },
    /// An earlier run of the request's idempotency key, or a run started on its own after the
    /// batch's statement failed: to be read back as it stands.
    Stored(Started),
}

// Inserts each request's run queued, pinned to its automation's current version, with its first
// event, in one statement; a request whose automation is missing or paused, or whose
// idempotency key has a run already (from before, or from an earlier request of the batch, hence
// the order), inserts nothing and leaves the others be. Answers one row per request, in request
// order: the automation's status, and for an inserted run its version, creation time and the
// version's node ids (as `spec_node_ids` reads them), read once per version (materialized: else
// the spec is read and its nodes listed again for every run of the batch). Idle workers are
// woken once per statement.
pub(super) const START_EACH: Query = Query {
    name: "start_each",
    sql: concat!(
        "\
WITH request AS (
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[], $6::text[],
                         $7::smallint[], $8::text[], $9::text[]",
        if_traced!(", $10::text[], $11::text[]"),
        since_schema!(14, ", $12::text[]"),
        ") WITH ORDINALITY
        AS r(tenant_id, run_id, automation_id, trigger, inputs, idempotency_key, priority,
             concurrency_key, actor",
        if_traced!(", trace_parent, trace_state"),
        since_schema!(14, ", queue"),
        ", ord)
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
    WHERE a.status = 'active'
    ORDER BY q.ord
    ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING run_id, tenant_id, automation_id, trigger, automation_version, created_at",
        since_schema!(14, ", queue, requirement_set"),
        since_schema!(18, ", start_deadline, run_deadline"),
        "
),
event AS (
    INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, metadata)
    SELECT i.run_id, 1, i.tenant_id, 'run_started', 'queued', 0,
           jsonb_strip_nulls(jsonb_build_object(
               'trigger', i.trigger, 'automation_version', i.automation_version,
               'actor', q.actor))
    FROM inserted i JOIN request q USING (run_id)
),
version AS MATERIALIZED (
    SELECT v.tenant_id, v.automation_id, v.version,
           CASE WHEN jsonb_typeof(v.spec->'nodes') = 'array' THEN (
               SELECT array_agg(n.node->>'id' ORDER BY n.i)
               FROM jsonb_array_elements(v.spec->'nodes') WITH ORDINALITY AS n(node, i)
           ) END AS node_ids
    FROM automation_versions v
    WHERE (v.tenant_id, v.automation_id, v.version) IN (
        SELECT tenant_id, automation_id, automation_version FROM inserted)
)
SELECT a.status AS automation_status, i.run_id AS inserted_run_id, i.automation_version,
       i.created_at, v.node_ids,",
        since_schema!(14, " i.queue, i.requirement_set,"),
        since_schema!(18, " i.start_deadline, i.run_deadline,"),
        "
       (SELECT ",
        notify_queued!(),
        " WHERE EXISTS (SELECT 1 FROM inserted)) AS notified
FROM request q
LEFT JOIN automation a USING (tenant_id, automation_id)
LEFT JOIN inserted i USING (run_id)
LEFT JOIN version v
  ON v.tenant_id = i.tenant_id AND v.automation_id = i.automation_id
 AND v.version = i.automation_version
ORDER BY q.ord"
    ),
};

impl Store {
    /// Starts a run for each request, one statement for all of them, and answers each on its
    /// own, in request order, as [`Store::start_run`] would: a missing or paused automation or
    /// a conflicting idempotency key refuses that request alone; a key repeated with the same
    /// request (earlier, or earlier in the batch) returns that run. A repeated key costs one
    /// more read. If the statement itself fails, each request is started on its own, so that a
    /// request the database refuses fails only itself.
    pub async fn start_each(
        &self,
        requests: &[StartRun],
    ) -> Vec<Result<StartOutcome, RequestError>> {
        if requests.is_empty() {
            return Vec::new();
        }
        let traces: Vec<TraceContext> = requests
            .iter()
            .map(|r| own_trace(r.trace.as_ref()))
            .collect();
        let run_ids: Vec<RunId> = requests.iter().map(|_| RunId::new()).collect();
        let (rows, traced) = match self.insert_each(requests, &run_ids, &traces).await {
            Ok(answered) => answered,
            // Alone, it failed itself only.
            Err(e) if requests.len() == 1 => return vec![Err(e)],
            Err(e) => {
                tracing::debug!(error = %e, runs = requests.len(), "a batch of starts failed; starting each on its own");
                let mut answers = Vec::with_capacity(requests.len());
                for request in requests {
                    answers.push(self.start_run(request).await.map(StartOutcome::Stored));
                }
                return answers;
            }
        };
        let mut answers = Vec::with_capacity(requests.len());
        for (index, (request, row)) in requests.iter().zip(&rows).enumerate() {
            let answer = match row.get::<_, Option<uuid::Uuid>>("inserted_run_id") {
                Some(_) => {
                    // A schema without the trace context stored none.
                    let trace = traced.then(|| &traces[index]);
                    Ok(inserted(request, run_ids[index], trace, row))
                }
                None => self
                    .not_inserted_each(request, row.get("automation_status"))
                    .await
                    .map(StartOutcome::Stored),
            };
            answers.push(answer);
        }
        answers
    }

    async fn insert_each(
        &self,
        requests: &[StartRun],
        run_ids: &[RunId],
        traces: &[TraceContext],
    ) -> Result<(Vec<Row>, bool), RequestError> {
        let columns = StartColumns::new(
            requests
                .iter()
                .zip(run_ids)
                .zip(traces)
                .map(|((request, id), trace)| (request, *id, trace)),
        );
        let client = self.client().await?;
        let schema = self.schema(&client).await?;
        let traced = schema >= TRACE_SCHEMA_VERSION;
        let rows = START_EACH
            .for_schema(schema)
            .query(&client, &columns.args(schema))
            .await?;
        if rows.len() != requests.len() {
            return Err(RequestError::RunConflict {
                run_id: run_ids[0],
                reason: format!(
                    "a batch of {} starts answered {} rows",
                    requests.len(),
                    rows.len()
                ),
            });
        }
        Ok((rows, traced))
    }

    /// A request of a batch that inserted nothing, answered as [`Store::start_run`] answers it.
    async fn not_inserted_each(
        &self,
        request: &StartRun,
        automation_status: Option<&str>,
    ) -> Result<Started, RequestError> {
        let client = self.client().await?;
        let schema = self.schema(&client).await?;
        not_inserted(&client, schema, request, automation_status).await
    }
}

/// A run as [`START_EACH`] inserted it: the request's fields, and what the statement answered.
fn inserted(
    request: &StartRun,
    run_id: RunId,
    trace: Option<&TraceContext>,
    row: &Row,
) -> StartOutcome {
    let ids: Option<Vec<Option<String>>> = row.get("node_ids");
    StartOutcome::Inserted {
        run: Box::new(new_run_record(
            request,
            run_id,
            row.get("automation_version"),
            row.get("created_at"),
            trace,
            Routing::read(row),
            RunDeadlines::read(row),
        )),
        node_ids: ids.and_then(|ids| ids.into_iter().map(|id| id.map(NodeId)).collect()),
    }
}
