//! The handler contract: what a node kind receives, and how it says it failed.
//!
//! Users add node kinds by implementing [`Handler`] and registering it on a [`Registry`] in their
//! own worker binary (see `examples/custom-worker`).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::ids::{LeaseEpoch, NodeId, RunId};
use leasehold_core::kinds::{Schema, SchemaError};
use leasehold_core::store::AdvertisedKind;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::runtime_context::RuntimeContext;

/// The kind of a node that is only a gate: it asks for approval, then completes.
pub const APPROVAL_KIND: &str = leasehold_core::spec::APPROVAL_KIND;

/// What a handler gets for one attempt of one node.
#[derive(Debug, Clone)]
pub struct Context {
    /// The run.
    pub run_id: RunId,
    /// The node.
    pub node_id: NodeId,
    /// This attempt's number, from 1; interrupted attempts count.
    pub attempt: u32,
    /// The epoch of the claim the attempt runs under.
    pub epoch: LeaseEpoch,
    /// The same for every attempt of this node in this run, on any worker: hand it to external
    /// services so that a retried or resumed attempt is not applied twice. It changes when an
    /// operator resets the node (a recover, a rework), because the node then runs again on
    /// purpose, and a provider must not answer it with the old execution's result.
    pub idempotency_key: String,
    /// The node's `input` from the spec.
    pub input: Value,
    /// The run's inputs, given when it was started.
    pub run_inputs: Value,
    /// The outputs of the nodes this one depends on.
    pub upstream: BTreeMap<NodeId, Value>,
    /// Cancelled when the attempt must stop at once: timeout, cancel, lease lost, shutdown.
    /// A handler that ignores it is dropped at its next await point.
    pub cancel: CancellationToken,
    /// The context the run's automation requires (`requires_context`), as this worker holds
    /// it (`--context`); nothing else the worker holds.
    pub runtime_context: RuntimeContext,
}

impl Context {
    /// The key for `node_id` of `run_id` after the node was reset `resets` times, as
    /// [`Context::idempotency_key`] carries it. A node never reset keeps the key earlier
    /// releases gave it, so that an attempt retried across a rolling upgrade keeps its key.
    pub fn idempotency_key_for(run_id: RunId, node_id: &NodeId, resets: u32) -> String {
        // Built by hand: every attempt makes one, and `format!` cost several times more.
        let mut key = String::with_capacity(64 + node_id.as_str().len());
        key.push_str("leasehold-");
        key.push_str(
            run_id
                .0
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer()),
        );
        key.push('-');
        key.push_str(node_id.as_str());
        if resets > 0 {
            key.push_str("-reset");
            key.push_str(&resets.to_string());
        }
        key
    }
}

/// Why an attempt failed, and whether another attempt may succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// Transient: a timeout, a dropped connection, a 5xx. Retried while attempts remain, after
    /// the node's backoff.
    #[error("{0}")]
    Retryable(String),
    /// Transient, and the other side said when to come back (an HTTP `Retry-After`): retried
    /// while attempts remain, after `after`, but never later than the node's backoff cap.
    #[error("{message}")]
    RetryableAfter {
        /// What went wrong.
        message: String,
        /// The delay asked for.
        after: Duration,
    },
    /// Permanent: bad input, a 4xx, a program that says so. Fails the run at once.
    #[error("{0}")]
    Terminal(String),
}

impl HandlerError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable(_) | Self::RetryableAfter { .. })
    }

    /// The delay before the next attempt that the failure asked for, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RetryableAfter { after, .. } => Some(*after),
            Self::Retryable(_) | Self::Terminal(_) => None,
        }
    }

    /// The same failure, its message prefixed with `what` (`"GET https://…: "`).
    pub fn within(self, what: &str) -> Self {
        match self {
            Self::Retryable(m) => Self::Retryable(format!("{what}: {m}")),
            Self::RetryableAfter { message, after } => Self::RetryableAfter {
                message: format!("{what}: {message}"),
                after,
            },
            Self::Terminal(m) => Self::Terminal(format!("{what}: {m}")),
        }
    }
}

/// Marks an error as retryable or terminal where it is raised: `fetch().await.retryable()?`.
pub trait ResultExt<T> {
    /// A failure worth another attempt.
    fn retryable(self) -> Result<T, HandlerError>;
    /// A failure no attempt will fix.
    fn terminal(self) -> Result<T, HandlerError>;
}

impl<T, E: std::fmt::Display> ResultExt<T> for Result<T, E> {
    fn retryable(self) -> Result<T, HandlerError> {
        self.map_err(|e| HandlerError::Retryable(e.to_string()))
    }

    fn terminal(self) -> Result<T, HandlerError> {
        self.map_err(|e| HandlerError::Terminal(e.to_string()))
    }
}

/// A node kind.
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt and returns the node's output.
    fn run(&self, ctx: Context) -> impl Future<Output = Result<Value, HandlerError>> + Send;

    /// The inputs this kind accepts, as a schema of the subset of JSON Schema that
    /// [`leasehold_core::kinds::schema`] describes; `None` (the default) accepts any input.
    ///
    /// The worker advertises it when it registers, and the coordinator then refuses automations
    /// whose nodes of this kind have inputs it does not accept, naming node and field. Declare
    /// what [`Handler::run`] accepts, no more and no less: a stricter schema refuses specs the
    /// handler would run, a looser one lets through specs whose nodes fail at run time.
    fn input_schema(&self) -> Option<Value> {
        None
    }
}

