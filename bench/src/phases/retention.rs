//! History retention under load (issue 20): a database of its own filled with SQL with finished
//! runs over the last 120 days, then two in-process workers claiming and completing new runs at
//! a steady pace, first alone (the idle baseline), then while the coordinators' retention sweep
//! compacts and deletes the history pass after pass, and one partition pass drops the months no
//! run needs. The claims' p99 during the sweep must stay within 1.5× of the idle one.
//!
//! The sweep runs at an instant pinned just before it starts, so that what it must do is known
//! from the fill's own `finished_at` values: every run past the hot window compacted, every run
//! past the retention deleted, and no run inside the window touched. The phase fails when the
//! sweep did anything else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use chrono::{DateTime, TimeDelta, Utc};
use leasehold_coordinator::sweeps::{Config, Partitions, Pass, Retention, Sweep};
use leasehold_core::ids::{ClaimantId, NodeId, TenantId};
use leasehold_core::store::{Leadership, NodeCompletion, Served, Store};
use leasehold_testkit::with_database;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::backlog::label;
use super::{Bench, HISTORY, NOOP, batch_sizes, create_automations_in, start_request};
use crate::report::{Bar, Figure};
use crate::sql::{self, RetentionFill, Stages, TableSizes};
use crate::stats::percentile;

/// How far back the filled runs finished: with the default windows (7 and 90 days), about 6%
/// stay hot, 69% are compacted and 25% deleted.
const FILL_SPAN: Duration = Duration::from_secs(120 * 24 * 60 * 60);
/// Runs per fill statement, each its own transaction.
const FILL_BATCH: i64 = 100_000;
/// The workers claiming new runs, as the issue has them.
const WORKERS: usize = 2;
/// Each worker claims this many runs every tick, and the feeder starts as many as both claim:
/// 400 runs/s, a steady load the two cores carry beside the sweep.
const CLAIM_RUNS: usize = 4;
const TICK: Duration = Duration::from_millis(20);
/// Runs queued before each window, so that no claim finds the queue empty when a start is late.
const QUEUED_AHEAD: usize = 2_000;
/// How long the idle baseline claims.
const IDLE_WINDOW: Duration = Duration::from_secs(30);
/// A claimed run's lease: it is completed at once.
const LEASE: Duration = Duration::from_secs(60);
/// The nodes a claim starts per run, as a worker asks (`NODE_CONCURRENCY_DEFAULT`).
const NODE_CONCURRENCY: usize = 8;
/// The leadership the sweep is fenced on, renewed before every pass.
const LEADER_LEASE: Duration = Duration::from_secs(10 * 60);
/// How much slower a claim's p99 may be during the sweep than on the idle database.
const P99_RATIO: f64 = 1.5;

/// One repetition: a fill, its idle baseline, and its sweep.
#[derive(Debug, Clone, Copy)]
struct Rep {
    idle: Latency,
    during: Latency,
    compacted: u64,
    deleted: u64,
    dropped: u64,
    sweep_s: f64,
    hot_touched: i64,
    /// Runs the workload started over both windows: they are in the sizes after.
    workload_runs: i64,
    /// On disk, after a VACUUM.
    before: TableSizes,
    after: TableSizes,
    /// The rows' own bytes.
    live_before: TableSizes,
    live_after: TableSizes,
}

/// p50 and p99 of a window's claim calls, in ms.
#[derive(Debug, Clone, Copy)]
struct Latency {
    p50: f64,
    p99: f64,
}

pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let n = bench.plan.retention_runs;
    let config = Config {
        retention_batch: bench.args.retention_batch,
        ..Config::default()
    }
    .validated()?;
    let mut reps = Vec::new();
    for rep in 1..=bench.args.reps {
        let name = format!("{}_retention_{}", bench.db_name, label(n));
        sql::create_database(&bench.admin, &name).await?;
        let measured = once(bench, &name, n, &config).await;
        if let Err(e) = sql::drop_database(&bench.admin, &name).await {
            eprintln!("warning: {e:#}");
        }
        let r = measured?;
        eprintln!(
            "  retention rep {rep}: claim p99 idle {:.2} ms, during {:.2} ms; {} compacted, {} \
             deleted, {} partitions dropped in {:.1} s",
            r.idle.p99, r.during.p99, r.compacted, r.deleted, r.dropped, r.sweep_s
        );
        reps.push(r);
    }
    push_figures(bench, &label(n), &reps);
    Ok(())
}

