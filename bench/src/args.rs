//! The command line, and the plan it resolves to.

use std::path::PathBuf;
use std::time::Duration;

/// The benchmark's phases, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Starting runs through the API (batch and single) and the store.
    Enqueue,
    /// One-node runs processed by the worker processes, next to the raw-SQL limit.
    Process,
    /// 10-node chains and fan-outs processed by the worker processes.
    Dag,
    /// The database CPU of each statement of a one-node run, one at a time, beside the limit's.
    Anatomy,
    /// Trigger-to-start latency, with notifications and by polling.
    Latency,
    /// Claim latency with large tables.
    Backlog,
    /// From a cancel or pause of a running `exec` node to its process group gone.
    CancelLatency,
    /// Claim latency while the retention sweep compacts and deletes a large history; only when
    /// named in --only.
    Retention,
    /// Stats with a large history of finished runs.
    Stats,
}

/// Measures the leasehold binaries against a PostgreSQL on this machine, next to the raw-SQL
/// limit of the same database. Prints a table; appends one JSON line per figure to --out.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "leasehold-bench", version)]
pub struct Args {
    /// A server to run on, as the URL of its admin database; a fresh database is created there
    /// and dropped after. Without it, a private cluster is started from initdb/pg_ctl with fsync
    /// and synchronous_commit on.
    #[arg(long, env = "LEASEHOLD_BENCH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The leasehold binary to measure [default: built by cargo with this program's profile].
    #[arg(long, env = "LEASEHOLD_BENCH_BIN")]
    pub leasehold_bin: Option<PathBuf>,
    /// File the JSON lines are appended to.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results.jsonl"))]
    pub out: PathBuf,
    /// Only these phases (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Phase>,
    /// Repetitions of every figure; the median is reported with min and max. Below 3 is for
    /// iterating only.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// A tenth of the runs and a backlog up to 100,000, to iterate in a minute.
    #[arg(long)]
    pub quick: bool,
    /// One-node runs per repetition of enqueue, process and the limit [default: 20000].
    #[arg(long)]
    pub runs: Option<usize>,
    /// Runs per repetition of each 10-node DAG [default: 2000].
    #[arg(long)]
    pub dag_runs: Option<usize>,
    /// Runs started one by one per repetition of each latency [default: 200].
    #[arg(long)]
    pub latency_runs: Option<usize>,
    /// Runs cancelled (and runs paused) per repetition of cancel-latency [default: 50].
    #[arg(long)]
    pub stop_tries: Option<usize>,
    /// Runs in the tables at each backlog step [default: 10000,100000,1000000].
    #[arg(long, value_delimiter = ',')]
    pub backlog: Vec<i64>,
    /// Finished runs filled for each repetition of retention, finished over the last 120 days
    /// [default: 1000000; --quick: 100000].
    #[arg(long)]
    pub retention_runs: Option<i64>,
    /// Finished runs filled for stats [default: 1000000; --quick: 100000].
    #[arg(long)]
    pub stats_runs: Option<i64>,
    /// The retention sweep's batch (`retention_batch` of its settings): runs per statement.
    #[arg(long, default_value_t = leasehold_coordinator::sweeps::RETENTION_BATCH_DEFAULT)]
    pub retention_batch: usize,
    /// Finished runs (with their node rows and events) in the tables when each repetition
    /// starts, as in a database that has been running; 0 measures a fresh database.
    #[arg(long, default_value_t = 10_000)]
    pub history: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Runs each worker holds at once (`leasehold worker --capacity`); also the limit loop's
    /// batch and the larger backlog claim. A worker's batched writes grow with it.
    #[arg(long, default_value_t = 512)]
    pub capacity: usize,
    /// Database connections per worker (`--pool-size`); the limit loop uses workers × this.
    #[arg(long, default_value_t = 8)]
    pub pool_size: usize,
    /// Runs per StartRuns call and per store batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// StartRuns calls and store batches in flight at once (single StartRun calls are measured
    /// at 16 and at 64 in flight).
    #[arg(long, default_value_t = 4)]
    pub enqueue_concurrency: usize,
    /// The workers' poll interval when notifications are off.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// Longest any one wait may take before the benchmark gives up.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub phase_timeout: Duration,
}

