//! Nodes of one run: starting the ready ones, running their handlers, and checkpointing each
//! finished attempt.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use leasehold_core::ids::NodeId;
use leasehold_core::retry;
use leasehold_core::run::{self, Checkpoint, NodeState, NodeStatus};
use leasehold_core::spec::{NodeSpec, Spec};
use leasehold_core::store::{self, Failure, NodeCompletion};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::metered::{self, Attempt};
use super::output::storable;
use super::{Execution, NodeDone, Stop, fenced};
use crate::error::Error;
use crate::handler::{Context, HandlerError};

/// What [`Execution::startable`] found.
#[derive(Default)]
struct Startable<'s> {
    /// The nodes to start.
    nodes: Vec<&'s NodeSpec>,
    /// The first ready node that waits for an approval.
    gate: Option<NodeId>,
    /// The concurrency bound left ready nodes out.
    capped: bool,
}

impl Execution<'_> {
    /// Starts every ready node the concurrency bound allows; returns a gated node that needs a
    /// decision first, if one is ready.
    pub(super) async fn start_ready(
        &mut self,
        stop: &CancellationToken,
    ) -> Result<Option<NodeId>, Stop> {
        // The spec is held here so that the nodes to start borrow it, not `self`.
        let spec = Arc::clone(&self.spec);
        let Startable {
            nodes: to_start,
            gate,
            ..
        } = self.startable(&spec, &self.checkpoint);
        // Asked for together, so they share a flush: a fan-out costs one round trip, not one
        // per branch.
        let claim = self.claim();
        let writes = &self.shared.writes;
        let attempts = match to_start.as_slice() {
            // A chain's next node or a one-node run: nothing to join, no futures collected.
            [node] => vec![fenced(stop, || writes.node_started(claim, &node.id)).await],
            nodes => {
                futures_util::future::join_all(
                    nodes
                        .iter()
                        .map(|node| fenced(stop, move || writes.node_started(claim, &node.id))),
                )
                .await
            }
        };
        // A node started alone, with nothing else of the run running, runs in the run's task.
        let alone = to_start.len() == 1 && self.running.is_empty();
        for (node, attempt) in to_start.into_iter().zip(attempts) {
            match attempt {
                Ok(attempt) => self.start(node, attempt, alone),
                Err(e) if e.is_pause_requested() => self.pause_requested = true,
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

    /// Starts the handlers of the nodes the claim started: their attempts are counted, so they
    /// run at once, with no start write. A node the spec lacks means the version's start nodes
    /// disagree with its spec: the run is blocked.
    pub(super) fn run_started(&mut self) -> Result<(), Stop> {
        let spec = Arc::clone(&self.spec);
        let alone = self.run.started.len() == 1;
        for started in &self.run.started {
            let Some(node) = spec.node(&started.node_id) else {
                self.running.abort_all();
                return Err(Stop::Db(Error::Store(store::Error::UnreadableRun {
                    run_id: self.claim().run_id(),
                    reason: format!(
                        "the claim started node {}, which the version's spec lacks",
                        started.node_id
                    ),
                })));
            };
            self.start(node, started.attempt, alone);
        }
        Ok(())
    }

    /// Runs the handler of `node`, whose attempt `attempt` the store has counted: in the run's
    /// task when it runs `alone`, else in a task of its own ([`Attempts`]).
    ///
    /// [`Attempts`]: super::attempts::Attempts
    fn start(&mut self, node: &NodeSpec, attempt: u32, alone: bool) {
        if let Some(claimed_at) = self.claimed_at.take() {
            self.shared
                .metrics
                .claim_to_start
                .record(claimed_at.elapsed().as_secs_f64());
        }
        let claim = self.claim();
        // Clean interruptions happen only between claims, so the count loaded with the
        // checkpoint holds for the whole claim.
        let clean_interruptions = self
            .checkpoint
            .get(&node.id)
            .map_or(0, |s| s.clean_interruptions);
        self.checkpoint.insert(
            node.id.clone(),
            NodeState {
                status: NodeStatus::Running,
                attempts: attempt,
                retryable: true,
                clean_interruptions,
            },
        );
        self.running_ids.insert(node.id.clone());
        let upstream = node
            .depends_on
            .iter()
            .filter_map(|d| self.outputs.get(d).map(|o| (d.clone(), o.clone())))
            .collect::<BTreeMap<_, _>>();
        // A child of the nodes' token, itself a child of the run's stop: a lost lease, a pause
        // or a shutdown tells whatever the handler spawned.
        let cancel = self.nodes_stop.child_token();
        let ctx = Context {
            run_id: claim.run_id(),
            node_id: node.id.clone(),
            attempt,
            epoch: claim.epoch(),
            idempotency_key: Context::idempotency_key_for(
                claim.run_id(),
                &node.id,
                self.resets.get(&node.id).copied().unwrap_or(0),
            ),
            input: node.input.clone(),
            run_inputs: self.run.inputs.clone(),
            upstream,
            cancel: cancel.clone(),
            runtime_context: self.runtime_context.clone(),
        };
        let registry = Arc::clone(&self.shared.registry);
        let kind = node.kind.clone();
        let kind_metrics = self.shared.kinds.get(&node.kind).cloned();
        let timeout = Duration::from_millis(node.timeout_ms);
        let node_id = node.id.clone();
        // A child of the run's span, current here: the handler's lines name the run and the
        // attempt.
        let span = tracing::info_span!(
            "node",
            node_id = %node.id,
            kind = %node.kind,
            attempt,
            outcome = tracing::field::Empty,
        );
        if leasehold_telemetry::enabled() {
            // The run's span carries the run id for the logs; an exported span stands alone.
            span.set_attribute("run_id", claim.run_id().to_string());
        }
        let attempt_span = span.clone();
        let attempt_task = async move {
            let started = std::time::Instant::now();
            // A panicking handler fails its node instead of leaving it `running` forever.
            let attempt_run = AssertUnwindSafe(registry.run(&kind, ctx)).catch_unwind();
            let (result, outcome) = match tokio::time::timeout(timeout, attempt_run).await {
                Ok(Ok(Ok(output))) => (Ok(output), Attempt::Completed),
                Ok(Ok(Err(error))) => {
                    let outcome = if error.is_retryable() {
                        Attempt::RetryableError
                    } else {
                        Attempt::TerminalError
                    };
                    (Err(error), outcome)
                }
                Ok(Err(_)) => (
                    Err(HandlerError::Terminal(format!(
                        "the {kind} handler panicked"
                    ))),
                    Attempt::Panicked,
                ),
                Err(_) => {
                    // Dropping the handler's future already stopped it; the token tells any
                    // task it spawned.
                    cancel.cancel();
                    let error = HandlerError::Retryable(format!(
                        "timed out after {} ms",
                        timeout.as_millis()
                    ));
                    (Err(error), Attempt::TimedOut)
                }
            };
            // A node dropped mid-attempt (lease lost, run stopped) records nothing: it has no
            // outcome.
            let current = tracing::Span::current();
            current.record("outcome", outcome.label());
            if leasehold_telemetry::enabled()
                && let Err(error) = &result
            {
                current.set_status(opentelemetry::trace::Status::error(error.to_string()));
            }
            let took = started.elapsed().as_secs_f64();
            match kind_metrics {
                Some(metrics) => metrics.record(outcome, took),
                None => metered::record_unregistered(&kind, outcome, took),
            }
            NodeDone {
                node_id,
                attempt,
                clean_interruptions,
                result,
                span: attempt_span,
            }
        };
        self.running.start(attempt_task.instrument(span), alone);
    }

    /// Checkpoints a finished attempt and decides what follows it, inside the attempt's span.
    /// When `may_start` (the run is not winding down) and the attempt completed its node, the
    /// completion's statement also starts the nodes it makes ready ([`Self::next_after`]); their
    /// handlers start here, in the run's span.
    pub(super) async fn record(
        &mut self,
        stop: &CancellationToken,
        mut done: NodeDone,
        may_start: bool,
    ) -> Result<(), Stop> {
        let span = std::mem::replace(&mut done.span, tracing::Span::none());
        self.record_attempt(stop, done, may_start)
            .instrument(span)
            .await?;
        let started = std::mem::take(&mut self.started_with_completion);
        let alone = started.len() == 1 && self.running.is_empty();
        let spec = Arc::clone(&self.spec);
        for node in &started {
            let spec_node = spec.node(&node.node_id).expect("started from the spec");
            self.start(spec_node, node.attempt, alone);
        }
        Ok(())
    }

    /// The ready nodes that may start under `checkpoint`, in spec order: as many as the
    /// concurrency bound allows beside the running ones, a node waiting for an approval left out
    /// (the first such is the `gate`).
    fn startable<'s>(&self, spec: &'s Spec, checkpoint: &Checkpoint) -> Startable<'s> {
        let mut startable = Startable::default();
        for node_id in run::ready_nodes(spec, checkpoint) {
            if self.running_ids.contains(node_id) {
                continue;
            }
            if self.running.len() + startable.nodes.len() >= self.shared.node_concurrency {
                startable.capped = true;
                break;
            }
            let node = spec.node(node_id).expect("ready nodes come from the spec");
            if node.needs_gate() && !self.approved.contains(node_id) {
                startable.gate.get_or_insert_with(|| node_id.clone());
                continue;
            }
            startable.nodes.push(node);
        }
        startable
    }

    /// The nodes a completion of `node_id` makes ready, to start with it: only when nothing
    /// else of the run runs (a chain's next node, a fan-out's branches, a fan-in's join) and
    /// every node that would be startable is ([`Self::startable`]: none waits for an approval,
    /// the concurrency bound takes them all); otherwise none, and the run's loop starts what is
    /// ready as it always does.
    fn next_after(&self, node_id: &NodeId) -> Vec<NodeId> {
        if !self.running_ids.is_empty() {
            return Vec::new();
        }
        let mut checkpoint = self.checkpoint.clone();
        if let Some(state) = checkpoint.get_mut(node_id) {
            state.status = NodeStatus::Completed;
        }
        let next = self.startable(&self.spec, &checkpoint);
        if next.gate.is_some() || next.capped {
            return Vec::new();
        }
        next.nodes.into_iter().map(|node| node.id.clone()).collect()
    }

    async fn record_attempt(
        &mut self,
        stop: &CancellationToken,
        done: NodeDone,
        may_start: bool,
    ) -> Result<(), Stop> {
        let claim = self.claim();
        let store = &self.shared.store;
        self.running_ids.remove(&done.node_id);
        let spec = Arc::clone(&self.spec);
        let node = spec.node(&done.node_id).expect("started from the spec");
        let result = done.result.and_then(storable);
        match result {
            Ok(output) => {
                let completes_run = self.is_last(&done.node_id);
                let then_start = if completes_run || !may_start {
                    Vec::new()
                } else {
                    self.next_after(&done.node_id)
                };
                let writes = &self.shared.writes;
                let node_id = &done.node_id;
                let completed = fenced(stop, || {
                    writes.node_completed(NodeCompletion {
                        claim,
                        node_id: node_id.clone(),
                        output: output.clone(),
                        completes_run,
                        then_start: then_start.clone(),
                    })
                })
                .await?;
                self.run_completed = completed.run_completed;
                // Their handlers start in the run's span, once this attempt's is left.
                self.started_with_completion = completed.started;
                self.set_status(
                    &done.node_id,
                    done.attempt,
                    done.clean_interruptions,
                    NodeStatus::Completed,
                    true,
                );
                self.outputs.insert(done.node_id, output);
            }
            Err(error) => {
                // Postgres text cannot hold NUL; a message with one would fail the write.
                let message = error.to_string().replace('\0', "\u{fffd}");
                let retryable = error.is_retryable();
                let asked = error.retry_after();
                fenced(stop, || {
                    store.node_failed(&claim, &done.node_id, &message, retryable)
                })
                .await?;
                let state = self.set_status(
                    &done.node_id,
                    done.attempt,
                    done.clean_interruptions,
                    NodeStatus::Failed,
                    retryable,
                );
                tracing::info!(retryable, error = %message, "node attempt failed");
                if state.budget(node.max_attempts).allows_another() {
                    // Backoff grows with the attempts that count: one a shutdown interrupted
                    // did not fail.
                    let counted = state.counted_attempts();
                    let delay =
                        retry::delay_after_failure(&node.backoff, counted, fastrand::f64(), asked);
                    metrics::counter!("leasehold_worker_retries_scheduled_total", "kind" => node.kind.clone())
                        .increment(1);
                    self.retry
                        .get_or_insert((done.node_id, done.attempt + 1, delay));
                } else if self.failure.is_none() {
                    let reason = if retryable {
                        format!(
                            "{message} (attempt {} of {})",
                            state.counted_attempts(),
                            node.max_attempts
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

    fn set_status(
        &mut self,
        node_id: &NodeId,
        attempts: u32,
        clean_interruptions: u32,
        status: NodeStatus,
        retryable: bool,
    ) -> NodeState {
        let state = NodeState {
            status,
            attempts,
            retryable,
            clean_interruptions,
        };
        self.checkpoint.insert(node_id.clone(), state);
        state
    }
}
