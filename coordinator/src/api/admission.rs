//! Admission: the layer in front of every other, which bounds the calls in flight and gives
//! each a deadline, so that no client can make the coordinator queue work without end.
//!
//! - A call beyond `--max-concurrent-rpcs` is refused at once with UNAVAILABLE: it changed
//!   nothing, and like any UNAVAILABLE call it may be retried with backoff, here or on another
//!   coordinator. Health checks are not counted: a load balancer must hear from a busy
//!   coordinator that it is busy, not nothing.
//! - A call that has not answered within `--rpc-timeout` is DEADLINE_EXCEEDED. The deadline
//!   bounds the call up to its answer's head: for a unary call, the whole call; for a
//!   streaming call (WatchRun), opening the stream, which then lasts as long as it must.
//!   A client's own shorter deadline (`grpc-timeout`) is tonic's to enforce.
//!
//! The slot of a streaming call is freed once its stream is open: open watches are bounded by
//! their own caps instead (see `watch/`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tonic::Status;
use tower::{Layer, Service};

/// Paths that are never refused for load.
const UNCOUNTED: &[&str] = &["/grpc.health.v1.Health/"];

/// The layer for `Server::builder().layer(..)`.
#[derive(Clone)]
pub struct AdmissionLayer {
    slots: Arc<Semaphore>,
    max_in_flight: usize,
    timeout: Duration,
}

impl AdmissionLayer {
    /// At most `max_in_flight` calls at once, each answered within `timeout`.
    pub fn new(max_in_flight: usize, timeout: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            timeout,
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admitted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admitted {
            inner,
            admission: self.clone(),
        }
    }
}

/// The services behind [`AdmissionLayer`].
#[derive(Clone)]
pub struct Admitted<S> {
    inner: S,
    admission: AdmissionLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Admitted<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if UNCOUNTED.iter().any(|p| path.starts_with(p)) {
            return Box::pin(self.inner.call(request));
        }
        let AdmissionLayer {
            slots,
            max_in_flight,
            timeout,
        } = &self.admission;
        let Ok(slot) = Arc::clone(slots).try_acquire_owned() else {
            return Box::pin(std::future::ready(Ok(Status::unavailable(format!(
                "the coordinator is serving its limit of {max_in_flight} calls at once \
                 (--max-concurrent-rpcs); this call was not started: retry with backoff, \
                 here or on another coordinator"
            ))
            .into_http())));
        };
        let timeout = *timeout;
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answered = tokio::time::timeout(timeout, answer).await;
            drop(slot);
            answered.unwrap_or_else(|_| {
                Ok(Status::deadline_exceeded(format!(
                    "the call did not finish within the coordinator's deadline of {timeout:?} \
                     (--rpc-timeout); it may or may not have taken effect"
                ))
                .into_http())
            })
        })
    }
}
