//! Stops that are not endings: approval gates, pauses, and runs blocked on unreadable data.

use uuid::Uuid;

use super::gated::since_schema;
use super::query::{Query, clear_lease, notify_queued, notify_stopped, operator_request_id};
use super::{Claim, Error, FenceError, RequestError, Store};
use crate::ids::{NodeId, RunId, TenantId};
use crate::run::{IllegalTransition, Transition};

// The holder reached a gated node: the run stops in awaiting_approval and gives up its lease, so
// no worker waits on a person. The gate row is written in the same statement; the partial unique
// index keeps one pending gate per node.
const AWAIT_APPROVAL: Query = Query {
    name: "await_approval",
    sql: concat!(
        "\
WITH fenced AS (
    UPDATE runs r
    SET status = 'awaiting_approval', detail = left($4::text, 4096),
        ",
        clear_lease!(),
        ",
        event_seq = r.event_seq + 1, updated_at = now()
    WHERE r.run_id = $1::uuid AND r.lease_epoch = $2::bigint AND r.status = 'running'
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq
),
gate AS (
    INSERT INTO gates (gate_id, tenant_id, run_id, node_id, prompt, requested_epoch)
    SELECT $5::uuid, tenant_id, run_id, $3::text, left($4::text, 4096), lease_epoch FROM fenced
    RETURNING gate_id
)
INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, node_id, reason,
                        metadata)
SELECT fenced.run_id, event_seq, tenant_id, 'run_awaiting_approval', 'awaiting_approval',
       lease_epoch, $3::text,
       left($4::text, 4096), jsonb_build_object('gate_id', gate.gate_id)
FROM fenced, gate
RETURNING run_id"
    ),
};

// After an await_approval whose acknowledgement was lost: the gate it wrote, if it landed.
const PENDING_GATE: Query = Query {
    name: "pending_gate",
    sql: "\
SELECT g.gate_id FROM gates g JOIN runs r ON r.run_id = g.run_id
WHERE g.run_id = $1::uuid AND g.node_id = $3::text AND g.status = 'pending'
  AND g.requested_epoch = $2::bigint AND r.status = 'awaiting_approval'",
};

// The nodes of a run whose gate a person approved: a worker runs them without asking again. An
// approval given before a rework decision reset its node no longer counts: the reworked node
// asks again. The reset nodes are in the rework event's metadata.
const APPROVED_GATES: Query = Query {
    name: "approved_gates",
    sql: "\
SELECT DISTINCT g.node_id FROM gates g
WHERE g.run_id = $1::uuid AND g.status = 'approved'
  AND NOT EXISTS (
      SELECT 1 FROM run_events e
      WHERE e.run_id = g.run_id AND e.event = 'run_rework_requested'
        AND e.occurred_at >= g.decided_at AND e.metadata->'reset' ? g.node_id)",
};

// A pausing run settled by its holder: paused, lease given up, checkpoint kept. The holder
// stopped the nodes still running when it learned of the pause: their rows become failed,
// retryable attempts interrupted by a clean stop, which do not count toward max_attempts
// (clean_interruptions, bounded by the domain's cap), listed in the event. A row an earlier
// claim left running (its holder died) is closed too, and its attempt still counts.
const SETTLE_PAUSE: Query = Query {
    name: "settle_pause",
    sql: concat!(
        "\
WITH fenced AS (
    UPDATE runs r
    SET status = 'paused', stop_kind = 'operator_paused',
        ",
        clear_lease!(),
        ",
        event_seq = r.event_seq + 1, updated_at = now()
    WHERE r.run_id = $1::uuid AND r.lease_epoch = $2::bigint AND r.status = 'pausing'
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq, r.pause_reason
),
interrupted AS (
    UPDATE run_nodes n
    SET status = 'failed', last_error = 'attempt interrupted: paused by an operator',
        last_error_retryable = true, finished_at = now(),
        clean_interruptions = n.clean_interruptions + (n.epoch = fenced.lease_epoch)::int
    FROM fenced
    WHERE n.run_id = fenced.run_id AND n.status = 'running'
    RETURNING n.node_id, n.attempts, n.clean_interruptions, n.epoch
)
INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, reason, stop_kind,
                        metadata)
