//! The server span of every gRPC call: named for the method, a child of the caller's
//! `traceparent` (gRPC metadata is HTTP/2 headers), with the call's status code.

use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::context::{from_headers, remote_context};

/// The name of a call's span in the logs; OpenTelemetry names it for the method.
pub const SPAN_NAME: &str = "grpc";

/// The layer for `Server::builder().layer(..)`: outermost, so that the span covers every call,
/// those refused for load, size or authentication too. A pass-through when traces are off.
#[derive(Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Traced { inner }
    }
}

/// The services behind [`TraceLayer`].
#[derive(Clone)]
pub struct Traced<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> Service<http::Request<B>> for Traced<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !crate::enabled() {
            return Box::pin(self.inner.call(request));
        }
        let path = request.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let span = tracing::info_span!(
            SPAN_NAME,
            otel.name = %path,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        if let Some(parent) = from_headers(request.headers()) {
            // Only fails when the layer is missing, and then there is nothing to parent.
            let _ = span.set_parent(remote_context(&parent));
        }
        let answer = span.in_scope(|| self.inner.call(request));
        let recorded = span.clone();
        Box::pin(
            async move {
                let answered = answer.await;
                // A unary call's status is in its answer's head; a stream that opened is OK.
                let code = match &answered {
                    Ok(response) => status_code(response.headers()),
                    Err(_) => 2,
                };
                recorded.record("rpc.grpc.status_code", code);
                if code != 0 {
                    recorded.record("otel.status_code", "ERROR");
                }
                answered
            }
            .instrument(span),
        )
    }
}

/// The code an answer's head carries: its `grpc-status`, or 0 (OK) for an answer that opened.
fn status_code(headers: &http::HeaderMap) -> i64 {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
