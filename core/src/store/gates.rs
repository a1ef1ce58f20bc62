//! Approval gates as operators see them: reading, listing, and deciding them.
//!
//! A gate is requested by the worker that reaches a gated node ([`Store::await_approval`]); the
//! run then waits in `awaiting_approval`, holding no lease. A decision flips the gate and moves
//! the run in one statement, so exactly one of several concurrent deciders wins.

use std::collections::HashSet;
use std::fmt;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::listing::Listing;
use super::query::{Query, notify_queued};
use super::{Cursor, Error, Page, PageRequest, RequestError, Store};
use crate::ids::{AutomationId, NodeId, RunId, TenantId};
use crate::run::{self, RunStatus, Transition};

/// Where a gate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GateStatus {
    /// Waiting for a decision.
    Pending,
    /// Pending, but its run was paused: only a cancel decision is taken until the run is
    /// resumed and awaits the same gate again. Stored as `pending`; shown so that nobody is
    /// asked to approve a run that is not waiting.
    Suspended,
    /// Approved: the gated node runs.
    Approved,
    /// Sent back for rework: the named nodes run again, and the gate is asked again.
    Rejected,
    /// Cancelled with its run.
    Cancelled,
}

impl GateStatus {
    /// The name stored in `gates.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Suspended => "suspended",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }

    /// Not decided yet.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Suspended)
    }

    /// The status stored as `s`, if this build knows it; `suspended` is never stored.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Approved,
            Self::Rejected,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }
}

impl fmt::Display for GateStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A gate as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateRecord {
    /// The gate.
    pub gate_id: Uuid,
    /// The run it stops.
    pub run_id: RunId,
    /// The gated node, which runs once the gate is approved.
    pub node_id: NodeId,
    /// What the approver is asked.
    pub prompt: String,
    /// Where it stands.
    pub status: GateStatus,
    /// When the worker asked, by the database's clock.
    pub requested_at: DateTime<Utc>,
    /// When it was decided.
    pub decided_at: Option<DateTime<Utc>>,
    /// Who decided it.
    pub decided_by: Option<String>,
    /// Why, as the decider said.
    pub reason: Option<String>,
    /// The request id of the decision, which makes repeating it safe.
    pub request_id: Option<String>,
    /// The staleness sweep marked it as waiting too long.
    pub stale: bool,
    /// For a rework decision, the nodes named to run again (their downstream ran again too).
    /// Read from the decision's event: empty once retention dropped that event.
    pub rework_nodes: Vec<NodeId>,
}

/// What a decider decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionKind {
    /// The gated node runs; the run is queued again.
    Approve,
    /// The named nodes and every node downstream of them run again, then the gate is asked
    /// again; the run is queued again and the gate is `rejected`.
    Rework {
        /// Nodes of the run's spec to run again; an empty list only asks again.
        nodes: Vec<NodeId>,
    },
    /// The run is cancelled, and the gate with it.
    Cancel,
}

impl DecisionKind {
    fn as_str(&self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Rework { .. } => "rework",
            Self::Cancel => "cancel",
        }
    }

    /// The gate's status once this decision lands.
    pub fn gate_status(&self) -> GateStatus {
        match self {
            Self::Approve => GateStatus::Approved,
            Self::Rework { .. } => GateStatus::Rejected,
            Self::Cancel => GateStatus::Cancelled,
        }
    }

    /// The run's transition.
    pub fn transition(&self) -> Transition {
        match self {
            Self::Approve => Transition::Approve,
            Self::Rework { .. } => Transition::Rework,
            Self::Cancel => Transition::Cancel,
        }
    }

    /// The `run_events.event` name the decision records.
    pub fn event(&self) -> &'static str {
        self.transition().event()
    }
}

/// A decision on a gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The gate.
    pub gate_id: Uuid,
    /// What is decided.
    pub kind: DecisionKind,
    /// Why, for the history.
    pub reason: Option<String>,
    /// Who decides (a user or token name); at most 256 characters.
    pub decided_by: String,
    /// Makes a repeat safe: repeating a decision that won, with the same request id, returns the
    /// same gate instead of [`RequestError::GateAlreadyDecided`]. At most 256 characters.
    pub request_id: Option<String>,
}

