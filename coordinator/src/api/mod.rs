//! The gRPC API: one service per resource, every error mapped to a status in `error.rs`.

mod admission;
pub mod auth;
mod automations;
pub mod config;
mod convert;
mod error;
mod gates;
mod gather;
mod limits;
mod metrics;
mod queues;
mod retention;
mod runs;
mod schedules;
mod starts;
mod states;
mod token_cache;
mod watch;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::ids::TenantId;
use leasehold_core::retention::RetentionWindows;
use leasehold_core::store::{self, Cursor, PageRequest, Store};
use leasehold_core::trace::TraceContext;
use leasehold_proto::checks::CheckInput;
use leasehold_proto::v1;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Response, Status};
use tonic_health::server::HealthReporter;

use crate::tls;
pub use auth::{Auth, Caller};
pub use config::Config;
pub use watch::{CapReached, Hub};

pub use error::{ApiError, ApiResult, SpecSource};
pub use runs::MAX_START_RUNS;

/// Largest request a client may send. Specs of 1,000 nodes with 256 KiB inputs each are refused
/// by validation long before this; anything larger is RESOURCE_EXHAUSTED.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// Largest response: a run's nodes with their outputs (each at most 1 MiB) fit for all but
/// pathological runs.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// How often the health service checks the database.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Connections of the pool the health check and the watch hub share, apart from the API's:
/// a busy API never keeps a probe or the watches waiting for a connection. One each.
pub const BACKGROUND_POOL_SIZE: usize = 2;

/// The services, as the server holds them: what every call shares.
#[derive(Clone)]
pub struct Services {
    store: Store,
    /// Feeds every watch stream.
    hub: Hub,
    /// Cancelled when the server stops: open watch streams end with UNAVAILABLE so that their
    /// clients reconnect to another coordinator instead of holding this one open.
    shutdown: CancellationToken,
    /// Gathers the single starts of concurrent calls into batches.
    starts: starts::Starts,
    /// The retention windows of tenants without their own.
    retention: RetentionWindows,
}

impl Services {
    /// Serves from `store`, watches through `hub`, until `shutdown`, with `retention` for
    /// tenants without windows of their own.
    /// Must be called inside a Tokio runtime: it starts the task that writes batched starts.
    pub fn new(
        store: Store,
        hub: Hub,
        retention: RetentionWindows,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            starts: starts::Starts::new(&store),
            store,
            hub,
            shutdown,
            retention,
        }
    }

    /// The API as one call sees it: scoped to its caller, whom [`auth::AuthLayer`] put in the
    /// request's extensions. A request without one never passed the layer, and is refused.
    fn api<T>(&self, request: &tonic::Request<T>) -> Result<Api, Status> {
        let caller = request
            .extensions()
            .get::<Arc<Caller>>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("the call was not authenticated"))?;
        Ok(Api {
            store: self.store.clone(),
            hub: self.hub.clone(),
            tenant: caller.tenant.clone(),
            caller,
            shutdown: self.shutdown.clone(),
            trace: call_trace(request.metadata()),
            starts: self.starts.clone(),
            retention: self.retention,
        })
    }
}

/// The state a call's body works with: the store, and who is calling. Every body reads and
/// writes in `tenant`, its caller's, so another tenant's automations, runs and gates are not
/// found, and records `caller.name` as the actor of what it does.
#[derive(Clone)]
pub struct Api {
    store: Store,
    hub: Hub,
    /// The caller's tenant.
    tenant: TenantId,
    caller: Arc<Caller>,
    shutdown: CancellationToken,
    /// The trace a run started by this call continues: the call's own span when traces are on,
    /// else the caller's `traceparent`, if valid.
    trace: Option<TraceContext>,
    starts: starts::Starts,
    retention: RetentionWindows,
}

/// The trace context of a call: its server span's (a child of the caller's context) when this
/// coordinator exports traces, else the caller's `traceparent` and `tracestate` metadata as
/// sent, if the `traceparent` is valid (an invalid one is ignored, as the W3C specification has
/// a receiver do).
fn call_trace(metadata: &tonic::metadata::MetadataMap) -> Option<TraceContext> {
    leasehold_telemetry::current_trace().or_else(|| {
        let value = |key| metadata.get(key).and_then(|v| v.to_str().ok());
        leasehold_telemetry::context::from_values(
            value(leasehold_telemetry::context::TRACEPARENT),
            value(leasehold_telemetry::context::TRACESTATE),
        )
    })
}

