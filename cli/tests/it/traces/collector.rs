//! An OTLP collector in the test process: a `TraceService` over gRPC on a loopback port that
//! keeps every span it is sent and counts the connections made to it. And a loopback HTTP
//! server that answers every request `200 {}` and keeps each request's `traceparent`.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

/// A span as the collector received it, ids in lowercase hex.
#[derive(Debug, Clone)]
pub struct Received {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub attributes: Vec<(String, String)>,
    /// The trace and span ids of the span's links.
    pub links: Vec<(String, String)>,
}

impl Received {
    /// The attribute `key`, as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Kept {
    spans: Mutex<Vec<Received>>,
    connections: Mutex<usize>,
}

/// The collector; stops when dropped.
pub struct Collector {
    pub endpoint: String,
    kept: Arc<Kept>,
    _stop: tokio_util::sync::DropGuard,
}

impl Collector {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let kept = Arc::new(Kept::default());
        let counted = Arc::clone(&kept);
        let incoming = TcpListenerStream::new(listener).map(move |stream| {
            *counted.connections.lock().expect("count") += 1;
            stream
        });
        let stop = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Sink(Arc::clone(&kept))))
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
        tokio::spawn(server);
        Self {
            endpoint,
            kept,
            _stop: stop.drop_guard(),
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.kept.spans.lock().expect("spans").clone()
    }

    /// Connections made to the collector so far.
    pub fn connections(&self) -> usize {
        *self.kept.connections.lock().expect("count")
    }
}

struct Sink(Arc<Kept>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.0.spans.lock().expect("spans");
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| text(a.value.as_ref().and_then(|v| v.value.as_ref())))
                .unwrap_or_default();
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                kept.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|a| {
                            let value = a.value.as_ref().and_then(|v| v.value.as_ref());
                            (a.key.clone(), text(value))
                        })
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn text(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A loopback HTTP/1.1 server that answers every request `200 {}` and keeps the value of each
/// request's `traceparent` header (an empty string for a request without one).
pub struct HeaderRecorder {
    pub url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl HeaderRecorder {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let kept = Arc::clone(&kept);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let traceparent = head
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(name, _)| name.eq_ignore_ascii_case("traceparent"))
                        .map(|(_, value)| value.trim().to_owned())
                        .unwrap_or_default();
                    kept.lock().expect("seen").push(traceparent);
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                              content-length: 2\r\nconnection: close\r\n\r\n{}",
                        )
                        .await;
                });
            }
        });
        Self { url, seen }
    }

    /// The `traceparent` of every request so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("seen").clone()
    }
}
