//! Processing queued runs: the worker processes, the raw-SQL limit on the same queue, and the
//! lean limit on a narrow queue of its own.
//!
//! Each repetition starts from empty tables with every run queued (started through the store,
//! untimed), vacuumed and checkpointed. Throughput is the runs over the database's window from
//! the first claim to the last completion, so process start-up is not in it.

use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

use super::{Bench, CHAIN, DAG_NODES, FANOUT, NOOP, cpu_per, per};
use crate::lean::{self, LeanSession};
use crate::procfs;
use crate::report::{Bar, Figure};
use crate::sql::{self, LimitSession};

/// How often the benchmark looks whether the workers are done.
const DONE_POLL: Duration = Duration::from_millis(20);
/// The limit loop's claimant.
const LIMIT_CLAIMANT: &str = "bench-limit";
/// The lean loop's claimants, one per session: `bench-lean-0`, …
const LEAN_CLAIMANT: &str = "bench-lean";

/// One repetition of processing.
#[derive(Debug, Clone, Copy, Default)]
struct Processed {
    runs_per_s: f64,
    xacts_per_run: f64,
    db_cpu_us: Option<f64>,
    client_cpu_us: Option<f64>,
}

/// The limit and the one-node runs, repetition by repetition from the same state.
pub async fn one_node(bench: &mut Bench) -> anyhow::Result<()> {
    let n = bench.plan.runs;
    let mut limit = Vec::new();
    let mut lean = Vec::new();
    let mut product = Vec::new();
    for rep in 1..=bench.args.reps {
        prepare(bench, NOOP, n).await?;
        let l = limit_once(bench, n).await?;
        eprintln!(
            "  limit rep {rep}: {:.0} runs/s, {:.3} xacts/run",
            l.runs_per_s, l.xacts_per_run
        );
        limit.push(l);
        let l = lean_once(bench, n).await?;
        eprintln!(
            "  lean rep {rep}: {:.0} runs/s, {:.3} xacts/run",
            l.runs_per_s, l.xacts_per_run
        );
        lean.push(l);
        prepare(bench, NOOP, n).await?;
        let p = workers_once(bench, NOOP, n).await?;
        eprintln!(
            "  one-node rep {rep}: {:.0} runs/s, {:.2} xacts/run",
            p.runs_per_s, p.xacts_per_run
        );
        product.push(p);
    }
    let f = &mut bench.figures;
    push_loop(f, "limit.claim_complete", "limit", &limit);
    push_loop(f, "limit.lean", "limit.lean", &lean);
    f.push(
        Figure::throughput(
            "process.one_node",
            "runs/s",
            collect(&product, |p| Some(p.runs_per_s)),
        )
        .bar(Bar::Above(30_000.0))
        .bar(Bar::PctOfLimit(60.0))
        .bar(Bar::PctOfLean(60.0)),
    );
    push_costs(f, "process.one_node", &product, 1);
    Ok(())
}

/// The 10-node chain and fan-out.
pub async fn dags(bench: &mut Bench) -> anyhow::Result<()> {
    let n = bench.plan.dag_runs;
    for (automation, name) in [(CHAIN, "chain10"), (FANOUT, "fanout10")] {
        let mut reps = Vec::new();
        for rep in 1..=bench.args.reps {
            prepare(bench, automation, n).await?;
            let p = workers_once(bench, automation, n).await?;
            eprintln!(
                "  {name} rep {rep}: {:.0} runs/s, {:.2} xacts/node",
                p.runs_per_s,
                p.xacts_per_run / 10.0
            );
            reps.push(p);
        }
        let f = &mut bench.figures;
        let prefix = format!("process.{name}");
        f.push(Figure::throughput(
            format!("{prefix}.runs"),
            "runs/s",
            collect(&reps, |p| Some(p.runs_per_s)),
        ));
        #[allow(clippy::cast_precision_loss)]
        let nodes = DAG_NODES as f64;
        f.push(Figure::throughput(
            format!("{prefix}.nodes"),
            "nodes/s",
            collect(&reps, |p| Some(p.runs_per_s * nodes)),
        ));
        f.push(
            Figure::new(
                format!("{prefix}.xacts"),
                "xacts/node",
                collect(&reps, |p| Some(p.xacts_per_run / nodes)),
            )
            .bar(Bar::AtMost(3.0)),
        );
        push_costs(f, &prefix, &reps, DAG_NODES);
    }
    Ok(())
}

