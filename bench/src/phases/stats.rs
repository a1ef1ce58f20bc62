//! Stats with a large history (issue 20): a database filled with finished runs, `GetStats`'s
//! statement timed as it was (counting every run, before the leader's first count) and as it is
//! (V22's counts), and its counts checked against a full count of the runs.

use std::time::Duration;

use anyhow::Context;
use leasehold_core::ids::TenantId;
use leasehold_core::routing::DEFAULT_QUEUE;
use leasehold_core::store::Store;
use leasehold_testkit::with_database;
use tokio::time::Instant;

use super::backlog::label;
use super::{Bench, NOOP, create_automations_in};
use crate::report::{Bar, Figure};
use crate::sql;
use crate::stats::percentile;

/// One run in this many of the filled ones is queued, the rest completed: a finished history.
const QUEUED_EVERY: i64 = 1_000;
/// Timed calls per repetition, counted and not.
const CALLS_COUNTED: usize = 200;
const CALLS_FULL: usize = 5;
/// The bar: Stats answers in under 10 ms at a million finished runs.
const STATS_BAR_MS: f64 = 10.0;
const LEADER_LEASE: Duration = Duration::from_secs(10 * 60);

/// One repetition's figures, in ms.
struct Rep {
    full_p50: f64,
    unvacuumed_p50: f64,
    counted_p50: f64,
    counted_p99: f64,
    first_count_ms: f64,
}

pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let n = bench.plan.stats_runs;
    let name = format!("{}_stats_{}", bench.db_name, label(n));
    sql::create_database(&bench.admin, &name).await?;
    let measured = measure(bench, &name, n).await;
    if let Err(e) = sql::drop_database(&bench.admin, &name).await {
        eprintln!("warning: {e:#}");
    }
    let reps = measured?;
    let size = label(n);
    let of = |pick: fn(&Rep) -> f64| reps.iter().map(pick).collect::<Vec<f64>>();
    let f = &mut bench.figures;
    f.push(Figure::new(
        format!("stats.{size}.full_count_p50"),
        "ms",
        of(|r| r.full_p50),
    ));
    f.push(Figure::new(
        format!("stats.{size}.p50_before_vacuum"),
        "ms",
        of(|r| r.unvacuumed_p50),
    ));
    f.push(Figure::new(
        format!("stats.{size}.first_count"),
        "ms",
        of(|r| r.first_count_ms),
    ));
    f.push(
        Figure::new(format!("stats.{size}.p50"), "ms", of(|r| r.counted_p50))
            .bar(Bar::AtMost(STATS_BAR_MS)),
    );
    f.push(Figure::new(
        format!("stats.{size}.p99"),
        "ms",
        of(|r| r.counted_p99),
    ));
    Ok(())
}

/// Fills `name` once; every repetition then drops the counts and counts again, so that each
/// times the statement before and after the leader's first count.
async fn measure(bench: &Bench, name: &str, n: i64) -> anyhow::Result<Vec<Rep>> {
    let url = with_database(&bench.db_url, name);
    // Stats reads the workers on a second connection.
    let store = Store::connect_unchecked(&url, 4).context("a stats store")?;
    store.migrate().await?;
    create_automations_in(&store).await?;
    let session = sql::connect(&url).await?;
    sql::backlog_fill(
        &session,
        TenantId::default().as_str(),
        NOOP,
        n,
        QUEUED_EVERY,
        &[DEFAULT_QUEUE.to_owned()],
    )
    .await?;
    sql::vacuum_runs(&session).await?;
    let tenant = TenantId::default();
    let leader = store
        .try_acquire_leadership("sweeps", "bench-stats", LEADER_LEASE)
        .await?
        .context("the sweeps' role is free in a fresh database")?;
    let mut reps = Vec::new();
    for rep in 1..=bench.args.reps {
        sql::forget_run_counts(&session).await?;
        let mut full = Vec::with_capacity(CALLS_FULL);
        for _ in 0..CALLS_FULL {
            let started = Instant::now();
            store.stats(&tenant, None).await?;
            full.push(ms(started.elapsed()));
        }
        let started = Instant::now();
        let folded = store.fold_run_counts(&leader).await?;
        let first_count_ms = ms(started.elapsed());
        anyhow::ensure!(folded.baselined, "the first pass counts the finished runs");
        // Right after the first count, the deltas the fill's triggers wrote (one a run) are dead
        // rows that Stats's scan of the deltas still reads, until (auto)vacuum clears them.
        let mut unvacuumed = Vec::with_capacity(CALLS_FULL);
        for _ in 0..CALLS_FULL {
            let started = Instant::now();
            store.stats(&tenant, None).await?;
            unvacuumed.push(ms(started.elapsed()));
        }
        sql::vacuum_run_counts(&session).await?;
        let mut counted = Vec::with_capacity(CALLS_COUNTED);
        let mut answer = None;
        for _ in 0..CALLS_COUNTED {
            let started = Instant::now();
            answer = Some(store.stats(&tenant, None).await?);
            counted.push(ms(started.elapsed()));
        }
        let answer = answer.context("at least one call")?;
        let truth = sql::runs_by_status(&session).await?;
        for (status, runs) in &answer.runs_by_status {
            let expected = truth.get(status).copied().unwrap_or(0);
            anyhow::ensure!(
                *runs == expected,
                "Stats counts {runs} {status} runs, a full count {expected}"
            );
        }
        let r = Rep {
            full_p50: percentile(&full, 50.0).unwrap_or(f64::NAN),
            unvacuumed_p50: percentile(&unvacuumed, 50.0).unwrap_or(f64::NAN),
            counted_p50: percentile(&counted, 50.0).unwrap_or(f64::NAN),
            counted_p99: percentile(&counted, 99.0).unwrap_or(f64::NAN),
            first_count_ms,
        };
        eprintln!(
            "  stats {} rep {rep}: {:.2} ms counting every run, {:.2} ms from the counts \
             (p99 {:.2} ms; {:.2} ms before the deltas' vacuum); the first count took {:.0} ms; \
             counts match a full count",
            label(n),
            r.full_p50,
            r.counted_p50,
            r.counted_p99,
            r.unvacuumed_p50,
            r.first_count_ms
        );
        reps.push(r);
    }
    Ok(reps)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