/// One repetition in the fresh database `name`.
async fn once(bench: &Bench, name: &str, n: i64, config: &Config) -> anyhow::Result<Rep> {
    let url = with_database(&bench.db_url, name);
    let store = Store::connect_unchecked(&url, 1).context("a retention store")?;
    store.migrate().await?;
    create_automations_in(&store).await?;
    let session = sql::connect(&url).await?;
    fill(&store, &session, n).await?;
    sql::settle(&session).await?;
    let before = sql::table_sizes(&session).await?;
    let live_before = sql::live_sizes(&session).await?;

    let idle = window(&url, async {
        tokio::time::sleep(IDLE_WINDOW).await;
        Ok(())
    })
    .await?;

    // Pinned, so that the runs due are those the fill put before the cutoffs, whatever the
    // sweep's length.
    let now = store.database_now().await?;
    let cutoffs = config.retention.cutoffs(now);
    let stages = sql::retention_stages(
        &session,
        HISTORY,
        cutoffs.compact_before,
        cutoffs.delete_before,
    )
    .await?;
    let droppable = sql::droppable_partitions(&session, cutoffs.delete_before, now).await?;
    let leader = store
        .try_acquire_leadership(&config.leader_name, "bench-retention", LEADER_LEASE)
        .await?
        .context("the sweeps' leadership is taken")?;
    let (during, swept) = window(&url, sweep(&store, &leader, config, now)).await?;

    sql::vacuum_retained(&session).await?;
    let after = sql::table_sizes(&session).await?;
    let live_after = sql::live_sizes(&session).await?;
    let left = sql::retention_swept(
        &session,
        HISTORY,
        NOOP,
        cutoffs.compact_before,
        cutoffs.delete_before,
    )
    .await?;
    let workload_runs = sql::runs_of(&session, NOOP).await?;
    eprintln!(
        "  retention: {n} runs filled: {} hot, {} due for compaction, {} for deletion; \
         {workload_runs} runs of the workload",
        stages.hot, stages.compact, stages.delete,
    );
    check(&stages, &swept, &left, droppable)?;
    Ok(Rep {
        idle: idle.0,
        during,
        compacted: swept.compacted,
        deleted: swept.deleted,
        dropped: swept.dropped,
        sweep_s: swept.seconds,
        hot_touched: stages.hot - left.hot_intact,
        workload_runs,
        before,
        after,
        live_before,
        live_after,
    })
}

