//! Checks on a handler's failure: which kind, and what its message says.

use leasehold_worker::HandlerError;
use serde_json::Value;

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
