//! The worker loop: claim up to free capacity, execute, and hand runs back on shutdown.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use leasehold_core::ids::ClaimantId;
use leasehold_core::routing::Capabilities;
use leasehold_core::store::{self, ClaimedRun, Served, Store, WorkerInfo, outage};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanContext;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::execute::WorkerMetrics;
use crate::execute::{self, Outcome, Shared, Shutdown};
use crate::handler::Registry;
use crate::keeper::{KeeperHandle, LeaseKeeper, RunLease};
use crate::observe::Health;

/// Delay before claiming again after a claim failed (database unreachable).
const CLAIM_RETRY_DELAY: Duration = Duration::from_millis(500);
/// How long a claim in flight when shutdown starts may still answer. Runs it claimed after that
/// are requeued by the reaper once their leases expire.
const CLAIM_ABANDON_AFTER_STOP: Duration = Duration::from_secs(2);
/// After the grace period, time left for stopped runs to be handed back before exiting.
const HAND_BACK_DEADLINE: Duration = Duration::from_secs(5);

/// What a worker did before it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Runs it claimed.
    pub claimed: usize,
    /// Runs that left it, by how.
    pub outcomes: Vec<Outcome>,
}

/// A worker: claims runs from the store and executes them with the registry's node kinds.
pub struct Worker {
    store: Store,
    registry: Registry,
    config: Config,
    health: Arc<Health>,
    /// The runs its claims may take: of its queues, needing only what it has.
    served: Served,
}

impl Worker {
    /// A worker with a checked config.
    pub fn new(store: Store, registry: Registry, config: Config) -> Self {
        let served = Served::by(&Capabilities {
            queues: Some(config.queues.clone()),
            kinds: registry.kinds().into_iter().collect(),
            labels: config.labels.clone(),
            context: config.runtime_context.names(),
        });
        Self {
            store,
            registry,
            config,
            health: Arc::default(),
            served,
        }
    }

    /// This worker with `/livez` failing once its lease keeper has not ticked for `stall_after`
    /// (10 s unless told; `observe::KEEPER_STALL_AFTER`).
    #[must_use]
    pub fn with_keeper_stall_after(mut self, stall_after: Duration) -> Self {
        self.health = Arc::new(Health::with_stall_after(stall_after));
        self
    }

    /// The worker's liveness and readiness, as its `/livez` and `/readyz` report them.
    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// Runs until `shutdown` is cancelled (or an operator drains the worker), then stops
    /// claiming, lets running nodes finish within the grace period, hands every run still held
    /// back to the queue, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<Report, store::Error> {
        let info = self.info();
        self.store.register_worker(&info).await?;
        self.health.registered();
        #[allow(clippy::cast_precision_loss)] // a capacity is far below 2^52
        metrics::gauge!("leasehold_worker_capacity").set(self.config.capacity as f64);
        tracing::info!(claimant = %self.config.claimant_id, capacity = self.config.capacity, kinds = ?self.registry.kinds(), queues = ?self.config.queues, labels = ?self.config.labels, context = ?self.config.runtime_context, "worker started");

        // One listening connection for both: wake-ups for the claim loop, stop notices for the
        // keeper. Kept until the keeper stops, so that a cancel or pause still lands at once
        // during the drain.
        let (wakeups, notices) = if self.config.listen {
            let (wakeups, notices) = self.store.listen_worker();
            (Some(wakeups), Some(notices))
        } else {
            (None, None)
        };
        let drain_requested = CancellationToken::new();
        let keeper = LeaseKeeper::new(
            self.store.clone(),
            &self.config,
            info,
            drain_requested.clone(),
            self.health(),
        );
        let leases = keeper.handle();
        let keeper_stop = CancellationToken::new();
        let keeper_task = tokio::spawn(keeper.run(keeper_stop.clone(), notices));
        let mut held = Held::default();
        let stopping = Stopping {
            shutdown,
            drain_requested,
        };
        self.claim_loop(&mut held, &leases, &stopping, wakeups.as_ref())
            .await;

