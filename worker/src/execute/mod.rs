//! Executing one claimed run: ready nodes concurrently, each attempt counted before its handler
//! runs and its outcome checkpointed after, every write fenced on the claim.
//!
//! - `nodes`: starting ready nodes, running their handlers, checkpointing their attempts.
//! - `output`: whether an output fits the checkpoint, measured as PostgreSQL measures it.
//! - `settle`: what happens to the run once nothing runs: end, queue, pause, gate, hand back.

mod attempts;
mod metered;
mod nodes;
mod output;
mod settle;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use leasehold_core::ids::{ClaimantId, NodeId};
use leasehold_core::run::Checkpoint;
use leasehold_core::spec::{NodeSpec, Spec};
use leasehold_core::store::{self, Claim, ClaimedRun, Failure, StartedNode, Store, outage};
use opentelemetry::trace::SpanContext;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::Error;
use crate::flusher::Writes;
use crate::handler::{HandlerError, Registry};
use crate::keeper::RunLease;
use crate::runtime_context::RuntimeContext;
use attempts::Attempts;
pub(crate) use metered::WorkerMetrics;
use metered::{KindMetrics, Pinned, Pins};

/// Pause between attempts of a write that failed for a transient reason (database unreachable).
const WRITE_RETRY_DELAY: Duration = Duration::from_millis(200);

/// How a run left this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every node completed.
    Completed,
    /// A node failed for good.
    Failed,
    /// Queued again, due after a node's backoff.
    RetryScheduled,
    /// Stopped at an approval gate.
    AwaitingApproval,
    /// Paused at a user's request.
    Paused,
    /// Handed back on shutdown.
    Released,
    /// Blocked: its stored data could not be read.
    Blocked,
    /// The lease was lost or could not be renewed: stopped without writing.
    LeaseLost,
}

impl Outcome {
    /// How many outcomes there are.
    const COUNT: usize = 8;

    /// The outcome's place among [`Self::COUNT`], for per-outcome tables.
    fn index(&self) -> usize {
        match self {
            Self::Completed => 0,
            Self::Failed => 1,
            Self::RetryScheduled => 2,
            Self::AwaitingApproval => 3,
            Self::Paused => 4,
            Self::Released => 5,
            Self::Blocked => 6,
            Self::LeaseLost => 7,
        }
    }

    /// The outcome as the metrics label it.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::RetryScheduled => "retry_scheduled",
            Self::AwaitingApproval => "awaiting_approval",
            Self::Paused => "paused",
            Self::Released => "released",
            Self::Blocked => "blocked",
            Self::LeaseLost => "lease_lost",
        }
    }
}

/// What every run of a worker shares.
pub(crate) struct Shared {
    pub store: Store,
    /// Node starts and completions, batched across runs.
    writes: Writes,
    /// Shared by every node attempt: cloning the registry itself would copy its map and every
    /// kind's input schema per node.
    pub registry: Arc<Registry>,
    pub node_concurrency: usize,
    /// This worker's identity in leases, a field of every run's span.
    claimant: ClaimantId,
    /// Pinned automation versions, with the metric handles their runs record into.
    specs: Mutex<Pins>,
    /// The node metrics of each registered kind, made once rather than per attempt.
    kinds: BTreeMap<String, Arc<KindMetrics>>,
    /// The claim loop's and the runs' metrics without labels.
    pub metrics: WorkerMetrics,
    /// What the worker holds for runs that require it.
    runtime_context: RuntimeContext,
}

impl Shared {
    pub fn new(
        store: Store,
        registry: Registry,
        node_concurrency: usize,
        claimant: ClaimantId,
        runtime_context: RuntimeContext,
    ) -> Self {
        let kinds = registry
            .kinds()
            .into_iter()
            .map(|kind| (kind.clone(), Arc::new(KindMetrics::new(kind))))
            .collect();
        Self {
            writes: Writes::new(&store),
            store,
            registry: Arc::new(registry),
            node_concurrency,
            claimant,
            specs: Mutex::default(),
            kinds,
            metrics: WorkerMetrics::new(),
            runtime_context,
        }
    }