/// Fills `n` finished runs of [`HISTORY`], newest first, in their months' event partitions.
async fn fill(store: &Store, session: &tokio_postgres::Client, n: i64) -> anyhow::Result<()> {
    let started = Instant::now();
    let now = store.database_now().await?;
    let span = TimeDelta::from_std(FILL_SPAN)?;
    // A created_at is up to a minute before its finished_at; a day covers it.
    let oldest = now - span - TimeDelta::days(1);
    let months = i32::try_from(span.num_days() / 28 + 3)?;
    sql::ensure_event_partitions(session, oldest, months).await?;
    let tenant = TenantId::default();
    let fill = RetentionFill {
        tenant: tenant.as_str(),
        automation: HISTORY,
        node: "only",
        runs: n,
        now,
        span_s: FILL_SPAN.as_secs_f64(),
    };
    let mut first = 1;
    while first <= n {
        let last = (first + FILL_BATCH - 1).min(n);
        fill.insert(session, first, last).await?;
        first = last + 1;
    }
    eprintln!(
        "  retention: {n} runs filled in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What the sweep did over its passes.
#[derive(Debug, Clone, Copy, Default)]
struct Swept {
    compacted: u64,
    deleted: u64,
    dropped: u64,
    seconds: f64,
}

/// Retention passes at `now` until one does nothing, then one partition pass: what the leader
/// does with a large history, without the intervals between passes.
async fn sweep(
    store: &Store,
    leader: &Leadership,
    config: &Config,
    now: DateTime<Utc>,
) -> anyhow::Result<Swept> {
    let started = Instant::now();
    let mut swept = Swept::default();
    loop {
        ensure!(
            store.renew_leadership(leader, LEADER_LEASE).await?,
            "the sweep lost its leadership"
        );
        let pass = Retention
            .run_once(Pass::new(store, leader, config, Some(now)))
            .await?;
        swept.compacted += pass.compacted;
        swept.deleted += pass.deleted;
        if pass.compacted + pass.deleted == 0 {
            break;
        }
    }
    let partitions = Partitions
        .run_once(Pass::new(store, leader, config, Some(now)))
        .await?;
    swept.dropped = partitions.dropped;
    swept.seconds = started.elapsed().as_secs_f64();
    Ok(swept)
}

/// Fails unless the sweep compacted and deleted exactly the runs the fill put past the cutoffs,
/// left every other run as it was, and dropped the partitions that only deleted runs had events
/// in.
fn check(stages: &Stages, swept: &Swept, left: &sql::Swept, droppable: i64) -> anyhow::Result<()> {
    let compacted_only = stages.compact - stages.delete;
    ensure!(
        left.hot_intact == stages.hot,
        "{} of the {} runs inside the hot window were compacted or deleted",
        stages.hot - left.hot_intact,
        stages.hot
    );
    ensure!(
        swept.compacted == u64::try_from(stages.compact)?
            && swept.deleted == u64::try_from(stages.delete)?,
        "the sweep compacted {} and deleted {} runs; the fill put {} past the hot window and {} \
         past the retention",
        swept.compacted,
        swept.deleted,
        stages.compact,
        stages.delete
    );
    ensure!(
        left.left == stages.hot + compacted_only
            && left.compacted == compacted_only
            && left.past_retention == 0,
        "after the sweep: {left:?}; expected {} runs, {compacted_only} of them compacted",
        stages.hot + compacted_only
    );
    ensure!(
        left.workload_compacted == 0,
        "{} runs of the workload were compacted",
        left.workload_compacted
    );
    ensure!(
        i64::try_from(swept.dropped)? == droppable,
        "{} event partitions dropped; {droppable} held only deleted runs' events",
        swept.dropped
    );
    Ok(())
}

/// Runs the workload (the two workers and the feeder) while `during` runs, and stops it when
/// `during` ends: the claims' latency, and what `during` gave.
async fn window<T>(
    url: &str,
    during: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(Latency, T)> {
    let feeder_store = Store::connect_unchecked(url, 1).context("the feeder's store")?;
    for size in batch_sizes(QUEUED_AHEAD, 1_000) {
        feeder_store
            .start_runs(&vec![start_request(NOOP); size])
            .await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = tokio::spawn(feed(feeder_store, Arc::clone(&stop)));
    let workers: Vec<JoinHandle<anyhow::Result<Vec<f64>>>> = (0..WORKERS)
        .map(|i| {
            let store = Store::connect_worker_unchecked(url, 1)?;
            let claimant = ClaimantId::from(format!("bench-retention-{i}").as_str());
            Ok(tokio::spawn(work(store, claimant, Arc::clone(&stop))))
        })
        .collect::<anyhow::Result<_>>()?;
    let result = during.await;
    stop.store(true, Ordering::Relaxed);
    let mut ms = Vec::new();
    for worker in workers {
        ms.extend(worker.await??);
    }
    feeder.await??;
    let latency = Latency {
        p50: percentile(&ms, 50.0).unwrap_or(f64::NAN),
        p99: percentile(&ms, 99.0).unwrap_or(f64::NAN),
    };
    Ok((latency, result?))
}

/// Starts as many runs every tick as the workers claim, until `stop`.
async fn feed(store: Store, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let requests = vec![start_request(NOOP); WORKERS * CLAIM_RUNS];
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        store.start_runs(&requests).await?;
    }
    Ok(())
}

/// A worker: every tick, claims [`CLAIM_RUNS`] runs as a worker does (its claim starts their
/// node) and completes them, until `stop`. Returns each claim call's latency in ms. A late
/// claim delays the next tick instead of bunching the ones after it.
async fn work(
    store: Store,
    claimant: ClaimantId,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<f64>> {
    let node = NodeId::from("only");
    let served = Served::default_queue();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ms = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let started = Instant::now();
        let claimed = store
            .claim_and_start_runs(&claimant, CLAIM_RUNS, LEASE, NODE_CONCURRENCY, &served)
            .await?;
        ms.push(started.elapsed().as_secs_f64() * 1e3);
        let completions: Vec<NodeCompletion> = claimed
            .iter()
            .map(|run| NodeCompletion {
                claim: run.claim,
                node_id: node.clone(),
                output: serde_json::json!({}),
                completes_run: true,
                then_start: Vec::new(),
            })
            .collect();
        let completed = store.nodes_completed(&completions).await?;
        ensure!(
            completed.iter().all(|c| matches!(c, Ok(true))),
            "a run did not complete: {completed:?}"
        );
    }
    Ok(ms)
}

#[allow(clippy::cast_precision_loss)] // Counts and sizes far below 2^52.
fn push_figures(bench: &mut Bench, size: &str, reps: &[Rep]) {
    let name = |what: &str| format!("retention.{size}.{what}");
    let of = |pick: fn(&Rep) -> f64| reps.iter().map(pick).collect::<Vec<f64>>();
    let f = &mut bench.figures;
    f.push(Figure::new(
        name("claim_p50_idle"),
        "ms",
        of(|r| r.idle.p50),
    ));
    f.push(Figure::new(
        name("claim_p99_idle"),
        "ms",
        of(|r| r.idle.p99),
    ));
    f.push(Figure::new(
        name("claim_p50_during"),
        "ms",
        of(|r| r.during.p50),
    ));
    f.push(Figure::new(
        name("claim_p99_during"),
        "ms",
        of(|r| r.during.p99),
    ));
    f.push(
        Figure::new(
            name("claim_p99_during_vs_idle"),
            "×",
            of(|r| r.during.p99 / r.idle.p99),
        )
        .bar(Bar::AtMost(P99_RATIO)),
    );
    f.push(Figure::new(
        name("compacted"),
        "runs",
        of(|r| r.compacted as f64),
    ));
    f.push(Figure::new(
        name("deleted"),
        "runs",
        of(|r| r.deleted as f64),
    ));
    f.push(Figure::new(name("sweep_s"), "s", of(|r| r.sweep_s)));
    f.push(Figure::new(
        name("sweep_runs_per_s"),
        "runs/s",
        of(|r| (r.compacted + r.deleted) as f64 / r.sweep_s),
    ));
    f.push(Figure::new(
        name("partitions_dropped"),
        "partitions",
        of(|r| r.dropped as f64),
    ));
    f.push(
        Figure::new(
            name("hot_runs_touched"),
            "runs",
            of(|r| r.hot_touched as f64),
        )
        .bar(Bar::AtMost(0.0)),
    );
    f.push(Figure::new(
        name("workload_runs"),
        "runs",
        of(|r| r.workload_runs as f64),
    ));
    let mb = |bytes: i64| bytes as f64 / (1024.0 * 1024.0);
    for (i, table) in sql::RETAINED_TABLES.into_iter().enumerate() {
        f.push(Figure::new(
            name(&format!("{table}_mb_before")),
            "MB",
            reps.iter().map(|r| mb(r.before.0[i])).collect(),
        ));
        f.push(Figure::new(
            name(&format!("{table}_mb_after")),
            "MB",
            reps.iter().map(|r| mb(r.after.0[i])).collect(),
        ));
        f.push(Figure::new(
            name(&format!("{table}_live_mb_before")),
            "MB",
            reps.iter().map(|r| mb(r.live_before.0[i])).collect(),
        ));
        f.push(Figure::new(
            name(&format!("{table}_live_mb_after")),
            "MB",
            reps.iter().map(|r| mb(r.live_after.0[i])).collect(),
        ));
    }
}
