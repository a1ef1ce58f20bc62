//! The `leasehold` command: the server entry points, dev mode, and the client commands.

mod client;
mod coordinator;
mod credentials;
mod dev;
mod examples;
mod migrate;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use leasehold_core::store::Secret;
use leasehold_worker::cli as worker;

/// The dev coordinator's address, and where client commands look unless told otherwise.
pub const ENDPOINT_DEFAULT: &str = "http://127.0.0.1:7233";

/// Leasehold: durable workflow runs on PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "leasehold", version, about)]
struct Cli {
    /// The coordinator client commands talk to.
    #[arg(long, global = true, env = "LEASEHOLD_ENDPOINT", default_value = ENDPOINT_DEFAULT)]
    endpoint: String,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// The API token client commands send [default: the one `leasehold dev` saved for the
    /// endpoint, if any].
    #[arg(long, global = true, env = token::TOKEN_ENV, hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    log: worker::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start everything on this machine: a private Postgres, a coordinator and workers.
    Dev(dev::Args),
    /// Register and manage automations.
    Automation(Client<client::automation::Command>),
    /// Start, inspect, watch and steer runs.
    Run(Client<client::run::Command>),
    /// List and decide approval gates.
    Gate(Client<client::gate::Command>),
    /// Run a worker (no subcommand), list and drain workers, or list the node kinds they offer.
    Worker(WorkerCommand),
    /// List queues and set their limits.
    Queue(Client<client::queues::Command>),
    /// List automations' cron schedules, pause, resume and trigger them.
    Schedule(Client<client::schedules::Command>),
    /// Show and set how long your tenant's finished runs keep their details and are kept.
    Retention(Client<client::retention::Command>),
    /// Runs by status, queue age, claimable runs, held leases, and runs waiting for a worker.
    Stats(StatsCommand),
    /// Serve the gRPC API and, while leader, run the sweeps.
    Coordinator(coordinator::Args),
    /// Apply the database migrations this build carries.
    Migrate(migrate::Args),
    /// Create, list and revoke API tokens, straight in the database.
    #[command(subcommand)]
    Token(token::Command),
}

/// A group of client commands, and the TLS options they take. The options belong to each
/// group rather than to `leasehold` itself because `coordinator` has its own `--tls-cert` and
/// `--tls-key`: the server's certificate, not a client's.
#[derive(Debug, clap::Args)]
struct Client<C: Subcommand> {
    #[command(subcommand)]
    command: C,
    #[command(flatten)]
    tls: client::Tls,
}

#[derive(Debug, clap::Args)]
struct StatsCommand {
    /// Only the runs of this queue.
    #[arg(long, value_name = "NAME")]
    queue: Option<String>,
    #[command(flatten)]
    tls: client::Tls,
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct WorkerCommand {
    #[command(subcommand)]
    action: Option<client::workers::Command>,
    // For `worker list` and `worker drain`; running a worker does not talk to the coordinator.
    #[command(flatten)]
    tls: client::Tls,
    // Optional so that `worker list` needs no database URL: clap builds the flattened
    // arguments only when no subcommand was given.
    #[command(flatten)]
    run: Option<worker::Args>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    token::forget_token_variable();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let default_filter = if matches!(cli.command, Command::Dev(_)) {
        // Dev mode shows the run; the machinery's routine lines would drown it.
        "warn"
    } else {
        "info"
    };
    // Only the long-running processes export traces; a client command is over in a moment.
    let service = match &cli.command {
        Command::Coordinator(_) => Some("leasehold-coordinator"),
        Command::Worker(WorkerCommand { action: None, .. }) => Some("leasehold-worker"),
        Command::Dev(_) => Some("leasehold-dev"),
        _ => None,
    };
    let traces = match worker::init_logging(&cli.log, default_filter, service) {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let global = |tls: client::Tls| client::Global {
        endpoint: cli.endpoint.clone(),
        json: cli.json,
        // Checked by the commands that send it, so that a token meant for another coordinator
        // does not stop `dev`, `migrate` or a worker.
        token: cli.token.as_deref().map(|t| Secret::parse(t.trim())),
        tls,
    };
    let result = match cli.command {
        Command::Dev(args) => dev::run(args, &global(client::Tls::default())).await,
        Command::Automation(Client { command, tls }) => {
            client::automation::run(command, &global(tls)).await
        }
        Command::Run(Client { command, tls }) => client::run::run(command, &global(tls)).await,
        Command::Gate(Client { command, tls }) => client::gate::run(command, &global(tls)).await,
        Command::Worker(WorkerCommand {
            action: Some(action),
            tls,
            ..
        }) => client::workers::run(action, &global(tls)).await,
        Command::Worker(WorkerCommand {
            action: None,
            run: Some(run),
            ..
        }) => {
            let registry = run.registry();
            worker::run_with(run, registry)
                .await
                .map(|_| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from)
        }
        Command::Worker(WorkerCommand {
            action: None,
            run: None,
            ..
        }) => Err(anyhow::anyhow!(
            "--database-url, LEASEHOLD_DATABASE_URL or --database-url-file is required to run a worker"
        )),
        Command::Queue(Client { command, tls }) => client::queues::run(command, &global(tls)).await,
        Command::Schedule(Client { command, tls }) => {
            client::schedules::run(command, &global(tls)).await
        }
        Command::Retention(Client { command, tls }) => {
            client::retention::run(command, &global(tls)).await
        }
        Command::Stats(StatsCommand { queue, tls }) => {
            client::stats::run(queue, &global(tls)).await
        }
        Command::Coordinator(args) => coordinator::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Migrate(args) => migrate::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Token(command) => token::run(command, &global(client::Tls::default()))
            .await
            .map(|()| ExitCode::SUCCESS),
    };
    // After the graceful stop: the spans of the last runs and calls are sent before exit.
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line, outermost context first: what was being done, then why it failed.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