        self.health.draining();
        if stopping.drain_requested.is_cancelled() {
            tracing::info!("drain requested by an operator");
        }
        self.drain(&mut held).await;
        keeper_stop.cancel();
        let _ = keeper_task.await;
        drop(wakeups);
        if let Err(e) = self.store.deregister_worker(&self.config.claimant_id).await {
            tracing::warn!(error = %e, "could not remove the worker's row");
        }
        tracing::info!(claimed = held.report.claimed, "worker stopped");
        Ok(held.report)
    }

    /// The worker's row in the registry.
    fn info(&self) -> WorkerInfo {
        WorkerInfo {
            claimant_id: self.config.claimant_id.clone(),
            host: self
                .config
                .claimant_id
                .as_str()
                .rsplitn(3, '-')
                .last()
                .unwrap_or_default()
                .to_owned(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capacity: u32::try_from(self.config.capacity).unwrap_or(u32::MAX),
            lease: self.config.lease,
            kinds: self.registry.advertised(),
            queues: self.config.queues.clone(),
            labels: self.config.labels.clone(),
            context: self.config.runtime_context.names(),
        }
    }

    /// Claims up to free capacity and starts each claimed run, until the worker is stopping.
    async fn claim_loop(
        &self,
        held: &mut Held,
        leases: &KeeperHandle,
        stopping: &Stopping,
        wakeups: Option<&store::Wakeups>,
    ) {
        let shared = Arc::new(Shared::new(
            self.store.clone(),
            self.registry.clone(),
            self.config.node_concurrency,
            self.config.claimant_id.clone(),
            self.config.runtime_context.clone(),
        ));
        let mut woken = true;
        let mut queue_had_more = false;
        // A deadline, not a fresh sleep per pass: runs finishing often must not put the poll off.
        let mut next_poll = Instant::now();
        loop {
            let free = self.config.capacity.saturating_sub(held.tasks.len());
            let mut claim_failed = false;
            if time_to_claim(free, self.config.capacity, woken, queue_had_more) {
                woken = false;
                let Some(claimed) = self.claim(free, stopping).await else {
                    break;
                };
                if let Some(e) = outage::DATABASE.record(&claimed) {
                    tracing::warn!(error = %e, "claim failed");
                }
                match claimed {
                    Ok((claimed, requested_at)) => {
                        let answered_at = Instant::now();
                        record_claim(&shared.metrics, &claimed, answered_at - requested_at);
                        queue_had_more = claimed.len() == free;
                        held.report.claimed += claimed.len();
                        let batch = claim_span(
                            requested_at.elapsed(),
                            claimed.len(),
                            free,
                            &self.config.claimant_id,
                        );
                        for run in claimed {
                            let lease = leases.hold(run.claim, requested_at);
                            held.start(&shared, run, lease, answered_at, batch.clone());
                        }
                    }
                    Err(_) => claim_failed = true,
                }
                next_poll = Instant::now()
                    + if claim_failed {
                        CLAIM_RETRY_DELAY
                    } else {
                        self.config.poll_interval
                    };
            }
            let full = held.tasks.len() >= self.config.capacity;
            tokio::select! {
                () = stopping.wait() => break,
                Some(done) = held.tasks.join_next() => {
                    held.collect(done);
                    while let Some(done) = held.tasks.try_join_next() {
                        held.collect(done);
                    }
                }
                () = wait_for_wakeup(wakeups), if !full && !claim_failed => woken = true,
                () = tokio::time::sleep_until(next_poll), if !full => woken = true,
            }
        }
    }

    /// Claims up to `free` runs, with the instant the claim was sent; `None` when the worker
    /// started stopping and the claim did not answer in time.
    async fn claim(
        &self,
        free: usize,
        stopping: &Stopping,
    ) -> Option<Result<(Vec<ClaimedRun>, Instant), store::Error>> {
        let requested_at = Instant::now();
        // A fresh run's first nodes start with its claim, as many as run at once on this
        // worker: the handlers run without a start write of their own.
        let claim = self.store.claim_and_start_runs(
            &self.config.claimant_id,
            free,
            self.config.lease,
            self.config.node_concurrency,
            &self.served,
        );
        // A claim stuck on a dead connection must not keep a shutdown from starting; one that
        // answers soon after the signal keeps its runs, which are then handed back.
        let abandon = async {
            stopping.wait().await;
            tokio::time::sleep(CLAIM_ABANDON_AFTER_STOP).await;
        };
        tokio::select! {
            claimed = claim => Some(claimed.map(|claimed| (claimed, requested_at))),
            () = abandon => None,
        }
    }

    /// Stops starting nodes and lets running ones finish within the grace period, then stops
    /// them and hands their runs back.
    async fn drain(&self, held: &mut Held) {
        tracing::info!(held = held.tasks.len(), grace = ?self.config.shutdown_grace, "stopping: no more claims; letting running nodes finish");
        held.shutdown.drain.cancel();
        if tokio::time::timeout(self.config.shutdown_grace, held.join_all())
            .await
            .is_ok()
        {
            return;
        }
        tracing::info!(
            held = held.tasks.len(),
            "grace period over: stopping nodes and handing runs back"
        );
        held.shutdown.now.cancel();
        hand_back(held).await;
    }
}

/// Waits for the runs stopped at the end of the grace period to be handed back, for
/// [`HAND_BACK_DEADLINE`] at most.
async fn hand_back(held: &mut Held) {
    if tokio::time::timeout(HAND_BACK_DEADLINE, held.join_all())
        .await
        .is_err()
    {
        tracing::warn!(
            held = held.tasks.len(),
            "hand-back deadline passed; the reaper will requeue the rest"
        );
        held.tasks.abort_all();
    }
}

