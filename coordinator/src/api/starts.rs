//! Single `StartRun` calls gathered into batches: the calls in flight on this coordinator share
//! one statement ([`Store::start_each`]) instead of taking a few round trips each, and each call
//! still gets its own answer, as if it had been alone.
//!
//! There is no timer: a batch is written as soon as the previous one is answered and takes every
//! call queued meanwhile, so an idle coordinator writes a call at once and a busy one batches.

use leasehold_core::store::{RequestError, StartOutcome, StartRun, Store};
use tokio::sync::{mpsc, oneshot};

use super::error::{ApiError, ApiResult};

/// Starts in one statement at most: the bound of a `StartRuns` call, for the same reasons.
const MAX_BATCH: usize = super::runs::MAX_START_RUNS;

struct Ask {
    request: StartRun,
    answer: oneshot::Sender<Result<StartOutcome, RequestError>>,
}

/// The coordinator's gatherer of single starts; cheap to share. Its task ends when the last
/// clone is dropped.
#[derive(Clone)]
pub(super) struct Starts {
    queue: mpsc::UnboundedSender<Ask>,
}

impl Starts {
    /// Starts the task that writes the batches; it must be called inside a Tokio runtime.
    pub fn new(store: Store) -> Self {
        let (queue, asks) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(store, asks));
        Self { queue }
    }

    /// Starts `request`'s run in the next batch, and answers as [`Store::start_each`] answers it.
    pub async fn start(&self, request: StartRun) -> ApiResult<StartOutcome> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Ask { request, answer })
            .map_err(|_| gone())?;
        Ok(answered.await.map_err(|_| gone())??)
    }
}

/// Only when the runtime dropped the writer's task (the coordinator is stopping) or a batch
/// panicked.
fn gone() -> ApiError {
    ApiError::Unavailable("the coordinator is stopping: no run was started")
}

async fn write_batches(store: Store, mut asks: mpsc::UnboundedReceiver<Ask>) {
    while let Some(first) = asks.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match asks.try_recv() {
                Ok(ask) => batch.push(ask),
                Err(_) => break,
            }
        }
        // A call that gave up (its deadline passed, its client went away) starts nothing, as
        // it would not had it been alone.
        batch.retain(|ask| !ask.answer.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (requests, answers): (Vec<StartRun>, Vec<_>) =
            batch.into_iter().map(|a| (a.request, a.answer)).unzip();
        #[allow(clippy::cast_precision_loss)] // a batch holds at most MAX_BATCH starts
        metrics::histogram!("leasehold_coordinator_start_batch_size").record(requests.len() as f64);
        let outcomes = store.start_each(&requests).await;
        for (answer, outcome) in answers.into_iter().zip(outcomes) {
            let _ = answer.send(outcome);
        }
    }
}
