//! Executing one claimed run: ready nodes concurrently, each attempt counted before its handler
//! runs and its outcome checkpointed after, every write fenced on the claim.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use leasehold_core::ids::{AutomationId, NodeId, TenantId};
use leasehold_core::retry;
use leasehold_core::run::{self, Checkpoint, MAX_NODE_OUTPUT_BYTES, NodeState, NodeStatus};
use leasehold_core::spec::{NodeSpec, Spec};
use leasehold_core::store::{self, Claim, ClaimedRun, Failure, NodeCompletion, Store};
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::flusher::Writes;
use crate::handler::{Context, HandlerError, Registry};
use crate::keeper::RunLease;

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

/// What every run of a worker shares.
pub(crate) struct Shared {
    pub store: Store,
    /// Node starts and completions, batched across runs.
    writes: Writes,
    pub registry: Registry,
    pub node_concurrency: usize,
    specs: Mutex<HashMap<(TenantId, AutomationId, i32), Arc<Spec>>>,
}

impl Shared {
    pub fn new(store: Store, registry: Registry, node_concurrency: usize) -> Self {
        Self {
            writes: Writes::new(&store),
            store,
            registry,
            node_concurrency,
            specs: Mutex::default(),
        }
    }

    /// A pinned automation version. Versions never change, so they are cached for good.
    async fn spec(&self, run: &ClaimedRun) -> Result<Arc<Spec>, store::Error> {
        let key = (
            run.tenant.clone(),
            run.automation_id.clone(),
            run.automation_version,
        );
        if let Some(spec) = self
            .specs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(Arc::clone(spec));
        }
        let version = self
            .store
            .automation_version(&key.0, &key.1, Some(key.2))
            .await?;
        let spec = Arc::new(version.spec);
        self.specs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, Arc::clone(&spec));
        Ok(spec)
    }
}

/// Signals from the worker to its runs about shutting down.
#[derive(Clone)]
pub(crate) struct Shutdown {
    /// Start no new node; hand the run back once its running nodes finish.
    pub drain: CancellationToken,
    /// The grace period is over: stop running nodes and hand the run back now.
    pub now: CancellationToken,
}

/// Why the loop stopped early.
enum Stop {
    LeaseLost,
    Db(store::Error),
}

impl From<store::Error> for Stop {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::LeaseLost { .. } => Self::LeaseLost,
            other => Self::Db(other),
        }
    }
}

struct NodeDone {
    node_id: NodeId,
    attempt: u32,
    result: Result<Value, HandlerError>,
}

/// The state of one run on this worker.
struct Execution<'a> {
    shared: &'a Shared,
    run: &'a ClaimedRun,
    spec: Arc<Spec>,
    lease: RunLease,
    checkpoint: Checkpoint,
    outputs: HashMap<NodeId, Value>,
    approved: HashSet<NodeId>,
    running: JoinSet<NodeDone>,
    running_ids: HashSet<NodeId>,
    /// A retryable failure with attempts left: once nothing runs, queue the run for it.
    retry: Option<(NodeId, u32, Duration)>,
    /// A failure for good: once nothing runs, fail the run with it.
    failure: Option<Failure>,
    /// The store refused to start a node because a pause was requested, possibly before the
    /// next heartbeat tells the keeper.
    pause_requested: bool,
    /// The last node's completion completed the run in the same write.
    run_completed: bool,
}