    /// A pinned automation version. Versions never change, so they are cached for good.
    async fn spec(&self, run: &ClaimedRun) -> Result<Arc<Spec>, store::RequestError> {
        if let Some(pinned) = self.pinned(run) {
            return Ok(Arc::clone(&pinned.spec));
        }
        let version = self
            .store
            .automation_version(
                &run.tenant,
                &run.automation_id,
                Some(run.automation_version),
            )
            .await?;
        let spec = Arc::new(version.spec);
        self.specs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(run, Arc::clone(&spec));
        Ok(spec)
    }

    /// The cached version `run` is pinned to, if it was read before.
    fn pinned(&self, run: &ClaimedRun) -> Option<Arc<Pinned>> {
        self.specs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(run)
    }

    /// Counts a run that left this worker, by tenant, automation and outcome.
    fn count_run_left(&self, run: &ClaimedRun, outcome: &Outcome) {
        match self.pinned(run) {
            Some(pinned) => pinned.run_left(outcome).increment(1),
            // The version could not be read: a rare run, counted without a cached handle.
            None => metered::run_left(run, outcome).increment(1),
        }
    }
}

/// Signals from the worker to its runs about shutting down.
#[derive(Clone, Default)]
pub(crate) struct Shutdown {
    /// Start no new node; hand the run back once its running nodes finish.
    pub drain: CancellationToken,
    /// The grace period is over: stop running nodes and hand the run back now.
    pub now: CancellationToken,
}

/// Why the loop stopped early.
enum Stop {
    LeaseLost,
    Db(Error),
}

impl Stop {
    /// The store refused the write because a user asked the run to pause.
    fn is_pause_requested(&self) -> bool {
        matches!(
            self,
            Self::Db(Error::Fenced(store::FenceError::PauseRequested { .. }))
        )
    }
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        match e {
            Error::Fenced(store::FenceError::LeaseLost { .. }) => Self::LeaseLost,
            other => Self::Db(other),
        }
    }
}

struct NodeDone {
    node_id: NodeId,
    attempt: u32,
    /// The node's earlier attempts that a clean stop interrupted, which do not count.
    clean_interruptions: u32,
    result: Result<Value, HandlerError>,
    /// The attempt's span: its checkpoint is written, and its outcome logged, inside it.
    span: tracing::Span,
}

/// The state of one run on this worker.
struct Execution<'a> {
    shared: &'a Shared,
    run: &'a ClaimedRun,
    spec: Arc<Spec>,
    /// What the run's handlers see: the held context its automation requires.
    runtime_context: RuntimeContext,
    lease: RunLease,
    checkpoint: Checkpoint,
    // Ordered sets and maps (as the checkpoint): a run's few short node ids compare for less
    // than they hash.
    outputs: BTreeMap<NodeId, Value>,
    approved: BTreeSet<NodeId>,
    running: Attempts,
    /// Cancelled when the running nodes are stopped (a pause, the end of the grace period);
    /// a child of the lease's stop token. Every node's context token is a child of it.
    nodes_stop: CancellationToken,
    running_ids: BTreeSet<NodeId>,
    /// How often an operator reset each node (recover, rework): part of its idempotency key.
    resets: HashMap<NodeId, u32>,
    /// A retryable failure with attempts left: once nothing runs, queue the run for it.
    retry: Option<(NodeId, u32, Duration)>,
    /// A failure for good: once nothing runs, fail the run with it.
    failure: Option<Failure>,
    /// The store refused to start a node because a pause was requested, possibly before the
    /// next heartbeat tells the keeper.
    pause_requested: bool,
    /// The last node's completion completed the run in the same write.
    run_completed: bool,
    /// Nodes the last completion's statement started: their handlers are to run.
    started_with_completion: Vec<StartedNode>,
    /// When the claim of this run answered, until its first node starts.
    claimed_at: Option<Instant>,
}