/// The columns of a gate record, `g` being the gates row; every query that reads one uses them.
/// A pending gate whose run is paused is shown suspended.
macro_rules! gate_columns {
    () => {
        "g.gate_id, g.run_id, g.node_id, g.prompt, g.status, g.requested_at, g.decided_at,
       g.decided_by, g.decision_reason, g.request_id, g.stale_marked_at IS NOT NULL AS stale,
       g.status = 'pending' AND EXISTS (
           SELECT 1 FROM runs paused WHERE paused.run_id = g.run_id AND paused.status = 'paused'
       ) AS suspended"
    };
}

/// A rejected gate's rework list, from its decision event: the schema has no column for it,
/// and the history is where a decision's details live.
macro_rules! rework_nodes {
    () => {
        "CASE WHEN g.status = 'rejected' THEN (
           SELECT e.metadata -> 'nodes' FROM run_events e
           WHERE e.run_id = g.run_id AND e.event = 'run_rework_requested'
             AND e.metadata ->> 'gate_id' = g.gate_id::text
           ORDER BY e.seq LIMIT 1) END AS rework_nodes"
    };
}

// One gate by id, scoped to its tenant, with what a decision needs of its run: the run's status
// (to explain a refusal) and its pinned automation version (to check a rework's nodes).
const GATE: Query = Query {
    name: "gate",
    sql: concat!(
        "SELECT ",
        gate_columns!(),
        ", ",
        rework_nodes!(),
        ",
       r.status AS run_status, r.automation_id, r.automation_version
FROM gates g JOIN runs r ON r.run_id = g.run_id
WHERE g.gate_id = $1::uuid AND g.tenant_id = $2::text"
    ),
};

// A page of a tenant's pending gates, oldest first: the queue of decisions to make. Walks
// gates_pending_idx, which holds pending gates only. The keyset condition is split so its
// requested_at half is an index bound; gate_id breaks ties.
const LIST_PENDING_GATES: Query = Query {
    name: "list_pending_gates",
    sql: concat!(
        "SELECT ",
        gate_columns!(),
        ", NULL::jsonb AS rework_nodes
FROM gates g
WHERE g.tenant_id = $1::text AND g.status = 'pending'
  AND g.requested_at >= coalesce($2::timestamptz, '-infinity')
  AND (g.requested_at > coalesce($2::timestamptz, '-infinity') OR g.gate_id > $3::uuid)
ORDER BY g.requested_at, g.gate_id
LIMIT $4::int"
    ),
};

// A page of all of a tenant's gates, decided ones included, newest first: the history. There is
// no index on (tenant_id, requested_at) for decided gates, so this sorts the tenant's gates;
// gates are few next to runs.
const LIST_GATES: Query = Query {
    name: "list_gates",
    sql: concat!(
        "SELECT ",
        gate_columns!(),
        ", ",
        rework_nodes!(),
        "
FROM gates g
WHERE g.tenant_id = $1::text
  AND g.requested_at <= coalesce($2::timestamptz, 'infinity')
  AND (g.requested_at < coalesce($2::timestamptz, 'infinity') OR g.gate_id < $3::uuid)
ORDER BY g.requested_at DESC, g.gate_id DESC
LIMIT $4::int"
    ),
};

// Every gate of a run, oldest first, by gates_run_idx. The left join from the run tells an
// unknown run (no row) from a run without gates (one row of nulls).
const GATES_OF_RUN: Query = Query {
    name: "gates_of_run",
    sql: concat!(
        "SELECT ",
        gate_columns!(),
        ", ",
        rework_nodes!(),
        "
FROM runs r LEFT JOIN gates g ON g.run_id = r.run_id
WHERE r.run_id = $1::uuid AND r.tenant_id = $2::text
ORDER BY g.requested_at, g.gate_id"
    ),
};

