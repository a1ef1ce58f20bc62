//! `leasehold-test-worker`: the worker command of `leasehold worker` ([`cli::run_with`]), as a
//! user's own worker binary would run it, with the built-in kinds plus `ledger`, the fault
//! suite's effects ledger. So its flags, variables and signal handling are `leasehold worker`'s:
//! the first SIGTERM or SIGINT asks for a clean stop (no more claims, running nodes get the grace
//! period, held runs are handed back), the second exits at once with status 130.
//!
//! # The `ledger` kind
//! Every attempt first inserts `(run_id, node_id, attempt, epoch, pid, claimant)` into the test
//! table `fault_ledger` (created by the suite, not by the migrations) on a connection of its own,
//! under an id drawn per call so that a retried insert lands once, and only then does its work:
//! it sleeps `input.sleep_ms` (cut short when the attempt is cancelled) and fails the first
//! `input.fail_first` attempts, retryably. So the suite can count the executions that happened
//! against the completions the store recorded.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use leasehold_worker::{Context, Handler, HandlerError, cli};
use serde_json::{Value, json};

/// Pause before the ledger tries its connection again after a failure.
const LEDGER_RETRY_DELAY: Duration = Duration::from_millis(100);

/// A worker with the built-in kinds and the fault suite's `ledger` kind.
#[derive(Debug, Parser)]
#[command(name = "leasehold-test-worker")]
struct Command {
    #[command(flatten)]
    worker: cli::Args,
    #[command(flatten)]
    log: cli::LogArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let command = Command::parse();
    // The fault suite's workers export no traces.
    if let Err(e) = cli::init_logging(&command.log, "info", None) {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let mut args = command.worker;
    let url = match args.database_url() {
        Ok(url) => url,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut registry = args.registry();
    registry.register("ledger", Ledger::new(url, args.claimant_id().0));
    match cli::run_with(args, registry).await {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            std::process::ExitCode::FAILURE
        }
    }
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

/// The number `key` of the node's input; zero when it is absent.
fn input_u64(ctx: &Context, key: &str) -> u64 {
    ctx.input.get(key).and_then(Value::as_u64).unwrap_or(0)
}

impl Handler for Ledger {
    async fn run(&self, ctx: Context) -> Result<Value, HandlerError> {
        self.record(&ctx).await?;
        let sleep_ms = input_u64(&ctx, "sleep_ms");
        tokio::select! {
            () = ctx.cancel.cancelled() => return Err(cancelled()),
            () = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
        }
        if u64::from(ctx.attempt) <= input_u64(&ctx, "fail_first") {
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
