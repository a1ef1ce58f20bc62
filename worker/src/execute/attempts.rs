//! The node attempts a run has in flight.
//!
//! A lone attempt (a one-node run, a chain's next node) runs inside the run's own task: nothing
//! else of the run runs beside it, so a task of its own would only cost its spawn, its
//! scheduling and its join. Attempts that run together (a fan-out's branches) get a task each,
//! so that a handler keeps running while the run checkpoints another's outcome; an attempt
//! already running inline when another starts moves to a task of its own.

use std::future::Future;
use std::pin::Pin;

use futures_util::FutureExt;
use tokio::task::{JoinError, JoinSet};

use super::NodeDone;

type Attempt = Pin<Box<dyn Future<Output = NodeDone> + Send>>;

#[derive(Default)]
pub(super) struct Attempts {
    inline: Option<Attempt>,
    spawned: JoinSet<NodeDone>,
}

impl Attempts {
    /// Attempts in flight.
    pub fn len(&self) -> usize {
        self.spawned.len() + usize::from(self.inline.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `attempt`: inline when it is `alone` (no other attempt will run beside it before it
    /// finishes) and none is in flight, in a task of its own otherwise.
    pub fn start<F>(&mut self, attempt: F, alone: bool)
    where
        F: Future<Output = NodeDone> + Send + 'static,
    {
        if alone && self.is_empty() {
            self.inline = Some(Box::pin(attempt));
            return;
        }
        if let Some(inline) = self.inline.take() {
            self.spawned.spawn(inline);
        }
        self.spawned.spawn(attempt);
    }

    /// The next attempt to finish; `None` when none is in flight. Cancel-safe: an attempt
    /// not yet finished stays in flight.
    pub async fn join_next(&mut self) -> Option<Result<NodeDone, JoinError>> {
        if let Some(inline) = self.inline.as_mut() {
            let done = inline.await;
            self.inline = None;
            return Some(Ok(done));
        }
        self.spawned.join_next().await
    }

    /// Stops every attempt: their handlers are dropped (at once inline, when the runtime next
    /// polls a task). Call it once the attempts' cancellation token is cancelled: an inline
    /// attempt is polled once more before it is dropped, so that its handler sees the token, as
    /// a task of its own would when the runtime woke it.
    pub fn abort_all(&mut self) {
        self.drop_inline();
        self.spawned.abort_all();
    }

    /// Stops every attempt and waits until their handlers are dropped; as [`Self::abort_all`].
    pub async fn shutdown(&mut self) {
        self.drop_inline();
        self.spawned.shutdown().await;
    }

    fn drop_inline(&mut self) {
        if let Some(mut inline) = self.inline.take() {
            // Its outcome is not recorded: a stopped attempt has none.
            let _ = (&mut inline).now_or_never();
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    fn done(node: &str) -> NodeDone {
        NodeDone {
            node_id: node.into(),
            attempt: 1,
            clean_interruptions: 0,
            result: Ok(serde_json::Value::Null),
            span: tracing::Span::none(),
        }
    }

    /// An attempt that finishes once `go` is sent, and reports when it is dropped.
    fn gated(
        node: &'static str,
    ) -> (
        impl Future<Output = NodeDone> + Send + 'static,
        oneshot::Sender<()>,
        oneshot::Receiver<()>,
    ) {
        let (go, wait) = oneshot::channel::<()>();
        let (dropped_tx, dropped) = oneshot::channel::<()>();
        // Made outside the future, so that it reports even a future never polled.
        let on_drop = DropSignal(Some(dropped_tx));
        let attempt = async move {
            let _on_drop = on_drop;
            let _ = wait.await;
            done(node)
        };
        (attempt, go, dropped)
    }

    struct DropSignal(Option<oneshot::Sender<()>>);

    impl Drop for DropSignal {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }

    #[tokio::test]
    async fn a_lone_attempt_runs_inline_and_a_second_moves_it_to_a_task() {
        let mut attempts = Attempts::default();
        let (first, go_first, _) = gated("a");
        attempts.start(first, true);
        assert!(attempts.inline.is_some());
        assert_eq!(attempts.len(), 1);

        let (second, go_second, _) = gated("b");
        attempts.start(second, false);
        assert!(attempts.inline.is_none());
        assert_eq!(attempts.spawned.len(), 2);

        go_second.send(()).expect("second waits");
        let next = attempts.join_next().await.expect("one in flight");
        assert_eq!(next.expect("joined").node_id.as_str(), "b");
        go_first.send(()).expect("first waits");
        let next = attempts.join_next().await.expect("one in flight");
        assert_eq!(next.expect("joined").node_id.as_str(), "a");
        assert!(attempts.join_next().await.is_none());
        assert!(attempts.is_empty());
    }

    #[tokio::test]
    async fn waiting_for_an_inline_attempt_can_be_given_up_and_resumed() {
        let mut attempts = Attempts::default();
        let (attempt, go, _) = gated("a");
        attempts.start(attempt, true);
        assert!(
            attempts.join_next().now_or_never().is_none(),
            "the attempt has not finished"
        );
        assert_eq!(attempts.len(), 1, "it is still in flight");
        go.send(()).expect("the attempt waits");
        let next = attempts.join_next().await.expect("in flight");
        assert_eq!(next.expect("joined").node_id.as_str(), "a");
    }

    #[tokio::test]
    async fn an_inline_attempt_sees_its_cancellation_before_it_is_dropped() {
        let mut attempts = Attempts::default();
        let cancel = tokio_util::sync::CancellationToken::new();
        let (saw_tx, saw) = oneshot::channel::<()>();
        let token = cancel.clone();
        attempts.start(
            async move {
                token.cancelled().await;
                let _ = saw_tx.send(());
                done("a")
            },
            true,
        );
        assert!(attempts.join_next().now_or_never().is_none(), "it waits");
        cancel.cancel();
        attempts.abort_all();
        saw.await.expect("the handler saw the cancellation");
        assert!(attempts.is_empty());
    }

    #[tokio::test]
    async fn stopping_drops_every_handler() {
        let mut attempts = Attempts::default();
        let (inline, _go_inline, inline_dropped) = gated("a");
        attempts.start(inline, true);
        attempts.shutdown().await;
        inline_dropped
            .await
            .expect("the inline attempt was dropped");

        let (first, _go_first, first_dropped) = gated("a");
        let (second, _go_second, second_dropped) = gated("b");
        attempts.start(first, false);
        attempts.start(second, false);
        attempts.shutdown().await;
        first_dropped
            .await
            .expect("the first task's attempt was dropped");
        second_dropped
            .await
            .expect("the second task's attempt was dropped");
        assert!(attempts.is_empty());
    }
}
