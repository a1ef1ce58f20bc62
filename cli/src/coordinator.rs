//! `leasehold coordinator`: the gRPC API and, while it holds the leader lease, the sweeps.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use leasehold_coordinator::{api, sweeps, tls};
use leasehold_core::retention::{self, RetentionWindows};
use leasehold_core::store::{self, Store, WhenUnavailable};
use leasehold_worker::cli::cancel_on_signal;
use leasehold_worker::observe;
use tokio_util::sync::CancellationToken;

/// Where the API listens unless told otherwise: loopback. Any other address needs TLS
/// (`--tls-cert`, `--tls-key`) or `--allow-insecure`.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7233";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// PostgreSQL connection URL.
    #[arg(long, env = "LEASEHOLD_DATABASE_URL")]
    database_url: String,
    /// Address the gRPC API listens on.
    #[arg(long, env = "LEASEHOLD_LISTEN", default_value = LISTEN_DEFAULT)]
    listen: SocketAddr,
    /// Database connections in the API's pool. The leader lease, the sweeps, the health check
    /// and the watch streams' poller have small pools of their own beside it.
    #[arg(long, env = "LEASEHOLD_POOL_SIZE", default_value_t = store::POOL_SIZE_DEFAULT)]
    pool_size: usize,
    /// Serve every call without a token, as the default tenant's admin: only where nothing
    /// but a trusted, authenticating proxy can reach the API.
    #[arg(long, env = "LEASEHOLD_NO_AUTH")]
    no_auth: bool,
    /// Exit at once when the database cannot be reached at start. Without it the coordinator
    /// keeps trying, with backoff, serving health as NOT_SERVING meanwhile, so that an
    /// orchestrator does not restart it in a loop while the database fails over.
    #[arg(long, env = "LEASEHOLD_EXIT_ON_DB_UNAVAILABLE")]
    exit_on_db_unavailable: bool,
    /// Serve Prometheus metrics (`/metrics`) over HTTP on this address; off without it. Any
    /// address is allowed: the metrics show no secrets and no run data.
    #[arg(long, env = "LEASEHOLD_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Serve the gRPC health service alone, in plaintext, on this address too: for probes that
    /// speak no TLS (Kubernetes' gRPC probe) when the API serves TLS. Off without it.
    #[arg(long, env = "LEASEHOLD_HEALTH_LISTEN", value_name = "ADDR")]
    health_listen: Option<SocketAddr>,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    sweeps: SweepArgs,
}

/// The API's limits; bounds are checked when the coordinator starts.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Deadline of every call: one that has not answered by then (a WatchRun: has not opened
    /// its stream) is DEADLINE_EXCEEDED.
    #[arg(long, env = "LEASEHOLD_RPC_TIMEOUT", default_value_t = api::config::RPC_TIMEOUT_DEFAULT.into())]
    rpc_timeout: humantime::Duration,
    /// Calls in flight at once; one more is refused with UNAVAILABLE. Health checks do not count.
    #[arg(long, env = "LEASEHOLD_MAX_CONCURRENT_RPCS", default_value_t = api::config::MAX_CONCURRENT_RPCS_DEFAULT)]
    max_concurrent_rpcs: usize,
    /// WatchRun streams open at once; one more is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "LEASEHOLD_MAX_WATCH_STREAMS", default_value_t = api::config::MAX_WATCH_STREAMS_DEFAULT)]
    max_watch_streams: usize,
    /// WatchRun streams one tenant may have open at once; one more is refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "LEASEHOLD_MAX_WATCH_STREAMS_PER_TENANT", default_value_t = api::config::MAX_WATCH_STREAMS_PER_TENANT_DEFAULT)]
    max_watch_streams_per_tenant: usize,
    /// How long a token let in is kept, so that the calls made with it meanwhile do not look it
    /// up: a revoked token is refused to every call from this long after its revocation on.
    /// `0s` looks the token up on every call.
    #[arg(long, env = "LEASEHOLD_TOKEN_CACHE_TTL", default_value_t = api::config::TOKEN_CACHE_TTL_DEFAULT.into())]
    token_cache_ttl: humantime::Duration,
}

