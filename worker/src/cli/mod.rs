//! The worker command: its flags and environment variables ([`Args`]) and its entry point
//! ([`run_with`]). `leasehold worker` runs it with the built-in node kinds; a worker binary of
//! one's own flattens [`Args`] into its parser and adds its kinds to [`Args::registry`]:
//!
//! ```no_run
//! use clap::Parser;
//! use leasehold_worker::cli;
//!
//! #[derive(Parser)]
//! struct Command {
//!     #[command(flatten)]
//!     worker: cli::Args,
//! }
//!
//! # async fn main_() -> Result<(), cli::Error> {
//! let args = Command::parse().worker;
//! let registry = args.registry();
//! // registry.register("my_kind", MyHandler);
//! cli::run_with(args, registry).await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`run_with`] keeps the worker's secrets from the programs it runs: a worker
//! given its database URL in its environment or on its command line executes itself again at
//! start, under the same pid, without them.

mod logging;
mod plain_fields;
mod secrets;
mod signals;

use std::net::SocketAddr;
use std::path::PathBuf;

use leasehold_core::ids::ClaimantId;
use leasehold_core::lease;
use leasehold_core::routing;

use crate::runtime_context::RuntimeContext;
use leasehold_core::store::{self, Store, WhenUnavailable};
use tokio_util::sync::CancellationToken;

pub use self::logging::{LOG_FILTER_VAR, LogArgs, LogFormat, init_logging, subscriber};
use self::secrets::UrlSource;
pub use self::secrets::{DATABASE_URL_FD_VAR, EXPORTER_SECRET_VARS, SECRET_VARS, SecretsError};
pub use self::signals::{EXIT_ON_SECOND_SIGNAL, cancel_on_signal};
use crate::config::{self, Config, ConfigError};
use crate::handler::Registry;
use crate::handlers::{
    self, ExecAllow, ExecAllowError, ExecPolicy, ExecUser, HttpAllow, HttpPolicy,
};
use crate::observe;
use crate::worker::{Report, Worker};
pub use leasehold_telemetry::Traces;

