//! Oversize messages are RESOURCE_EXHAUSTED, as gRPC's status conventions (and grpc-go, grpc-java)
//! have it; tonic's decoder says OUT_OF_RANGE, which tells a client its *values* were out of
//! range. This layer rewrites that one status and nothing else.

use http::HeaderValue;
use tonic::Code;
use tower::util::MapResponseLayer;

const DECODE_LIMIT_MESSAGE: &str = "decoded message length too large";

type Response = http::Response<tonic::body::Body>;

/// The layer for `Server::builder().layer(..)`.
pub fn oversize_is_resource_exhausted() -> MapResponseLayer<fn(Response) -> Response> {
    MapResponseLayer::new(rewrite)
}

fn rewrite(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == (Code::OutOfRange as i32).to_string().as_bytes());
    let oversize = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| {
            m.contains(DECODE_LIMIT_MESSAGE)
                || m.contains("decoded%20message%20length%20too%20large")
        });
    if out_of_range && oversize {
        headers.insert(
            "grpc-status",
            HeaderValue::from(Code::ResourceExhausted as i32),
        );
    }
    response
}