type BoxedRun<'a> = Pin<Box<dyn Future<Output = Result<Value, HandlerError>> + Send + 'a>>;

/// [`Handler`] with its future boxed, so that handlers of different types share a registry.
trait ErasedHandler: Send + Sync {
    fn run_boxed(&self, ctx: Context) -> BoxedRun<'_>;
}

impl<H: Handler> ErasedHandler for H {
    fn run_boxed(&self, ctx: Context) -> BoxedRun<'_> {
        Box::pin(self.run(ctx))
    }
}

/// A registered kind: its handler and the schema it declared, checked when it was registered.
#[derive(Clone)]
struct Entry {
    handler: Arc<dyn ErasedHandler>,
    schema: Option<Schema>,
}

/// A handler whose declared input schema is not one of the supported subset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node kind {kind:?} declares an input schema that cannot be used: {source}")]
pub struct RegisterError {
    /// The kind.
    pub kind: String,
    /// What is wrong with its schema.
    pub source: SchemaError,
}

/// The node kinds a worker executes, by name.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Entry>,
}

impl Registry {
    /// An empty registry; see [`crate::handlers::builtin`] for one with the built-in kinds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the handler of `kind`.
    ///
    /// # Panics
    /// If the handler's [`Handler::input_schema`] is not a schema of the supported subset: a
    /// mistake in the handler's code, found when the worker starts. [`Registry::try_register`]
    /// returns it instead, for schemas read at run time.
    pub fn register(&mut self, kind: impl Into<String>, handler: impl Handler) -> &mut Self {
        match self.try_register(kind, handler) {
            Ok(registry) => registry,
            Err(e) => panic!("{e}"),
        }
    }

    /// Adds (or replaces) the handler of `kind`, once its input schema is checked.
    pub fn try_register(
        &mut self,
        kind: impl Into<String>,
        handler: impl Handler,
    ) -> Result<&mut Self, RegisterError> {
        let kind = kind.into();
        let schema = match handler.input_schema().map(Schema::new).transpose() {
            Ok(schema) => schema,
            Err(source) => return Err(RegisterError { kind, source }),
        };
        let handler = Arc::new(handler);
        self.handlers.insert(kind, Entry { handler, schema });
        Ok(self)
    }

    /// The kinds registered, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.handlers.keys().cloned().collect();
        kinds.sort();
        kinds
    }

    /// The kinds registered, sorted, with the schemas they declared: what the worker advertises.
    pub fn advertised(&self) -> Vec<AdvertisedKind> {
        self.kinds()
            .into_iter()
            .map(|kind| {
                let input_schema = self.handlers[&kind].schema.clone();
                AdvertisedKind { kind, input_schema }
            })
            .collect()
    }

    /// The input schema `kind` declared, if it is registered and declared one.
    pub fn input_schema(&self, kind: &str) -> Option<&Schema> {
        self.handlers.get(kind)?.schema.as_ref()
    }

    /// Runs `kind` for `ctx`; an unknown kind is a terminal failure naming it.
    pub async fn run(&self, kind: &str, ctx: Context) -> Result<Value, HandlerError> {
        match self.handlers.get(kind) {
            Some(entry) => entry.handler.run_boxed(ctx).await,
            None => Err(HandlerError::Terminal(format!(
                "no handler for node kind {kind:?} on this worker (it has: {})",
                self.kinds().join(", ")
            ))),
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("kinds", &self.kinds())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    struct Declares(Option<Value>);

    impl Handler for Declares {
        async fn run(&self, _ctx: Context) -> Result<Value, HandlerError> {
            Ok(Value::Null)
        }

        fn input_schema(&self) -> Option<Value> {
            self.0.clone()
        }
    }

    #[test]
    fn a_reset_node_gets_a_new_idempotency_key_and_a_fresh_one_keeps_the_old_form() {
        let run_id = RunId(uuid::Uuid::nil());
        let node = NodeId::from("charge");
        let fresh = Context::idempotency_key_for(run_id, &node, 0);
        assert_eq!(fresh, format!("leasehold-{run_id}-charge"));
        let once = Context::idempotency_key_for(run_id, &node, 1);
        let twice = Context::idempotency_key_for(run_id, &node, 2);
        assert_ne!(once, fresh);
        assert_ne!(twice, once);
        assert!(once.starts_with(&fresh));
    }

    #[test]
    fn registered_kinds_are_advertised_with_their_checked_schemas() {
        let schema = json!({"type": "object", "required": ["from"]});
        let mut registry = Registry::new();
        registry
            .register("shout", Declares(Some(schema.clone())))
            .register("any", Declares(None));
        let advertised = registry.advertised();
        let view: Vec<(&str, Option<&Value>)> = advertised
            .iter()
            .map(|k| {
                (
                    k.kind.as_str(),
                    k.input_schema.as_ref().map(Schema::as_value),
                )
            })
            .collect();
        assert_eq!(view, [("any", None), ("shout", Some(&schema))]);
    }

    #[test]
    fn a_schema_outside_the_subset_is_refused_with_its_kind_and_path() {
        let mut registry = Registry::new();
        let refused = registry
            .try_register(
                "shout",
                Declares(Some(json!({"properties": {"from": {"pattern": "x"}}}))),
            )
            .expect_err("refused");
        assert_eq!(refused.kind, "shout");
        let message = refused.to_string();
        assert!(
            message.contains("\"shout\"")
                && message.contains("input_schema.properties.from.pattern"),
            "{message}"
        );
        assert!(registry.kinds().is_empty(), "nothing registered");
    }
}