impl LimitArgs {
    pub fn config(&self) -> api::Config {
        api::Config {
            rpc_timeout: self.rpc_timeout.into(),
            max_concurrent_rpcs: self.max_concurrent_rpcs,
            max_watch_streams: self.max_watch_streams,
            max_watch_streams_per_tenant: self.max_watch_streams_per_tenant,
            token_cache_ttl: self.token_cache_ttl.into(),
            ..api::Config::default()
        }
    }
}

/// TLS for the API, and the one way to go without it off loopback.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// Serve TLS with this certificate chain (PEM); re-read when the file changes.
    #[arg(
        long,
        env = "LEASEHOLD_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM); re-read when the file changes.
    #[arg(
        long,
        env = "LEASEHOLD_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM); re-read when the file changes.
    #[arg(
        long,
        env = "LEASEHOLD_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_client_ca: Option<PathBuf>,
    /// Serve plaintext on a non-loopback address, for a service mesh or proxy that terminates
    /// TLS in front of the coordinator.
    #[arg(long, env = "LEASEHOLD_ALLOW_INSECURE", conflicts_with = "tls_cert")]
    allow_insecure: bool,
}

impl TlsArgs {
    /// The TLS files, read now, if TLS was asked for.
    fn acceptor(&self) -> anyhow::Result<Option<tls::Acceptor>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let acceptor = tls::Acceptor::load(tls::Config {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.tls_client_ca.clone(),
        })
        .context("loading --tls-cert, --tls-key and --tls-client-ca")?;
        Ok(Some(acceptor))
    }
}

/// Whether the API may serve on an address, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exposure {
    /// TLS, wherever it listens.
    Tls,
    /// Plaintext on loopback: only this machine can connect.
    Loopback,
    /// Plaintext elsewhere, allowed by `--allow-insecure`.
    Insecure,
}

/// Plaintext off loopback would hand the API to anyone on the network: it needs TLS, or
/// `--allow-insecure` for a service mesh that terminates TLS in front of the coordinator.
fn exposure(listen: SocketAddr, tls: bool, allow_insecure: bool) -> anyhow::Result<Exposure> {
    if tls {
        return Ok(Exposure::Tls);
    }
    if listen.ip().is_loopback() {
        return Ok(Exposure::Loopback);
    }
    if allow_insecure {
        return Ok(Exposure::Insecure);
    }
    anyhow::bail!(
        "refusing to serve the API without TLS on {listen}, which is not a loopback address: \
         pass --tls-cert and --tls-key, or add --allow-insecure if a service mesh or proxy \
         terminates TLS in front of the coordinator"
    )
}

