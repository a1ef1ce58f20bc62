//! The product's claim with large tables: finished and queued runs filled in with SQL, one
//! database per spread and size, then the claim timed call by call, for one run and for a
//! worker's capacity, each database in turn within a repetition. The design keeps the claim on a
//! partial index of queued runs, one range per queue served, so it must stay flat: with every run
//! in the default queue, and with the runs spread over 20 queues (issue 19), claimed by a worker
//! serving all of them and by one serving one.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use leasehold_core::ids::{ClaimantId, TenantId};
use leasehold_core::routing::{Capabilities, DEFAULT_QUEUE};
use leasehold_core::store::{Served, Store};
use leasehold_testkit::with_database;
use tokio::time::Instant;
use tokio_postgres::Client;

use super::{Bench, NOOP, create_automations_in};
use crate::report::{Bar, Figure};
use crate::sql;
use crate::stats::percentile;

/// One run in this many of the filled ones is queued, the rest completed.
const QUEUED_EVERY: i64 = 5;
/// How the filled runs are spread, each a database per size: every run in the default queue,
/// and the runs spread over 20 queues (issue 19's bar).
const SPREADS: [Spread; 2] = [Spread { queues: 1 }, Spread { queues: 20 }];
/// Timed claims of one run per repetition.
const CLAIMS_OF_ONE: usize = 200;
/// Timed claims of a worker's capacity per repetition, at most.
const CLAIMS_OF_BATCH: usize = 30;
/// Untimed claims first, for each round timed: the pool's connection and prepared statement are
/// warm.
const WARM_UP_CLAIMS: usize = 5;
/// How much slower the claim may be at the largest size than at the smallest.
const FLAT_RATIO: f64 = 1.5;
/// The claimant the benchmark claims as; its runs are handed back after every round.
const CLAIMANT: &str = "bench-backlog";
const LEASE: Duration = Duration::from_secs(30);

/// p50 and p99 of one round of claims, in ms.
type Round = (f64, f64);

/// How the filled runs are spread over queues: the default queue alone, or `queues` queues
/// `q00`, `q01`, … (the k-th queued run in queue k mod `queues`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spread {
    queues: usize,
}

impl Spread {
    fn queue_names(self) -> Vec<String> {
        if self.queues == 1 {
            vec![DEFAULT_QUEUE.to_owned()]
        } else {
            (0..self.queues).map(|i| format!("q{i:02}")).collect()
        }
    }

    /// What the spread's figure names start with after the size: nothing for the default
    /// queue, `q20.` for 20 queues.
    fn prefix(self) -> String {
        if self.queues == 1 {
            String::new()
        } else {
            format!("q{}.", self.queues)
        }
    }

    /// Who claims: the product's `claim_runs` from the default queue; from `n` queues, a worker
    /// serving all of them and one serving the first.
    fn claimers(self) -> Vec<Claimer> {
        if self.queues == 1 {
            return vec![Claimer {
                name: String::new(),
                served: Served::default_queue(),
                queues: 1,
            }];
        }
        let names = self.queue_names();
        let prefix = self.prefix();
        vec![
            Claimer {
                name: prefix.clone(),
                served: worker_serving(&names),
                queues: names.len(),
            },
            Claimer {
                name: format!("{prefix}one_queue."),
                served: worker_serving(&names[..1]),
                queues: 1,
            },
        ]
    }
}

/// A claimer of a spread: what it claims, and how many of the spread's queues that is.
struct Claimer {
    /// What its figure names start with after the size.
    name: String,
    served: Served,
    queues: usize,
}

/// What a worker serving `queues` with a handler for `noop` claims.
fn worker_serving(queues: &[String]) -> Served {
    Served::by(&Capabilities {
        queues: Some(queues.iter().cloned().collect()),
        kinds: BTreeSet::from(["noop".to_owned()]),
        ..Capabilities::default()
    })
}

/// One claimer's rounds of claims of `n` runs: per size, one round per repetition.
struct Timed {
    /// The spread whose databases it claims from, in [`SPREADS`].
    spread: usize,
    /// Its figure names after the size: `claim_1`, `q20.claim_512`, …
    name: String,
    served: Served,
    n: usize,
    claims: usize,
    /// Per size, in the order of the sizes.
    rounds: Vec<Vec<Round>>,
}