SELECT run_id, event_seq, tenant_id, 'run_paused', 'paused', lease_epoch, pause_reason,
       'operator_paused',
       jsonb_build_object(
           'interrupted', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                'node_id', i.node_id, 'attempt', i.attempts,
                                'clean_interruptions', i.clean_interruptions)
                              ORDER BY i.node_id), '[]'::jsonb)
                           FROM interrupted i WHERE i.epoch = fenced.lease_epoch))
FROM fenced
RETURNING run_id"
    ),
};

// A user pauses a run. One no worker holds stops at once; a held one becomes pausing, and its
// holder is told at commit (a NOTIFY on the stopped channel, its next heartbeat if that is
// missed): it stops the running nodes and settles the pause. The event records the actor ($4),
// as every operator's move does.
const PAUSE_RUN: Query = Query {
    name: "pause_run",
    sql: concat!(
        "\
WITH target AS (
    SELECT run_id, status AS was FROM runs
    WHERE run_id = $1::uuid AND tenant_id = $2::text
      AND status IN ('queued', 'awaiting_approval', 'running')
    FOR UPDATE
),
paused AS (
    UPDATE runs r
    SET status = CASE WHEN target.was = 'running' THEN 'pausing' ELSE 'paused' END,
        stop_kind = CASE WHEN target.was = 'running' THEN r.stop_kind ELSE 'operator_paused' END,
        pause_reason = left($3::text, 4096), event_seq = r.event_seq + 1, updated_at = now()
    FROM target
    WHERE r.run_id = target.run_id
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq, r.status
)
INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, reason, stop_kind,
                        metadata)
SELECT run_id, event_seq, tenant_id,
       CASE WHEN status = 'pausing' THEN 'run_pause_requested' ELSE 'run_paused' END, status,
       lease_epoch, left($3::text, 4096),
       CASE WHEN status = 'paused' THEN 'operator_paused' END,
       jsonb_build_object('actor', $4::text) || ",
        operator_request_id!(5),
        "
FROM paused
RETURNING run_id, (SELECT ",
        notify_stopped!("run_id"),
        " WHERE run_status = 'pausing') AS notified"
    ),
};

// The holder cannot read the run's stored data (its spec, its checkpoint): the run is blocked
// with the reason for an operator, and the worker goes on with its other runs.
const BLOCK_UNREADABLE: Query = Query {
    name: "block_unreadable",
    sql: concat!(
        "\
WITH fenced AS (
    UPDATE runs r
    SET status = 'blocked', stop_kind = 'unreadable', stop_reason = left($3::text, 4096),
        ",
        clear_lease!(),
        ",
        event_seq = r.event_seq + 1, updated_at = now()
    WHERE r.run_id = $1::uuid AND r.lease_epoch = $2::bigint AND r.status IN ('running', 'pausing')
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq
)
INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, reason, stop_kind)
SELECT run_id, event_seq, tenant_id, 'run_blocked_unreadable', 'blocked', lease_epoch,
       left($3::text, 4096),
       'unreadable'
FROM fenced
RETURNING run_id"
    ),
};

