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

mod signals;

use leasehold_core::ids::ClaimantId;
use leasehold_core::lease;
use leasehold_core::store::{self, Store};
use tokio_util::sync::CancellationToken;

pub use self::signals::{EXIT_ON_SECOND_SIGNAL, cancel_on_signal};
use crate::config::{self, Config, ConfigError};
use crate::handler::Registry;
use crate::handlers::{self, ExecPolicy};
use crate::worker::{Report, Worker};

/// The worker command's settings, each a flag and an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// PostgreSQL connection URL. Exec children never see it.
    #[arg(long, env = "LEASEHOLD_DATABASE_URL")]
    pub database_url: String,
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
    /// A program `exec` nodes may run (repeat the flag); `exec` is off without one.
    #[arg(
        long = "exec-allow",
        env = "LEASEHOLD_EXEC_ALLOW",
        value_delimiter = ','
    )]
    pub exec_allow: Vec<String>,
    /// An environment variable passed through to `exec` children (repeat the flag).
    #[arg(long = "exec-env", env = "LEASEHOLD_EXEC_ENV", value_delimiter = ',')]
    pub exec_env: Vec<String>,
    /// Database connections in the pool.
    #[arg(long, env = "LEASEHOLD_POOL_SIZE", default_value_t = config::POOL_SIZE_DEFAULT)]
    pub pool_size: usize,
}

/// Why the worker command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of its bounds.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database could not be reached, or its schema is not this build's.
    #[error("connecting to the database")]
    Connect(#[source] store::Error),
    /// The worker could not register itself.
    #[error(transparent)]
    Run(#[from] store::Error),
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

    /// The built-in node kinds, `exec` allowed the programs and variables the flags name.
    pub fn registry(&self) -> Registry {
        handlers::builtin(ExecPolicy {
            allowed_programs: self.exec_allow.clone(),
            allowed_env: self.exec_env.clone(),
            ..ExecPolicy::default()
        })
    }

    /// The worker's settings, checked.
    fn config(&mut self) -> Result<Config, ConfigError> {
        let mut config = Config::new(self.claimant_id()).with_lease(self.lease.into());
        config.capacity = self.capacity;
        config.node_concurrency = self.node_concurrency;
        config.poll_interval = self.poll_interval.into();
        config.listen = !self.no_listen;
        config.shutdown_grace = self.shutdown_grace.into();
        if let Some(interval) = self.heartbeat_interval {
            config.heartbeat_interval = interval.into();
        }
        config.validated()
    }
}

/// Runs a worker with `registry`'s node kinds until the first SIGTERM or SIGINT, or an
/// operator's drain, and returns once its runs are handed back; a second signal exits the
/// process at once ([`cancel_on_signal`]).
pub async fn run_with(mut args: Args, registry: Registry) -> Result<Report, Error> {
    let config = args.config()?;
    let store = Store::connect_worker(&args.database_url, args.pool_size)
        .await
        .map_err(Error::Connect)?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let report = Worker::new(store, registry, config).run(shutdown).await?;
    tracing::info!(claimed = report.claimed, "bye");
    Ok(report)
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
}