/// The sweeps' settings; bounds are checked when the coordinator starts.
#[derive(Debug, Clone, clap::Args)]
pub struct SweepArgs {
    /// Leader lease: after a leader dies, sweeps pause at most this long.
    #[arg(long, env = "LEASEHOLD_LEADER_LEASE", default_value_t = sweeps::LEADER_LEASE_DEFAULT.into())]
    leader_lease: humantime::Duration,
    /// Time between reaper passes.
    #[arg(long, env = "LEASEHOLD_REAPER_INTERVAL", default_value_t = sweeps::REAPER_INTERVAL_DEFAULT.into())]
    reaper_interval: humantime::Duration,
    /// Unprogressed lease expiries in a row after which a run is blocked.
    #[arg(long, env = "LEASEHOLD_POISON_LIMIT", default_value_t = leasehold_core::lease::POISON_LIMIT_DEFAULT)]
    poison_limit: u32,
    /// Time between passes settling pausing runs whose holder died.
    #[arg(long, env = "LEASEHOLD_PAUSING_INTERVAL", default_value_t = sweeps::PAUSING_INTERVAL_DEFAULT.into())]
    pausing_interval: humantime::Duration,
    /// Do not requeue stale-reaped runs automatically.
    #[arg(long, env = "LEASEHOLD_NO_AUTO_RESUME")]
    no_auto_resume: bool,
    /// Time between auto-resume passes.
    #[arg(long, env = "LEASEHOLD_AUTO_RESUME_INTERVAL", default_value_t = sweeps::AUTO_RESUME_INTERVAL_DEFAULT.into())]
    auto_resume_interval: humantime::Duration,
    /// How long after a stale reap a run may still be auto-resumed.
    #[arg(long, env = "LEASEHOLD_AUTO_RESUME_WINDOW", default_value_t = sweeps::AUTO_RESUME_WINDOW_DEFAULT.into())]
    auto_resume_window: humantime::Duration,
    /// Auto-resumes a run may have in its life.
    #[arg(long, env = "LEASEHOLD_AUTO_RESUME_CAP", default_value_t = sweeps::AUTO_RESUME_CAP_DEFAULT)]
    auto_resume_cap: u32,
    /// How long a gate may be pending before it is marked stale.
    #[arg(long, env = "LEASEHOLD_STALE_GATE_AFTER", default_value_t = sweeps::STALE_GATE_AFTER_DEFAULT.into())]
    stale_gate_after: humantime::Duration,
    /// Time between deadline passes: how late past its `run_timeout_ms` or
    /// `schedule_to_start_timeout_ms` a run fails, at most.
    #[arg(long, env = "LEASEHOLD_DEADLINE_INTERVAL", default_value_t = sweeps::DEADLINE_INTERVAL_DEFAULT.into())]
    deadline_interval: humantime::Duration,
    /// How long a worker may be silent (no heartbeat) before its row is removed; at least 6h.
    #[arg(long, env = "LEASEHOLD_DEAD_WORKER_AFTER", default_value_t = sweeps::DEAD_WORKER_AFTER_DEFAULT.into())]
    dead_worker_after: humantime::Duration,
    /// How long a finished run keeps its inputs and node outputs (its hot window), for tenants
    /// without windows of their own (`leasehold retention set`); past it they are dropped.
    #[arg(long, env = "LEASEHOLD_RETENTION", default_value_t = retention::COMPACT_AFTER_DEFAULT.into())]
    retention: humantime::Duration,
    /// How long a finished run is kept at all, for tenants without windows of their own; past
    /// it, it is deleted with its nodes, gates and (by month) events. At least --retention.
    #[arg(long, env = "LEASEHOLD_DELETE_AFTER", default_value_t = retention::DELETE_AFTER_DEFAULT.into())]
    delete_after: humantime::Duration,
    /// Time between folds of the finished runs' counts that Stats reads: how many moves of runs
    /// Stats reads unfolded, at most.
    #[arg(long, env = "LEASEHOLD_COUNT_INTERVAL", default_value_t = sweeps::COUNT_INTERVAL_DEFAULT.into())]
    count_interval: humantime::Duration,
    /// Time between schedule passes: how late after its time a fire starts its run, at most,
    /// while a leader runs.
    #[arg(long, env = "LEASEHOLD_SCHEDULE_INTERVAL", default_value_t = sweeps::SCHEDULE_INTERVAL_DEFAULT.into())]
    schedule_interval: humantime::Duration,
    /// How late a fire may start and still be on time; a later one was missed (no leader ran),
    /// and runs only as its schedule's `catch_up` says. Keep it above a leader handover
    /// (--leader-lease and a third).
    #[arg(long, env = "LEASEHOLD_SCHEDULE_GRACE", default_value_t = sweeps::SCHEDULE_GRACE_DEFAULT.into())]
    schedule_grace: humantime::Duration,
    /// Finished runs retention compacts or deletes per second, at most: its statements take
    /// database CPU that claims share.
    #[arg(long, env = "LEASEHOLD_RETENTION_RATE", default_value_t = sweeps::RETENTION_RATE_DEFAULT)]
    retention_rate: u32,
    /// Runs one retention statement compacts or deletes: small batches keep its writes from
    /// holding up the claims' commits.
    #[arg(long, env = "LEASEHOLD_RETENTION_BATCH", default_value_t = sweeps::RETENTION_BATCH_DEFAULT)]
    retention_batch: usize,
    /// Time between retention passes.
    #[arg(long, env = "LEASEHOLD_RETENTION_INTERVAL", default_value_t = sweeps::RETENTION_INTERVAL_DEFAULT.into())]
    retention_interval: humantime::Duration,
    /// Time between the leader's readings of the queue for the `leasehold_queue_*` metrics.
    #[arg(long, env = "LEASEHOLD_QUEUE_METRICS_INTERVAL", default_value_t = sweeps::QUEUE_INTERVAL_DEFAULT.into())]
    queue_metrics_interval: humantime::Duration,
}