// One statement decides a gate and moves its run. The run row is locked first, then the gate
// row (resume_run locks in the same order), and each is re-checked under its lock: the run
// still awaits approval (or, for a cancel, is paused there) and the gate is still pending. Of
// concurrent deciders the first takes the locks; the others wait, find the run moved on when
// re-checking, and write nothing. $3 picks the decision:
// - approve: gate approved, run queued ('gate_approved', run_gate_approved);
// - rework: gate rejected, run queued ('rework_requested', run_rework_requested), and the
//   run_nodes rows of the reset nodes ($8: the named nodes $7 and their downstream, computed by
//   the caller from the spec) deleted, so those nodes are pending and run again; the gated node
//   has no approval on record, so its worker asks again through a new gate;
// - cancel: gate cancelled, run cancelled as cancel_run would (run_cancelled).
// A queued run wakes idle workers; queued_at moves to now, so the time spent waiting on a
// person does not count as queueing.
const DECIDE_GATE: Query = Query {
    name: "decide_gate",
    sql: concat!(
        "\
WITH run AS (
    SELECT r.run_id FROM runs r
    WHERE r.run_id = (SELECT run_id FROM gates WHERE gate_id = $1::uuid AND tenant_id = $2::text)
      AND r.tenant_id = $2::text
      AND (r.status = 'awaiting_approval' OR ($3::text = 'cancel' AND r.status = 'paused'))
    FOR UPDATE
),
gate AS (
    SELECT g.gate_id FROM gates g JOIN run ON run.run_id = g.run_id
    WHERE g.gate_id = $1::uuid AND g.status = 'pending'
    FOR UPDATE OF g
),
decided AS (
    UPDATE gates g
    SET status = CASE $3::text WHEN 'approve' THEN 'approved' WHEN 'rework' THEN 'rejected'
                               ELSE 'cancelled' END,
        decided_at = now(), decided_by = $5::text, decision_reason = left($4::text, 4096),
        request_id = $6::text
    FROM gate
    WHERE g.gate_id = gate.gate_id
    RETURNING g.*
),
moved AS (
    UPDATE runs r
    SET status = CASE WHEN $3::text = 'cancel' THEN 'cancelled' ELSE 'queued' END,
        queue_reason = CASE $3::text WHEN 'approve' THEN 'gate_approved'
                                     WHEN 'rework' THEN 'rework_requested'
                                     ELSE r.queue_reason END,
        queued_at = CASE WHEN $3::text = 'cancel' THEN r.queued_at ELSE now() END,
        stop_kind = CASE WHEN $3::text = 'cancel' THEN 'cancelled' ELSE r.stop_kind END,
        stop_reason = CASE WHEN $3::text = 'cancel' THEN left($4::text, 4096)
                           ELSE r.stop_reason END,
        finished_at = CASE WHEN $3::text = 'cancel' THEN now() ELSE r.finished_at END,
        retry_after = CASE WHEN $3::text = 'cancel' THEN NULL ELSE r.retry_after END,
        event_seq = r.event_seq + 1, updated_at = now()
    FROM decided
    WHERE r.run_id = decided.run_id
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq, r.status
),
reworked AS (
    DELETE FROM run_nodes n USING moved
    WHERE $3::text = 'rework' AND n.run_id = moved.run_id AND n.node_id = ANY($8::text[])
),
event AS (
    INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, node_id, reason,
                            stop_kind, metadata)
    SELECT moved.run_id, moved.event_seq, moved.tenant_id,
           CASE $3::text WHEN 'approve' THEN 'run_gate_approved'
                         WHEN 'rework' THEN 'run_rework_requested'
                         ELSE 'run_cancelled' END,
           moved.status,
           moved.lease_epoch, decided.node_id, left($4::text, 4096),
           CASE WHEN $3::text = 'cancel' THEN 'cancelled' END,
           jsonb_build_object('gate_id', decided.gate_id, 'decided_by', $5::text,
                              'request_id', $6::text)
           || CASE WHEN $3::text = 'rework'
                   THEN jsonb_build_object('nodes', $7::text[], 'reset', $8::text[])
                   ELSE '{}'::jsonb END
    FROM moved, decided
)
SELECT ",
        gate_columns!(),
        ", NULL::jsonb AS rework_nodes,
       (SELECT ",
        notify_queued!(),
        " FROM moved WHERE moved.status = 'queued')
           AS notified
FROM decided g"
    ),
};

pub(super) const QUERIES: &[Query] = &[
    GATE,
    LIST_PENDING_GATES,
    LIST_GATES,
    GATES_OF_RUN,
    DECIDE_GATE,
];