/// What stops the claim loop: a signal, or an operator's drain.
struct Stopping {
    shutdown: CancellationToken,
    drain_requested: CancellationToken,
}

impl Stopping {
    /// A fresh future each time it is called.
    async fn wait(&self) {
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            () = self.drain_requested.cancelled() => {}
        }
    }
}

/// The runs this worker executes, and what became of those that left.
#[derive(Default)]
struct Held {
    tasks: JoinSet<Outcome>,
    report: Report,
    shutdown: Shutdown,
    /// `leasehold_worker_runs_held`, once a run has been started.
    runs_held: Option<metrics::Gauge>,
}

impl Held {
    /// Executes a run in a task of its own: claimed by a claim answered at `claimed_at`, whose
    /// span is `batch` when traces are on.
    fn start(
        &mut self,
        shared: &Arc<Shared>,
        run: ClaimedRun,
        lease: RunLease,
        claimed_at: Instant,
        batch: Option<SpanContext>,
    ) {
        let shared = Arc::clone(shared);
        let shutdown = self.shutdown.clone();
        self.runs_held
            .get_or_insert_with(|| shared.metrics.runs_held.clone())
            .increment(1.0);
        // The lease is forgotten when `execute` drops it. Boxed where it is made: the run's
        // future is kilobytes, and the spawn would otherwise copy it several times over.
        self.tasks.spawn(Box::pin(async move {
            execute::execute(&shared, run, lease, shutdown, claimed_at, batch).await
        }));
    }

    /// Waits for every run to leave; cancel-safe, as each one is collected when it leaves.
    async fn join_all(&mut self) {
        while let Some(done) = self.tasks.join_next().await {
            self.collect(done);
        }
    }

    fn collect(&mut self, done: Result<Outcome, tokio::task::JoinError>) {
        if let Some(runs_held) = &self.runs_held {
            runs_held.decrement(1.0);
        }
        match done {
            Ok(outcome) => self.report.outcomes.push(outcome),
            Err(e) => tracing::error!(error = %e, "a run task panicked"),
        }
    }
}

/// Counts a claim that answered with `claimed` after `took`.
fn record_claim(metrics: &WorkerMetrics, claimed: &[ClaimedRun], took: Duration) {
    metrics.claimed_runs.increment(claimed.len() as u64);
    #[allow(clippy::cast_precision_loss)] // a claim's batch is far below 2^52
    metrics.claim_batch_size.record(claimed.len() as f64);
    metrics.claim_duration.record(took.as_secs_f64());
    for run in claimed {
        metrics.claim_wait.record(run.waited.as_secs_f64());
    }
}

/// The span of a claim statement that took `claimed` runs (of `requested`) and answered after
/// `took`: the root of a trace of its own, which each claimed run's span links to, since one
/// claim serves many runs' traces. A claim that took nothing leaves no span; with traces off
/// nothing is made.
fn claim_span(
    took: Duration,
    claimed: usize,
    requested: usize,
    claimant: &ClaimantId,
) -> Option<SpanContext> {
    if claimed == 0 || !leasehold_telemetry::enabled() {
        return None;
    }
    let ended = SystemTime::now();
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    leasehold_telemetry::context::ended_root_span(
        "claim",
        ended.checked_sub(took).unwrap_or(ended),
        ended,
        vec![
            KeyValue::new("claimant", claimant.0.clone()),
            KeyValue::new("runs_claimed", count(claimed)),
            KeyValue::new("runs_requested", count(requested)),
        ],
    )
}

/// Whether to claim now, with `free` of `capacity` slots free. A claim per finished run would
/// cost a round trip per run under load: after a claim came back full (`queue_had_more`), the
/// next waits until a quarter of the capacity is free. A wake-up or the poll (`woken`) claims
/// whatever is free.
fn time_to_claim(free: usize, capacity: usize, woken: bool, queue_had_more: bool) -> bool {
    free > 0 && (woken || (queue_had_more && free >= (capacity / 4).max(1)))
}

async fn wait_for_wakeup(wakeups: Option<&store::Wakeups>) {
    match wakeups {
        Some(w) => w.notified().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::time_to_claim;

    #[test]
    fn a_busy_worker_claims_in_quarters_and_a_woken_one_claims_what_is_free() {
        // Nothing free: never.
        assert!(!time_to_claim(0, 16, true, true));
        // Woken (a NOTIFY, the poll, the first pass): whatever is free.
        assert!(time_to_claim(1, 16, true, false));
        // The last claim came back full: more is queued, but wait for a quarter.
        assert!(!time_to_claim(3, 16, false, true));
        assert!(time_to_claim(4, 16, false, true));
        // The queue was drained: wait for a wake-up, however much is free.
        assert!(!time_to_claim(16, 16, false, false));
        // A capacity under four claims one at a time.
        assert!(time_to_claim(1, 3, false, true));
    }
}