impl SweepArgs {
    pub fn config(&self) -> sweeps::Config {
        sweeps::Config {
            leader_lease: self.leader_lease.into(),
            reaper_interval: self.reaper_interval.into(),
            poison_limit: self.poison_limit,
            pausing_interval: self.pausing_interval.into(),
            auto_resume_enabled: !self.no_auto_resume,
            auto_resume_interval: self.auto_resume_interval.into(),
            auto_resume_window: self.auto_resume_window.into(),
            auto_resume_cap: self.auto_resume_cap,
            stale_gate_after: self.stale_gate_after.into(),
            deadline_interval: self.deadline_interval.into(),
            dead_worker_after: self.dead_worker_after.into(),
            retention: RetentionWindows {
                compact_after: self.retention.into(),
                delete_after: self.delete_after.into(),
            },
            retention_interval: self.retention_interval.into(),
            retention_rate: self.retention_rate,
            retention_batch: self.retention_batch,
            count_interval: self.count_interval.into(),
            schedule_interval: self.schedule_interval.into(),
            schedule_grace: self.schedule_grace.into(),
            queue_interval: self.queue_metrics_interval.into(),
            ..sweeps::Config::default()
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.sweeps.config().validated()?;
    let limits = args.limits.config().validated()?;
    let tls = args.tls.acceptor()?;
    let exposure = exposure(args.listen, tls.is_some(), args.tls.allow_insecure)?;
    // No connection is made here: the server starts first, so that its health can say
    // NOT_SERVING while the database cannot be reached.
    let store = Store::connect_unchecked(&args.database_url, args.pool_size)
        .and_then(|store| leasehold_coordinator::with_coordinator_session(&store))
        .context("connecting to the database")?;
    let when_unavailable = if args.exit_on_db_unavailable {
        WhenUnavailable::Exit
    } else {
        WhenUnavailable::Wait
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let metrics = match args.metrics_listen {
        Some(addr) => Some(MetricsListener::bind(addr).await?),
        None => None,
    };
    let health = match args.health_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on --health-listen {addr}"))?,
        ),
        None => None,
    };
    if exposure == Exposure::Insecure {
        tracing::warn!(
            listen = %args.listen,
            "serving the API without TLS on a non-loopback address (--allow-insecure): \
             only a service mesh or proxy that terminates TLS may reach this port"
        );
    }
    let auth = if args.no_auth {
        tracing::warn!(
            "--no-auth: every API call is served without a token, as the default tenant's admin; \
             anyone who reaches {} can do anything",
            args.listen
        );
        api::Auth::Disabled
    } else {
        api::Auth::Tokens(store.clone())
    };
    let served = {
        let (store, no_auth) = (store.clone(), args.no_auth);
        async move {
            store
                .wait_until_served(when_unavailable)
                .await
                .context("connecting to the database")?;
            if !no_auth
                && store
                    .list_tokens(None)
                    .await
                    .context("reading the API tokens")?
                    .is_empty()
            {
                tracing::warn!(
                    "no API token exists yet, so every call will be refused; make one with \
                     `leasehold token create --tenant default --role admin`"
                );
            }
            Ok(())
        }
    };
    let cancel = CancellationToken::new();
    cancel_on_signal(cancel.clone());
    serve_with(
        listener,
        Exposed {
            tls,
            metrics,
            health,
        },
        store,
        auth,
        (limits, config),
        cancel,
        Box::pin(served),
    )
    .await
}

/// Resolves once the database answers with a schema this build serves; an error stops the
/// coordinator.
type DatabaseReady = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// The API in plaintext with the default limits, authenticated as `auth` says, and the sweeps
/// until `cancel`, with `/metrics` on `metrics` if given; shared with `leasehold dev`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Option<MetricsListener>,
    store: Store,
    auth: api::Auth,
    config: sweeps::Config,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    // Dev mode migrated the database before it serves.
    let ready: DatabaseReady = Box::pin(async { Ok(()) });
    serve_with(
        listener,
        Exposed {
            tls: None,
            metrics,
            health: None,
        },
        store,
        auth,
        (api::Config::default(), config),
        cancel,
        ready,
    )
    .await
}