// An operator resumes a paused run, whatever stopped it (a pause, a stale reap, a guardrail),
// in one statement under the row lock. stop_kind and stop_reason are cleared because the run no
// longer stands stopped; the event keeps the stop it resumed from.
// - A run paused while it awaited approval still has its pending gate (suspended while paused):
//   it goes back to awaiting_approval with that same gate, so a person, or a UI holding the
//   gate's id, decides it as before. No worker is involved, so none is woken.
// - Any other run goes back to `queued` with its checkpoint, waking idle workers. queued_at
//   moves to now (or to a pending retry's due time), so the time it spent paused does not count
//   as time waiting in the queue.
// A gate changes only under its run's lock (decide_gate and await_approval take it first), so
// the pending gate read here cannot change before this statement commits.
const RESUME_RUN: Query = Query {
    name: "resume_run",
    sql: concat!(
        "\
WITH target AS (
    SELECT run_id, stop_kind,
           (SELECT g.gate_id FROM gates g WHERE g.run_id = runs.run_id AND g.status = 'pending')
               AS gate_id
    FROM runs
    WHERE run_id = $1::uuid AND tenant_id = $2::text AND status = 'paused'
    FOR UPDATE
),
resumed AS (
    UPDATE runs r
    SET status = CASE WHEN target.gate_id IS NULL THEN 'queued' ELSE 'awaiting_approval' END,
        queue_reason = CASE WHEN target.gate_id IS NULL THEN 'resumed' END,
        resume_reason = left($3::text, 4096),
        queued_at = CASE WHEN target.gate_id IS NULL
                         THEN greatest(now(), coalesce(r.retry_after, now())) ELSE r.queued_at END,
        stop_kind = NULL, stop_reason = NULL, event_seq = r.event_seq + 1, updated_at = now()
    FROM target
    WHERE r.run_id = target.run_id
    RETURNING r.run_id, r.tenant_id, r.status, r.lease_epoch, r.event_seq,
              target.stop_kind AS was_stop_kind, target.gate_id
)
INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, reason, metadata)
SELECT run_id, event_seq, tenant_id, 'run_resumed', status, lease_epoch, left($3::text, 4096),
       jsonb_build_object('stop_kind', was_stop_kind, 'actor', $4::text)
       || ",
        operator_request_id!(5),
        "
       || CASE WHEN gate_id IS NULL THEN '{}'::jsonb
               ELSE jsonb_build_object('gate_id', gate_id) END
FROM resumed
RETURNING run_id, (SELECT ",
        notify_queued!(),
        " WHERE run_status = 'queued') AS notified"
    ),
};

// An operator requeues a failed or blocked run from its checkpoint, in one statement under the
// row lock, waking idle workers. Completed nodes keep their rows and outputs and do not run
// again. Every other row is deleted: failed nodes (even those out of attempts), the skipped
// nodes downstream of them, and running rows (attempts a block or failure interrupted). A node
// without a row is pending, so the ready rule runs each of them again with a full attempt
// budget: the recover is the operator's explicit grant of new attempts, and the attempts made
// stay in the history (the node events, and the `reset` list of this event). The stop, the
// failure and the poison guard's count are cleared. A compacted run (V20) has lost its inputs and
// its completed nodes' outputs, which the nodes left to run would read: it is never recovered.
const RECOVER_RUN: Query = Query {
    name: "recover_run",
    sql: concat!(
        "\
WITH target AS (
    SELECT run_id, status AS was, stop_kind, stop_reason FROM runs
    WHERE run_id = $1::uuid AND tenant_id = $2::text AND status IN ('failed', 'blocked')
      ",
        since_schema!(20, "AND compacted_at IS NULL"),
        "
    FOR UPDATE
),
reset AS (
    DELETE FROM run_nodes n USING target
    WHERE n.run_id = target.run_id AND n.status <> 'completed'
    RETURNING n.node_id, n.status, n.attempts
),
recovered AS (
    UPDATE runs r
    SET status = 'queued', queue_reason = 'recovered', resume_reason = left($3::text, 4096),
        queued_at = now(), retry_after = NULL, retry_node_id = NULL, retry_attempt = NULL,
        retry_backoff_ms = NULL, stop_kind = NULL, stop_reason = NULL, failed_node_id = NULL,
        failed_attempt = NULL, finished_at = NULL, expired_claims = 0,
        event_seq = r.event_seq + 1, updated_at = now()
    FROM target
    WHERE r.run_id = target.run_id
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq, target.was,
              target.stop_kind AS was_stop_kind, target.stop_reason AS was_stop_reason
)
INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, reason, metadata)
SELECT run_id, event_seq, tenant_id, 'run_recovered', 'queued', lease_epoch,
       left($3::text, 4096),
       jsonb_build_object(
           'from', was, 'stop_kind', was_stop_kind, 'stop_reason', was_stop_reason,
           'actor', $4::text,
           'reset', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                'node_id', node_id, 'status', status, 'attempts', attempts)
                            ORDER BY node_id), '[]'::jsonb)
                     FROM reset))
       || ",
        operator_request_id!(5),
        "
