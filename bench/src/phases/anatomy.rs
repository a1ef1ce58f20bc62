//! Where a one-node run's database time goes: the CPU of each statement the product spends on a
//! run (claim, node start, node completion), next to the limit's two (claim, completion), timed
//! one statement at a time on one session with nothing else running. `process` says how fast the
//! whole is; this says which statement costs what, without the noise of concurrency.
//!
//! The product's statements are the store's, on a worker's session (generic plans), in batches
//! of the workers' capacity, as a worker calls them: the claim starts each fresh run's node, so
//! `start` stays at zero unless a claim could not (a version without start nodes). The limit's
//! are the limit loop's. The CPU is the server's, from
//! `/proc/<pid>/schedstat`, so background work a statement causes (the WAL writer) counts too.

use std::future::Future;
use std::time::Duration;

use leasehold_core::ids::{ClaimantId, NodeId};
use leasehold_core::store::{NodeCompletion, NodeStart, Served, Store};

use super::{Bench, NOOP, process};
use crate::procfs;
use crate::report::Figure;
use crate::sql::LimitSession;

const CLAIMANT: &str = "bench-anatomy";
/// Far longer than a repetition: no lease runs out while it is measured.
const LEASE: Duration = Duration::from_secs(600);
/// The nodes a worker runs at once per run, which its claims are asked to start: the worker's
/// default (`NODE_CONCURRENCY_DEFAULT`). A one-node run starts its one node with any.
const NODE_CONCURRENCY: usize = 8;

/// Database CPU by statement over one repetition.
#[derive(Debug, Clone, Copy, Default)]
struct Spent {
    claim: Duration,
    start: Duration,
    complete: Duration,
    runs: usize,
}

impl Spent {
    /// Microseconds per run of one statement's CPU.
    fn per_run(&self, statement: Duration) -> f64 {
        #[allow(clippy::cast_precision_loss)] // Counts far below 2^52.
        let runs = self.runs.max(1) as f64;
        statement.as_secs_f64() * 1e6 / runs
    }

    fn total(&self) -> f64 {
        self.per_run(self.claim + self.start + self.complete)
    }
}

/// The limit's and the product's statements, repetition by repetition from the same state.
pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let Some(postmaster) = bench.postmaster else {
        eprintln!("  skipped: the server is not on this machine, so its CPU cannot be read");
        return Ok(());
    };
    let n = bench.plan.runs;
    let batch = bench.args.capacity;
    let mut limit = Vec::new();
    let mut product = Vec::new();
    for rep in 1..=bench.args.reps {
        process::prepare(bench, NOOP, n).await?;
        let l = limit_once(bench, postmaster, batch).await?;
        process::prepare(bench, NOOP, n).await?;
        let p = product_once(bench, postmaster, batch).await?;
        anyhow::ensure!(
            l.runs == n && p.runs == n,
            "processed {} and {} runs of {n}",
            l.runs,
            p.runs
        );
        eprintln!(
            "  rep {rep}: limit {:.1} µs/run, product {:.1} µs/run",
            l.total(),
            p.total()
        );
        limit.push(l);
        product.push(p);
    }
    // The limit has no node start.
    push_figures(
        &mut bench.figures,
        "limit",
        &limit,
        &[("claim", |s| s.claim), ("complete", |s| s.complete)],
    );
    push_figures(
        &mut bench.figures,
        "product",
        &product,
        &[
            ("claim", |s| s.claim),
            ("start", |s| s.start),
            ("complete", |s| s.complete),
        ],
    );
    Ok(())
}

/// A statement's share of a repetition's CPU.
type Statement = fn(&Spent) -> Duration;

/// One figure per statement, then their sum, for `who`'s repetitions.
fn push_figures(
    figures: &mut Vec<Figure>,
    who: &str,
    reps: &[Spent],
    statements: &[(&str, Statement)],
) {
    for (statement, pick) in statements {
        figures.push(Figure::new(
            format!("anatomy.{who}.{statement}"),
            "µs/run",
            reps.iter().map(|s| s.per_run(pick(s))).collect(),
        ));
    }
    figures.push(Figure::new(
        format!("anatomy.{who}.total"),
        "µs/run",
        reps.iter().map(Spent::total).collect(),
    ));
}

async fn limit_once(bench: &Bench, postmaster: u32, batch: usize) -> anyhow::Result<Spent> {
    let session = LimitSession::connect(&bench.db_url).await?;
    let batch = i32::try_from(batch)?;
    let mut spent = Spent::default();
    loop {
        let claimed = timed(postmaster, &mut spent.claim, session.claim(batch, CLAIMANT)).await?;
        if claimed.is_empty() {
            return Ok(spent);
        }
        timed(postmaster, &mut spent.complete, session.complete(&claimed)).await?;
        spent.runs += claimed.len();
    }
}

async fn product_once(bench: &Bench, postmaster: u32, batch: usize) -> anyhow::Result<Spent> {
    let store = Store::connect_worker(&bench.db_url, 1).await?;
    let claimant = ClaimantId::from(CLAIMANT);
    let node = NodeId::from("only");
    let mut spent = Spent::default();
    loop {
        let claimed = timed(postmaster, &mut spent.claim, async {
            Ok(store
                .claim_and_start_runs(
                    &claimant,
                    batch,
                    LEASE,
                    NODE_CONCURRENCY,
                    &Served::default_queue(),
                )
                .await?)
        })
        .await?;
        if claimed.is_empty() {
            return Ok(spent);
        }
        // A claim starts a fresh run's node itself; a run it did not start (its version does
        // not say which nodes start first) is started as the worker starts it.
        let starts: Vec<NodeStart> = claimed
            .iter()
            .filter(|run| run.started.is_empty())
            .map(|run| NodeStart {
                claim: run.claim,
                node_id: node.clone(),
            })
            .collect();
        if !starts.is_empty() {
            let started = timed(postmaster, &mut spent.start, async {
                Ok(store.nodes_started(&starts).await?)
            })
            .await?;
            anyhow::ensure!(
                started.iter().all(Result::is_ok),
                "a node start was refused: {started:?}"
            );
        }
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
        let completed = timed(postmaster, &mut spent.complete, async {
            Ok(store.nodes_completed(&completions).await?)
        })
        .await?;
        anyhow::ensure!(
            completed.iter().all(|c| matches!(c, Ok(true))),
            "a run did not complete: {completed:?}"
        );
        spent.runs += claimed.len();
    }
}

/// Runs `work`, adding the server's CPU over it to `spent`.
async fn timed<T>(
    postmaster: u32,
    spent: &mut Duration,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let before = procfs::tree_on_cpu(postmaster);
    let out = work.await?;
    let after = procfs::tree_on_cpu(postmaster);
    if let (Some(before), Some(after)) = (before, after) {
        *spent += after.saturating_sub(before);
    }
    Ok(out)
}