/// Executes a claimed run until it leaves this worker, and says how it left.
pub(crate) async fn execute(
    shared: &Shared,
    run: ClaimedRun,
    lease: RunLease,
    shutdown: Shutdown,
) -> Outcome {
    let claim = run.claim;
    let stop = lease.stop.clone();
    let spec = match fenced(&stop, || shared.spec(&run)).await {
        Ok(spec) => spec,
        Err(Stop::LeaseLost) => return Outcome::LeaseLost,
        Err(Stop::Db(e)) => return block(shared, &claim, &stop, &e.to_string()).await,
    };
    let mut execution = Execution {
        shared,
        run: &run,
        spec,
        lease,
        checkpoint: Checkpoint::new(),
        outputs: HashMap::new(),
        approved: HashSet::new(),
        running: JoinSet::new(),
        running_ids: HashSet::new(),
        retry: None,
        failure: None,
        pause_requested: false,
        run_completed: false,
    };
    match execution.drive(&shutdown).await {
        Ok(outcome) => outcome,
        Err(Stop::LeaseLost) => Outcome::LeaseLost,
        Err(Stop::Db(e)) => block(shared, &claim, &stop, &e.to_string()).await,
    }
}

/// Blocks a run whose data this worker cannot read, so that it waits for an operator.
async fn block(shared: &Shared, claim: &Claim, stop: &CancellationToken, reason: &str) -> Outcome {
    tracing::error!(run_id = %claim.run_id(), reason, "blocking the run");
    match fenced(stop, || shared.store.block_unreadable(claim, reason)).await {
        Ok(()) => Outcome::Blocked,
        Err(_) => Outcome::LeaseLost,
    }
}

