//! Trigger-to-start on an idle system: runs started one by one through the store, each waited
//! for before the next, measured from the run's creation to its first node's start by the
//! database's clock. Once with the workers listening for notifications, once polling only.

use std::time::Duration;

use anyhow::bail;
use leasehold_core::store::Store;
use tokio::time::Instant;
use tokio_postgres::Client;
use uuid::Uuid;

use super::{Bench, NOOP, start_request};
use crate::report::{Bar, Figure};
use crate::sql;
use crate::stats::percentile;

/// Runs started and finished before each repetition, untimed: pools and prepared statements
/// are warm when measuring starts.
const WARM_UP_RUNS: usize = 3;
/// How often the benchmark looks whether the last run finished. It reads one row by key, and
/// what it waits for is measured by the database's clock, not by this loop.
const FINISHED_POLL: Duration = Duration::from_millis(2);
/// The bars with notifications, in ms.
const NOTIFY_P50_MS: f64 = 3.0;
const NOTIFY_P99_MS: f64 = 10.0;
/// The longest idle gap before each start when notifications wake the workers.
const NOTIFY_GAP_MAX: Duration = Duration::from_millis(10);

pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    for listen in [true, false] {
        let name = if listen {
            "latency.notify"
        } else {
            "latency.poll"
        };
        bench.reset().await?;
        let mut workers = bench.spawn_workers(listen)?;
        bench.workers_ready(&mut workers, listen).await?;
        let store = bench.store(1).await?;
        let session = bench.session().await?;
        let (mut p50, mut p99) = (Vec::new(), Vec::new());
        for rep in 1..=bench.args.reps {
            for w in &mut workers {
                w.check_alive()?;
            }
            let gap = if listen {
                NOTIFY_GAP_MAX
            } else {
                bench.args.poll_interval
            };
            one_by_one(bench, &store, &session, WARM_UP_RUNS, gap).await?;
            let ids = one_by_one(bench, &store, &session, bench.plan.latency_runs, gap).await?;
            let samples = sql::trigger_to_start_ms(&session, &ids).await?;
            anyhow::ensure!(
                samples.len() == ids.len(),
                "{name}: {} of {} runs started a node",
                samples.len(),
                ids.len()
            );
            let (a, b) = (
                percentile(&samples, 50.0).unwrap_or(f64::NAN),
                percentile(&samples, 99.0).unwrap_or(f64::NAN),
            );
            eprintln!("  {name} rep {rep}: p50 {a:.2} ms, p99 {b:.2} ms");
            p50.push(a);
            p99.push(b);
        }
        drop((store, session));
        bench.stop(workers).await?;
        #[allow(clippy::cast_precision_loss)]
        let poll_ms = bench.args.poll_interval.as_millis() as f64;
        // Polling bounds the wait for a claim; after it, the claim and the node's start cost
        // what they cost with notifications.
        let (bar50, bar99) = if listen {
            (NOTIFY_P50_MS, NOTIFY_P99_MS)
        } else {
            (poll_ms, poll_ms + NOTIFY_P99_MS)
        };
        let f = &mut bench.figures;
        f.push(Figure::new(format!("{name}.p50"), "ms", p50).bar(Bar::AtMost(bar50)));
        f.push(Figure::new(format!("{name}.p99"), "ms", p99).bar(Bar::AtMost(bar99)));
    }
    Ok(())
}

/// Starts `n` runs one at a time, each after the one before finished and a random idle gap
/// below `gap_max`; returns their ids.
///
/// The gap keeps the starts from locking in step with the workers: a worker looks for work
/// right after it finishes a run and then waits a poll interval, so a run started as soon as
/// the last one finished would always wait nearly a whole interval. Random starts sample every
/// point of the cycle, as arrivals in production do.
async fn one_by_one(
    bench: &Bench,
    store: &Store,
    session: &Client,
    n: usize,
    gap_max: Duration,
) -> anyhow::Result<Vec<Uuid>> {
    let request = start_request(NOOP);
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let gap_us = fastrand::u64(0..u64::try_from(gap_max.as_micros())?.max(1));
        tokio::time::sleep(Duration::from_micros(gap_us)).await;
        let run_id = store.start_run(&request).await?.run_id.0;
        let deadline = bench.deadline();
        while !sql::run_finished(session, run_id).await? {
            if Instant::now() >= deadline {
                bail!("run {run_id} did not finish by the deadline");
            }
            tokio::time::sleep(FINISHED_POLL).await;
        }
        ids.push(run_id);
    }
    Ok(ids)
}