/// Implements a gRPC service for [`Services`], one line per unary RPC: its name, its request
/// message, its response, and the body that answers the request `$message` with `$api` (the
/// [`Api`] scoped to the call's caller). Every request passes [`checked`] before its body runs,
/// and every answer goes through [`respond`], so every error maps to a status in one place. Items
/// that are not unary (a streaming RPC and its stream type) follow the RPCs as they are.
macro_rules! service {
    (
        impl $service:ident {
            $(rpc $rpc:ident($request:ident) -> $response:ty = |$api:ident, $message:ident| $body:expr;)+
        }
        $($other:tt)*
    ) => {
        #[tonic::async_trait]
        impl $service for $crate::api::Services {
            $(
                async fn $rpc(
                    &self,
                    request: tonic::Request<leasehold_proto::v1::$request>,
                ) -> Result<tonic::Response<$response>, tonic::Status> {
                    let $api = &self.api(&request)?;
                    let $message = $crate::api::checked(request)?;
                    respond($body.await)
                }
            )+
            $($other)*
        }
    };
}
use service;

/// The request, if its text can be stored and its numbers are finite: checked before anything
/// else, so that no other answer (NOT_FOUND, FAILED_PRECONDITION, INTERNAL from a database that
/// refuses the text) stands in for INVALID_ARGUMENT naming the field, and nothing is stored.
fn checked<T: CheckInput>(request: tonic::Request<T>) -> ApiResult<T> {
    let message = request.into_inner();
    message
        .check_input()
        .map_err(|v| ApiError::field(v.field, v.message))?;
    Ok(message)
}

fn respond<T>(result: ApiResult<T>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

/// AIP-158: a size of 0 means the default, larger than the maximum is coerced to it, negative
/// is refused; the token is opaque and must come from the previous page.
fn page_request(size: i32, token: &str) -> ApiResult<PageRequest> {
    let size =
        usize::try_from(size).map_err(|_| ApiError::field("page_size", "must not be negative"))?;
    let after = if token.is_empty() {
        None
    } else {
        Some(
            Cursor::decode(token)
                .map_err(|_| ApiError::field("page_token", "not a token from this API"))?,
        )
    };
    Ok(PageRequest {
        size: store::page_size(size),
        after,
    })
}

fn page_token(next: Option<&Cursor>) -> String {
    next.map(Cursor::encode).unwrap_or_default()
}

/// Serves the API, health and reflection on `listener` in plaintext with the default limits until
/// `cancel` is cancelled; every API call is authenticated as `auth` says.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    auth: Auth,
    cancel: CancellationToken,
) -> Result<(), ServeError> {
    serve_with(listener, None, store, auth, Config::default(), cancel).await
}

/// Why the API could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A limit out of its bounds.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The server failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// As [`serve`], over TLS when `tls` is given, within the limits of `config`. The API's calls use
/// `store`'s pool; the health check and the watch hub a pool of their own
/// ([`BACKGROUND_POOL_SIZE`]), so that neither waits behind the API's callers.
pub async fn serve_with(
    listener: TcpListener,
    tls: Option<tls::Acceptor>,
    store: Store,
    auth: Auth,
    config: Config,
    cancel: CancellationToken,
) -> Result<(), ServeError> {
    serve_with_health(listener, tls, None, store, auth, config, cancel).await
}

