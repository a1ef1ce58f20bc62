//! `leasehold-bench`: the real `leasehold` binaries against a PostgreSQL on this machine, next to
//! the raw-SQL limit of the same database. See `bench/README.md`.
//!
//! # Layout
//! - `args`: the command line and the counts it resolves to.
//! - `phases`: each measurement, and the setup they share.
//! - `sql`: the benchmark's own SQL (the limit loop, the backlog fill, statistics), all of it.
//! - `procs`: the `leasehold` binary and its processes, none left behind.
//! - `procfs`: CPU time from `/proc`.
//! - `stats`, `report`: medians, percentiles, the table and the JSON lines.

mod args;
mod lean;
mod phases;
mod procfs;
mod procs;
mod report;
mod sql;
mod stats;

use std::io::Write as _;
use std::path::Path;

use anyhow::Context;
use clap::Parser;
use leasehold_testkit::{OwnedCluster, with_database};

use crate::args::{Args, Phase};
use crate::phases::Bench;
use crate::report::{Limits, Row};

/// The private cluster's settings on top of PostgreSQL's defaults (fsync and synchronous_commit
/// stay on): room for every pool, a buffer cache that holds the backlog's databases (the
/// million-run one alone is about 430 MB), and WAL room so that checkpoints come from the
/// benchmark's CHECKPOINT between phases, not from WAL volume inside one.
const CLUSTER_SETTINGS: &[(&str, &str)] = &[
    ("max_connections", "300"),
    ("shared_buffers", "1GB"),
    ("max_wal_size", "4GB"),
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let db_name = format!(
        "leasehold_bench_{}_{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let url = args.database_url.clone();
    tokio::select! {
        result = run(args, &argv, &db_name) => result,
        () = interrupted() => {
            // The run was dropped: its processes are killed and a private cluster is gone. A
            // database on a server we do not own is dropped here.
            if let Some(url) = url
                && let Ok(admin) = sql::connect(&url).await
            {
                let _ = sql::drop_database(&admin, &db_name).await;
            }
            anyhow::bail!("interrupted")
        }
    }
}

async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(args: Args, argv: &[String], db_name: &str) -> anyhow::Result<()> {
    let (bin, profile) = procs::leasehold_binary(args.leasehold_bin.as_deref())?;
    if profile != "release" && profile != "given" {
        eprintln!("warning: measuring a {profile} build; run with --release for real figures");
    }
    if args.reps < 3 {
        eprintln!(
            "warning: {} repetitions; figures are medians of at least 3",
            args.reps
        );
    }
    let cluster = match &args.database_url {
        Some(_) => None,
        None => {
            eprintln!("starting a private PostgreSQL cluster …");
            Some(
                tokio::task::spawn_blocking(|| OwnedCluster::start(CLUSTER_SETTINGS))
                    .await?
                    .map_err(anyhow::Error::msg)?,
            )
        }
    };
    let admin_url = match (&args.database_url, &cluster) {
        (Some(url), _) => url.clone(),
        (None, Some(cluster)) => cluster.admin_url(),
        (None, None) => unreachable!("a cluster is started when no URL is given"),
    };
    let admin = sql::connect(&admin_url).await?;
    let server = sql::server_info(&admin).await?;
    if server.fsync != "on" || server.synchronous_commit != "on" {
        eprintln!(
            "warning: fsync={} synchronous_commit={}: commits are cheaper than in production",
            server.fsync, server.synchronous_commit
        );
    }
    sql::create_database(&admin, db_name).await?;
    let db_url = with_database(&admin_url, db_name);
    let mut workdir = WorkDir::create()?;
    let postmaster = procfs::parent(server.backend_pid);
    if postmaster.is_none() {
        eprintln!("warning: the server is not on this machine: no database CPU figures");
    }
    let meta = serde_json::json!({
        "commit": commit(),
        "started_at": chrono::Utc::now().to_rfc3339(),
        "command": args::reproduce(argv),
        "binary_profile": profile,
        "postgres": server.version,
        "fsync": server.fsync,
        "synchronous_commit": server.synchronous_commit,
        "shared_buffers": server.shared_buffers,
        "private_cluster": cluster.is_some(),
        "cpus": std::thread::available_parallelism().map(usize::from).unwrap_or(0),
        "cpu_model": cpu_model(),
        "workers": args.workers,
        "capacity": args.capacity,
        "pool_size": args.pool_size,
        "batch": args.batch,
        "reps": args.reps,
    });
    eprintln!("{}", serde_json::to_string_pretty(&meta)?);
    let mut bench = Bench {
        plan: args.plan(),
        args,
        bin,
        workdir: workdir.path.clone(),
        db_name: db_name.to_owned(),
        db_url,
        admin,
        postmaster,
        can_checkpoint: true,
        figures: Vec::new(),
    };
    let measured = measure(&mut bench).await;
    if let Err(e) = sql::drop_database(&bench.admin, db_name).await {
        eprintln!("warning: {e:#}");
    }
    drop(cluster);
    if let Err(e) = measured {
        workdir.keep = true;
        return Err(e.context(format!("process logs kept in {}", workdir.path.display())));
    }
    report(&bench, &meta)
}

/// The folder of the processes' logs: removed when dropped (an interrupted run too) unless
/// kept for a failure's post-mortem.
struct WorkDir {
    path: std::path::PathBuf,
    keep: bool,
}

impl WorkDir {
    fn create() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("leasehold-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, keep: false })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

async fn measure(bench: &mut Bench) -> anyhow::Result<()> {
    let migrate = ["migrate", "--database-url", &bench.db_url].map(str::to_owned);
    procs::run_to_end(&bench.bin, &migrate, bench.args.phase_timeout).await?;
    bench.create_automations().await?;
    for (phase, label) in [
        (Phase::Enqueue, "enqueue"),
        (Phase::Process, "process: the limit and one-node runs"),
        (Phase::Dag, "process: 10-node DAGs"),
        (Phase::Anatomy, "anatomy: database CPU by statement"),
        (Phase::Latency, "latency"),
        (Phase::Backlog, "backlog"),
        (
            Phase::CancelLatency,
            "cancel-latency: a cancel or pause to the exec group gone",
        ),
        (
            Phase::Retention,
            "retention: claims while the sweep compacts and deletes",
        ),
        (Phase::Stats, "stats: with a million finished runs"),
    ] {
        if !bench.args.runs_phase(phase) {
            continue;
        }
        eprintln!("{label} …");
        match phase {
            Phase::Enqueue => phases::enqueue::run(bench).await,
            Phase::Process => phases::process::one_node(bench).await,
            Phase::Dag => phases::process::dags(bench).await,
            Phase::Anatomy => phases::anatomy::run(bench).await,
            Phase::Latency => phases::latency::run(bench).await,
            Phase::Backlog => phases::backlog::run(bench).await,
            Phase::CancelLatency => phases::stops::run(bench).await,
            Phase::Retention => phases::retention::run(bench).await,
            Phase::Stats => phases::stats::run(bench).await,
        }
        .with_context(|| format!("phase {label}"))?;
    }
    if !bench.can_checkpoint {
        eprintln!("warning: the role may not CHECKPOINT: checkpoints may land inside timed phases");
    }
    Ok(())
}

fn report(bench: &Bench, meta: &serde_json::Value) -> anyhow::Result<()> {
    let median_of = |name: &str| {
        bench
            .figures
            .iter()
            .find(|f| f.name == name)
            .and_then(|f| stats::summarize(&f.values))
            .map(|s| s.median)
    };
    let limits = Limits {
        claim_complete: median_of("limit.claim_complete"),
        lean: median_of("limit.lean"),
    };
    let rows: Vec<Row> = bench
        .figures
        .iter()
        .map(|f| Row::new(f.clone(), limits))
        .collect();
    println!("{}", report::table(&rows));
    let out = &bench.args.out;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .with_context(|| format!("opening {}", out.display()))?;
    for row in &rows {
        writeln!(file, "{}", row.json_line(meta))?;
    }
    println!("commit: {}", meta["commit"].as_str().unwrap_or("unknown"));
    println!("JSON lines appended to {}", out.display());
    println!(
        "reproduce: {}",
        meta["command"].as_str().unwrap_or_default()
    );
    Ok(())
}

/// The workspace's commit, `+dirty` when tracked files changed.
fn commit() -> String {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&workspace)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(head) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!("{head}+dirty"),
            _ => head,
        },
        None => "unknown".to_owned(),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_default()
}
