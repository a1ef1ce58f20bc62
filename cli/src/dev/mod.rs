//! `leasehold dev`: everything on this machine in one command. A private PostgreSQL cluster made
//! from the machine's own server binaries (or `--database-url`), migrated; a coordinator; and
//! in-process workers. Optionally runs a bundled example and follows it live.
//!
//! # Layout
//! - `postgres`: the private cluster in the data folder: its lock, its password, `--fresh`, a
//!   server left running, and a guard that stops it. Finding the binaries, running them as the
//!   `postgres` user when we are root, `initdb`, start and stop are `leasehold_pgcluster`'s.
//! - `folder`: the data folder's default place and its files.
//! - `database`: creating and migrating the `leasehold` database.
//! - `services`: the coordinator and the workers, started and stopped together.
//! - `token`: the admin API token dev serves with, kept in the data folder and saved in the
//!   credentials file for client commands.
//! - `example`: `--example`: register a bundled example and start a run.
//! - `banner`: what is printed once everything is up.
//!
//! # Teardown
//! On Ctrl-C or SIGTERM, on `--exit-when-done` and on every error after the cluster started,
//! the workers stop first (handing their runs back), then the coordinator, then PostgreSQL
//! (`pg_ctl stop -m fast`). A second signal exits at once and may leave PostgreSQL running; so
//! may SIGKILL. The next `leasehold dev` on the folder stops such a leftover server first.

mod banner;
mod database;
mod example;
mod folder;
mod postgres;
mod services;
mod token;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use leasehold_coordinator::api::Auth;
use leasehold_core::ids::RunId;
use leasehold_core::spec::Spec;
use leasehold_worker::cli::cancel_on_signal;
use tokio_util::sync::CancellationToken;

use crate::client::Global;
use crate::coordinator::{LISTEN_DEFAULT, MetricsListener};

use self::banner::Banner;
use self::postgres::Cluster;
use self::services::{Services, WorkerSettings};

/// Database connections of the coordinator.
const COORDINATOR_POOL_SIZE: usize = 8;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
The private cluster lives in the data folder: pgdata/ (the cluster), postgres.log, password \
(of the `postgres` superuser), token (the admin API token, made on the first start) and \
dev.lock (held while `leasehold dev` runs). It is created on the first start and reused after. \
PostgreSQL refuses to run as root: as root, dev runs it as the `postgres` system user and \
defaults the folder to /var/lib/leasehold/dev. The API token is also saved for the endpoint in \
$XDG_CONFIG_HOME/leasehold/credentials (else ~/.config/leasehold/credentials), where client \
commands on this machine find it when given no --token.")]
pub struct Args {
    /// Also register this bundled example, start a run of it and follow it live
    /// (hello, retry, approval).
    #[arg(long, value_name = "NAME")]
    example: Option<String>,
    /// With --example: once the run ends, stop everything and exit 0 if it completed.
    #[arg(long, requires = "example")]
    exit_when_done: bool,
    /// Address the gRPC API listens on.
    #[arg(long, default_value = LISTEN_DEFAULT)]
    listen: SocketAddr,
    /// Address Prometheus metrics (`/metrics`) are served on [default: a free loopback port,
    /// shown in the banner].
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    metrics_listen: SocketAddr,
    /// Workers run in this process (at most 16: each holds a few database connections); 0 leaves
    /// the runs to workers you start yourself, such as a custom worker binary.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=16))]
    workers: u16,
    /// A program `exec` nodes may run (repeat the flag or separate with commas); the default lets
    /// the bundled `retry` example run, and `--exec-allow ''` turns `exec` off.
    #[arg(
        long = "exec-allow",
        value_name = "PROGRAM",
        value_delimiter = ',',
        default_value = "/bin/sh"
    )]
    exec_allow: Vec<String>,
    /// Folder of the private cluster
    /// [default: $XDG_DATA_HOME/leasehold/dev, else ~/.local/share/leasehold/dev; macOS:
    /// ~/Library/Application Support/leasehold/dev; root: /var/lib/leasehold/dev].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Delete the private cluster, with every automation and run in it, before starting.
    #[arg(long, conflicts_with = "database_url")]
    fresh: bool,
    /// Port of the private cluster, on 127.0.0.1 [default: a free one at each start].
    #[arg(long, value_name = "PORT", conflicts_with = "database_url")]
    postgres_port: Option<u16>,
    /// Folder holding initdb, pg_ctl and postgres [default: searched on PATH, through
    /// pg_config, and in the usual install folders].
    #[arg(long, env = "LEASEHOLD_PG_BINDIR", value_name = "DIR")]
    pg_bindir: Option<PathBuf>,
    /// Use this PostgreSQL database instead of a private cluster; it is migrated.
    #[arg(long, value_name = "URL", conflicts_with = "data_dir")]
    database_url: Option<String>,
}