fn collect(reps: &[Processed], value: impl Fn(&Processed) -> Option<f64>) -> Vec<f64> {
    reps.iter().filter_map(value).collect()
}

/// A harness loop's figures: its throughput as `name`, its costs under `prefix`.
fn push_loop(f: &mut Vec<Figure>, name: &str, prefix: &str, reps: &[Processed]) {
    f.push(Figure::throughput(
        name,
        "runs/s",
        collect(reps, |p| Some(p.runs_per_s)),
    ));
    f.push(Figure::new(
        format!("{prefix}.xacts"),
        "xacts/run",
        collect(reps, |p| Some(p.xacts_per_run)),
    ));
    f.push(Figure::new(
        format!("{prefix}.db_cpu"),
        "µs/run",
        collect(reps, |p| p.db_cpu_us),
    ));
    f.push(Figure::new(
        format!("{prefix}.client_cpu"),
        "µs/run",
        collect(reps, |p| p.client_cpu_us),
    ));
}

fn push_costs(f: &mut Vec<Figure>, prefix: &str, reps: &[Processed], nodes: usize) {
    if nodes == 1 {
        f.push(Figure::new(
            format!("{prefix}.xacts"),
            "xacts/run",
            collect(reps, |p| Some(p.xacts_per_run)),
        ));
    }
    f.push(Figure::new(
        format!("{prefix}.db_cpu"),
        "µs/run",
        collect(reps, |p| p.db_cpu_us),
    ));
    f.push(Figure::new(
        format!("{prefix}.worker_cpu"),
        "µs/run",
        collect(reps, |p| p.client_cpu_us),
    ));
}

/// Empty tables, `n` runs of `automation` queued, settled, and none of our sessions open.
pub(super) async fn prepare(bench: &mut Bench, automation: &str, n: usize) -> anyhow::Result<()> {
    bench.reset().await?;
    bench
        .enqueue(automation, n, bench.args.enqueue_concurrency)
        .await?;
    bench.settle().await
}

/// The raw-SQL loop: as many sessions as the workers' pools, each claiming a worker's capacity
/// and completing it, until the queue is empty.
async fn limit_once(bench: &Bench, n: usize) -> anyhow::Result<Processed> {
    let sessions = bench.args.workers * bench.args.pool_size;
    let batch = i32::try_from(bench.args.capacity)?;
    let mut connected = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        connected.push(LimitSession::connect(&bench.db_url).await?);
    }
    let before = bench.snapshot().await?;
    let lanes = connected.iter().map(|s| async move {
        let mut done = 0;
        loop {
            match s.claim_and_complete(batch, LIMIT_CLAIMANT).await? {
                0 => return anyhow::Ok(done),
                k => done += k,
            }
        }
    });
    let done: usize = futures_util::future::try_join_all(lanes)
        .await?
        .into_iter()
        .sum();
    drop(connected);
    bench.quiesce().await?;
    let after = bench.snapshot().await?;
    anyhow::ensure!(done == n, "the limit loop completed {done} of {n} runs");
    let outcome = sql::outcome(&bench.session().await?, NOOP).await?;
    Ok(Processed {
        runs_per_s: throughput(n, outcome.window_s)?,
        xacts_per_run: per(after.xacts - before.xacts, n),
        db_cpu_us: cpu_per(before.db_cpu, after.db_cpu, n),
        client_cpu_us: cpu_per(before.own_cpu, after.own_cpu, n),
    })
}

