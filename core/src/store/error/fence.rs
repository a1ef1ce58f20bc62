//! A fenced write of a held run that changed nothing.

use super::Error;
use crate::ids::{LeaseEpoch, NodeId, RunId};

/// Why a fenced write of a held run changed nothing: the writer must stop that run's work, or
/// (for [`FenceError::Store`]) may try again while its lease lasts.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
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
    /// The run is gone: deleted while it was held.
    #[error("run {0} not found")]
    RunNotFound(RunId),
    /// The store failed before the fence could answer.
    #[error(transparent)]
    Store(#[from] Error),
}

impl FenceError {
    /// The write may land if sent again: the store failed in a way that passes.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_transient())
    }
}

super::carries_store_failures!(FenceError);