/// The worker command's settings, each a flag and an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// PostgreSQL connection URL. The worker removes it from its environment and command line
    /// at start; prefer --database-url-file, since any user can read a command line.
    #[arg(
        long,
        env = "LEASEHOLD_DATABASE_URL",
        hide_env_values = true,
        conflicts_with = "database_url_file"
    )]
    pub database_url: Option<String>,
    /// A file holding the PostgreSQL connection URL, such as a mounted secret.
    #[arg(long, env = "LEASEHOLD_DATABASE_URL_FILE", value_name = "FILE")]
    pub database_url_file: Option<PathBuf>,
    /// The pipe carrying the URL across the worker's execution of itself; set by the worker.
    #[arg(long, env = DATABASE_URL_FD_VAR, hide = true)]
    pub database_url_fd: Option<i32>,
    /// Runs held at once.
    #[arg(long, env = "LEASEHOLD_CAPACITY", default_value_t = config::CAPACITY_DEFAULT)]
    pub capacity: usize,
    /// Nodes of one run executed at once.
    #[arg(long, env = "LEASEHOLD_NODE_CONCURRENCY", default_value_t = config::NODE_CONCURRENCY_DEFAULT)]
    pub node_concurrency: usize,
    /// Identity in leases [default: host, pid and a random suffix].
    #[arg(long, env = "LEASEHOLD_CLAIMANT_ID")]
    pub claimant_id: Option<String>,
    /// Lease length, clamped to 5s..6h.
    #[arg(long, env = "LEASEHOLD_LEASE", default_value_t = lease::LEASE_DEFAULT.into())]
    pub lease: humantime::Duration,
    /// Time between heartbeat rounds [default: a third of the lease].
    #[arg(long, env = "LEASEHOLD_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<humantime::Duration>,
    /// Polling fallback for when a LISTEN/NOTIFY wake-up is missed.
    #[arg(long, env = "LEASEHOLD_POLL_INTERVAL", default_value_t = config::POLL_INTERVAL_DEFAULT.into())]
    pub poll_interval: humantime::Duration,
    /// Do not listen for wake-ups; poll only.
    #[arg(long, env = "LEASEHOLD_NO_LISTEN")]
    pub no_listen: bool,
    /// Time running nodes get to finish after SIGTERM before their runs are handed back.
    #[arg(long, env = "LEASEHOLD_SHUTDOWN_GRACE", default_value_t = config::SHUTDOWN_GRACE_DEFAULT.into())]
    pub shutdown_grace: humantime::Duration,
    /// What `exec` nodes may run (repeat the flag): a program, and optionally the arguments it
    /// must start with, shell-quoted ('/usr/bin/python3 /opt/jobs/report.py'); `exec` is off
    /// without one.
    #[arg(
        long = "exec-allow",
        env = "LEASEHOLD_EXEC_ALLOW",
        value_delimiter = ',',
        value_name = "PROGRAM [ARG…]",
        value_parser = exec_allow_entry
    )]
    pub exec_allow: Vec<String>,
    /// An environment variable passed through to `exec` children (repeat the flag).
    #[arg(
        long = "exec-env",
        env = "LEASEHOLD_EXEC_ENV",
        value_delimiter = ',',
        value_parser = exec_env_name
    )]
    pub exec_env: Vec<String>,
    /// The user `exec` children run as (a name or uid; the worker must run as root).
    #[arg(long = "exec-user", env = "LEASEHOLD_EXEC_USER", value_name = "USER", value_parser = ExecUser::lookup)]
    pub exec_user: Option<ExecUser>,
    /// An address, network (CIDR) or host name `http` nodes may reach beyond the public
    /// internet (repeat the flag): loopback, link-local, private and other local addresses are
    /// refused without it.
    #[arg(
        long = "http-allow",
        env = "LEASEHOLD_HTTP_ALLOW",
        value_delimiter = ',',
        value_name = "CIDR|HOST"
    )]
    pub http_allow: Vec<HttpAllow>,
    /// Database connections in the pool.
    #[arg(long, env = "LEASEHOLD_POOL_SIZE", default_value_t = config::POOL_SIZE_DEFAULT)]
    pub pool_size: usize,
    /// Exit at once when the database cannot be reached at start. Without it the worker keeps
    /// trying, with backoff, so that an orchestrator does not restart it in a loop while the
    /// database fails over.
    #[arg(long, env = "LEASEHOLD_EXIT_ON_DB_UNAVAILABLE")]
    pub exit_on_db_unavailable: bool,
    /// Serve Prometheus metrics (`/metrics`) and the probes `/livez` and `/readyz` over HTTP on
    /// this address; off without it. Any address is allowed: they show no secrets and no run
    /// data, and Kubernetes probes the pod's IP.
    #[arg(long, env = "LEASEHOLD_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// A queue to claim runs from (repeat the flag); `default` without one.
    #[arg(
        long = "queue",
        env = "LEASEHOLD_QUEUES",
        value_delimiter = ',',
        value_name = "NAME",
        value_parser = queue_name
    )]
    pub queues: Vec<String>,
    /// A label of this worker, which nodes may require (`requires: {gpu: a100}`); repeat the
    /// flag.
    #[arg(
        long = "label",
        env = "LEASEHOLD_LABELS",
        value_delimiter = ',',
        value_name = "KEY=VALUE",
        value_parser = routing::parse_label
    )]
    pub labels: Vec<(String, String)>,
    /// The name of context this worker holds for runs that require it (`requires_context`),
    /// its value read from the environment variable of that name (repeat the flag). Only the
    /// name is advertised; only runs requiring it see the value.
    #[arg(
        long = "context",
        env = "LEASEHOLD_CONTEXT",
        value_delimiter = ',',
        value_name = "NAME",
        value_parser = context_name
    )]
    pub context: Vec<String>,
}

/// A `--context` name, checked.
fn context_name(name: &str) -> Result<String, String> {
    routing::check_context_name(name)?;
    if SECRET_VARS.contains(&name) || EXPORTER_SECRET_VARS.contains(&name) {
        return Err(format!(
            "{name} holds a secret of the worker itself, which no run may read"
        ));
    }
    Ok(name.to_owned())
}