/// Executes a claimed run until it leaves this worker, and says how it left. Everything logged
/// meanwhile, by the store and the handlers too, is inside the run's span, which names the run,
/// the claim, the claimant and the run's trace.
///
/// When traces are on, the span continues the run's stored trace context (read with the claim:
/// the API's StartRun span) and links to `batch`, the claim statement's span, so every claim of
/// a run, on any worker, lands in the run's one trace.
pub(crate) async fn execute(
    shared: &Shared,
    run: ClaimedRun,
    lease: RunLease,
    shutdown: Shutdown,
    claimed_at: Instant,
    batch: Option<SpanContext>,
) -> Outcome {
    let span = tracing::info_span!(
        "run",
        run_id = %run.claim.run_id(),
        epoch = run.claim.epoch().0,
        claimant = %shared.claimant,
        tenant = %run.tenant,
        automation = %run.automation_id,
        trace_id = run.trace.as_ref().map(|t| t.parent.trace_id()),
    );
    if leasehold_telemetry::enabled() {
        if let Some(trace) = &run.trace {
            // Fails only without the layer, and then nothing is exported anyway.
            let _ = span.set_parent(leasehold_telemetry::remote_context(trace));
        }
        if let Some(batch) = batch {
            span.add_link(batch);
        }
    }
    async move {
        let outcome = execute_claimed(shared, &run, lease, shutdown, claimed_at).await;
        tracing::debug!(?outcome, "run left the worker");
        shared.count_run_left(&run, &outcome);
        outcome
    }
    .instrument(span)
    .await
}

async fn execute_claimed(
    shared: &Shared,
    run: &ClaimedRun,
    lease: RunLease,
    shutdown: Shutdown,
    claimed_at: Instant,
) -> Outcome {
    let claim = run.claim;
    let stop = lease.stop.clone();
    let spec = match fenced(&stop, || shared.spec(run)).await {
        Ok(spec) => spec,
        Err(Stop::LeaseLost) => return Outcome::LeaseLost,
        Err(Stop::Db(e)) => return block(shared, &claim, &stop, &e.to_string()).await,
    };
    let runtime_context = shared.runtime_context.only(&spec.requires_context);
    let mut execution = Execution {
        shared,
        run,
        spec,
        runtime_context,
        lease,
        checkpoint: Checkpoint::new(),
        outputs: BTreeMap::new(),
        approved: BTreeSet::new(),
        running: Attempts::default(),
        nodes_stop: stop.child_token(),
        running_ids: BTreeSet::new(),
        resets: HashMap::new(),
        retry: None,
        failure: None,
        pause_requested: false,
        run_completed: false,
        started_with_completion: Vec::new(),
        claimed_at: Some(claimed_at),
    };
    match execution.drive(&shutdown).await {
        Ok(outcome) => outcome,
        Err(Stop::LeaseLost) => Outcome::LeaseLost,
        Err(Stop::Db(e)) => block(shared, &claim, &stop, &e.to_string()).await,
    }
}

/// Blocks a run whose data this worker cannot read, so that it waits for an operator.
async fn block(shared: &Shared, claim: &Claim, stop: &CancellationToken, reason: &str) -> Outcome {
    tracing::error!(reason, "blocking the run");
    match fenced(stop, || shared.store.block_unreadable(claim, reason)).await {
        Ok(()) => Outcome::Blocked,
        Err(_) => Outcome::LeaseLost,
    }
}

