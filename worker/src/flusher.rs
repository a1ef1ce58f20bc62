//! Batched node writes. The node starts and completions a worker's runs ask for are flushed
//! together, one statement per kind carrying many runs, so the database sees a few large
//! statements instead of one small transaction per write. Each write in a batch is still fenced
//! on its own claim, and a run waits for its write's answer before it goes on, so batching
//! changes no step of the lease protocol.
//!
//! There is no timer: a flush starts as soon as the previous one of its kind is answered and
//! takes everything queued meanwhile. An idle worker writes at once; under load, batches grow
//! while the previous flush is in flight. A crash loses only writes whose runs were still waiting
//! for an answer, and the lease protocol recovers those like any write that never landed.

use std::sync::Arc;

use leasehold_core::store::{self, Claim, Completed, NodeCompletion, NodeStart, Store};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::Error;

/// Flushes in flight at once per kind of write: one is written while the next one fills. Two
/// made more, smaller statements and a fifth less throughput (bench/README.md); one per kind
/// also leaves the pool to heartbeats and claims.
const FLUSHES_IN_FLIGHT: usize = 1;
/// Writes in one statement at most; larger batches hold row locks longer for little gain.
const MAX_BATCH: usize = 1024;

/// The worker's batched writers, one per kind; cheap to share.
pub(crate) struct Writes {
    starts: mpsc::UnboundedSender<Request<Starts>>,
    completions: mpsc::UnboundedSender<Request<Completions>>,
}

impl Writes {
    /// Starts the flushers; they end when `Writes` is dropped.
    pub fn new(store: &Store) -> Self {
        Self {
            starts: spawn_flusher::<Starts>(store.clone()),
            completions: spawn_flusher::<Completions>(store.clone()),
        }
    }

    /// [`Store::node_started`], batched with other runs' starts.
    pub async fn node_started(
        &self,
        claim: Claim,
        node_id: &leasehold_core::ids::NodeId,
    ) -> Result<u32, Error> {
        let start = NodeStart {
            claim,
            node_id: node_id.clone(),
        };
        ask(&self.starts, start).await
    }

    /// [`Store::nodes_completed_and_started`] for one node, batched with other runs'
    /// completions; says whether the run completed too, and which of the nodes to start next
    /// it started.
    pub async fn node_completed(&self, completion: NodeCompletion) -> Result<Completed, Error> {
        ask(&self.completions, completion).await
    }
}

/// A kind of batched write: how a batch of it is written.
trait BatchWrite: Send + 'static {
    /// This kind of write, as its metrics label it and its flush span names it.
    const LABEL: &'static str;
    type Item: Clone + Send + Sync + 'static;
    type Answer: Send + 'static;

    fn write(
        store: &Store,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<Vec<Result<Self::Answer, store::FenceError>>, store::Error>> + Send;
}

struct Starts;

impl BatchWrite for Starts {
    const LABEL: &'static str = "node_starts";
    type Item = NodeStart;
    type Answer = u32;

    async fn write(
        store: &Store,
        items: &[NodeStart],
    ) -> Result<Vec<Result<u32, store::FenceError>>, store::Error> {
        store.nodes_started(items).await
    }
}

struct Completions;

impl BatchWrite for Completions {
    const LABEL: &'static str = "node_completions";
    type Item = NodeCompletion;
    type Answer = Completed;

    async fn write(
        store: &Store,
        items: &[NodeCompletion],
    ) -> Result<Vec<Result<Completed, store::FenceError>>, store::Error> {
        store.nodes_completed_and_started(items).await
    }
}

struct Request<W: BatchWrite> {
    item: W::Item,
    answer: oneshot::Sender<Result<W::Answer, Error>>,
    /// The span that asked (a node attempt's), which the flush's span links to; `None` when
    /// traces are off.
    asker: Option<SpanContext>,
}

async fn ask<W: BatchWrite>(
    queue: &mpsc::UnboundedSender<Request<W>>,
    item: W::Item,
) -> Result<W::Answer, Error> {
    let (answer, answered) = oneshot::channel();
    let asker = leasehold_telemetry::enabled()
        .then(|| {
            tracing::Span::current()
                .context()
                .span()
                .span_context()
                .clone()
        })
        .filter(SpanContext::is_valid);
    queue
        .send(Request {
            item,
            answer,
            asker,
        })
        .map_err(|_| flusher_gone())?;
    answered.await.map_err(|_| flusher_gone())?
}

