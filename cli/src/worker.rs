//! `leasehold worker`: claim and execute runs until told to stop.

use std::time::Duration;

use anyhow::Context;
use leasehold_core::ids::ClaimantId;
use leasehold_core::store::Store;
use leasehold_worker::handlers::{self, ExecPolicy};
use leasehold_worker::{Config, Worker, config};
use tokio_util::sync::CancellationToken;

use crate::signals;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// PostgreSQL connection URL. Exec children never see it.
    #[arg(long, env = "LEASEHOLD_DATABASE_URL")]
    database_url: String,
    /// Runs held at once.
    #[arg(long, env = "LEASEHOLD_CAPACITY", default_value_t = config::CAPACITY_DEFAULT)]
    capacity: usize,
    /// Nodes of one run executed at once.
    #[arg(long, env = "LEASEHOLD_NODE_CONCURRENCY", default_value_t = config::NODE_CONCURRENCY_DEFAULT)]
    node_concurrency: usize,
    /// Identity in leases [default: host, pid and a random suffix].
    #[arg(long, env = "LEASEHOLD_CLAIMANT_ID")]
    claimant_id: Option<String>,
    /// Lease length, clamped to 5s..6h.
    #[arg(long, env = "LEASEHOLD_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// Time between heartbeat rounds [default: a third of the lease].
    #[arg(long, env = "LEASEHOLD_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// Polling fallback for when a LISTEN/NOTIFY wake-up is missed.
    #[arg(long, env = "LEASEHOLD_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Do not listen for wake-ups; poll only.
    #[arg(long, env = "LEASEHOLD_NO_LISTEN")]
    no_listen: bool,
    /// Time running nodes get to finish after SIGTERM before their runs are handed back.
    #[arg(long, env = "LEASEHOLD_SHUTDOWN_GRACE", default_value = "25s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// A program `exec` nodes may run (repeat the flag); `exec` is off without one.
    #[arg(
        long = "exec-allow",
        env = "LEASEHOLD_EXEC_ALLOW",
        value_delimiter = ','
    )]
    exec_allow: Vec<String>,
    /// An environment variable passed through to `exec` children (repeat the flag).
    #[arg(long = "exec-env", env = "LEASEHOLD_EXEC_ENV", value_delimiter = ',')]
    exec_env: Vec<String>,
    /// Database connections in the pool.
    #[arg(long, env = "LEASEHOLD_POOL_SIZE", default_value_t = 8)]
    pool_size: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let claimant_id = args
        .claimant_id
        .map_or_else(config::default_claimant_id, ClaimantId);
    let mut config = Config::new(claimant_id).with_lease(args.lease);
    config.capacity = args.capacity;
    config.node_concurrency = args.node_concurrency;
    config.poll_interval = args.poll_interval;
    config.listen = !args.no_listen;
    config.shutdown_grace = args.shutdown_grace;
    if let Some(interval) = args.heartbeat_interval {
        config.heartbeat_interval = interval;
    }
    let config = config.validated()?;
    let store = Store::connect_worker(&args.database_url, args.pool_size)
        .await
        .context("connecting to the database")?;
    let registry = handlers::builtin(ExecPolicy {
        allowed_programs: args.exec_allow,
        allowed_env: args.exec_env,
        ..ExecPolicy::default()
    });
    let shutdown = CancellationToken::new();
    signals::cancel_on_signal(shutdown.clone());
    let report = Worker::new(store, registry, config).run(shutdown).await?;
    tracing::info!(claimed = report.claimed, "bye");
    Ok(())
}