/// Every claimer's rounds of one run and of `capacity` runs, for `sizes` (sorted). Each round
/// claims from the queue without refilling it, so a claimer's share of the smallest size's queue
/// must hold it; a round it cannot hold (a batch from one queue of twenty at 10,000 runs) is
/// not timed.
fn plan(sizes: &[i64], capacity: usize) -> Vec<Timed> {
    let smallest_queued = sizes.first().map_or(0, |&s| s / QUEUED_EVERY);
    let smallest_queued = usize::try_from(smallest_queued).unwrap_or(0);
    let mut timed = Vec::new();
    for (spread_index, spread) in SPREADS.into_iter().enumerate() {
        for claimer in spread.claimers() {
            let share = smallest_queued / spread.queues * claimer.queues;
            for (n, most) in [(1, CLAIMS_OF_ONE), (capacity.max(1), CLAIMS_OF_BATCH)] {
                let claims = most.min(share / n);
                if claims == 0 {
                    eprintln!(
                        "  backlog: {}claim_{n} not timed: {share} runs queued for it at the \
                         smallest size",
                        claimer.name
                    );
                    continue;
                }
                timed.push(Timed {
                    spread: spread_index,
                    name: format!("{}claim_{n}", claimer.name),
                    served: claimer.served.clone(),
                    n,
                    claims,
                    rounds: vec![Vec::new(); sizes.len()],
                });
            }
        }
    }
    timed
}

pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let mut sizes = bench.plan.backlog.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let mut timed = plan(&sizes, bench.args.capacity);
    let mut databases = Vec::new();
    let measured = measure(bench, &sizes, &mut timed, &mut databases).await;
    for name in &databases {
        if let Err(e) = sql::drop_database(&bench.admin, name).await {
            eprintln!("warning: {e:#}");
        }
    }
    measured?;
    push_figures(bench, &sizes, &timed);
    Ok(())
}

/// One spread's runs at one size, in a database of its own.
struct Backlog {
    spread: usize,
    size_index: usize,
    store: Store,
    session: Client,
}

/// Each spread and size has a database of its own, filled once; every repetition then times each
/// in turn. A machine that speeds up or slows down over the phase (a shared host does) then moves
/// every size of a repetition alike, instead of landing on whichever size was measured then.
/// `databases` collects the names of the databases created, for the caller to drop.
async fn measure(
    bench: &Bench,
    sizes: &[i64],
    timed: &mut [Timed],
    databases: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut backlogs = Vec::new();
    for (spread_index, spread) in SPREADS.into_iter().enumerate() {
        for (size_index, &size) in sizes.iter().enumerate() {
            let name = format!(
                "{}_backlog_{}{}",
                bench.db_name,
                spread.prefix().replace('.', "_"),
                label(size)
            );
            let (store, session) = fill(bench, &name, spread, size, databases).await?;
            for t in timed.iter().filter(|t| t.spread == spread_index) {
                round(&store, &session, &t.served, 1, WARM_UP_CLAIMS).await?;
            }
            backlogs.push(Backlog {
                spread: spread_index,
                size_index,
                store,
                session,
            });
        }
    }
    for rep in 1..=bench.args.reps {
        for backlog in &backlogs {
            let mut said = Vec::new();
            for t in timed.iter_mut().filter(|t| t.spread == backlog.spread) {
                let r = round(&backlog.store, &backlog.session, &t.served, t.n, t.claims).await?;
                said.push(format!("{} p50 {:.2} ms", t.name, r.0));
                t.rounds[backlog.size_index].push(r);
            }
            eprintln!(
                "  backlog {} rep {rep}: {}",
                label(sizes[backlog.size_index]),
                said.join(", ")
            );
        }
    }
    Ok(())
}

