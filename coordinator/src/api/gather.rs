//! Gathering the database work of concurrent calls into shared statements, as the worker's
//! flusher gathers node writes: the calls in flight on this coordinator share one statement
//! instead of taking a round trip each, and each still gets its own answer.
//!
//! There is no timer: a batch is written as soon as a writer is free and takes every item queued
//! meanwhile, so an idle coordinator writes an item at once and a busy one batches.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::error::ApiError;

struct Ask<I, A> {
    item: I,
    answer: oneshot::Sender<A>,
}

/// Gathers items into batches that one task writes, one batch at a time; cheap to share. The
/// task ends when the last clone is dropped.
pub(super) struct Gatherer<I, A> {
    queue: mpsc::UnboundedSender<Ask<I, A>>,
}

impl<I, A> Clone for Gatherer<I, A> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<I: Send + 'static, A: Send + 'static> Gatherer<I, A> {
    /// Starts the task that writes batches of at most `max_batch` items with `write`, which
    /// answers every item of a batch, in order, at most `in_flight` batches at once. Must be
    /// called inside a Tokio runtime.
    pub fn spawn<W, F>(in_flight: usize, max_batch: usize, write: W) -> Self
    where
        W: Fn(Vec<I>) -> F + Send + Sync + 'static,
        F: Future<Output = Vec<A>> + Send + 'static,
    {
        let (queue, asks) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(asks, in_flight, max_batch, Arc::new(write)));
        Self { queue }
    }

    /// `item`, written in the next batch, and its answer.
    pub async fn ask(&self, item: I) -> Result<A, ApiError> {
        let (answer, answered) = oneshot::channel();
        self.queue.send(Ask { item, answer }).map_err(|_| gone())?;
        answered.await.map_err(|_| gone())
    }
}

/// Only when the runtime dropped the writer's task (the coordinator is stopping) or a batch
/// panicked.
fn gone() -> ApiError {
    ApiError::Unavailable("the coordinator is stopping; the call did nothing")
}

async fn write_batches<I, A, W, F>(
    mut asks: mpsc::UnboundedReceiver<Ask<I, A>>,
    in_flight: usize,
    max_batch: usize,
    write: Arc<W>,
) where
    I: Send + 'static,
    A: Send + 'static,
    W: Fn(Vec<I>) -> F + Send + Sync + 'static,
    F: Future<Output = Vec<A>> + Send + 'static,
{
    let writers = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = asks.recv().await {
        // Waiting for a writer is what lets the batch grow under load.
        let Ok(writer) = Arc::clone(&writers).acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match asks.try_recv() {
                Ok(ask) => batch.push(ask),
                Err(_) => break,
            }
        }
        // A call that gave up (its deadline passed, its client went away) gets nothing done, as
        // it would not had it been alone.
        batch.retain(|ask| !ask.answer.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (items, answers): (Vec<I>, Vec<_>) =
            batch.into_iter().map(|a| (a.item, a.answer)).unzip();
        let write = Arc::clone(&write);
        tokio::spawn(async move {
            for (answer, answered) in answers.into_iter().zip(write(items).await) {
                let _ = answer.send(answered);
            }
            drop(writer);
        });
    }
}