/// As [`serve`], over TLS when `tls` is given, within `limits`. `store` is the API's pool; the
/// leader lease, the sweeps, the health check and the watch hub open their own beside it.
async fn serve_with(
    listener: tokio::net::TcpListener,
    Exposed {
        tls,
        metrics,
        health,
    }: Exposed,
    store: Store,
    auth: api::Auth,
    (limits, config): (api::Config, sweeps::Config),
    cancel: CancellationToken,
    ready: DatabaseReady,
) -> anyhow::Result<()> {
    // The API reports the windows the sweeps apply to tenants without their own.
    let limits = api::Config {
        retention: config.retention,
        ..limits
    };
    let addr = listener.local_addr()?;
    let holder = format!("{}-coordinator", leasehold_worker::default_claimant_id());
    let client_certificates = tls
        .as_ref()
        .is_some_and(tls::Acceptor::requires_client_certificates);
    tracing::info!(
        %addr,
        %holder,
        tls = tls.is_some(),
        client_certificates,
        "coordinator serving gRPC"
    );
    if let Some(metrics) = metrics {
        metrics.serve(&store, cancel.clone());
    }
    // The sweeps start once the database is known to serve this build; meanwhile the API
    // serves, and its health says NOT_SERVING while the database does not answer.
    let sweeping = tokio::spawn({
        let (store, cancel) = (store.clone(), cancel.clone());
        async move {
            let Some(ready) = cancel.run_until_cancelled(ready).await else {
                return Ok(());
            };
            if let Err(e) = ready {
                cancel.cancel();
                return Err(e);
            }
            Ok(sweeps::run(store, config, holder, cancel).await?)
        }
    });
    let served =
        api::serve_with_health(listener, tls, health, store, auth, limits, cancel.clone()).await;
    cancel.cancel();
    sweeping.await.context("sweeps task")??;
    served.context("serving gRPC")?;
    Ok(())
}

/// How the coordinator shows itself besides the API: TLS for the API, the metrics, and the
/// plaintext health listener.
struct Exposed {
    tls: Option<tls::Acceptor>,
    metrics: Option<MetricsListener>,
    health: Option<tokio::net::TcpListener>,
}

/// The `--metrics-listen` listener, bound at start so that a taken port fails the start.
pub struct MetricsListener {
    listener: tokio::net::TcpListener,
    handle: observe::PrometheusHandle,
}

impl MetricsListener {
    /// Installs the metrics recorder and binds `addr`.
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let handle = observe::install_recorder().context("installing the metrics recorder")?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on --metrics-listen {addr}"))?;
        Ok(Self { listener, handle })
    }

    /// The address bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `/metrics`, with the API pool's standing, until `cancel`.
    fn serve(self, store: &Store, cancel: CancellationToken) {
        if let Ok(addr) = self.listener.local_addr() {
            tracing::info!(%addr, "serving /metrics");
        }
        let pools = vec![store.clone()];
        tokio::spawn(async move {
            if let Err(e) = observe::serve(self.listener, self.handle, None, pools, cancel).await {
                tracing::warn!(error = %e, "the metrics listener stopped");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_refused_off_loopback_unless_allowed() {
        let check = |listen: &str, tls: bool, allow_insecure: bool| {
            exposure(listen.parse().unwrap(), tls, allow_insecure).map_err(|e| e.to_string())
        };
        // All of 127/8 is loopback, and ::1.
        for listen in ["127.0.0.1:7233", "127.0.0.2:1", "[::1]:7233"] {
            assert_eq!(
                check(listen, false, false),
                Ok(Exposure::Loopback),
                "{listen}"
            );
        }
        assert_eq!(check("0.0.0.0:7233", true, false), Ok(Exposure::Tls));
        assert_eq!(check("10.1.2.3:7233", false, true), Ok(Exposure::Insecure));
        for listen in ["0.0.0.0:7233", "[::]:7233", "10.1.2.3:7233"] {
            let message = check(listen, false, false).expect_err(listen);
            assert!(message.contains("--allow-insecure"), "{message}");
            assert!(message.contains("--tls-cert"), "{message}");
        }
    }
}