/// Only when the runtime drops the flusher's tasks (the worker is stopping) or a flush panicked:
/// transient, so the run retries while its lease lasts instead of being blocked.
fn flusher_gone() -> Error {
    Error::Interrupted("the worker's write flusher has stopped")
}

fn spawn_flusher<W: BatchWrite>(store: Store) -> mpsc::UnboundedSender<Request<W>> {
    let (queue, requests) = mpsc::unbounded_channel();
    tokio::spawn(flush_queued::<W>(store, requests));
    queue
}

async fn flush_queued<W: BatchWrite>(
    store: Store,
    mut requests: mpsc::UnboundedReceiver<Request<W>>,
) {
    let slots = Arc::new(Semaphore::new(FLUSHES_IN_FLIGHT));
    while let Some(first) = requests.recv().await {
        // Waiting for a slot is what lets the batch grow under load.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        // Runs woken together (a claim's batch, a flush's answers) are runnable right now: let
        // them queue their writes before the batch is taken. Microseconds, when idle.
        tokio::task::yield_now().await;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        // A run that stopped waiting (its lease was lost) needs no write.
        batch.retain(|request| !request.answer.is_closed());
        if batch.is_empty() {
            continue;
        }
        let store = store.clone();
        tokio::spawn(async move {
            flush::<W>(&store, batch).await;
            drop(slot);
        });
    }
}

/// Writes a batch, inside a span of its own when traces are on: the root of a trace of its own,
/// since one statement serves many runs, linked to each write's node attempt.
async fn flush<W: BatchWrite>(store: &Store, batch: Vec<Request<W>>) {
    if !leasehold_telemetry::enabled() {
        return write_batch(store, batch).await;
    }
    let span = tracing::info_span!(parent: None, "flush", write = W::LABEL, writes = batch.len());
    for asker in batch.iter().filter_map(|r| r.asker.clone()) {
        span.add_link(asker);
    }
    write_batch(store, batch).instrument(span).await;
}

async fn write_batch<W: BatchWrite>(store: &Store, batch: Vec<Request<W>>) {
    let (items, answers): (Vec<W::Item>, Vec<_>) =
        batch.into_iter().map(|r| (r.item, r.answer)).unzip();
    tracing::trace!(kind = W::LABEL, writes = items.len(), "flushing");
    let began = std::time::Instant::now();
    let written = W::write(store, &items).await;
    record_flush(W::LABEL, items.len(), began.elapsed(), written.is_ok());
    match written {
        Ok(results) => {
            for (answer, result) in answers.into_iter().zip(results) {
                let _ = answer.send(result.map_err(Error::from));
            }
        }
        // One write's bad data (an output Postgres refuses, say) must fail that write alone, not
        // every run that shared its statement: write them one by one.
        Err(e) if !e.is_transient() && items.len() > 1 => {
            tracing::warn!(error = %e, writes = items.len(), "a batched write failed; writing its items one by one");
            for (item, answer) in items.into_iter().zip(answers) {
                let result = match W::write(store, std::slice::from_ref(&item)).await {
                    Ok(results) => results
                        .into_iter()
                        .next()
                        .expect("a batch answers every item it was given")
                        .map_err(Error::from),
                    Err(e) => Err(Error::from(e)),
                };
                let _ = answer.send(result);
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for answer in answers {
                let _ = answer.send(Err(Error::FlushFailed(Arc::clone(&e))));
            }
        }
    }
}

fn record_flush(write: &'static str, writes: usize, took: std::time::Duration, landed: bool) {
    let outcome = if landed { "ok" } else { "failed" };
    #[allow(clippy::cast_precision_loss)] // a batch holds at most MAX_BATCH writes
    metrics::histogram!("leasehold_worker_flush_batch_size", "write" => write)
        .record(writes as f64);
    metrics::histogram!("leasehold_worker_flush_duration_seconds", "write" => write, "outcome" => outcome)
        .record(took.as_secs_f64());
}
