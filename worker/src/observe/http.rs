//! The HTTP listener of `--metrics-listen`: `/metrics` in the Prometheus text format, and a
//! worker's `/livez` and `/readyz` (200 or 503 with a line saying why).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use leasehold_core::store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use super::Health;

/// How often histogram buffers are drained when nobody scrapes.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Clone)]
struct Served {
    handle: PrometheusHandle,
    health: Option<Arc<Health>>,
    pools: Arc<[Store]>,
}

/// Serves `/metrics` from `handle`, with the standing of `pools` read at each scrape (labelled
/// with their [`Store::pool_name`]), and, given a
/// worker's `health`, `/livez` and `/readyz`, until `cancel`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    health: Option<Arc<Health>>,
    pools: Vec<Store>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let mut router = Router::new().route("/metrics", get(metrics));
    if health.is_some() {
        router = router
            .route("/livez", get(livez))
            .route("/readyz", get(readyz));
    }
    // Histogram observations wait in buffers until an upkeep drains them: without a scraper,
    // they would grow for good. The exporter's own server would do this; we run without it.
    tokio::spawn({
        let (handle, cancel) = (handle.clone(), cancel.clone());
        async move {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            while cancel.run_until_cancelled(tick.tick()).await.is_some() {
                handle.run_upkeep();
            }
        }
    });
    let router = router.with_state(Served {
        handle,
        health,
        pools: pools.into(),
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}

async fn metrics(State(served): State<Served>) -> impl IntoResponse {
    for pool in served.pools.iter() {
        let status = pool.pool_status();
        let name = pool.pool_name();
        let gauge = |metric: &'static str, value: usize| {
            #[allow(clippy::cast_precision_loss)] // pool sizes are far below 2^52
            metrics::gauge!(metric, "pool" => name).set(value as f64);
        };
        gauge("leasehold_db_pool_max_connections", status.max_size);
        gauge("leasehold_db_pool_connections", status.size);
        gauge("leasehold_db_pool_idle_connections", status.available);
        gauge("leasehold_db_pool_waiters", status.waiting);
    }
    // Without the exporter's own server nothing else drains the histograms' buffers.
    served.handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        served.handle.render(),
    )
}

fn probe(result: Result<String, String>) -> (StatusCode, String) {
    match result {
        Ok(fine) => (StatusCode::OK, fine + "\n"),
        Err(wrong) => (StatusCode::SERVICE_UNAVAILABLE, wrong + "\n"),
    }
}

async fn livez(State(served): State<Served>) -> (StatusCode, String) {
    probe(
        served
            .health
            .as_ref()
            .map_or(Ok(String::new()), |h| h.live()),
    )
}

async fn readyz(State(served): State<Served>) -> (StatusCode, String) {
    probe(
        served
            .health
            .as_ref()
            .map_or(Ok(String::new()), |h| h.ready()),
    )
}