pub async fn run(args: Args, global: &Global) -> anyhow::Result<ExitCode> {
    let cancel = CancellationToken::new();
    cancel_on_signal(cancel.clone());
    // What can be refused is checked before anything starts.
    let spec = args.example.as_deref().map(example::spec).transpose()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "listening on {} for the gRPC API (choose another address with --listen)",
                args.listen
            )
        })?;
    let metrics = MetricsListener::bind(args.metrics_listen).await?;
    let session = Session {
        endpoint: banner::endpoint(listener.local_addr()?),
        metrics_addr: metrics.local_addr()?,
        metrics,
        listener,
        settings: WorkerSettings {
            count: args.workers,
            exec_allow: args
                .exec_allow
                .into_iter()
                .filter(|program| !program.is_empty())
                .collect(),
        },
        spec,
        exit_when_done: args.exit_when_done,
        global,
        cancel,
    };
    match args.database_url {
        Some(url) => session.run(&url, None).await,
        None => {
            let options = postgres::Options {
                data_dir: args.data_dir,
                bindir: args.pg_bindir,
                port: args.postgres_port,
                fresh: args.fresh,
            };
            with_private_cluster(options, session).await
        }
    }
}

/// Runs `session` on the private cluster, which is stopped afterwards whatever happened.
async fn with_private_cluster(
    options: postgres::Options,
    session: Session<'_>,
) -> anyhow::Result<ExitCode> {
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(options))
        .await
        .context("starting PostgreSQL")??;
    let ran = async {
        database::create_if_missing(&cluster.url("postgres")).await?;
        session
            .run(&cluster.url(database::NAME), Some(cluster.root()))
            .await
    }
    .await;
    eprintln!("dev: stopping PostgreSQL");
    let stopped = tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .context("stopping PostgreSQL")?;
    match (ran, stopped) {
        (Ok(code), Ok(())) => Ok(code),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.context("stopping PostgreSQL")),
    }
}

/// Everything that runs on a database: migrations, the services, the banner and the example.
struct Session<'a> {
    listener: tokio::net::TcpListener,
    metrics: MetricsListener,
    /// Where `/metrics` is served.
    metrics_addr: SocketAddr,
    /// Where clients reach the coordinator.
    endpoint: String,
    settings: WorkerSettings,
    spec: Option<Spec>,
    exit_when_done: bool,
    global: &'a Global,
    cancel: CancellationToken,
}

impl Session<'_> {
    /// Runs on `database_url` until Ctrl-C, or until the example's run ends with
    /// `--exit-when-done`. `data_dir` is the private cluster's folder, if dev owns the database.
    async fn run(self, database_url: &str, data_dir: Option<&Path>) -> anyhow::Result<ExitCode> {
        let store = database::migrated(database_url, COORDINATOR_POOL_SIZE).await?;
        if self.cancel.is_cancelled() {
            return Ok(ExitCode::SUCCESS);
        }
        let kept = data_dir.map(|dir| folder::Layout::new(dir.to_path_buf()).token());
        let token = token::admin_token(&store, kept.as_deref(), &self.endpoint).await?;
        let run_id = match &self.spec {
            Some(spec) => Some(example::start(&store, spec).await?),
            None => None,
        };
        let auth = Auth::Tokens(store.clone());
        let mut services = Services::start(
            self.listener,
            Some(self.metrics),
            store,
            auth,
            database_url,
            &self.settings,
        )?;
        // The private cluster's password is ours to show; another database's is not.
        let shown_url = match data_dir {
            Some(_) => database_url.to_owned(),
            None => banner::redacted(database_url),
        };
        let banner = Banner {
            endpoint: &self.endpoint,
            metrics: Some(self.metrics_addr),
            database_url: &shown_url,
            data_dir,
            workers: self.settings.count,
            exec_allow: &self.settings.exec_allow,
            token: &token.secret,
            credentials: &token.credentials,
        };
        // With --json, stdout carries only the run's JSON; the banner goes to stderr.
        if self.global.json {
            eprintln!("{banner}");
        } else {
            println!("{banner}");
            let _ = std::io::stdout().flush();
        }
        let client = Global {
            endpoint: self.endpoint.clone(),
            json: self.global.json,
            token: Some(Ok(token.secret.clone())),
            // The dev coordinator serves plaintext on loopback.
            tls: crate::client::Tls::default(),
        };
        let outcome = follow(
            &mut services,
            &client,
            run_id,
            self.exit_when_done,
            &self.cancel,
        )
        .await;
        eprintln!("dev: stopping the workers and the coordinator");
        let stopped = services.stop().await;
        match (outcome, stopped) {
            (Ok(code), Ok(())) => Ok(code),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
        }
    }
}

/// Follows the example's run, if any, then waits for Ctrl-C, unless `exit_when_done`; returns
/// early if a service fails.
async fn follow(
    services: &mut Services,
    client: &Global,
    run_id: Option<RunId>,
    exit_when_done: bool,
    cancel: &CancellationToken,
) -> anyhow::Result<ExitCode> {
    if let Some(run_id) = run_id {
        let id = run_id.to_string();
        let watched = tokio::select! {
            watched = crate::client::run::watch(client, &id) => watched,
            () = cancel.cancelled() => return Ok(ExitCode::SUCCESS),
            error = services.failed() => return Err(error),
        };
        if exit_when_done {
            return watched.with_context(|| format!("following run {run_id}"));
        }
        match watched {
            Ok(_) => eprintln!("dev: run {run_id} ended; still serving until Ctrl-C"),
            Err(e) => {
                eprintln!("dev: could not follow run {run_id}: {e:#}; still serving until Ctrl-C");
            }
        }
    }
    tokio::select! {
        () = cancel.cancelled() => Ok(ExitCode::SUCCESS),
        error = services.failed() => Err(error),
    }
}
