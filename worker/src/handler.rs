//! The handler contract: what a node kind receives, and how it says it failed.
//!
//! Users add node kinds by implementing [`Handler`] and registering it on a [`Registry`] in their
//! own worker binary (see `examples/custom-worker`).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use leasehold_core::ids::{LeaseEpoch, NodeId, RunId};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The kind of a node that is only a gate: it asks for approval, then completes.
pub const APPROVAL_KIND: &str = "approval";

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
    /// services so that a retried or resumed attempt is not applied twice.
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
}

impl Context {
    /// The key for `run_id` and `node_id`, as [`Context::idempotency_key`] carries it.
    pub fn idempotency_key_for(run_id: RunId, node_id: &NodeId) -> String {
        format!("leasehold-{run_id}-{node_id}")
    }
}

/// Why an attempt failed, and whether another attempt may succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Transient: a timeout, a dropped connection, a 5xx. Retried while attempts remain.
    #[error("{0}")]
    Retryable(String),
    /// Permanent: bad input, a 4xx, a program that says so. Fails the run at once.
    #[error("{0}")]
    Terminal(String),
}

impl HandlerError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable(_))
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

/// The node kinds a worker executes, by name.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn ErasedHandler>>,
}

impl Registry {
    /// An empty registry; see [`crate::handlers::builtin`] for one with the built-in kinds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the handler of `kind`.
    pub fn register(&mut self, kind: impl Into<String>, handler: impl Handler) -> &mut Self {
        self.handlers.insert(kind.into(), Arc::new(handler));
        self
    }

    /// The kinds registered, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.handlers.keys().cloned().collect();
        kinds.sort();
        kinds
    }

    /// Runs `kind` for `ctx`; an unknown kind is a terminal failure naming it.
    pub async fn run(&self, kind: &str, ctx: Context) -> Result<Value, HandlerError> {
        match self.handlers.get(kind) {
            Some(handler) => handler.run_boxed(ctx).await,
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
