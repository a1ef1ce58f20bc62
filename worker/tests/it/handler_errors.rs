//! What the handler tests share: a node's context, and checks on a handler's failure (which kind,
//! and what its message says).

use std::collections::BTreeMap;

use leasehold_core::ids::{LeaseEpoch, NodeId, RunId};
use leasehold_worker::{Context, HandlerError};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The context of attempt `attempt` of node `node` of a fresh run, under epoch 1, with `input`,
/// no run inputs and no upstream outputs.
pub fn context(node: &str, attempt: u32, input: Value) -> Context {
    let run_id = RunId::new();
    let node_id = NodeId::from(node);
    Context {
        idempotency_key: Context::idempotency_key_for(run_id, &node_id, 0),
        run_id,
        node_id,
        attempt,
        epoch: LeaseEpoch(1),
        input,
        run_inputs: Value::Null,
        upstream: BTreeMap::new(),
        cancel: CancellationToken::new(),
        runtime_context: Default::default(),
    }
}

pub fn assert_retryable(result: &Result<Value, HandlerError>, needle: &str) {
    assert!(
        matches!(result, Err(HandlerError::Retryable(m)) if m.contains(needle)),
        "want retryable with {needle:?}, got {result:?}"
    );
}

pub fn assert_terminal(result: &Result<Value, HandlerError>, needle: &str) {
    assert!(
        matches!(result, Err(HandlerError::Terminal(m)) if m.contains(needle)),
        "want terminal with {needle:?}, got {result:?}"
    );
}
