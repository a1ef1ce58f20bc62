//! The phases, and what they share: the database, the binary, the processes, and the snapshots
//! a measurement is the difference of.
//!
//! - `enqueue`: starting runs through the API (StartRuns, StartRun) and the store.
//! - `process`: one-node runs and 10-node DAGs through the worker processes, and the limit.
//! - `anatomy`: the database CPU of each statement of a one-node run, the limit's beside it.
//! - `latency`: trigger-to-start of runs started one by one, notified and polled.
//! - `backlog`: the product's claim with large tables.
//! - `stops`: a cancel or pause of a running `exec` node to its process group gone.
//! - `retention`: claims while the retention sweep compacts and deletes a large history.
//! - `stats`: Stats with a large history, before and after the leader's first count.

pub mod anatomy;
pub mod backlog;
pub mod enqueue;
pub mod latency;
pub mod process;
pub mod retention;
pub mod stats;
pub mod stops;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::future::try_join_all;
use leasehold_core::ids::{AutomationId, TenantId};
use leasehold_core::spec;
use leasehold_core::store::{StartRun, Store, Trigger};
use tokio::time::Instant;
use tokio_postgres::Client;

use crate::args::{Args, Plan};
use crate::procfs;
use crate::procs::{self, Proc};
use crate::report::Figure;
use crate::sql;

/// The one-node automation.
pub const NOOP: &str = "bench-noop";
/// Ten `noop` nodes, each depending on the one before.
pub const CHAIN: &str = "bench-chain";
/// One `noop` root, eight `noop` branches after it, and a `noop` join after them all.
pub const FANOUT: &str = "bench-fanout";
/// The finished runs every repetition starts with; one `noop` node, `only`.
pub const HISTORY: &str = "bench-history";
/// Nodes of each DAG.
pub const DAG_NODES: usize = 10;

/// How often a wait looks at its condition again.
const WAIT_POLL: Duration = Duration::from_millis(20);
/// Time a stopping process gets after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Everything a phase needs.
pub struct Bench {
    pub args: Args,
    pub plan: Plan,
    /// The `leasehold` binary.
    pub bin: PathBuf,
    /// Logs of the processes.
    pub workdir: PathBuf,
    /// The benchmark's own database, and its URL.
    pub db_name: String,
    pub db_url: String,
    /// A session on the admin database: statistics read from there add nothing to ours.
    pub admin: Client,
    /// The server's postmaster, when it runs on this machine: its process tree's CPU is the
    /// database's.
    pub postmaster: Option<u32>,
    /// Whether the role may CHECKPOINT.
    pub can_checkpoint: bool,
    /// The figures so far.
    pub figures: Vec<Figure>,
}

/// What the database and the processes had done at an instant; a measurement is the difference
/// of two.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    /// Transactions of the benchmark's database.
    pub xacts: i64,
    /// CPU of the database server's processes.
    pub db_cpu: Option<Duration>,
    /// CPU of this process (the client of the limit loop and of the store's enqueue).
    pub own_cpu: Option<Duration>,
}

impl Bench {
    /// The benchmark's automations, registered through the store.
    pub async fn create_automations(&self) -> anyhow::Result<()> {
        create_automations_in(&self.store(1).await?).await
    }

    /// A store on the benchmark's database.
    pub async fn store(&self, pool_size: usize) -> anyhow::Result<Store> {
        Store::connect(&self.db_url, pool_size)
            .await
            .context("connecting a store")
    }

    /// One session on the benchmark's database.
    pub async fn session(&self) -> anyhow::Result<Client> {
        sql::connect(&self.db_url).await
    }

    /// The tables emptied, then `--history` finished runs in them, vacuumed, analyzed and
    /// checkpointed, and no session of ours left: the state every repetition starts from.
    pub async fn reset(&mut self) -> anyhow::Result<()> {
        self.reset_with(self.args.history).await
    }

    /// The same with `history` finished runs.
    pub async fn reset_with(&mut self, history: usize) -> anyhow::Result<()> {
        let session = self.session().await?;
        sql::reset(&session).await?;
        if history > 0 {
            let tenant = TenantId::default();
            let n = i64::try_from(history)?;
            sql::history(&session, tenant.as_str(), HISTORY, "only", n).await?;
        }
        drop(session);
        self.settle().await
    }

    /// Vacuums and checkpoints, then waits for every session to leave.
    pub async fn settle(&mut self) -> anyhow::Result<()> {
        let session = self.session().await?;
        self.can_checkpoint = sql::settle(&session).await?;
        drop(session);
        self.quiesce().await
    }

    /// Waits until no client session is on the benchmark's database, so that every transaction
    /// made on it is in its statistics.
    pub async fn quiesce(&self) -> anyhow::Result<()> {
        let deadline = self.deadline();
        loop {
            if sql::client_sessions(&self.admin, &self.db_name).await? == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("sessions still open on {} at the deadline", self.db_name);
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    pub async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        Ok(Snapshot {
            xacts: sql::transactions(&self.admin, &self.db_name).await?,
            db_cpu: self.postmaster.and_then(procfs::tree_cpu),
            own_cpu: procfs::process_cpu(std::process::id()),
        })
    }

    /// When a wait that starts now gives up.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.args.phase_timeout
    }