/// The counts a run uses, after --quick and the explicit flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub runs: usize,
    pub dag_runs: usize,
    pub latency_runs: usize,
    pub stop_tries: usize,
    pub backlog: Vec<i64>,
    pub retention_runs: i64,
    pub stats_runs: i64,
}

impl Args {
    /// The counts: explicit flags win, then --quick, then the defaults.
    pub fn plan(&self) -> Plan {
        let scaled = |explicit: Option<usize>, full: usize, quick: usize| {
            explicit.unwrap_or(if self.quick { quick } else { full })
        };
        Plan {
            runs: scaled(self.runs, 20_000, 2_000),
            dag_runs: scaled(self.dag_runs, 2_000, 200),
            latency_runs: scaled(self.latency_runs, 200, 50),
            stop_tries: self.stop_tries.unwrap_or(50),
            backlog: if !self.backlog.is_empty() {
                self.backlog.clone()
            } else if self.quick {
                vec![10_000, 100_000]
            } else {
                vec![10_000, 100_000, 1_000_000]
            },
            retention_runs: self.retention_runs.unwrap_or(if self.quick {
                100_000
            } else {
                1_000_000
            }),
            stats_runs: self
                .stats_runs
                .unwrap_or(if self.quick { 100_000 } else { 1_000_000 }),
        }
    }

    /// Whether `phase` runs. Retention runs only when named: three fills of a million runs
    /// would double the default run's time.
    pub fn runs_phase(&self, phase: Phase) -> bool {
        self.only.contains(&phase) || (self.only.is_empty() && phase != Phase::Retention)
    }
}

/// The command that reproduces a run: the same flags, through cargo.
pub fn reproduce(argv: &[String]) -> String {
    let mut command = "cargo run --release --locked -p leasehold-bench".to_owned();
    if !argv.is_empty() {
        command.push_str(" --");
        for arg in argv {
            command.push(' ');
            command.push_str(&quote(arg));
        }
    }
    command
}

fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=.,/:@%+".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn plan(args: &[&str]) -> Plan {
        Args::parse_from(std::iter::once("leasehold-bench").chain(args.iter().copied())).plan()
    }

    #[test]
    fn explicit_counts_win_over_quick_which_wins_over_the_defaults() {
        assert_eq!(
            plan(&[]),
            Plan {
                runs: 20_000,
                dag_runs: 2_000,
                latency_runs: 200,
                stop_tries: 50,
                backlog: vec![10_000, 100_000, 1_000_000],
                retention_runs: 1_000_000,
                stats_runs: 1_000_000,
            }
        );
        let quick = plan(&["--quick", "--runs", "500"]);
        assert_eq!((quick.runs, quick.dag_runs), (500, 200));
        assert_eq!(quick.backlog, vec![10_000, 100_000]);
        assert_eq!(quick.retention_runs, 100_000);
        assert_eq!(plan(&["--backlog", "5,6"]).backlog, vec![5, 6]);
    }

    #[test]
    fn retention_runs_only_when_named() {
        let args = |a: &[&str]| {
            Args::parse_from(std::iter::once("leasehold-bench").chain(a.iter().copied()))
        };
        assert!(!args(&[]).runs_phase(Phase::Retention));
        assert!(args(&[]).runs_phase(Phase::Backlog));
        assert!(args(&["--only", "retention"]).runs_phase(Phase::Retention));
        assert!(!args(&["--only", "retention"]).runs_phase(Phase::Backlog));
    }

    #[test]
    fn the_reproducing_command_quotes_what_a_shell_would_split() {
        assert_eq!(
            reproduce(&[]),
            "cargo run --release --locked -p leasehold-bench"
        );
        assert_eq!(
            reproduce(&["--quick".into(), "--out".into(), "/tmp/a b.jsonl".into()]),
            "cargo run --release --locked -p leasehold-bench -- --quick --out '/tmp/a b.jsonl'"
        );
    }
}
