//! The built-in node kinds.

mod basic;
mod exec;
mod http;

pub use basic::{Approved, Echo, Noop, Sleep};
pub use exec::{Exec, ExecAllow, ExecAllowError, ExecPolicy, ExecUser, ExecUserError};
pub use http::{AddressClass, Http, HttpAllow, HttpAllowError, HttpPolicy, MAX_REDIRECTS, Refused};

use serde_json::{Map, Value};

use crate::handler::{HandlerError, Registry};

/// A registry with the built-in kinds: `noop`, `echo`, `sleep`, `approval`, `http` (public
/// addresses only), and `exec`; [`builtin_with`] sets what `http` may reach.
///
/// `exec` runs programs on the worker's host, so it is registered only when `exec` allows at
/// least one program (the worker's `--exec-allow`); without an allow-list, `exec` nodes fail as an
/// unknown kind. `http` is always there.
pub fn builtin(exec: ExecPolicy) -> Registry {
    builtin_with(exec, HttpPolicy::default())
}

/// [`builtin`], with `http` reaching public addresses and what `http` allows.
pub fn builtin_with(exec: ExecPolicy, http: HttpPolicy) -> Registry {
    let mut registry = Registry::new();
    registry
        .register("noop", Noop)
        .register("echo", Echo)
        .register("sleep", Sleep)
        .register(crate::handler::APPROVAL_KIND, Approved)
        .register("http", Http::with_policy(http));
    if !exec.allowed_programs.is_empty() {
        registry.register("exec", Exec::new(exec));
    }
    registry
}

/// The built-in schema of `kind`, as its handler's [`Handler::input_schema`]: the domain holds
/// it, so that coordinators know it without depending on the worker.
///
/// [`Handler::input_schema`]: crate::handler::Handler::input_schema
fn schema_of(kind: &str) -> Option<Value> {
    leasehold_core::kinds::builtin_input_schema(kind).map(leasehold_core::kinds::Schema::into_value)
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

#[cfg(test)]
pub(crate) mod tests {
    use leasehold_core::ids::{LeaseEpoch, NodeId, RunId};
    use leasehold_core::kinds::Schema;
    use serde_json::{Value, json};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::handler::{Context, Handler};

    /// Checks that `handler`'s declared schema and its own input parsing (`accepts`) agree on
    /// every case: both accept it, or both refuse it. The cases of each kind list inputs of both
    /// sorts, so that schema and handler cannot drift apart unnoticed.
    pub(crate) fn agree(handler: &impl Handler, accepts: impl Fn(&Value) -> bool, cases: &[Value]) {
        let schema = Schema::new(
            handler
                .input_schema()
                .expect("a built-in declares a schema"),
        )
        .expect("a valid schema");
        for input in cases {
            let violations = schema.validate(input);
            assert_eq!(
                violations.is_empty(),
                accepts(input),
                "{input}: the schema says {violations:?}, the handler the opposite"
            );
        }
    }

    /// A context for one attempt with `input`.
    pub(crate) fn ctx(input: Value) -> Context {
        Context {
            run_id: RunId::new(),
            node_id: NodeId::from("n"),
            attempt: 1,
            epoch: LeaseEpoch(1),
            idempotency_key: "key".into(),
            input,
            run_inputs: json!({}),
            upstream: Default::default(),
            cancel: CancellationToken::new(),
            runtime_context: Default::default(),
        }
    }

    #[test]
    fn every_builtin_kind_declares_the_domains_schema() {
        let registry = builtin(ExecPolicy {
            allowed_programs: vec!["sh".into()],
            ..ExecPolicy::default()
        });
        let kinds: Vec<String> = registry.kinds();
        assert_eq!(kinds, leasehold_core::kinds::BUILTIN_KINDS);
        for kind in &kinds {
            assert_eq!(
                registry.input_schema(kind),
                leasehold_core::kinds::builtin_input_schema(kind).as_ref(),
                "{kind}"
            );
        }
    }
}
