//! What a worker or coordinator shows an operator over HTTP: Prometheus metrics (`/metrics`) and,
//! for a worker, its probes (`/livez`, `/readyz`), on the listener `--metrics-listen` names.
//!
//! - [`install_recorder`]: the process's one metrics recorder (the `metrics` facade feeding
//!   `metrics-exporter-prometheus`), with histogram buckets, so that the exposition has
//!   histograms rather than summaries.
//! - [`Health`]: the worker's liveness and readiness, kept in atomics that its loops update.
//! - [`serve`]: the HTTP listener (axum, already under tonic).
//!
//! The metrics carry no secrets and no run data (labels are kinds, outcomes, methods, codes,
//! never run ids), so the listener may bind any address: Kubernetes scrapes and probes it on
//! the pod's IP.

mod described;
mod health;
mod http;

use std::sync::OnceLock;

pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

pub use self::health::{Health, KEEPER_STALL_AFTER, liveness, readiness};
pub use self::http::serve;

/// Buckets of every duration histogram, in seconds: from a millisecond (a claim on an idle
/// database) to five minutes (a long node).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Buckets of the histograms that count things per batch (runs per claim, writes per flush).
pub const BATCH_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Histograms whose observations are counts, not seconds.
const BATCH_HISTOGRAMS: &[&str] = &[
    "leasehold_worker_claim_batch_size",
    "leasehold_worker_flush_batch_size",
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's metrics recorder, once; later calls return the same handle. Until it
/// is installed, the `metrics` macros cost one atomic load and record nothing, which is what a
/// process without `--metrics-listen` gets.
pub fn install_recorder() -> Result<PrometheusHandle, BuildError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let mut builder = PrometheusBuilder::new().set_buckets(SECONDS_BUCKETS)?;
    for name in BATCH_HISTOGRAMS {
        builder =
            builder.set_buckets_for_metric(Matcher::Full((*name).to_owned()), BATCH_BUCKETS)?;
    }
    let handle = builder.install_recorder()?;
    described::describe_all();
    Ok(HANDLE.get_or_init(|| handle).clone())
}
