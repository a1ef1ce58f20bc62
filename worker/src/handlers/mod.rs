//! The built-in node kinds.

mod basic;
mod exec;
mod http;

pub use basic::{Approved, Echo, Noop, Sleep};
pub use exec::{Exec, ExecPolicy};
pub use http::Http;

use serde_json::{Map, Value};

use crate::handler::{HandlerError, Registry};

/// A registry with the built-in kinds: `noop`, `echo`, `sleep`, `approval`, `http`, and `exec`.
///
/// `exec` runs programs on the worker's host, so it is registered only when `exec` allows at
/// least one program (the worker's `--exec-allow`); without an allow-list, `exec` nodes fail as an
/// unknown kind. `http` is always there.
pub fn builtin(exec: ExecPolicy) -> Registry {
    let mut registry = Registry::new();
    registry
        .register("noop", Noop)
        .register("echo", Echo)
        .register("sleep", Sleep)
        .register(crate::handler::APPROVAL_KIND, Approved)
        .register("http", Http::new());
    if !exec.allowed_programs.is_empty() {
        registry.register("exec", Exec::new(exec));
    }
    registry
}

/// A node's input as an object holding only `fields`: a misspelt field would otherwise be dropped
/// without a word. `needs` says what the object must carry, for the message.
pub(crate) fn input_object<'a>(
    input: &'a Value,
    fields: &[&str],
    needs: &str,
) -> Result<&'a Map<String, Value>, HandlerError> {
    let object = input.as_object().ok_or_else(|| {
        HandlerError::Terminal(format!(
            "input: must be an object with {needs}, not {input}"
        ))
    })?;
    if let Some(field) = object.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(HandlerError::Terminal(format!(
            "input.{field}: unknown field; expected one of {}",
            fields.join(", ")
        )));
    }
    Ok(object)
}
