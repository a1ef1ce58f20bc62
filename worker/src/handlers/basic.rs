//! `noop`, `echo` and `sleep`: the kinds examples and tests are made of.

use std::time::Duration;

use serde_json::Value;

use crate::handler::{Context, Handler, HandlerError};

/// Does nothing and returns `null`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

impl Handler for Noop {
    async fn run(&self, _ctx: Context) -> Result<Value, HandlerError> {
        Ok(Value::Null)
    }
}

/// Returns its input.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Handler for Echo {
    async fn run(&self, ctx: Context) -> Result<Value, HandlerError> {
        Ok(ctx.input)
    }
}

/// Waits `input.ms` milliseconds (at most a day), then returns `{"slept_ms": ms}`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sleep;

const SLEEP_MS_MAX: u64 = 86_400_000;

impl Handler for Sleep {
    async fn run(&self, ctx: Context) -> Result<Value, HandlerError> {
        let ms = match ctx.input.get("ms") {
            None => 0,
            Some(v) => v.as_u64().filter(|ms| *ms <= SLEEP_MS_MAX).ok_or_else(|| {
                HandlerError::Terminal(format!(
                    "input.ms must be a whole number of milliseconds up to {SLEEP_MS_MAX}, not {v}"
                ))
            })?,
        };
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(serde_json::json!({ "slept_ms": ms })),
            () = ctx.cancel.cancelled() => Err(HandlerError::Retryable("sleep cancelled".into())),
        }
    }
}

/// The `approval` kind: runs only once its gate was approved, and records that.
#[derive(Debug, Clone, Copy, Default)]
pub struct Approved;

impl Handler for Approved {
    async fn run(&self, _ctx: Context) -> Result<Value, HandlerError> {
        Ok(serde_json::json!({ "approved": true }))
    }
}
