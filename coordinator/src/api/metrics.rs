//! The layer that counts every gRPC call by method and code and times it to its answer's head:
//! `leasehold_grpc_requests_total` and `leasehold_grpc_request_duration_seconds`.
//!
//! The code is read from the answer's head: a refused call (and any error of a unary call)
//! answers with `grpc-status` in its headers; a call without it opened, which is `OK` for a
//! unary call and for a stream at open (a stream's final code, in its trailers, is not waited
//! for). A call to a method no service has is counted under the method `unknown`, so that a
//! client cannot grow the labels without bound.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use leasehold_proto::codes::code_name;
use tonic::Code;
use tower::{Layer, Service};

/// The layer for `Server::builder().layer(..)`; outermost, so that refusals count too.
#[derive(Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> Layer<S> for MetricsLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Measured { inner }
    }
}

/// The services behind [`MetricsLayer`].
#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> Service<http::Request<B>> for Measured<S>
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
        let method = request.uri().path().trim_start_matches('/').to_owned();
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answered = answer.await;
            let code = match &answered {
                Ok(response) => code_of(response.headers()),
                // The transport failed the call: no status was sent.
                Err(_) => Code::Unknown,
            };
            let method = if code == Code::Unimplemented {
                "unknown".to_owned()
            } else {
                method
            };
            let code = code_name(code);
            metrics::counter!("leasehold_grpc_requests_total", "method" => method.clone(), "code" => code)
                .increment(1);
            metrics::histogram!("leasehold_grpc_request_duration_seconds", "method" => method, "code" => code)
                .record(started.elapsed().as_secs_f64());
            answered
        })
    }
}

/// The code an answer's head carries: its `grpc-status`, or `OK` for an answer that opened.
fn code_of(headers: &http::HeaderMap) -> Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_is_the_heads_grpc_status_or_ok() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(code_of(&headers), Code::Ok, "opened");
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(code_of(&headers), Code::NotFound);
        assert_eq!(code_name(code_of(&headers)), "NOT_FOUND");
        headers.insert("grpc-status", http::HeaderValue::from_static("junk"));
        assert_eq!(code_of(&headers), Code::Ok);
    }
}
