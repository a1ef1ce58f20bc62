//! Leasehold's OpenTelemetry traces, shared by every process (`leasehold coordinator`,
//! `leasehold worker`, `leasehold dev`, worker binaries of one's own).
//!
//! # Layout
//! - [`setup`]: whether traces are on (`--otlp-endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT`,
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), the provider with its batch exporter over OTLP/gRPC,
//!   the `tracing` layer that feeds it, and the flush at exit.
//! - [`context`]: a run's W3C trace context as OpenTelemetry sees it: a remote parent to hang
//!   spans on, the current span's context to store or send on, the `traceparent` of a request.
//! - [`grpc`]: the server span of every gRPC call, a child of the caller's `traceparent`.
//!
//! With traces off nothing here connects anywhere, no span is made for OpenTelemetry, and
//! [`enabled`] is one atomic load: the hot path asks it before any span context work.
#![warn(missing_docs)]

pub mod context;
pub mod grpc;
pub mod setup;

use std::sync::atomic::{AtomicBool, Ordering};

pub use context::{current_trace, from_headers, remote_context};
pub use setup::{Error, OTLP_ENDPOINT_VARS, Traces, install, wanted};

/// Set once traces are installed; never cleared (the provider lives as long as the process).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn set_enabled() {
    ENABLED.store(true, Ordering::Relaxed);
}