FROM recovered
RETURNING run_id, (SELECT ",
        notify_queued!(),
        ") AS notified"
    ),
};

// Whether an operator's move carrying this request id ($4) landed on the run: one of the move's
// events ($3) records the id. A retry of a call whose answer was lost is then answered as the
// first was, not refused for the state the first call put the run in. The run's events are
// read by their key; a run has few operator moves.
const OPERATOR_REQUEST_LANDED: Query = Query {
    name: "operator_request_landed",
    sql: "\
SELECT EXISTS (
    SELECT 1 FROM run_events e
    WHERE e.run_id = $1::uuid AND e.tenant_id = $2::text AND e.event = ANY($3::text[])
      AND e.metadata->>'request_id' = $4::text)",
};

pub(super) const QUERIES: &[Query] = &[
    OPERATOR_REQUEST_LANDED,
    AWAIT_APPROVAL,
    PENDING_GATE,
    APPROVED_GATES,
    SETTLE_PAUSE,
    PAUSE_RUN,
    BLOCK_UNREADABLE,
    RESUME_RUN,
    RECOVER_RUN,
];

/// Who asks for an operator's move, why, and under which request id.
pub(super) struct OperatorRequest<'a> {
    /// Recorded in the run's stop or resume reason and in the event.
    pub reason: &'a str,
    /// The caller's name, recorded in the event.
    pub actor: &'a str,
    /// The client's id for this call, recorded in the event, so that a retry of it is answered
    /// as the first call was.
    pub request_id: Option<&'a str>,
}