    /// Starts `n` runs of `automation` through the store in batches, `concurrency` at once.
    pub async fn enqueue(
        &self,
        automation: &str,
        n: usize,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        let store = self.store(concurrency).await?;
        let request = start_request(automation);
        let batches: Vec<usize> = batch_sizes(n, self.args.batch);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let lane = async || -> anyhow::Result<()> {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&size) = batches.get(i) else {
                    return Ok(());
                };
                let requests = vec![request.clone(); size];
                store.start_runs(&requests).await?;
            }
        };
        try_join_all((0..concurrency.max(1)).map(|_| lane())).await?;
        Ok(())
    }

    /// Starts the worker processes; `listen` false polls every `--poll-interval`.
    pub fn spawn_workers(&self, listen: bool) -> anyhow::Result<Vec<Proc>> {
        (0..self.args.workers)
            .map(|i| {
                let mut args = vec![
                    "worker".to_owned(),
                    "--database-url".to_owned(),
                    self.db_url.clone(),
                    "--claimant-id".to_owned(),
                    format!("bench-worker-{i}"),
                    "--capacity".to_owned(),
                    self.args.capacity.to_string(),
                    "--pool-size".to_owned(),
                    self.args.pool_size.to_string(),
                ];
                if !listen {
                    args.push("--no-listen".to_owned());
                    args.push("--poll-interval".to_owned());
                    args.push(format!("{}ms", self.args.poll_interval.as_millis()));
                }
                let log = self.workdir.join(format!("worker-{i}.log"));
                Proc::spawn(&format!("worker {i}"), &self.bin, &args, log)
            })
            .collect()
    }

    /// Waits until every worker has registered, and listens if it should.
    pub async fn workers_ready(&self, workers: &mut [Proc], listen: bool) -> anyhow::Result<()> {
        let pids: Vec<u32> = workers.iter().map(Proc::pid).collect();
        let session = self.session().await?;
        let deadline = self.deadline();
        let want = i64::try_from(workers.len())?;
        loop {
            for w in workers.iter_mut() {
                w.check_alive()?;
            }
            let registered = sql::workers_up(&session, &pids).await? == want;
            let listening = !listen || sql::listening(&self.admin, &self.db_name).await? >= want;
            if registered && listening {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the workers were not ready by the deadline");
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Stops processes with SIGTERM, as a deploy would.
    pub async fn stop(&self, procs: Vec<Proc>) -> anyhow::Result<()> {
        procs::stop_all(procs, STOP_GRACE).await
    }
}

/// A start request for one run of `automation`, as the API would make it.
pub fn start_request(automation: &str) -> StartRun {
    StartRun {
        tenant: TenantId::default(),
        automation_id: AutomationId::from(automation),
        inputs: serde_json::json!({}),
        priority: 0,
        concurrency_key: None,
        idempotency_key: None,
        trigger: Trigger::Api,
        actor: None,
        trace: None,
        queue: None,
    }
}

/// `n` split into batches of at most `batch`.
pub fn batch_sizes(n: usize, batch: usize) -> Vec<usize> {
    let batch = batch.max(1);
    (0..n.div_ceil(batch))
        .map(|i| batch.min(n - i * batch))
        .collect()
}

/// Registers the benchmark's automations in the database of `store`.
pub async fn create_automations_in(store: &Store) -> anyhow::Result<()> {
    let chain: String = (0..DAG_NODES)
        .map(|i| match i {
            0 => "  - {id: n0, kind: noop}\n".to_owned(),
            i => format!("  - {{id: n{i}, kind: noop, depends_on: [n{}]}}\n", i - 1),
        })
        .collect();
    let branches: Vec<String> = (1..DAG_NODES - 1).map(|i| format!("b{i}")).collect();
    let fanout = format!(
        "  - {{id: root, kind: noop}}\n{}  - {{id: join, kind: noop, depends_on: [{}]}}\n",
        branches
            .iter()
            .map(|b| format!("  - {{id: {b}, kind: noop, depends_on: [root]}}\n"))
            .collect::<String>(),
        branches.join(", ")
    );
    for (id, nodes) in [
        (NOOP, "  - {id: only, kind: noop}\n".to_owned()),
        (HISTORY, "  - {id: only, kind: noop}\n".to_owned()),
        (CHAIN, chain),
        (FANOUT, fanout),
    ] {
        let spec = spec::parse_yaml(&format!("id: {id}\nnodes:\n{nodes}"))
            .with_context(|| format!("the {id} spec"))?;
        let one_node = id == NOOP || id == HISTORY;
        anyhow::ensure!(spec.nodes.len() == if one_node { 1 } else { DAG_NODES });
        store.create_automation(&TenantId::default(), &spec).await?;
    }
    Ok(())
}

/// Microseconds of CPU per unit between two readings, if both were taken.
pub fn cpu_per(before: Option<Duration>, after: Option<Duration>, units: usize) -> Option<f64> {
    let spent = after?.checked_sub(before?)?;
    #[allow(clippy::cast_precision_loss)] // Counts far below 2^52.
    Some(spent.as_secs_f64() * 1e6 / units.max(1) as f64)
}

/// A count per unit as a float.
#[allow(clippy::cast_precision_loss)] // Counts far below 2^52.
pub fn per(count: i64, units: usize) -> f64 {
    count as f64 / units.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_run_once() {
        assert_eq!(batch_sizes(2_500, 1_000), vec![1_000, 1_000, 500]);
        assert_eq!(batch_sizes(1_000, 1_000), vec![1_000]);
        assert_eq!(batch_sizes(0, 1_000), Vec::<usize>::new());
        assert_eq!(batch_sizes(3, 0), vec![1, 1, 1]);
    }

    #[test]
    fn cpu_per_unit_needs_both_readings() {
        let ms = Duration::from_millis;
        assert_eq!(cpu_per(Some(ms(100)), Some(ms(300)), 200), Some(1_000.0));
        assert_eq!(cpu_per(None, Some(ms(300)), 200), None);
        assert_eq!(cpu_per(Some(ms(300)), Some(ms(100)), 200), None);
    }
}
