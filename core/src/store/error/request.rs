//! A client's or an operator's request that the store refused.

use super::Error;
use crate::ids::{AutomationId, ClaimantId, NodeId, RunId};

/// Why the store refused a request: the request, not the store, must change for it to succeed
/// (except [`RequestError::Store`], where the store failed).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The run's state forbids the transition.
    #[error(transparent)]
    Transition(#[from] crate::run::IllegalTransition),
    /// No such run (in this tenant).
    #[error("run {0} not found")]
    RunNotFound(RunId),
    /// No such automation in this tenant.
    #[error("automation {0} not found")]
    AutomationNotFound(AutomationId),
    /// The automation exists, without this version.
    #[error("automation {automation_id} has no version {version}; its versions are 1 to {current}")]
    AutomationVersionNotFound {
        /// The automation.
        automation_id: AutomationId,
        /// The version asked for.
        version: i32,
        /// Its current (latest) version.
        current: i32,
    },
    /// An automation with this id exists already.
    #[error("automation {0} already exists")]
    AutomationExists(AutomationId),
    /// The automation is paused and starts no runs.
    #[error("automation {0} is paused and starts no runs")]
    AutomationPaused(AutomationId),
    /// The idempotency key was used before with a different request.
    #[error("idempotency key {key:?} was used with a different request")]
    IdempotencyConflict {
        /// The key.
        key: String,
    },
    /// The automation still has runs that have not finished (queued, running, paused, awaiting
    /// approval, blocked, …): cancel or finish them before deleting it.
    #[error("automation {automation_id} has {unfinished} unfinished runs")]
    AutomationHasUnfinishedRuns {
        /// The automation.
        automation_id: AutomationId,
        /// How many of its runs have not finished.
        unfinished: i64,
    },
    /// No such schedule of this automation (in this tenant).
    #[error("automation {automation_id} has no schedule {schedule_id}")]
    ScheduleNotFound {
        /// The automation.
        automation_id: AutomationId,
        /// The schedule asked for.
        schedule_id: String,
    },
    /// No such gate (in this tenant).
    #[error("gate {0} not found")]
    GateNotFound(uuid::Uuid),
    /// The gate was decided before, by another request.
    #[error("gate {gate_id} was already decided: {status}")]
    GateAlreadyDecided {
        /// The gate.
        gate_id: uuid::Uuid,
        /// What it was decided as (`approved`, `rejected`, `cancelled`).
        status: String,
    },
    /// A rework decision named a node that the run's spec does not have.
    #[error("gate {gate_id}: node {node_id} is not in the run's spec")]
    ReworkNodeNotInSpec {
        /// The gate.
        gate_id: uuid::Uuid,
        /// The unknown node.
        node_id: NodeId,
    },
    /// One request of a batch was refused, and with it the whole batch: nothing was stored.
    #[error("request {index} of the batch: {source}")]
    InBatch {
        /// The refused request's position in the batch, from 0.
        index: usize,
        /// Why it was refused.
        source: Box<RequestError>,
    },
    /// A page token that no listing of this build produced, or one of another listing.
    #[error("bad page token: {0}")]
    BadPageToken(String),
    /// The run is not where the request needs it, though its state allows the move (say, a gate
    /// decided after the run left it).
    #[error("run {run_id}: {reason}")]
    RunConflict {
        /// The run.
        run_id: RunId,
        /// What stands in the way.
        reason: String,
    },
    /// The run was compacted: its inputs and node outputs are gone, so it cannot run again.
    #[error(
        "run {run_id} was compacted at {compacted_at} (past its retention's hot window): its \
         inputs and node outputs are gone, so it cannot be recovered"
    )]
    Compacted {
        /// The run.
        run_id: RunId,
        /// When it was compacted.
        compacted_at: chrono::DateTime<chrono::Utc>,
    },
    /// No worker with this claimant id is registered.
    #[error("worker {0} not found")]
    WorkerNotFound(ClaimantId),
    /// The database's schema has no place for what the request asks yet.
    #[error("{what} need the database migrated to V{version} (leasehold migrate)")]
    NeedsMigration {
        /// What was asked for, in the plural.
        what: &'static str,
        /// The migration that brings it.
        version: i32,
    },
    /// The store failed before it could answer.
    #[error(transparent)]
    Store(#[from] Error),
}

super::carries_store_failures!(RequestError);
