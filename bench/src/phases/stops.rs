//! Cancel and pause latency: from a user's cancel (or pause) of a run whose `exec` node is
//! running to the moment the node's whole process group is gone, one run at a time.
//!
//! One worker process runs with a 60 s lease, so its heartbeat (every 20 s) cannot be what
//! stops a node: the figure is the notification's path (NOTIFY at the cancel's commit, the
//! worker's out-of-turn renewal, the node's handler dropped, `SIGKILL` to the group). The clock
//! starts just before the store's `cancel_run`/`pause_run` (the statement the coordinator's
//! `CancelRun`/`PauseRun` makes) and stops when every process of the group is dead (gone, or a
//! zombie: it runs nothing more), looked at every 200 µs in `/proc`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use leasehold_core::ids::{RunId, TenantId};
use leasehold_core::spec;
use leasehold_core::store::Store;
use tokio::time::Instant;

use super::{Bench, start_request};
use crate::procs::Proc;
use crate::report::{Bar, Figure};
use crate::stats::percentile;

/// The automation: one `exec` node whose shell writes its pid and a grandchild's, then waits.
const HANGING_EXEC: &str = "bench-exec-hang";
/// The worker's lease: its heartbeat is a third of it, far beyond any figure measured here.
const LEASE: &str = "60s";
/// The target for the 99th percentile, in ms (issue 15).
const STOP_P99_MS: f64 = 100.0;
/// How often the group is looked at.
const GONE_POLL: Duration = Duration::from_micros(200);
/// Untimed tries before each repetition: the worker's pool and statements are warm.
const WARM_UP_TRIES: usize = 3;

#[derive(Debug, Clone, Copy)]
enum Stop {
    Cancel,
    Pause,
}

pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    bench.reset_with(0).await?;
    let pid_file = bench.workdir.join("exec-pids");
    let store = bench.store(2).await?;
    create_automation(&store, &pid_file).await?;
    let mut worker = spawn_worker(bench)?;
    bench
        .workers_ready(std::slice::from_mut(&mut worker), true)
        .await?;
    for stop in [Stop::Cancel, Stop::Pause] {
        let name = match stop {
            Stop::Cancel => "stop.cancel",
            Stop::Pause => "stop.pause",
        };
        let (mut p50, mut p99) = (Vec::new(), Vec::new());
        for rep in 1..=bench.args.reps {
            worker.check_alive()?;
            for _ in 0..WARM_UP_TRIES {
                one_try(bench, &store, &pid_file, stop).await?;
            }
            let mut samples = Vec::with_capacity(bench.plan.stop_tries);
            for _ in 0..bench.plan.stop_tries {
                samples.push(one_try(bench, &store, &pid_file, stop).await?);
            }
            let (a, b) = (
                percentile(&samples, 50.0).unwrap_or(f64::NAN),
                percentile(&samples, 99.0).unwrap_or(f64::NAN),
            );
            eprintln!(
                "  {name} rep {rep}: p50 {a:.2} ms, p99 {b:.2} ms over {} tries",
                samples.len()
            );
            p50.push(a);
            p99.push(b);
        }
        let f = &mut bench.figures;
        f.push(Figure::new(format!("{name}.p50"), "ms", p50));
        f.push(Figure::new(format!("{name}.p99"), "ms", p99).bar(Bar::AtMost(STOP_P99_MS)));
    }
    drop(store);
    bench.stop(vec![worker]).await
}

async fn create_automation(store: &Store, pid_file: &Path) -> anyhow::Result<()> {
    let pids = pid_file.display();
    let yaml = format!(
        "id: {HANGING_EXEC}
nodes:
  - id: hang
    kind: exec
    timeout_ms: 600000
    input:
      argv: [sh, -c, 'sleep 300 & echo $$ $! > {pids}.tmp; mv {pids}.tmp {pids}; wait']
"
    );
    let spec = spec::parse_yaml(&yaml).context("the exec spec")?;
    store.create_automation(&TenantId::default(), &spec).await?;
    Ok(())
}

fn spawn_worker(bench: &Bench) -> anyhow::Result<Proc> {
    let args = [
        "worker",
        "--database-url",
        &bench.db_url,
        "--claimant-id",
        "bench-stop-worker",
        "--lease",
        LEASE,
        "--exec-allow",
        "sh",
    ]
    .map(str::to_owned);
    let log = bench.workdir.join("stop-worker.log");
    Proc::spawn("stop worker", &bench.bin, &args, log)
}

/// Starts a run, waits for its node's process group, stops the run, and returns the ms until
/// the whole group is dead.
async fn one_try(bench: &Bench, store: &Store, pid_file: &Path, stop: Stop) -> anyhow::Result<f64> {
    let _ = std::fs::remove_file(pid_file);
    let request = start_request(HANGING_EXEC);
    let run_id = store.start_run(&request).await?.run_id;
    let pids = wait_for_pids(bench, pid_file, run_id).await?;
    let tenant = TenantId::default();
    let called_at = Instant::now();
    match stop {
        Stop::Cancel => {
            store
                .cancel_run(&tenant, run_id, "bench", "bench", None)
                .await?;
        }
        Stop::Pause => {
            store
                .pause_run(&tenant, run_id, "bench", "bench", None)
                .await?;
        }
    }
    let deadline = bench.deadline();
    while pids.iter().any(|pid| running(*pid)) {
        if Instant::now() >= deadline {
            bail!("the process group of run {run_id} outlived the deadline");
        }
        tokio::time::sleep(GONE_POLL).await;
    }
    let ms = called_at.elapsed().as_secs_f64() * 1e3;
    if let Stop::Pause = stop {
        // Settled paused (not still held), so that the next run is the worker's only one.
        store
            .cancel_run(&tenant, run_id, "bench", "bench", None)
            .await?;
    }
    Ok(ms)
}

async fn wait_for_pids(bench: &Bench, pid_file: &Path, run_id: RunId) -> anyhow::Result<Vec<i32>> {
    let deadline = bench.deadline();
    loop {
        if let Ok(text) = std::fs::read_to_string(pid_file) {
            let pids: Vec<i32> = text
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if pids.len() == 2 {
                return Ok(pids);
            }
        }
        if Instant::now() >= deadline {
            bail!("the exec node of run {run_id} did not start by the deadline");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether `pid` still runs: it exists and is not a zombie.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next())
            != Some("Z")
    })
}