/// Runs a store call, retrying transient failures until it lands or the lease is gone.
/// Every write is fenced and idempotent under its claim, so a retry after a lost acknowledgement
/// is safe.
async fn fenced<T, F, Fut>(stop: &CancellationToken, mut call: F) -> Result<T, Stop>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, store::Error>>,
{
    loop {
        let result = tokio::select! {
            () = stop.cancelled() => return Err(Stop::LeaseLost),
            result = call() => result,
        };
        match result {
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "store write failed; retrying while the lease lasts");
                tokio::select! {
                    () = stop.cancelled() => return Err(Stop::LeaseLost),
                    () = tokio::time::sleep(WRITE_RETRY_DELAY) => {}
                }
            }
            other => return other.map_err(Stop::from),
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
        if self.spec.nodes.iter().any(needs_gate) {
            let run_id = self.claim().run_id();
            let store = &self.shared.store;
            self.approved = fenced(&stop, || store.approved_gates(run_id))
                .await?
                .into_iter()
                .collect();
        }
        loop {
            let winding_down = self.retry.is_some()
                || self.failure.is_some()
                || self.pausing()
                || shutdown.drain.is_cancelled();
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
            tokio::select! {
                () = stop.cancelled() => {
                    self.running.abort_all();
                    return Err(Stop::LeaseLost);
                }
                () = shutdown.now.cancelled() => {
                    // The grace period is over: stop the nodes; the hand-back records their
                    // attempts as interrupted.
                    self.running.shutdown().await;
                    self.running_ids.clear();
                    return self.release(&stop).await;
                }
                _ = self.lease.pausing.changed() => {}
                () = shutdown.drain.cancelled(), if !winding_down => {}
                Some(done) = self.running.join_next() => match done {
                    Ok(done) => self.record(&stop, done).await?,
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
        Ok(())
    }

    /// Starts every ready node the concurrency bound allows; returns a gated node that needs a
    /// decision first, if one is ready.
    async fn start_ready(&mut self, stop: &CancellationToken) -> Result<Option<NodeId>, Stop> {
        let ready: Vec<NodeId> = run::ready_nodes(&self.spec, &self.checkpoint)
            .into_iter()
            .filter(|id| !self.running_ids.contains(*id))
            .cloned()
            .collect();
        let mut gate = None;
        let mut to_start = Vec::new();
        for node_id in ready {
            if self.running.len() + to_start.len() >= self.shared.node_concurrency {
                break;
            }
            let node = self
                .spec
                .node(&node_id)
                .expect("ready nodes come from the spec")
                .clone();
            if needs_gate(&node) && !self.approved.contains(&node_id) {
                gate.get_or_insert(node_id);
                continue;
            }
            to_start.push(node);
        }
        // Asked for together, so they share a flush: a fan-out costs one round trip, not one
        // per branch.
        let claim = self.claim();
        let writes = &self.shared.writes;
        let attempts = futures_util::future::join_all(
            to_start
                .iter()
                .map(|node| fenced(stop, move || writes.node_started(claim, &node.id))),
        )
        .await;
        for (node, attempt) in to_start.iter().zip(attempts) {
            match attempt {
                Ok(attempt) => self.spawn(stop, node, attempt),
                Err(Stop::Db(store::Error::PauseRequested { .. })) => self.pause_requested = true,
                Err(other) => {
                    // Nodes already started stop with the run: the lease is gone or the run is
                    // blocked.
                    self.running.abort_all();
                    return Err(other);
                }
            }
        }
        Ok(gate)
    }

    fn pausing(&self) -> bool {
        self.pause_requested || *self.lease.pausing.borrow()
    }

    /// Spawns the handler of `node`, whose attempt `attempt` the store has counted.
    fn spawn(&mut self, stop: &CancellationToken, node: &NodeSpec, attempt: u32) {
        let claim = self.claim();
        self.checkpoint.insert(
            node.id.clone(),
            NodeState {
                status: NodeStatus::Running,
                attempts: attempt,
                retryable: true,
            },
        );
        self.running_ids.insert(node.id.clone());
        let upstream = node
            .depends_on
            .iter()
            .filter_map(|d| self.outputs.get(d).map(|o| (d.clone(), o.clone())))
            .collect::<BTreeMap<_, _>>();
        let cancel = stop.child_token();
        let ctx = Context {
            run_id: claim.run_id(),
            node_id: node.id.clone(),
            attempt,
            epoch: claim.epoch(),
            idempotency_key: Context::idempotency_key_for(claim.run_id(), &node.id),
            input: node.input.clone(),
            run_inputs: self.run.inputs.clone(),
            upstream,
            cancel: cancel.clone(),
        };
        let registry = self.shared.registry.clone();
        let kind = node.kind.clone();
        let timeout = Duration::from_millis(node.timeout_ms);
        let node_id = node.id.clone();
        self.running.spawn(async move {
            // A panicking handler fails its node instead of leaving it `running` forever.
            let attempt_run = AssertUnwindSafe(registry.run(&kind, ctx)).catch_unwind();
            let result = match tokio::time::timeout(timeout, attempt_run).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(HandlerError::Terminal(format!(
                    "the {kind} handler panicked"
                ))),
                Err(_) => {
                    // Dropping the handler's future already stopped it; the token tells any
                    // task it spawned.
                    cancel.cancel();
                    Err(HandlerError::Retryable(format!(
                        "timed out after {} ms",
                        timeout.as_millis()
                    )))
                }
            };
            NodeDone {
                node_id,
                attempt,
                result,
            }
        });
    }

    /// Checkpoints a finished attempt and decides what follows it.
    async fn record(&mut self, stop: &CancellationToken, done: NodeDone) -> Result<(), Stop> {
        let claim = self.claim();
        let store = &self.shared.store;
        self.running_ids.remove(&done.node_id);
        let spec = Arc::clone(&self.spec);
        let node = spec.node(&done.node_id).expect("started from the spec");
        let result = done.result.and_then(storable);
        match result {
            Ok(output) => {
                let completes_run = self.is_last(&done.node_id);
                let writes = &self.shared.writes;
                let node_id = &done.node_id;
                self.run_completed = fenced(stop, || {
                    writes.node_completed(NodeCompletion {
                        claim,
                        node_id: node_id.clone(),
                        output: output.clone(),
                        completes_run,
                    })
                })
                .await?;
                self.set_status(&done.node_id, NodeStatus::Completed, done.attempt, true);
                self.outputs.insert(done.node_id, output);
            }
            Err(error) => {
                // Postgres text cannot hold NUL; a message with one would fail the write.
                let message = error.to_string().replace('\0', "\u{fffd}");
                let retryable = error.is_retryable();
                fenced(stop, || {
                    store.node_failed(&claim, &done.node_id, &message, retryable)
                })
                .await?;
                self.set_status(&done.node_id, NodeStatus::Failed, done.attempt, retryable);
                tracing::info!(run_id = %claim.run_id(), node = %done.node_id, attempt = done.attempt, retryable, error = %message, "node attempt failed");
                if retryable && done.attempt < node.max_attempts {
                    let delay = retry::next_delay(&node.backoff, done.attempt, fastrand::f64());
                    self.retry
                        .get_or_insert((done.node_id, done.attempt + 1, delay));
                } else if self.failure.is_none() {
                    let reason = if retryable {
                        format!(
                            "{message} (attempt {} of {})",
                            done.attempt, node.max_attempts
                        )
                    } else {
                        message
                    };
                    self.failure = Some(Failure {
                        node_id: done.node_id,
                        attempt: done.attempt,
                        reason,
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether `node_id`, just finished, is the last node: every other one completed, nothing
    /// else runs, and no failure waits to be settled. Its completion then completes the run in
    /// the same write.
    fn is_last(&self, node_id: &NodeId) -> bool {
        self.running_ids.is_empty()
            && self.retry.is_none()
            && self.failure.is_none()
            && self.spec.nodes.iter().all(|n| {
                n.id == *node_id
                    || self
                        .checkpoint
                        .get(&n.id)
                        .is_some_and(|s| s.status == NodeStatus::Completed)
            })
    }

    fn set_status(&mut self, node_id: &NodeId, status: NodeStatus, attempts: u32, retryable: bool) {
        self.checkpoint.insert(
            node_id.clone(),
            NodeState {
                status,
                attempts,
                retryable,
            },
        );
    }

    /// Nothing runs any more: end, queue, pause or hand back the run, whichever applies.
    async fn settle(
        &mut self,
        stop: &CancellationToken,
        shutdown: &Shutdown,
    ) -> Result<Outcome, Stop> {
        let claim = self.claim();
        let store = &self.shared.store;
        if let Some(failure) = self.failure.take().or_else(|| self.exhausted()) {
            let skipped: Vec<NodeId> = run::downstream(&self.spec, &failure.node_id)
                .into_iter()
                .filter(|id| !self.checkpoint.contains_key(*id))
                .cloned()
                .collect();
            fenced(stop, || store.fail_run(&claim, &failure, &skipped)).await?;
            return Ok(Outcome::Failed);
        }
        let all_completed = self.spec.nodes.iter().all(|n| {
            self.checkpoint
                .get(&n.id)
                .is_some_and(|s| s.status == NodeStatus::Completed)
        });
        if all_completed {
            if !self.run_completed {
                fenced(stop, || store.complete_run(&claim)).await?;
            }
            return Ok(Outcome::Completed);
        }
        if self.pausing() {
            fenced(stop, || store.settle_pause(&claim)).await?;
            return Ok(Outcome::Paused);
        }
        if let Some((node_id, attempt, delay)) = self.retry.take() {
            let scheduled = fenced(stop, || {
                store.schedule_retry(&claim, &node_id, attempt, delay)
            })
            .await;
            return match scheduled {
                Err(Stop::Db(store::Error::PauseRequested { .. })) => {
                    fenced(stop, || store.settle_pause(&claim)).await?;
                    Ok(Outcome::Paused)
                }
                other => other.map(|()| Outcome::RetryScheduled),
            };
        }
        if shutdown.drain.is_cancelled() {
            return self.release(stop).await;
        }
        // Nothing is ready, nothing runs, nothing failed, yet not every node completed: the
        // checkpoint contradicts the spec. Block the run for an operator rather than spin.
        Err(Stop::Db(store::Error::UnreadableRun {
            run_id: claim.run_id(),
            reason: "no node can run, yet not every node completed".into(),
        }))
    }

    /// A node that failed for good under an earlier claim (its attempts used up by interrupted
    /// attempts, or a terminal failure whose run failing was interrupted) fails the run too.
    fn exhausted(&self) -> Option<Failure> {
        self.spec.nodes.iter().find_map(|node| {
            let state = self.checkpoint.get(&node.id)?;
            state.failed_for_good(node.max_attempts).then(|| Failure {
                node_id: node.id.clone(),
                attempt: state.attempts,
                reason: if state.retryable {
                    format!(
                        "no attempts left: {} of {} used, the last one interrupted",
                        state.attempts, node.max_attempts
                    )
                } else {
                    format!("attempt {} failed for good", state.attempts)
                },
            })
        })
    }

    async fn await_approval(
        &mut self,
        stop: &CancellationToken,
        node_id: &NodeId,
    ) -> Result<Outcome, Stop> {
        let claim = self.claim();
        let store = &self.shared.store;
        let node = self.spec.node(node_id).expect("gated node from the spec");
        let prompt = gate_prompt(node);
        match fenced(stop, || store.await_approval(&claim, node_id, &prompt)).await {
            Err(Stop::Db(store::Error::PauseRequested { .. })) => {
                fenced(stop, || store.settle_pause(&claim)).await?;
                Ok(Outcome::Paused)
            }
            other => other.map(|_| Outcome::AwaitingApproval),
        }
    }

    async fn release(&mut self, stop: &CancellationToken) -> Result<Outcome, Stop> {
        let claim = self.claim();
        let store = &self.shared.store;
        let claims = [claim];
        let released = fenced(stop, || store.release_on_shutdown(&claims)).await?;
        if released.released.contains(&claim.run_id()) {
            Ok(Outcome::Released)
        } else {
            Err(Stop::LeaseLost)
        }
    }
}

/// A handler's output as the checkpoint can hold it: within the size limit, and without the NUL
/// character, which Postgres' jsonb refuses (a write carrying one would fail, and the run with
/// it). Either is the handler's failure, for good.
fn storable(output: Value) -> Result<Value, HandlerError> {
    let Ok(bytes) = serde_json::to_vec(&output) else {
        return Err(HandlerError::Terminal("output is not serialisable".into()));
    };
    if bytes.len() > MAX_NODE_OUTPUT_BYTES {
        return Err(HandlerError::Terminal(format!(
            "output of {} bytes is larger than {MAX_NODE_OUTPUT_BYTES}",
            bytes.len()
        )));
    }
    if contains_nul(&output) {
        return Err(HandlerError::Terminal(
            "output contains a NUL character (\\u0000), which the checkpoint cannot store".into(),
        ));
    }
    Ok(output)
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// A node that needs a person's approval before it runs.
fn needs_gate(node: &NodeSpec) -> bool {
    node.approval.is_some() || node.kind == crate::handler::APPROVAL_KIND
}

fn gate_prompt(node: &NodeSpec) -> String {
    node.approval
        .as_ref()
        .map(|a| a.prompt.clone())
        .or_else(|| {
            node.input
                .get("prompt")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("Approve node {}?", node.id))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn outputs_postgres_cannot_store_fail_their_node_for_good() {
        assert!(storable(json!({"ok": [1, "two", null]})).is_ok());
        // A backslash followed by "u0000" is text, not NUL.
        assert!(storable(json!({"path": "C:\\u0000"})).is_ok());
        for bad in [
            json!({"text": "a\u{0}b"}),
            json!([{"deep": ["\u{0}"]}]),
            json!({"key\u{0}": 1}),
            json!("x".repeat(MAX_NODE_OUTPUT_BYTES + 1)),
        ] {
            assert!(
                matches!(storable(bad.clone()), Err(HandlerError::Terminal(_))),
                "{bad}"
            );
        }
    }
}