/// A gate with the run facts a decision needs.
struct GateInRun {
    gate: GateRecord,
    run_status: RunStatus,
    automation_id: AutomationId,
    automation_version: i32,
}

impl Store {
    /// A gate, in this tenant.
    pub async fn gate(&self, tenant: &TenantId, gate_id: Uuid) -> Result<GateRecord, RequestError> {
        Ok(self.gate_in_run(tenant, gate_id).await?.gate)
    }

    /// A page of the tenant's gates: the pending ones oldest first, or with `include_decided`
    /// every gate, newest first. The two orders have page tokens of their own.
    pub async fn list_gates(
        &self,
        tenant: &TenantId,
        include_decided: bool,
        page: &PageRequest,
    ) -> Result<Page<GateRecord>, RequestError> {
        let (listing, sql) = if include_decided {
            (Listing::Gates, LIST_GATES)
        } else {
            (Listing::PendingGates, LIST_PENDING_GATES)
        };
        let (at, id) = page.position(listing)?;
        let id: Option<Uuid> = id
            .map(|id| {
                id.parse()
                    .map_err(|_| RequestError::BadPageToken("bad gate id".to_owned()))
            })
            .transpose()?;
        let client = self.client().await?;
        let rows = sql
            .query(&client, &[&tenant.as_str(), &at, &id, &page.fetch()])
            .await?;
        let gates = rows.iter().map(read_gate).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::cut(gates, page, |gate| {
            Cursor::new(listing, gate.requested_at, gate.gate_id.to_string())
        }))
    }

    /// Every gate of a run, oldest first. An unknown run is [`RequestError::RunNotFound`].
    pub async fn gates_of_run(
        &self,
        tenant: &TenantId,
        run_id: RunId,
    ) -> Result<Vec<GateRecord>, RequestError> {
        let client = self.client().await?;
        let rows = GATES_OF_RUN
            .query(&client, &[&run_id.0, &tenant.as_str()])
            .await?;
        if rows.is_empty() {
            return Err(RequestError::RunNotFound(run_id));
        }
        rows.iter()
            .filter(|row| row.get::<_, Option<Uuid>>("gate_id").is_some())
            .map(|row| read_gate(row).map_err(RequestError::from))
            .collect()
    }

    /// Decides a pending gate and moves its run, in one statement; returns the decided gate.
    ///
    /// Of concurrent deciders exactly one wins. The others get [`RequestError::GateAlreadyDecided`],
    /// except a repeat of the winning request (same `request_id`, same decision), which gets the
    /// same gate back. A gate whose run no longer waits on it is [`RequestError::Transition`]; a rework
    /// naming a node the run's spec lacks is [`RequestError::ReworkNodeNotInSpec`] and changes nothing.
    ///
    /// # Locks
    /// Locks the run's row, then the gate's, for the statement only.
    pub async fn decide_gate(
        &self,
        tenant: &TenantId,
        decision: &Decision,
    ) -> Result<GateRecord, RequestError> {
        let (named, reset) = match &decision.kind {
            DecisionKind::Rework { nodes } => {
                let found = self.gate_in_run(tenant, decision.gate_id).await?;
                if !found.gate.status.is_open() {
                    return settled(found, decision);
                }
                let reset = self.rework_reset(tenant, &found, nodes).await?;
                let named: Vec<String> = nodes.iter().map(|n| n.0.clone()).collect();
                (named, reset)
            }
            DecisionKind::Approve | DecisionKind::Cancel => (Vec::new(), Vec::new()),
        };
        let client = self.client().await?;
        let rows = DECIDE_GATE
            .query(
                &client,
                &[
                    &decision.gate_id,
                    &tenant.as_str(),
                    &decision.kind.as_str(),
                    &decision.reason,
                    &decision.decided_by,
                    &decision.request_id,
                    &named,
                    &reset,
                ],
            )
            .await?;
        if let Some(row) = rows.first() {
            let mut gate = read_gate(row)?;
            if let DecisionKind::Rework { nodes } = &decision.kind {
                gate.rework_nodes = nodes.clone();
            }
            return Ok(gate);
        }
        let found = self.gate_in_run(tenant, decision.gate_id).await?;
        settled(found, decision)
    }

    async fn gate_in_run(
        &self,
        tenant: &TenantId,
        gate_id: Uuid,
    ) -> Result<GateInRun, RequestError> {
        let client = self.client().await?;
        let row = GATE
            .query_opt(&client, &[&gate_id, &tenant.as_str()])
            .await?
            .ok_or(RequestError::GateNotFound(gate_id))?;
        let gate = read_gate(&row)?;
        let run_status =
            row.get::<_, &str>("run_status")
                .parse()
                .map_err(|e: run::UnknownStatus| Error::UnreadableRun {
                    run_id: gate.run_id,
                    reason: e.to_string(),
                })?;
        Ok(GateInRun {
            gate,
            run_status,
            automation_id: AutomationId(row.get("automation_id")),
            automation_version: row.get("automation_version"),
        })
    }

    /// The nodes a rework resets, in spec order: the named ones and everything downstream of
    /// them, from the spec the run pinned.
    async fn rework_reset(
        &self,
        tenant: &TenantId,
        found: &GateInRun,
        nodes: &[NodeId],
    ) -> Result<Vec<String>, RequestError> {
        let spec = self
            .automation_version(tenant, &found.automation_id, Some(found.automation_version))
            .await?
            .spec;
        let mut reset: HashSet<&NodeId> = HashSet::new();
        for node in nodes {
            if spec.node(node).is_none() {
                return Err(RequestError::ReworkNodeNotInSpec {
                    gate_id: found.gate.gate_id,
                    node_id: node.clone(),
                });
            }
            reset.insert(node);
            reset.extend(run::downstream(&spec, node));
        }
        Ok(spec
            .nodes
            .iter()
            .filter(|n| reset.contains(&n.id))
            .map(|n| n.id.0.clone())
            .collect())
    }
}

