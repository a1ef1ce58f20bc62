//! Turning traces on: the provider, its exporter, the `tracing` layer, the flush at exit.
//!
//! Traces are off unless an OTLP endpoint is given (`--otlp-endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`); then every other
//! standard variable the SDK knows applies as it says (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and its argument, `OTEL_BSP_*`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, …), and `OTEL_SDK_DISABLED=true`
//! or `OTEL_TRACES_EXPORTER=none` keep them off.
//!
//! Spans leave through the SDK's batch processor: a bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`,
//! 2,048 spans) that drops what does not fit, drained by a thread of its own, so a collector that
//! is slow or down costs the product nothing but the dropped spans.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

/// The variables that name the collector, the traces' own first; either turns traces on.
pub const OTLP_ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// How long the flush at exit may take: a collector that does not answer must not hold up a
/// shutdown (an orchestrator's grace period is short), so what is not sent by then is dropped.
pub const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// The spans exported, by name; every other span (a store statement's, the keeper's loop) stays
/// in the logs only. Events (log lines) at INFO and above inside them become span events.
const EXPORTED_SPANS: [&str; 4] = [crate::grpc::SPAN_NAME, "run", "node", "flush"];

/// The name of the tracer (the instrumentation scope) of Leasehold's spans.
pub const TRACER_NAME: &str = "leasehold";

/// Why traces could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The exporter refused its settings (an endpoint that is no URL, a bad header).
    #[error("setting up the OTLP trace exporter (--otlp-endpoint, OTEL_EXPORTER_OTLP_*): {0}")]
    Exporter(String),
}

/// Whether traces are on for a process given `--otlp-endpoint` as `flag`, by the environment.
pub fn wanted(flag: Option<&str>) -> bool {
    wanted_by(flag, |name| std::env::var(name).ok())
}

/// [`wanted`], with the environment as a function of a variable's name.
fn wanted_by(flag: Option<&str>, var: impl Fn(&str) -> Option<String>) -> bool {
    let is =
        |name: &str, value: &str| var(name).is_some_and(|v| v.trim().eq_ignore_ascii_case(value));
    if is("OTEL_SDK_DISABLED", "true") || is("OTEL_TRACES_EXPORTER", "none") {
        return false;
    }
    let given = |v: &str| !v.trim().is_empty();
    flag.is_some_and(given)
        || OTLP_ENDPOINT_VARS
            .iter()
            .any(|n| var(n).is_some_and(|v| given(&v)))
}

/// Whether the environment names the service: `OTEL_SERVICE_NAME`, or `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`. Otherwise the process's own default applies.
fn service_named_by(var: impl Fn(&str) -> Option<String>) -> bool {
    var("OTEL_SERVICE_NAME").is_some_and(|v| !v.trim().is_empty())
        || var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attributes| {
            attributes.split(',').any(|pair| {
                pair.split_once('=')
                    .is_some_and(|(k, _)| k.trim() == "service.name")
            })
        })
}

/// The traces of a process: the provider, flushed by [`Traces::shutdown`].
pub struct Traces {
    provider: SdkTracerProvider,
}

/// Sets traces up if they are [`wanted`]: an OTLP/gRPC exporter to `endpoint` (else the
/// standard variables' collector) behind a batch processor, the service named
/// `default_service` unless the environment names it. Must run inside a Tokio runtime (the
/// exporter's channel lives on it); it connects only when the first batch leaves.
pub fn install(endpoint: Option<&str>, default_service: &str) -> Result<Option<Traces>, Error> {
    if !wanted(endpoint) {
        return Ok(None);
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = endpoint.filter(|e| !e.trim().is_empty()) {
        exporter = exporter.with_endpoint(endpoint.trim());
    }
    let exporter = exporter
        .build()
        .map_err(|e| Error::Exporter(e.to_string()))?;
    let mut resource = Resource::builder();
    if !service_named_by(|name| std::env::var(name).ok()) {
        resource = resource.with_service_name(default_service.to_owned());
    }
    // The sampler comes from OTEL_TRACES_SAMPLER (parent-based, always on, by default).
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    crate::set_enabled();
    Ok(Some(Traces { provider }))
}

impl Traces {
    /// The tracer Leasehold's spans are made with.
    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer(TRACER_NAME)
    }

    /// The `tracing` layer that turns Leasehold's spans into OpenTelemetry spans: only the
    /// spans `EXPORTED_SPANS` names (the gRPC call, `run`, `node`, `flush`), from Leasehold's own
    /// crates, whatever the log filter.
    pub fn layer<S>(&self) -> Box<dyn Layer<S> + Send + Sync>
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer())
            .with_filter(filter_fn(exported))
            .boxed()
    }

    /// Sends the spans still queued, waiting [`SHUTDOWN_FLUSH_TIMEOUT`] at most, and stops the
    /// exporter. Blocking work, done off the runtime's threads.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let flushed = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(SHUTDOWN_FLUSH_TIMEOUT)
        });
        if let Ok(Err(e)) = flushed.await {
            tracing::warn!(error = %e, "flushing traces at exit");
        }
    }
}

/// Whether the OpenTelemetry layer sees `meta`: one of the exported spans, or an event at INFO
/// or above, from Leasehold's crates.
fn exported(meta: &Metadata<'_>) -> bool {
    if !meta.target().starts_with("leasehold") {
        return false;
    }
    if meta.is_span() {
        EXPORTED_SPANS.contains(&meta.name())
    } else {
        *meta.level() <= Level::INFO
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn traces_are_on_only_with_an_endpoint() {
        assert!(!wanted_by(None, env(&[])));
        assert!(!wanted_by(
            Some(" "),
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")])
        ));
        assert!(wanted_by(Some("http://collector:4317"), env(&[])));
        assert!(wanted_by(
            None,
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")])
        ));
        assert!(wanted_by(
            None,
            env(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://collector:4317"
            )])
        ));
        // Other variables alone do not.
        assert!(!wanted_by(None, env(&[("OTEL_SERVICE_NAME", "x")])));
    }

    #[test]
    fn the_standard_switches_keep_traces_off() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        assert!(!wanted_by(
            Some("http://c:4317"),
            env(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")])
        ));
        assert!(!wanted_by(
            None,
            env(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")])
        ));
        assert!(wanted_by(
            None,
            env(&[endpoint, ("OTEL_SDK_DISABLED", "false")])
        ));
        assert!(wanted_by(
            None,
            env(&[endpoint, ("OTEL_TRACES_EXPORTER", "otlp")])
        ));
    }

    #[test]
    fn the_environment_may_name_the_service() {
        assert!(!service_named_by(env(&[])));
        assert!(service_named_by(env(&[("OTEL_SERVICE_NAME", "payments")])));
        assert!(service_named_by(env(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=prod, service.name=payments"
        )])));
        assert!(!service_named_by(env(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.namespace=shop"
        )])));
    }
}
