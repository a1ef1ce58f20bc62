//! `leasehold-test-worker`: a worker built on the `leasehold_worker` library, as a user's own
//! worker binary would be, with the built-in kinds plus `ledger`, the fault suite's effects
//! ledger.
//!
//! Its flags and variables mirror `leasehold worker`, and it handles signals the same way: the
//! first SIGTERM or SIGINT asks for a clean stop (no more claims, running nodes get the grace
//! period, held runs are handed back), the second exits at once with status 130.
//!
//! # The `ledger` kind
//! Every attempt first inserts `(run_id, node_id, attempt, epoch, pid, claimant)` into the test
//! table `fault_ledger` (created by the suite, not by the migrations) on a connection of its own,
//! under an id drawn per call so that a retried insert lands once, and only then does its work: it sleeps `input.sleep_ms` (cut short when the attempt is
//! cancelled) and fails the first `input.fail_first` attempts, retryably. So the suite can count
//! the executions that happened against the completions the store recorded.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use leasehold_core::ids::ClaimantId;
use leasehold_core::store::Store;
use leasehold_worker::handlers::{self, ExecPolicy};
use leasehold_worker::{Config, Context, Handler, HandlerError, Worker, config};
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Exit status after a second signal, as `leasehold worker` uses.
const EXIT_ON_SECOND_SIGNAL: i32 = 130;
/// Pause before the ledger tries its connection again after a failure.
const LEDGER_RETRY_DELAY: Duration = Duration::from_millis(100);

/// A worker with the built-in kinds and the fault suite's `ledger` kind.
#[derive(Debug, Parser)]
#[command(name = "leasehold-test-worker")]
struct Args {
    /// PostgreSQL connection URL.
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("LEASEHOLD_LOG").unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let claimant_id = args
        .claimant_id
        .map_or_else(config::default_claimant_id, ClaimantId);
    let mut config = Config::new(claimant_id.clone()).with_lease(args.lease);
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
    let mut registry = handlers::builtin(ExecPolicy {
        allowed_programs: args.exec_allow,
        allowed_env: args.exec_env,
        ..ExecPolicy::default()
    });
    registry.register(
        "ledger",
        Ledger::new(args.database_url.clone(), claimant_id.0.clone()),
    );
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let report = Worker::new(store, registry, config).run(shutdown).await?;
    tracing::info!(claimed = report.claimed, "bye");
    Ok(())
}

/// Cancels `token` on the first SIGTERM or SIGINT and exits the process on the second, as
/// `leasehold worker` does.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot listen for signals; stop the process with SIGKILL");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping (signal again to exit at once)");
        token.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(EXIT_ON_SECOND_SIGNAL);
    });
}

// name: ledger_insert
// One row per handler call, written before the call does anything else. The call's own id
// makes a retry after a lost acknowledgement land once, while two calls for the same attempt
// still show as two rows.
const LEDGER_INSERT: &str = "\
INSERT INTO fault_ledger (execution, run_id, node_id, attempt, epoch, pid, claimant)
VALUES ($1::uuid, $2::uuid, $3::text, $4::int, $5::bigint, $6::int, $7::text)
ON CONFLICT (execution) DO NOTHING";

/// The `ledger` kind: records the attempt, then sleeps and fails as its input says.
struct Ledger {
    url: String,
    claimant: String,
    pid: i32,
    /// One pipelined connection shared by every attempt; replaced when it breaks.
    client: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
}

impl Ledger {
    fn new(url: String, claimant: String) -> Self {
        Self {
            url,
            claimant,
            pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// The shared connection, opened (again) when there is none or it broke.
    async fn client(&self) -> Result<Arc<tokio_postgres::Client>, tokio_postgres::Error> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(client));
        }
        let (client, connection) =
            tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "ledger connection ended");
            }
        });
        let client = Arc::new(client);
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }

    /// Inserts the attempt's row, trying again until it lands or the attempt is cancelled.
    async fn record(&self, ctx: &Context) -> Result<(), HandlerError> {
        let attempt = i32::try_from(ctx.attempt).unwrap_or(i32::MAX);
        let execution = uuid::Uuid::new_v4();
        loop {
            let inserted = async {
                let client = self.client().await?;
                client
                    .execute(
                        LEDGER_INSERT,
                        &[
                            &execution,
                            &ctx.run_id.0,
                            &ctx.node_id.as_str(),
                            &attempt,
                            &ctx.epoch.0,
                            &self.pid,
                            &self.claimant,
                        ],
                    )
                    .await
            };
            let result = tokio::select! {
                () = ctx.cancel.cancelled() => return Err(cancelled()),
                result = inserted => result,
            };
            match result {
                Ok(_) => return Ok(()),
                // The database refused the row: the suite is broken, not the network. A backend
                // ended by the server (shutdown, crash, pg_terminate_backend) is not a refusal.
                Err(e) if e.as_db_error().is_some() && !connection_ended(&e) => {
                    return Err(HandlerError::Terminal(format!(
                        "ledger insert refused: {}",
                        e.as_db_error()
                            .map_or_else(String::new, ToString::to_string)
                    )));
                }
                Err(e) => {
                    let error = e.to_string();
                    tracing::warn!(run_id = %ctx.run_id, node = %ctx.node_id, %error, "ledger insert failed; retrying");
                    tokio::select! {
                        () = ctx.cancel.cancelled() => return Err(cancelled()),
                        () = tokio::time::sleep(LEDGER_RETRY_DELAY) => {}
                    }
                }
            }
        }
    }
}

fn cancelled() -> HandlerError {
    HandlerError::Retryable("cancelled".into())
}

impl Handler for Ledger {
    async fn run(&self, ctx: Context) -> Result<Value, HandlerError> {
        self.record(&ctx).await?;
        let sleep_ms = ctx
            .input
            .get("sleep_ms")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        tokio::select! {
            () = ctx.cancel.cancelled() => return Err(cancelled()),
            () = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
        }
        let fail_first = ctx
            .input
            .get("fail_first")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if u64::from(ctx.attempt) <= fail_first {
            return Err(HandlerError::Retryable(format!(
                "planned failure of attempt {}",
                ctx.attempt
            )));
        }
        Ok(json!({ "node": ctx.node_id.as_str(), "attempt": ctx.attempt, "pid": self.pid }))
    }
}

/// Errors the server sends when it ends the session rather than refusing the statement.
fn connection_ended(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|code| {
        [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
        ]
        .contains(code)
            || code.code().starts_with("08")
    })
}