/// Creates database `name` (added to `databases`) and fills it with `size` runs spread as
/// `spread` says; returns a store and a session on it.
async fn fill(
    bench: &Bench,
    name: &str,
    spread: Spread,
    size: i64,
    databases: &mut Vec<String>,
) -> anyhow::Result<(Store, Client)> {
    sql::create_database(&bench.admin, name).await?;
    databases.push(name.to_owned());
    let url = with_database(&bench.db_url, name);
    let owner = Store::connect_unchecked(&url, 1).context("a backlog store")?;
    owner.migrate().await?;
    create_automations_in(&owner).await?;
    // Claims as a worker makes them: generic plans, no JIT.
    let store = Store::connect_worker_unchecked(&url, 1).context("a worker's store")?;
    let session = sql::connect(&url).await?;
    sql::backlog_fill(
        &session,
        TenantId::default().as_str(),
        NOOP,
        size,
        QUEUED_EVERY,
        &spread.queue_names(),
    )
    .await?;
    sql::settle(&session).await?;
    let (total, queued, queues) = sql::count_runs(&session).await?;
    eprintln!("  backlog: {total} runs, {queued} queued in {queues} queues");
    Ok((store, session))
}

fn push_figures(bench: &mut Bench, sizes: &[i64], timed: &[Timed]) {
    let f = &mut bench.figures;
    for spread in 0..SPREADS.len() {
        let of_spread = || timed.iter().filter(move |t| t.spread == spread);
        for (size_index, &size) in sizes.iter().enumerate() {
            for t in of_spread() {
                let rounds = &t.rounds[size_index];
                let name = format!("backlog.{}.{}", label(size), t.name);
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
        let (Some(&smallest), Some(&largest)) = (sizes.first(), sizes.last()) else {
            continue;
        };
        if sizes.len() < 2 {
            continue;
        }
        let span = format!("{}_vs_{}", label(largest), label(smallest));
        for t in of_spread() {
            let (Some(first), Some(last)) = (t.rounds.first(), t.rounds.last()) else {
                continue;
            };
            f.push(
                Figure::new(
                    format!("backlog.{}.p50.{span}", t.name),
                    "×",
                    first.iter().zip(last).map(|(x, y)| y.0 / x.0).collect(),
                )
                .bar(Bar::AtMost(FLAT_RATIO)),
            );
        }
    }
}

/// Times `claims` claims of `n` runs each, of the runs `served` covers; then hands them back and
/// vacuums, so that the next round finds the same queue.
async fn round(
    store: &Store,
    session: &Client,
    served: &Served,
    n: usize,
    claims: usize,
) -> anyhow::Result<Round> {
    let claimant = ClaimantId::from(CLAIMANT);
    let mut ms = Vec::with_capacity(claims);
    for _ in 0..claims {
        let started = Instant::now();
        let claimed = store
            .claim_and_start_runs(&claimant, n, LEASE, 0, served)
            .await?;
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
pub fn label(n: i64) -> String {
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
    use super::{SPREADS, Spread, label, plan};

    #[test]
    fn every_claimer_times_the_rounds_its_share_of_the_smallest_queue_holds() {
        let timed: Vec<(usize, String, usize, usize)> = plan(&[10_000, 1_000_000], 512)
            .into_iter()
            .map(|t| (SPREADS[t.spread].queues, t.name, t.n, t.claims))
            .collect();
        let row = |queues, name: &str, n, claims| (queues, name.to_owned(), n, claims);
        // 2,000 runs queued at 10k: 100 in each of 20 queues, too few for a batch from one.
        assert_eq!(
            timed,
            vec![
                row(1, "claim_1", 1, 200),
                row(1, "claim_512", 512, 3),
                row(20, "q20.claim_1", 1, 200),
                row(20, "q20.claim_512", 512, 3),
                row(20, "q20.one_queue.claim_1", 1, 100),
            ]
        );
    }

    #[test]
    fn a_spread_names_its_queues_and_figures() {
        let twenty = Spread { queues: 20 };
        let names = twenty.queue_names();
        assert_eq!(
            (names.len(), names[0].as_str(), names[19].as_str()),
            (20, "q00", "q19")
        );
        assert_eq!(twenty.prefix(), "q20.");
        let default = Spread { queues: 1 };
        assert_eq!(default.queue_names(), vec!["default".to_owned()]);
        assert_eq!(default.prefix(), "");
    }

    #[test]
    fn sizes_get_short_labels() {
        assert_eq!(label(10_000), "10k");
        assert_eq!(label(1_000_000), "1m");
        assert_eq!(label(2_500_000), "2500k");
        assert_eq!(label(1_234), "1234");
    }
}