/// As [`serve_with`], and, given `health`, the health service alone in plaintext on that
/// listener too, reporting what the API's own does: for probes that speak no TLS (the kubelet's
/// gRPC probe) when the API serves TLS. It serves nothing else, and like the API's health
/// service it needs no token.
pub async fn serve_with_health(
    listener: TcpListener,
    tls: Option<tls::Acceptor>,
    health: Option<TcpListener>,
    store: Store,
    auth: Auth,
    config: Config,
    cancel: CancellationToken,
) -> Result<(), ServeError> {
    use v1::automations_server::AutomationsServer;
    use v1::gates_server::GatesServer;
    use v1::history_server::HistoryServer;
    use v1::runs_server::RunsServer;
    use v1::schedules_server::SchedulesServer;
    use v1::stats_server::StatsServer;
    use v1::workers_server::WorkersServer;

    let config = config.validated()?;
    let background = store.sibling(BACKGROUND_POOL_SIZE, "background");
    let hub = Hub::new(
        config.max_watch_streams,
        config.max_watch_streams_per_tenant,
    );
    tokio::spawn(hub.clone().run(background.clone(), cancel.clone()));
    let api = Services::new(store, hub, config.retention, cancel.clone());
    let health_listener = health;
    let (health, health_service) = tonic_health::server::health_reporter();
    // The reporter starts the server as a whole SERVING; nothing is known until the database
    // has answered once.
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    tokio::spawn(report_health(background, health, cancel.clone()));
    if let Some(listener) = health_listener {
        let (service, stop) = (health_service.clone(), cancel.clone().cancelled_owned());
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the plaintext health listener failed");
            }
        });
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(leasehold_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(leasehold_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid");

    macro_rules! limited {
        ($server:ident) => {
            $server::new(api.clone())
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_RESPONSE_BYTES)
        };
    }
    let router = tonic::transport::Server::builder()
        // Outermost: every call has a span when traces are on, those refused included.
        .layer(leasehold_telemetry::grpc::TraceLayer)
        // Every call is counted, those refused for load or size included.
        .layer(metrics::MetricsLayer)
        .layer(limits::oversize_is_resource_exhausted())
        // Before authentication, whose lookup is a call on the database like any other.
        .layer(admission::AdmissionLayer::new(
            config.max_concurrent_rpcs,
            config.rpc_timeout,
        ))
        .layer(auth::AuthLayer::new(auth, config.token_cache_ttl))
        // Half-dead watch streams are noticed instead of held open forever.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(limited!(AutomationsServer))
        .add_service(limited!(RunsServer))
        .add_service(limited!(GatesServer))
        .add_service(limited!(WorkersServer))
        .add_service(limited!(StatsServer))
        .add_service(limited!(HistoryServer))
        .add_service(limited!(SchedulesServer));
    let stop = cancel.cancelled_owned();
    match tls {
        None => {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
                .await?;
        }
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(tls.incoming(listener), stop)
                .await?;
        }
    }
    Ok(())
}

/// SERVING while the database answers, NOT_SERVING while it does not.
async fn report_health(store: Store, health: HealthReporter, cancel: CancellationToken) {
    use v1::automations_server::AutomationsServer;
    use v1::gates_server::GatesServer;
    use v1::history_server::HistoryServer;
    use v1::runs_server::RunsServer;
    use v1::schedules_server::SchedulesServer;
    use v1::stats_server::StatsServer;
    use v1::workers_server::WorkersServer;

    let mut serving = None;
    let mut tick = tokio::time::interval(HEALTH_CHECK_INTERVAL);
    while cancel.run_until_cancelled(tick.tick()).await.is_some() {
        let ok = tokio::time::timeout(HEALTH_CHECK_INTERVAL, store.ping())
            .await
            .is_ok_and(|r: Result<(), store::Error>| r.is_ok());
        if serving == Some(ok) {
            continue;
        }
        serving = Some(ok);
        if ok {
            tracing::info!("database reachable: serving");
            // The services first and the server as a whole last, so that a client that saw the
            // server SERVING finds every service SERVING too.
            health.set_serving::<AutomationsServer<Services>>().await;
            health.set_serving::<RunsServer<Services>>().await;
            health.set_serving::<GatesServer<Services>>().await;
            health.set_serving::<WorkersServer<Services>>().await;
            health.set_serving::<StatsServer<Services>>().await;
            health.set_serving::<HistoryServer<Services>>().await;
            health.set_serving::<SchedulesServer<Services>>().await;
            health
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
        } else {
            tracing::warn!("database unreachable: not serving");
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            health
                .set_not_serving::<AutomationsServer<Services>>()
                .await;
            health.set_not_serving::<RunsServer<Services>>().await;
            health.set_not_serving::<GatesServer<Services>>().await;
            health.set_not_serving::<WorkersServer<Services>>().await;
            health.set_not_serving::<StatsServer<Services>>().await;
            health.set_not_serving::<HistoryServer<Services>>().await;
            health.set_not_serving::<SchedulesServer<Services>>().await;
        }
    }
}