/// The answer for a decision that did not land, from the gate and run as they stand now.
fn settled(found: GateInRun, decision: &Decision) -> Result<GateRecord, RequestError> {
    let gate = found.gate;
    if !gate.status.is_open() {
        return match &decision.request_id {
            Some(key) if gate.request_id.as_ref() == Some(key) => {
                if gate.status == decision.kind.gate_status() {
                    Ok(gate)
                } else {
                    Err(RequestError::IdempotencyConflict { key: key.clone() })
                }
            }
            _ => Err(RequestError::GateAlreadyDecided {
                gate_id: gate.gate_id,
                status: gate.status.as_str().to_owned(),
            }),
        };
    }
    // The gate is pending but its run does not wait on it.
    let transition = decision.kind.transition();
    match run::apply(found.run_status, transition) {
        Err(illegal) => Err(RequestError::Transition(illegal)),
        // The state machine allows the edge, but not through this gate: the run left it (say,
        // a pause and a resume) without the gate being decided.
        Ok(_) => Err(RequestError::RunConflict {
            run_id: gate.run_id,
            reason: format!(
                "the run is {}, not waiting at gate {}",
                found.run_status, gate.gate_id
            ),
        }),
    }
}

fn read_gate(row: &Row) -> Result<GateRecord, Error> {
    let run_id = RunId(row.get("run_id"));
    let unreadable = |reason: String| Error::UnreadableRun { run_id, reason };
    let status_text: &str = row.get("status");
    let status = match GateStatus::parse(status_text) {
        Some(GateStatus::Pending) if row.get::<_, bool>("suspended") => GateStatus::Suspended,
        Some(status) => status,
        None => return Err(unreadable(format!("unknown gate status {status_text:?}"))),
    };
    let rework_nodes = match row.get::<_, Option<serde_json::Value>>("rework_nodes") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(value) => serde_json::from_value(value)
            .map_err(|e| unreadable(format!("unreadable rework nodes: {e}")))?,
    };
    Ok(GateRecord {
        gate_id: row.get("gate_id"),
        run_id,
        node_id: NodeId(row.get("node_id")),
        prompt: row.get("prompt"),
        status,
        requested_at: row.get("requested_at"),
        decided_at: row.get("decided_at"),
        decided_by: row.get("decided_by"),
        reason: row.get("decision_reason"),
        request_id: row.get("request_id"),
        stale: row.get("stale"),
        rework_nodes,
    })
}