/// A `--queue` name, checked.
fn queue_name(name: &str) -> Result<String, String> {
    routing::check_queue_name(name).map(|()| name.to_owned())
}

/// An `--exec-allow` entry, checked; an empty one (`LEASEHOLD_EXEC_ALLOW=`) allows nothing.
fn exec_allow_entry(entry: &str) -> Result<String, ExecAllowError> {
    if entry.is_empty() {
        return Ok(String::new());
    }
    entry.parse::<ExecAllow>().map(|_| entry.to_owned())
}

/// An `--exec-env` name, which may not be one of the worker's secrets.
fn exec_env_name(name: &str) -> Result<String, String> {
    if SECRET_VARS.contains(&name) || EXPORTER_SECRET_VARS.contains(&name) {
        return Err(format!(
            "{name} holds a secret of the worker, which never reaches exec children"
        ));
    }
    Ok(name.to_owned())
}

/// Why the worker command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of its bounds.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database URL could not be read, or kept from the programs the worker runs.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// The database could not be reached, or its schema is not this build's.
    #[error("connecting to the database")]
    Connect(#[source] store::Error),
    /// The worker could not register itself.
    #[error(transparent)]
    Run(#[from] store::Error),
    /// The metrics listener could not start.
    #[error("serving metrics on --metrics-listen {addr}: {reason}")]
    Metrics {
        /// The address given.
        addr: SocketAddr,
        /// Why it failed.
        reason: String,
    },
}

impl Args {
    /// The claimant id given, or else a fresh one ([`config::default_claimant_id`]), which
    /// is kept: every call, and the worker [`run_with`] starts, use the same.
    pub fn claimant_id(&mut self) -> ClaimantId {
        let id = self
            .claimant_id
            .get_or_insert_with(|| config::default_claimant_id().0);
        ClaimantId(id.clone())
    }

    /// The built-in node kinds: `exec` allowed the programs, variables and user the flags name,
    /// `http` the destinations.
    pub fn registry(&self) -> Registry {
        handlers::builtin_with(
            ExecPolicy {
                allowed_programs: self
                    .exec_allow
                    .iter()
                    .filter(|entry| !entry.is_empty())
                    .cloned()
                    .collect(),
                allowed_env: self.exec_env.clone(),
                user: self.exec_user.clone(),
                ..ExecPolicy::default()
            },
            HttpPolicy {
                allow: self.http_allow.clone(),
            },
        )
    }

    /// The database URL, from `--database-url` (or its variable), `--database-url-file`, or the
    /// pipe the worker's previous image left when it executed itself again ([`run_with`]). A
    /// pipe can be read once: the URL is kept here, so that a worker binary that needs the URL
    /// itself calls this before [`run_with`], which then uses the same.
    pub fn database_url(&mut self) -> Result<String, SecretsError> {
        if let Some(url) = &self.database_url {
            return Ok(url.clone());
        }
        let url = secrets::read_url(&self.url_source()?)?;
        self.database_url_fd = None;
        self.database_url = Some(url.clone());
        Ok(url)
    }

    /// Where the database URL comes from.
    fn url_source(&self) -> Result<UrlSource, SecretsError> {
        match (
            &self.database_url_fd,
            &self.database_url,
            &self.database_url_file,
        ) {
            (Some(fd), ..) => Ok(UrlSource::Inherited(*fd)),
            (None, Some(url), _) => Ok(UrlSource::Given(url.clone())),
            (None, None, Some(file)) => Ok(UrlSource::File(file.clone())),
            (None, None, None) => Err(SecretsError::Missing),
        }
    }

    /// The worker's settings, checked.
    fn config(&mut self) -> Result<Config, ConfigError> {
        let mut config = Config::new(self.claimant_id()).with_lease(self.lease.into());
        config.capacity = self.capacity;
        config.node_concurrency = self.node_concurrency;
        config.poll_interval = self.poll_interval.into();
        config.listen = !self.no_listen;
        config.shutdown_grace = self.shutdown_grace.into();
        if !self.queues.is_empty() {
            config.queues = self.queues.iter().cloned().collect();
        }
        config.labels = self.labels.iter().cloned().collect();
        config.runtime_context = RuntimeContext::read(self.context.iter().cloned(), |name| {
            std::env::var(name).ok()
        })?;
        if let Some(interval) = self.heartbeat_interval {
            config.heartbeat_interval = interval.into();
        }
        config.validated()
    }
}

/// Runs a worker with `registry`'s node kinds until the first SIGTERM or SIGINT, or an
/// operator's drain, and returns once its runs are handed back; a second signal exits the
/// process at once ([`cancel_on_signal`]).
///
/// First it keeps its secrets from the programs it runs: if the database URL or another of
/// [`SECRET_VARS`] is in the process's environment, or the URL on its command line, it
/// executes the process's program again, under the same pid, with the same arguments and
/// environment less those, and the URL in an inherited pipe ([`DATABASE_URL_FD_VAR`]); the
/// program's `main` runs again and calls this function again, which then goes on. A program
/// embedding the worker must therefore call this before it does anything it would not do twice.
/// Then the process makes itself non-dumpable, so that programs of the same user cannot read
/// its memory.
pub async fn run_with(mut args: Args, registry: Registry) -> Result<Report, Error> {
    let url = args.database_url()?;
    secrets::hide(&url)?;
    secrets::harden();
    for entry in &args.exec_allow {
        if entry
            .parse::<ExecAllow>()
            .is_ok_and(|e| e.is_bare_interpreter())
        {
            tracing::warn!(
                "--exec-allow {entry:?} lets any node run any code on this host: name the script \
                 too, as in --exec-allow '{entry} /path/to/script'"
            );
        }
    }
    let config = args.config()?;
    let store = Store::connect_worker_unchecked(&url, args.pool_size)
        .and_then(|store| {
            store.with_session(&config.application_name(), config.statement_timeout())
        })
        .map_err(Error::Connect)?;
    let worker = Worker::new(store.clone(), registry, config);
    // Started before the database answers, so that `/livez` says the worker is alive while it
    // waits, and `/readyz` that it is not ready.
    let metrics_stop = CancellationToken::new();
    if let Some(addr) = args.metrics_listen {
        serve_metrics(addr, &worker, &store, metrics_stop.clone()).await?;
    }
    let _stop_metrics = metrics_stop.drop_guard();
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let when_unavailable = if args.exit_on_db_unavailable {
        WhenUnavailable::Exit
    } else {
        WhenUnavailable::Wait
    };
    match shutdown
        .run_until_cancelled(store.wait_until_served(when_unavailable))
        .await
    {
        Some(served) => served.map_err(Error::Connect)?,
        // Stopped before the database answered: nothing was claimed.
        None => return Ok(Report::default()),
    }
    let report = worker.run(shutdown).await?;
    tracing::info!(claimed = report.claimed, "bye");
    Ok(report)
}

/// Binds `addr` and serves the worker's metrics and probes there until `stop`.
async fn serve_metrics(
    addr: SocketAddr,
    worker: &Worker,
    store: &Store,
    stop: CancellationToken,
) -> Result<(), Error> {
    let failed = |reason: String| Error::Metrics { addr, reason };
    let handle = observe::install_recorder().map_err(|e| failed(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let bound = listener.local_addr().map_err(|e| failed(e.to_string()))?;
    tracing::info!(addr = %bound, "serving /metrics, /livez and /readyz");
    let worker_health = worker.health();
    let pools = vec![store.clone()];
    tokio::spawn(async move {
        if let Err(e) = observe::serve(listener, handle, Some(worker_health), pools, stop).await {
            tracing::warn!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        worker: Args,
    }

    fn args(flags: &[&str]) -> Args {
        let argv = ["worker", "--database-url", "postgres://x"]
            .iter()
            .chain(flags);
        Command::try_parse_from(argv).expect("flags").worker
    }

    #[test]
    fn no_flags_give_the_config_defaults() {
        let mut args = args(&["--claimant-id", "w"]);
        let config = args.config().expect("valid");
        assert_eq!(config, Config::new(ClaimantId::from("w")));
        assert_eq!(args.pool_size, config::POOL_SIZE_DEFAULT);
    }

    #[test]
    fn flags_set_the_config() {
        let mut args = args(&[
            "--lease",
            "1m",
            "--heartbeat-interval",
            "5s",
            "--poll-interval",
            "50ms",
            "--no-listen",
        ]);
        let config = args.config().expect("valid");
        assert_eq!(config.lease, Duration::from_secs(60));
        assert_eq!(config.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(config.poll_interval, Duration::from_millis(50));
        assert!(!config.listen);
    }

    #[test]
    fn a_drawn_claimant_id_is_kept() {
        let mut args = args(&[]);
        let drawn = args.claimant_id();
        assert_eq!(args.claimant_id(), drawn);
        assert_eq!(args.config().expect("valid").claimant_id, drawn);
    }

    #[test]
    fn the_database_url_comes_from_the_flag_the_file_or_the_inherited_pipe() {
        let parse = |flags: &[&str]| {
            Command::try_parse_from(std::iter::once(&"worker").chain(flags))
                .map(|c| c.worker.url_source())
        };
        assert_eq!(
            parse(&["--database-url", "postgres://x"]).unwrap().unwrap(),
            UrlSource::Given("postgres://x".into())
        );
        assert_eq!(
            parse(&["--database-url-file", "/run/url"])
                .unwrap()
                .unwrap(),
            UrlSource::File("/run/url".into())
        );
        assert_eq!(
            parse(&["--database-url-fd", "5"]).unwrap().unwrap(),
            UrlSource::Inherited(5)
        );
        assert!(matches!(parse(&[]).unwrap(), Err(SecretsError::Missing)));
        let mut args = args(&[]);
        assert_eq!(args.database_url().unwrap(), "postgres://x");
        assert_eq!(args.database_url().unwrap(), "postgres://x");
        assert!(parse(&["--database-url", "x", "--database-url-file", "/f"]).is_err());
    }

    #[test]
    fn flags_shape_the_handlers_policies() {
        let args = args(&[
            "--exec-allow",
            "/usr/bin/python3 /opt/jobs/report.py,sh",
            "--exec-allow",
            "",
            "--http-allow",
            "127.0.0.1,10.0.0.0/8",
            "--http-allow",
            "metadata.internal",
        ]);
        assert_eq!(
            args.exec_allow,
            ["/usr/bin/python3 /opt/jobs/report.py", "sh", ""]
        );
        assert_eq!(
            args.http_allow,
            ["127.0.0.1", "10.0.0.0/8", "metadata.internal"]
                .map(|a| a.parse::<HttpAllow>().unwrap())
        );
        assert!(args.registry().kinds().contains(&"exec".to_owned()));
        // An empty entry allows nothing: alone, it leaves exec off.
        assert!(
            !self::args(&["--exec-allow", ""])
                .registry()
                .kinds()
                .contains(&"exec".to_owned())
        );
    }

    #[test]
    fn bad_handler_flags_are_refused_at_start() {
        let refused = |flags: &[&str]| {
            let argv = ["worker", "--database-url", "postgres://x"]
                .iter()
                .chain(flags);
            Command::try_parse_from(argv).is_err()
        };
        assert!(refused(&["--exec-allow", "'unclosed"]));
        assert!(refused(&["--http-allow", "10.0.0.1/8"]));
        assert!(refused(&["--http-allow", "not a host"]));
        assert!(refused(&["--exec-env", "LEASEHOLD_DATABASE_URL"]));
        assert!(refused(&["--exec-env", "PGPASSWORD"]));
        assert!(refused(&["--exec-env", "OTEL_EXPORTER_OTLP_HEADERS"]));
        assert!(refused(&[
            "--exec-env",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS"
        ]));
        assert!(refused(&["--exec-user", "leasehold-no-such-user"]));
        assert!(!refused(&[
            "--exec-env",
            "PATH",
            "--exec-allow",
            "'/opt/my jobs/run' --x"
        ]));
    }
}
