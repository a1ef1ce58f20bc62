//! Runs: the state machine every transition follows, and which nodes of a run are ready.

mod ready;
mod state;

pub use ready::{Checkpoint, NodeState, NodeStatus, ready_nodes};
pub use state::{IllegalTransition, RunStatus, Step, Transition, UnknownStatus, apply};
