//! The `leasehold` command.

mod coordinator;
mod migrate;
mod signals;
mod worker;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Leasehold: durable workflow runs on PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "leasehold", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gRPC API and, while leader, run the sweeps.
    Coordinator(coordinator::Args),
    /// Apply the database migrations this build carries.
    Migrate(migrate::Args),
    /// Claim and execute runs until SIGTERM, then hand back what is still held.
    Worker(worker::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("LEASEHOLD_LOG").unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Coordinator(args) => coordinator::run(args).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Worker(args) => worker::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, outermost context first: what was being done, then why it failed.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