/// Runs a store call, retrying transient failures until it lands or the lease is gone.
/// Every write is fenced and idempotent under its claim, so a retry after a lost acknowledgement
/// is safe.
async fn fenced<T, E, F, Fut>(stop: &CancellationToken, mut call: F) -> Result<T, Stop>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Into<Error>,
{
    loop {
        let result = tokio::select! {
            () = stop.cancelled() => return Err(Stop::LeaseLost),
            result = call() => result.map_err(Into::into),
        };
        match result {
            Err(e) if e.is_transient() => {
                outage::DATABASE.failed(&e);
                tokio::select! {
                    () = stop.cancelled() => return Err(Stop::LeaseLost),
                    () = tokio::time::sleep(WRITE_RETRY_DELAY) => {}
                }
            }
            other => {
                outage::DATABASE.succeeded();
                return other.map_err(Stop::from);
            }
        }
    }
}

impl Execution<'_> {
    fn claim(&self) -> Claim {
        self.run.claim
    }

    async fn drive(&mut self, shutdown: &Shutdown) -> Result<Outcome, Stop> {
        let stop = self.lease.stop.clone();
        if self.run.resumed {
            self.load_checkpoint(&stop).await?;
        }
        if self.spec.nodes.iter().any(NodeSpec::needs_gate) {
            let run_id = self.claim().run_id();
            let store = &self.shared.store;
            self.approved = fenced(&stop, || store.approved_gates(run_id))
                .await?
                .into_iter()
                .collect();
        }
        self.run_started()?;
        loop {
            let winding_down = self.winding_down(shutdown);
            // A gate is asked for once nothing else runs, so no node is cut short by the stop.
            if !winding_down
                && let Some(gate) = self.start_ready(&stop).await?
                && self.running.is_empty()
            {
                return self.await_approval(&stop, &gate).await;
            }
            if self.running.is_empty() {
                return self.settle(&stop, shutdown).await;
            }
            if self.pausing() && self.failure.is_none() {
                // A user paused the run: stop its nodes now (an `exec` child's process group is
                // killed as its handler is dropped); settling the pause records their attempts
                // as interrupted by a clean stop. A failure for good is settled first instead,
                // once the other nodes finish, as without a pause.
                self.stop_nodes().await;
                return self.settle(&stop, shutdown).await;
            }
            tokio::select! {
                () = stop.cancelled() => {
                    self.running.abort_all();
                    return Err(Stop::LeaseLost);
                }
                () = shutdown.now.cancelled() => {
                    // The grace period is over: stop the nodes; the hand-back records their
                    // attempts as interrupted by a clean stop.
                    self.stop_nodes().await;
                    return self.release(&stop).await;
                }
                _ = self.lease.pausing.changed() => {}
                () = shutdown.drain.cancelled(), if !winding_down => {}
                Some(done) = self.running.join_next() => match done {
                    Ok(done) => {
                        let may_start = !self.winding_down(shutdown);
                        self.record(&stop, done, may_start).await?;
                    }
                    Err(e) => tracing::error!(error = %e, "node task panicked or was aborted"),
                },
            }
        }
    }

    async fn load_checkpoint(&mut self, stop: &CancellationToken) -> Result<(), Stop> {
        let run_id = self.claim().run_id();
        let store = &self.shared.store;
        for node in fenced(stop, || store.checkpoint(run_id)).await? {
            if let Some(output) = &node.output {
                self.outputs.insert(node.node_id.clone(), output.clone());
            }
            let state = node.state().under_claim(node.epoch, self.run.claim.epoch());
            self.checkpoint.insert(node.node_id.clone(), state);
        }
        self.resets = fenced(stop, || store.node_resets(run_id)).await?;
        Ok(())
    }

    /// A retry or a failure waits for the running nodes, a pause or a drain was asked for: no
    /// node starts.
    fn winding_down(&self, shutdown: &Shutdown) -> bool {
        self.retry.is_some()
            || self.failure.is_some()
            || self.pausing()
            || shutdown.drain.is_cancelled()
    }

    fn pausing(&self) -> bool {
        self.pause_requested || *self.lease.pausing.borrow()
    }

    /// Stops every running node and waits until their handlers are dropped.
    async fn stop_nodes(&mut self) {
        self.nodes_stop.cancel();
        self.running.shutdown().await;
        self.running_ids.clear();
    }
}
