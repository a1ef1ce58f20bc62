//! `noop`, `echo` and `sleep`: the kinds examples and tests are made of.

use std::time::Duration;

use leasehold_core::kinds::SLEEP_MS_MAX;
use serde_json::Value;

use super::schema_of;
use crate::handler::{Context, Handler, HandlerError};

/// Does nothing and returns `null`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

impl Handler for Noop {
    async fn run(&self, _ctx: Context) -> Result<Value, HandlerError> {
        Ok(Value::Null)
    }

    fn input_schema(&self) -> Option<Value> {
        schema_of("noop")
    }
}

/// Returns its input.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Handler for Echo {
    async fn run(&self, ctx: Context) -> Result<Value, HandlerError> {
        Ok(ctx.input)
    }

    fn input_schema(&self) -> Option<Value> {
        schema_of("echo")
    }
}

/// Waits `input.ms` milliseconds (at most a day; none is 0), then returns `{"slept_ms": ms}`.
/// The input is an object with only `ms`, or nothing at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sleep;

impl Sleep {
    /// The milliseconds to wait. A misspelt field (`msec`) is refused rather than read as no
    /// wait at all.
    fn ms(input: &Value) -> Result<u64, HandlerError> {
        if input.is_null() {
            return Ok(0);
        }
        let input = super::input_object(input, &["ms"], "ms, or nothing")?;
        match input.get("ms") {
            None => Ok(0),
            Some(v) => v.as_u64().filter(|ms| *ms <= SLEEP_MS_MAX).ok_or_else(|| {
                HandlerError::Terminal(format!(
                    "input.ms: must be a whole number of milliseconds up to {SLEEP_MS_MAX}, not {v}"
                ))
            }),
        }
    }
}

impl Handler for Sleep {
    async fn run(&self, ctx: Context) -> Result<Value, HandlerError> {
        let ms = Self::ms(&ctx.input)?;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(serde_json::json!({ "slept_ms": ms })),
            () = ctx.cancel.cancelled() => Err(HandlerError::Retryable("sleep cancelled".into())),
        }
    }

    fn input_schema(&self) -> Option<Value> {
        schema_of("sleep")
    }
}

/// The `approval` kind: runs only once its gate was approved, and records that.
#[derive(Debug, Clone, Copy, Default)]
pub struct Approved;

impl Handler for Approved {
    async fn run(&self, _ctx: Context) -> Result<Value, HandlerError> {
        Ok(serde_json::json!({ "approved": true }))
    }

    fn input_schema(&self) -> Option<Value> {
        schema_of(crate::handler::APPROVAL_KIND)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::handlers::tests::{agree, ctx};

    #[test]
    fn sleep_and_its_schema_accept_the_same_inputs() {
        agree(
            &Sleep,
            |input| Sleep::ms(input).is_ok(),
            &[
                Value::Null,
                json!({}),
                json!({"ms": 0}),
                json!({"ms": 86_400_000}),
                json!({"ms": 86_400_001}),
                json!({"ms": -5}),
                json!({"ms": "100"}),
                json!({"ms": 1.5}),
                json!({"ms": 100.0}),
                json!({"msec": 100}),
                json!({"ms": 1, "label": "x"}),
                json!(100),
                json!("100"),
                json!([100]),
            ],
        );
    }

    #[tokio::test]
    async fn kinds_that_take_any_input_run_with_any_input() {
        let inputs = [
            Value::Null,
            json!(1),
            json!("x"),
            json!([1]),
            json!({"a": {}}),
        ];
        for input in &inputs {
            agree(&Noop, |_| true, std::slice::from_ref(input));
            agree(&Echo, |_| true, std::slice::from_ref(input));
            agree(&Approved, |_| true, std::slice::from_ref(input));
            assert_eq!(Noop.run(ctx(input.clone())).await, Ok(Value::Null));
            assert_eq!(Echo.run(ctx(input.clone())).await, Ok(input.clone()));
            assert!(Approved.run(ctx(input.clone())).await.is_ok());
        }
    }
}