impl Store {
    /// Stops the run at the gate of `node_id`, releasing the lease; returns the gate's id.
    pub async fn await_approval(
        &self,
        claim: &Claim,
        node_id: &NodeId,
        prompt: &str,
    ) -> Result<Uuid, FenceError> {
        let gate_id = Uuid::now_v7();
        let client = self.client().await?;
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
            &claim.run_id.0,
            &claim.epoch.0,
            &node_id.as_str(),
            &prompt,
            &gate_id,
        ];
        if !AWAIT_APPROVAL.query(&client, &args).await?.is_empty() {
            return Ok(gate_id);
        }
        if let Some(row) = PENDING_GATE
            .query_opt(
                &client,
                &[&claim.run_id.0, &claim.epoch.0, &node_id.as_str()],
            )
            .await?
        {
            return Ok(row.get(0));
        }
        let run = super::outcomes::run_fence(&client, claim).await?;
        if run.epoch == claim.epoch.0 && run.status == "pausing" {
            Err(FenceError::PauseRequested {
                run_id: claim.run_id,
            })
        } else {
            Err(FenceError::LeaseLost {
                run_id: claim.run_id,
                epoch: claim.epoch,
            })
        }
    }

    /// The nodes of `run_id` whose gate was approved.
    pub async fn approved_gates(&self, run_id: RunId) -> Result<Vec<NodeId>, Error> {
        let client = self.client().await?;
        let rows = APPROVED_GATES.query(&client, &[&run_id.0]).await?;
        Ok(rows.iter().map(|row| NodeId(row.get(0))).collect())
    }

    /// Settles a pausing run into `paused`, releasing the lease.
    pub async fn settle_pause(&self, claim: &Claim) -> Result<(), FenceError> {
        self.fenced_stop(SETTLE_PAUSE, claim, None, "paused").await
    }

    /// Blocks a held run whose stored data cannot be read, releasing the lease.
    pub async fn block_unreadable(&self, claim: &Claim, reason: &str) -> Result<(), FenceError> {
        self.fenced_stop(BLOCK_UNREADABLE, claim, Some(reason), "blocked")
            .await
    }

    /// Pauses a run: at once if no worker holds it, after its running nodes if one does.
    pub async fn pause_run(
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
            PAUSE_RUN,
            tenant,
            run_id,
            &request,
            Transition::RequestPause,
            &["run_pause_requested", "run_paused"],
        )
        .await
    }

    /// Resumes a paused run (whatever stopped it): back to `awaiting_approval` with the same
    /// gate if it was paused there, else `queued` with its checkpoint, due at once (or when a
    /// retry it waited for is due). A run in another state is [`RequestError::Transition`].
    pub async fn resume_run(
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
            RESUME_RUN,
            tenant,
            run_id,
            &request,
            Transition::Resume,
            &["run_resumed"],
        )
        .await
    }

    /// Requeues a failed or blocked run from its checkpoint: completed nodes stay done, and every
    /// other node runs again with a full attempt budget. A run in another state is
    /// [`RequestError::Transition`].
    pub async fn recover_run(
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
            RECOVER_RUN,
            tenant,
            run_id,
            &request,
            Transition::Recover,
            &["run_recovered"],
        )
        .await
    }

    /// Runs an operator's conditional statement with the operator's reason, name (the actor
    /// its event records) and request id; zero rows is the transition the run's state forbids,
    /// read back, or [`RequestError::RunNotFound`]. A call whose request id is on one of the
    /// move's `events` already landed (a retry after a lost answer), and succeeds without
    /// moving the run again; so does one that lost a race to its own twin.
    pub(super) async fn operator_move(
        &self,
        sql: Query,
        tenant: &TenantId,
        run_id: RunId,
        request: &OperatorRequest<'_>,
        transition: Transition,
        events: &[&str],
    ) -> Result<(), RequestError> {
        let client = self.client().await?;
        let landed = async |client: &deadpool_postgres::Object| -> Result<bool, Error> {
            let Some(request_id) = request.request_id else {
                return Ok(false);
            };
            let row = OPERATOR_REQUEST_LANDED
                .query_one(client, &[&run_id.0, &tenant.as_str(), &events, &request_id])
                .await?;
            Ok(row.get(0))
        };
        if landed(&client).await? {
            return Ok(());
        }
        let rows = sql
            .query(
                &client,
                &[
                    &run_id.0,
                    &tenant.as_str(),
                    &request.reason,
                    &request.actor,
                    &request.request_id,
                ],
            )
            .await?;
        if !rows.is_empty() || landed(&client).await? {
            return Ok(());
        }
        let run = self.run(tenant, run_id).await?;
        if let Some(compacted_at) = run.compacted_at {
            return Err(RequestError::Compacted {
                run_id,
                compacted_at,
            });
        }
        Err(RequestError::Transition(IllegalTransition {
            from: run.status,
            transition,
        }))
    }

    async fn fenced_stop(
        &self,
        sql: Query,
        claim: &Claim,
        reason: Option<&str>,
        landed_status: &str,
    ) -> Result<(), FenceError> {
        let client = self.client().await?;
        let rows = match reason {
            Some(reason) => {
                sql.query(&client, &[&claim.run_id.0, &claim.epoch.0, &reason])
                    .await?
            }
            None => {
                sql.query(&client, &[&claim.run_id.0, &claim.epoch.0])
                    .await?
            }
        };
        if !rows.is_empty() {
            return Ok(());
        }
        let run = super::outcomes::run_fence(&client, claim).await?;
        if run.epoch == claim.epoch.0 && run.status == landed_status {
            Ok(())
        } else {
            Err(FenceError::LeaseLost {
                run_id: claim.run_id,
                epoch: claim.epoch,
            })
        }
    }
}