/// The lean loop: `n` jobs in the narrow queue of its own, as many sessions as the workers'
/// pools, each claiming a worker's capacity and completing it, until none is left. It keeps no
/// history and has no window of its own in the database: its throughput is the wall time of
/// the loop, which starts with the first claim and ends with the last completion.
async fn lean_once(bench: &mut Bench, n: usize) -> anyhow::Result<Processed> {
    bench.reset().await?;
    lean::fill(&bench.session().await?, n).await?;
    bench.settle().await?;
    let sessions = bench.args.workers * bench.args.pool_size;
    let batch = i32::try_from(bench.args.capacity)?;
    let mut connected = Vec::with_capacity(sessions);
    for i in 0..sessions {
        connected.push(LeanSession::connect(&bench.db_url, format!("{LEAN_CLAIMANT}-{i}")).await?);
    }
    let before = bench.snapshot().await?;
    let began = Instant::now();
    let lanes = connected.iter().map(|s| async move {
        let mut done = 0;
        loop {
            match s.claim_and_complete(batch).await? {
                0 => return anyhow::Ok(done),
                k => done += k,
            }
        }
    });
    let done: usize = futures_util::future::try_join_all(lanes)
        .await?
        .into_iter()
        .sum();
    let window_s = began.elapsed().as_secs_f64();
    drop(connected);
    bench.quiesce().await?;
    let after = bench.snapshot().await?;
    anyhow::ensure!(done == n, "the lean loop completed {done} of {n} jobs");
    let left = lean::remaining(&bench.session().await?).await?;
    anyhow::ensure!(left == 0, "the lean loop left {left} jobs");
    Ok(Processed {
        runs_per_s: throughput(n, window_s)?,
        xacts_per_run: per(after.xacts - before.xacts, n),
        db_cpu_us: cpu_per(before.db_cpu, after.db_cpu, n),
        client_cpu_us: cpu_per(before.own_cpu, after.own_cpu, n),
    })
}

/// The worker processes: started with the runs already queued, stopped once none is left.
async fn workers_once(bench: &Bench, automation: &str, n: usize) -> anyhow::Result<Processed> {
    let before = bench.snapshot().await?;
    let mut workers = bench.spawn_workers(true)?;
    let session = bench.session().await?;
    let mut polls = 0;
    let deadline = bench.deadline();
    loop {
        for w in &mut workers {
            w.check_alive()?;
        }
        polls += 1;
        if sql::drained(&session).await? {
            break;
        }
        if Instant::now() >= deadline {
            bail!("{automation}: runs were still queued or held at the deadline");
        }
        tokio::time::sleep(DONE_POLL).await;
    }
    // Before they exit, while /proc still has them.
    let worker_cpu: Option<std::time::Duration> =
        workers.iter().map(|w| procfs::process_cpu(w.pid())).sum();
    drop(session);
    bench.stop(workers).await?;
    bench.quiesce().await?;
    let after = bench.snapshot().await?;
    let outcome = sql::outcome(&bench.session().await?, automation).await?;
    anyhow::ensure!(
        usize::try_from(outcome.completed)? == n && usize::try_from(outcome.total)? == n,
        "{automation}: {} of {} runs completed, {n} expected",
        outcome.completed,
        outcome.total
    );
    Ok(Processed {
        runs_per_s: throughput(n, outcome.window_s)?,
        // The completion polls were ours, one transaction each.
        xacts_per_run: per(after.xacts - before.xacts - polls, n),
        db_cpu_us: cpu_per(before.db_cpu, after.db_cpu, n),
        client_cpu_us: cpu_per(Some(std::time::Duration::ZERO), worker_cpu, n),
    })
}

fn throughput(n: usize, window_s: f64) -> anyhow::Result<f64> {
    anyhow::ensure!(
        window_s > 0.0,
        "no time passed between the first claim and the last completion"
    );
    #[allow(clippy::cast_precision_loss)]
    Ok(n as f64 / window_s)
}
