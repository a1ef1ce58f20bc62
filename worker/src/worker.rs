//! The worker loop: claim up to free capacity, execute, and hand runs back on shutdown.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::store::{self, Store, WorkerInfo};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::execute::{self, Outcome, Shared, Shutdown};
use crate::handler::Registry;
use crate::keeper::LeaseKeeper;

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
}

impl Worker {
    /// A worker with a checked config.
    pub fn new(store: Store, registry: Registry, config: Config) -> Self {
        Self {
            store,
            registry,
            config,
        }
    }

    /// Runs until `shutdown` is cancelled (or an operator drains the worker), then stops
    /// claiming, lets running nodes finish within the grace period, hands every run still held
    /// back to the queue, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<Report, store::Error> {
        let info = WorkerInfo {
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
            handlers: self.registry.kinds(),
        };
        self.store.register_worker(&info).await?;
        tracing::info!(claimant = %self.config.claimant_id, capacity = self.config.capacity, kinds = ?info.handlers, "worker started");

        let drain_requested = CancellationToken::new();
        let keeper = LeaseKeeper::new(self.store.clone(), &self.config, drain_requested.clone());
        let leases = keeper.handle();
        let keeper_stop = CancellationToken::new();
        let keeper_task = tokio::spawn(keeper.run(keeper_stop.clone()));
        let wakeups = self.config.listen.then(|| self.store.listen_queued());
        let shared = Arc::new(Shared::new(
            self.store.clone(),
            self.registry.clone(),
            self.config.node_concurrency,
        ));
        let run_shutdown = Shutdown {
            drain: CancellationToken::new(),
            now: CancellationToken::new(),
        };
        let mut runs: JoinSet<Outcome> = JoinSet::new();
        let mut report = Report::default();

        // A fresh future each time it is awaited: a signal or an operator's drain.
        let stopping = || async {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = drain_requested.cancelled() => {}
            }
        };
        let mut woken = true;
        let mut queue_had_more = false;
        // A deadline, not a fresh sleep per pass: runs finishing often must not put the poll off.
        let mut next_poll = Instant::now();
        loop {
            let free = self.config.capacity.saturating_sub(runs.len());
            let mut claim_failed = false;
            if time_to_claim(free, self.config.capacity, woken, queue_had_more) {
                woken = false;
                let requested_at = Instant::now();
                let claim =
                    self.store
                        .claim_runs(&self.config.claimant_id, free, self.config.lease);
                // A claim stuck on a dead connection must not keep a shutdown from starting; one
                // that answers soon after the signal keeps its runs, which are then handed back.
                let abandon = async {
                    stopping().await;
                    tokio::time::sleep(CLAIM_ABANDON_AFTER_STOP).await;
                };
                let claimed = tokio::select! {
                    claimed = claim => claimed,
                    () = abandon => break,
                };
                match claimed {
                    Ok(claimed) => {
                        queue_had_more = claimed.len() == free;
                        report.claimed += claimed.len();
                        for run in claimed {
                            let lease = leases.hold(run.claim, requested_at);
                            let shared = Arc::clone(&shared);
                            let run_shutdown = run_shutdown.clone();
                            runs.spawn(async move {
                                let claim = run.claim;
                                // The lease is forgotten when `execute` drops it.
                                let outcome =
                                    execute::execute(&shared, run, lease, run_shutdown).await;
                                tracing::debug!(run_id = %claim.run_id(), ?outcome, "run left the worker");
                                outcome
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "claim failed");
                        claim_failed = true;
                    }
                }
                next_poll = Instant::now()
                    + if claim_failed {
                        CLAIM_RETRY_DELAY
                    } else {
                        self.config.poll_interval
                    };
            }
            let full = runs.len() >= self.config.capacity;
            tokio::select! {
                () = stopping() => break,
                Some(done) = runs.join_next() => {
                    collect(&mut report, done);
                    while let Some(done) = runs.try_join_next() {
                        collect(&mut report, done);
                    }
                }
                () = wait_for_wakeup(wakeups.as_ref()), if !full && !claim_failed => woken = true,
                () = tokio::time::sleep_until(next_poll), if !full => woken = true,
            }
        }

        if drain_requested.is_cancelled() {
            tracing::info!("drain requested by an operator");
        }
        tracing::info!(held = runs.len(), grace = ?self.config.shutdown_grace, "stopping: no more claims; letting running nodes finish");
        run_shutdown.drain.cancel();
        let grace = tokio::time::sleep(self.config.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                done = runs.join_next() => match done {
                    Some(done) => collect(&mut report, done),
                    None => break,
                },
                () = &mut grace, if !run_shutdown.now.is_cancelled() => {
                    tracing::info!(held = runs.len(), "grace period over: stopping nodes and handing runs back");
                    run_shutdown.now.cancel();
                }
            }
            if run_shutdown.now.is_cancelled() {
                let deadline = tokio::time::sleep(HAND_BACK_DEADLINE);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        done = runs.join_next() => match done {
                            Some(done) => collect(&mut report, done),
                            None => break,
                        },
                        () = &mut deadline => {
                            tracing::warn!(held = runs.len(), "hand-back deadline passed; the reaper will requeue the rest");
                            runs.abort_all();
                            break;
                        }
                    }
                }
                break;
            }
        }
        keeper_stop.cancel();
        let _ = keeper_task.await;
        if let Err(e) = self.store.deregister_worker(&self.config.claimant_id).await {
            tracing::warn!(error = %e, "could not remove the worker's row");
        }
        tracing::info!(claimed = report.claimed, "worker stopped");
        Ok(report)
    }
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

fn collect(report: &mut Report, done: Result<Outcome, tokio::task::JoinError>) {
    match done {
        Ok(outcome) => report.outcomes.push(outcome),
        Err(e) => tracing::error!(error = %e, "a run task panicked"),
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
