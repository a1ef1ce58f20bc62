//! Runs: the state machine every transition follows, which nodes of a run are ready, which of a
//! node's attempts count, and which deadlines a run has missed.

mod attempts;
pub mod deadline;
mod ready;
mod state;

pub use attempts::{Budget, CLEAN_INTERRUPTIONS_CAP, counted_attempts};
pub use ready::{Checkpoint, NodeState, NodeStatus, downstream, ready_nodes};

/// Largest node output stored, as JSON: larger outputs fail the node rather than the database.
pub const MAX_NODE_OUTPUT_BYTES: usize = 1024 * 1024;
pub use state::{IllegalTransition, RunStatus, Step, Transition, UnknownStatus, apply};
