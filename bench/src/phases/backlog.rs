//! The product's claim with large tables: finished and queued runs filled in with SQL, one
//! database per size, then `Store::claim_runs` timed call by call, for one run and for a worker's
//! capacity, each size in turn within a repetition. The design keeps the claim on a partial index
//! of queued runs, so it must stay flat.

use std::time::Duration;

use anyhow::Context;
use leasehold_core::ids::{ClaimantId, TenantId};
use leasehold_core::store::Store;
use leasehold_testkit::with_database;
use tokio::time::Instant;
use tokio_postgres::Client;

use super::{Bench, NOOP, create_automations_in};
use crate::report::{Bar, Figure};
use crate::sql;
use crate::stats::percentile;

/// One run in this many of the filled ones is queued, the rest completed.
const QUEUED_EVERY: i64 = 5;
/// Timed claims of one run per repetition.
const CLAIMS_OF_ONE: usize = 200;
/// Timed claims of a worker's capacity per repetition, at most.
const CLAIMS_OF_BATCH: usize = 30;
/// Untimed claims first: the pool's connection and prepared statement are warm.
const WARM_UP_CLAIMS: usize = 5;
/// How much slower the claim may be at the largest size than at the smallest.
const FLAT_RATIO: f64 = 1.5;
/// The claimant the benchmark claims as; its runs are handed back after every round.
const CLAIMANT: &str = "bench-backlog";
const LEASE: Duration = Duration::from_secs(30);

/// p50 and p99 of one round of claims, in ms.
type Round = (f64, f64);

pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let mut sizes = bench.plan.backlog.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let mut databases = Vec::new();
    let measured = measure(bench, &sizes, &mut databases).await;
    for name in &databases {
        if let Err(e) = sql::drop_database(&bench.admin, name).await {
            eprintln!("warning: {e:#}");
        }
    }
    let results = measured?;
    push_figures(bench, &results);
    Ok(())
}

/// Per size: per repetition, the round of one-run claims and the round of batch claims.
type Results = Vec<(i64, Vec<Round>, Vec<Round>)>;

/// Each size has a database of its own, filled once; every repetition then times each size in
/// turn. A machine that speeds up or slows down over the phase (a shared host does) then moves
/// every size of a repetition alike, instead of landing on whichever size was measured then.
/// `databases` collects the names of the databases created, for the caller to drop.
async fn measure(
    bench: &Bench,
    sizes: &[i64],
    databases: &mut Vec<String>,
) -> anyhow::Result<Results> {
    let Some(&smallest) = sizes.first() else {
        return Ok(Vec::new());
    };
    let capacity = bench.args.capacity;
    // Each round claims from the queue without refilling it: the smallest queue must hold it.
    let smallest_queue = usize::try_from(smallest / QUEUED_EVERY)?;
    let batch_claims = CLAIMS_OF_BATCH.min(smallest_queue / capacity.max(1)).max(1);
    let one_claims = CLAIMS_OF_ONE.min(smallest_queue).max(1);
    let mut backlogs = Vec::new();
    for &size in sizes {
        let name = format!("{}_backlog_{}", bench.db_name, label(size));
        sql::create_database(&bench.admin, &name).await?;
        databases.push(name.clone());
        let url = with_database(&bench.db_url, &name);
        let store = Store::connect_unchecked(&url, 1).context("a backlog store")?;
        store.migrate().await?;
        create_automations_in(&store).await?;
        let session = sql::connect(&url).await?;
        sql::backlog_fill(
            &session,
            TenantId::default().as_str(),
            NOOP,
            size,
            QUEUED_EVERY,
        )
        .await?;
        sql::settle(&session).await?;
        let (total, queued) = sql::count_runs(&session).await?;
        eprintln!("  backlog: {total} runs, {queued} queued");
        round(&store, &session, 1, WARM_UP_CLAIMS).await?;
        backlogs.push((size, store, session));
    }
    let mut results: Results = sizes.iter().map(|&s| (s, Vec::new(), Vec::new())).collect();
    for rep in 1..=bench.args.reps {
        for ((size, store, session), (_, ones, batches)) in backlogs.iter().zip(&mut results) {
            let one = round(store, session, 1, one_claims).await?;
            let batch = round(store, session, capacity, batch_claims).await?;
            eprintln!(
                "  backlog {} rep {rep}: claim 1 p50 {:.2} ms, claim {capacity} p50 {:.2} ms",
                label(*size),
                one.0,
                batch.0
            );
            ones.push(one);
            batches.push(batch);
        }
    }
    Ok(results)
}

fn push_figures(bench: &mut Bench, results: &Results) {
    let capacity = bench.args.capacity;
    let f = &mut bench.figures;
    for (size, ones, batches) in results {
        for (what, rounds) in [
            ("claim_1".to_owned(), ones),
            (format!("claim_{capacity}"), batches),
        ] {
            let name = format!("backlog.{}.{what}", label(*size));
            f.push(Figure::new(
                format!("{name}.p50"),
                "ms",
                rounds.iter().map(|r| r.0).collect(),
            ));
            f.push(Figure::new(
                format!("{name}.p99"),
                "ms",
                rounds.iter().map(|r| r.1).collect(),
            ));
        }
    }
    if let (Some(first), Some(last)) = (results.first(), results.last())
        && results.len() > 1
    {
        let ratios = |a: &[Round], b: &[Round]| -> Vec<f64> {
            a.iter().zip(b).map(|(x, y)| y.0 / x.0).collect()
        };
        let span = format!("{}_vs_{}", label(last.0), label(first.0));
        f.push(
            Figure::new(
                format!("backlog.claim_1.p50.{span}"),
                "×",
                ratios(&first.1, &last.1),
            )
            .bar(Bar::AtMost(FLAT_RATIO)),
        );
        f.push(
            Figure::new(
                format!("backlog.claim_{capacity}.p50.{span}"),
                "×",
                ratios(&first.2, &last.2),
            )
            .bar(Bar::AtMost(FLAT_RATIO)),
        );
    }
}

/// Times `claims` claims of `n` runs each; then hands them back and vacuums, so that the next
/// round finds the same queue.
async fn round(store: &Store, session: &Client, n: usize, claims: usize) -> anyhow::Result<Round> {
    let claimant = ClaimantId::from(CLAIMANT);
    let mut ms = Vec::with_capacity(claims);
    for _ in 0..claims {
        let started = Instant::now();
        let claimed = store.claim_runs(&claimant, n, LEASE).await?;
        ms.push(started.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(claimed.len() == n, "claimed {} of {n}", claimed.len());
    }
    sql::backlog_requeue(session, CLAIMANT).await?;
    sql::vacuum_runs(session).await?;
    Ok((
        percentile(&ms, 50.0).unwrap_or(f64::NAN),
        percentile(&ms, 99.0).unwrap_or(f64::NAN),
    ))
}

/// 10000 → 10k, 1000000 → 1m.
fn label(n: i64) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}m", n / 1_000_000)
    } else if n >= 1_000 && n % 1_000 == 0 {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::label;

    #[test]
    fn sizes_get_short_labels() {
        assert_eq!(label(10_000), "10k");
        assert_eq!(label(1_000_000), "1m");
        assert_eq!(label(2_500_000), "2500k");
        assert_eq!(label(1_234), "1234");
    }
}
