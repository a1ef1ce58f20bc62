//! What can go wrong in the store, typed so that callers can tell a lost lease from bad input.

use tokio_postgres::error::SqlState;

use crate::ids::{AutomationId, LeaseEpoch, NodeId, RunId};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The claim's epoch is no longer the run's, or the run is no longer held: stop, write nothing more.
    #[error("lease lost on run {run_id} (epoch {epoch})")]
    LeaseLost {
        /// The run.
        run_id: RunId,
        /// The epoch the writer held.
        epoch: LeaseEpoch,
    },
    /// The holder's write contradicts the checkpoint (say, starting a node that completed).
    #[error("run {run_id} node {node_id}: {reason}")]
    NodeConflict {
        /// The run.
        run_id: RunId,
        /// The node.
        node_id: NodeId,
        /// What the checkpoint says.
        reason: String,
    },
    /// The holder's write does not fit the run's state (say, completing it while a node runs).
    #[error("run {run_id}: {reason}")]
    RunConflict {
        /// The run.
        run_id: RunId,
        /// What stands in the way.
        reason: String,
    },
    /// A user asked the held run to pause: start nothing new, settle once running nodes finish.
    #[error("run {run_id} is pausing: no new node starts")]
    PauseRequested {
        /// The run.
        run_id: RunId,
    },
    /// No worker with this claimant id is registered.
    #[error("worker {0} not found")]
    WorkerNotFound(crate::ids::ClaimantId),
    /// The run's state forbids the transition.
    #[error(transparent)]
    Transition(#[from] crate::run::IllegalTransition),
    /// No such run (in this tenant).
    #[error("run {0} not found")]
    RunNotFound(RunId),
    /// No such automation (or version) in this tenant.
    #[error("automation {0} not found")]
    AutomationNotFound(AutomationId),
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
    /// A value broke a constraint of the schema (a length, a range).
    #[error("value out of range: {constraint}")]
    OutOfRange {
        /// The constraint the database names.
        constraint: String,
    },
    /// A stored automation spec this build cannot read.
    #[error("stored spec of {automation_id} v{version} is unreadable: {reason}")]
    UnreadableSpec {
        /// The automation.
        automation_id: AutomationId,
        /// The version.
        version: i32,
        /// Why.
        reason: String,
    },
    /// A stored run this build cannot read.
    #[error("stored run {run_id} is unreadable: {reason}")]
    UnreadableRun {
        /// The run.
        run_id: RunId,
        /// Why.
        reason: String,
    },
    /// The database was migrated by a newer build.
    #[error(
        "the database schema is at version {database}, newer than this build knows ({known}); \
         upgrade leasehold before connecting it to this database"
    )]
    SchemaTooNew {
        /// Applied version.
        database: i32,
        /// Highest version this build carries.
        known: i32,
    },
    /// The database lacks migrations this build needs.
    #[error(
        "the database schema is at version {database} but this build needs {known}; \
         run `leasehold migrate` first"
    )]
    SchemaBehind {
        /// Applied version.
        database: i32,
        /// Highest version this build carries.
        known: i32,
    },
    /// The database URL could not be used.
    #[error("bad database URL: {0}")]
    BadDatabaseUrl(String),
    /// A named query failed to prepare.
    #[error("query {name} does not prepare: {source}")]
    BadQuery {
        /// The query's name.
        name: &'static str,
        /// What Postgres said.
        source: tokio_postgres::Error,
    },
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// No connection could be had from the pool.
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// Postgres answered with an error.
    #[error("database error: {0}")]
    Db(tokio_postgres::Error),
    /// The automation still has runs that have not finished (queued, running, paused, awaiting
    /// approval, blocked, …): cancel or finish them before deleting it.
    #[error("automation {automation_id} has {unfinished} unfinished runs")]
    AutomationHasUnfinishedRuns {
        /// The automation.
        automation_id: AutomationId,
        /// How many of its runs have not finished.
        unfinished: i64,
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
    /// A batched statement failed, and every write it carried fails with it.
    #[error("{0}")]
    FlushFailed(std::sync::Arc<Error>),
    /// A write was dropped before it reached the database (its writer stopped); it may be
    /// sent again.
    #[error("write interrupted: {0}")]
    Interrupted(&'static str),
    /// One request of a batch was refused, and with it the whole batch: nothing was stored.
    #[error("request {index} of the batch: {source}")]
    InBatch {
        /// The refused request's position in the batch, from 0.
        index: usize,
        /// Why it was refused.
        source: Box<Error>,
    },
    /// A page token that no listing of this build produced, or one of another listing.
    #[error("bad page token: {0}")]
    BadPageToken(String),
}

impl Error {
    /// The database could not be reached or the connection broke: the same call may succeed
    /// later. Errors Postgres answered with (a constraint, a lost lease) are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Pool(_) => true,
            Self::FlushFailed(e) => e.is_transient(),
            Self::Interrupted(_) => true,
            Self::Db(e) => match e.code() {
                None => true,
                Some(code) => [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::T_R_SERIALIZATION_FAILURE,
                    SqlState::T_R_DEADLOCK_DETECTED,
                ]
                .contains(code),
            },
            _ => false,
        }
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        // A CHECK violation is bad input that slipped past validation; name the constraint.
        if e.code() == Some(&SqlState::CHECK_VIOLATION) {
            let constraint = e
                .as_db_error()
                .and_then(|db| db.constraint())
                .unwrap_or("unnamed")
                .to_owned();
            return Self::OutOfRange { constraint };
        }
        Self::Db(e)
    }
}
