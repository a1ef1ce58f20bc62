//! The lease keeper: one batched heartbeat per tick for every run the process holds, and the
//! self-fence that stops a run whose lease could not be renewed in time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use leasehold_core::ids::RunId;
use leasehold_core::run::RunStatus;
use leasehold_core::store::{Claim, StopNotice, StopNotices, Store, WorkerInfo, outage};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::observe::Health;

/// How often held leases are compared with their self-fence deadlines. Short against the
/// margin (a fifth of a lease of at least five seconds), so a fence is late by at most this.
const FENCE_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// What an executing run learns from the keeper. Dropping it ends the keeping: however the run
/// leaves the worker, a panic in its executor included, its lease is no longer renewed, so it
/// runs out and the reaper recovers the run instead of a live heartbeat holding it forever.
pub(crate) struct RunLease {
    /// Cancelled when the lease is gone (lost, or not renewable in time): stop at once and
    /// write nothing more for the run.
    pub stop: CancellationToken,
    /// True once a user asked the run to pause: start no new node, settle when idle.
    pub pausing: watch::Receiver<bool>,
    _kept: Kept,
}

/// Forgets its claim when dropped.
struct Kept {
    keeper: KeeperHandle,
    claim: Claim,
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.keeper.forget(self.claim);
    }
}

struct Held {
    claim: Claim,
    stop: CancellationToken,
    pausing: watch::Sender<bool>,
    /// The instant, by this process's monotonic clock, from which the lease may have expired
    /// less the safety margin. Measured from when the renewing request was sent, which is no
    /// later than the database's `now()` that set the expiry.
    fence_at: Instant,
}

/// A cheap handle to register and unregister held runs.
#[derive(Clone)]
pub(crate) struct KeeperHandle {
    held: Arc<Mutex<HashMap<RunId, Held>>>,
    lease: Duration,
    margin: Duration,
}

impl KeeperHandle {
    /// Starts keeping a claim whose request was sent at `requested_at`.
    pub fn hold(&self, claim: Claim, requested_at: Instant) -> RunLease {
        let stop = CancellationToken::new();
        let (pausing_tx, pausing) = watch::channel(false);
        let held = Held {
            claim,
            stop: stop.clone(),
            pausing: pausing_tx,
            fence_at: requested_at + self.lease - self.margin,
        };
        self.lock().insert(claim.run_id(), held);
        RunLease {
            stop,
            pausing,
            _kept: Kept {
                keeper: self.clone(),
                claim,
            },
        }
    }

    /// Stops keeping a claim: its run completed, stopped, or was handed back. A later claim of
    /// the same run (a retry this worker took again) is left alone.
    fn forget(&self, claim: Claim) {
        let mut held = self.lock();
        if held.get(&claim.run_id()).is_some_and(|h| h.claim == claim) {
            held.remove(&claim.run_id());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, Held>> {
        // The map stays consistent under a panic elsewhere: every update is one insert or remove.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn claims(&self) -> Vec<Claim> {
        self.lock().values().map(|h| h.claim).collect()
    }

    /// The claims held on these runs; runs this worker does not hold are left out.
    fn claims_of(&self, run_ids: &[RunId]) -> Vec<Claim> {
        let held = self.lock();
        run_ids
            .iter()
            .filter_map(|run_id| held.get(run_id).map(|h| h.claim))
            .collect()
    }

    /// Stops every run whose lease may expire within the margin.
    fn fence_overdue(&self, now: Instant) {
        self.lock().retain(|run_id, held| {
            if now < held.fence_at {
                return true;
            }
            tracing::warn!(%run_id, epoch = held.claim.epoch().0, "lease not renewed in time; stopping the run (self-fence)");
            metrics::counter!("leasehold_worker_self_fences_total").increment(1);
            held.stop.cancel();
            false
        });
    }
}

/// Keeps the leases of a worker's runs.
pub(crate) struct LeaseKeeper {
    store: Store,
    /// What the worker registered: registered again if its row is gone.
    info: WorkerInfo,
    heartbeat_interval: Duration,
    handle: KeeperHandle,
    drain_requested: CancellationToken,
    health: Arc<Health>,
}

impl LeaseKeeper {
    pub fn new(
        store: Store,
        config: &Config,
        info: WorkerInfo,
        drain_requested: CancellationToken,
        health: Arc<Health>,
    ) -> Self {
        Self {
            store,
            info,
            heartbeat_interval: config.heartbeat_interval,
            handle: KeeperHandle {
                held: Arc::default(),
                lease: config.lease,
                margin: config.self_fence_margin(),
            },
            drain_requested,
            health,
        }
    }

    pub fn handle(&self) -> KeeperHandle {
        self.handle.clone()
    }

    /// Beats and fences until `stop` is cancelled. With `notices`, a cancel or pause of a held
    /// run is acted on at once: its lease is renewed out of turn, which tells the run that its
    /// lease is lost (a cancel) or that it is pausing, as a heartbeat would. The heartbeat stays
    /// the fallback for a missed notice.
    pub async fn run(self, stop: CancellationToken, notices: Option<StopNotices>) {
        // Its lines about a run (a lost lease, a self-fence) name the claimant through the span,
        // and the claim by their own fields.
        let span = tracing::info_span!("keeper", claimant = %self.info.claimant_id);
        self.keep(stop, notices).instrument(span).await;
    }

    async fn keep(self, stop: CancellationToken, notices: Option<StopNotices>) {
        let fence = {
            let handle = self.handle.clone();
            let stop = stop.clone();
            let health = Arc::clone(&self.health);
            async move {
                let mut tick = tokio::time::interval(FENCE_CHECK_INTERVAL);
                while stop.run_until_cancelled(tick.tick()).await.is_some() {
                    handle.fence_overdue(Instant::now());
                    // `/livez` reads this: the keeper's loop still turns.
                    health.keeper_ticked();
                }
            }
        };
        let beat = async {
            let mut tick = tokio::time::interval(self.heartbeat_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while stop.run_until_cancelled(tick.tick()).await.is_some() {
                // Bounded so that a hung database delays the next round, not every round after.
                if tokio::time::timeout(self.heartbeat_interval, self.beat())
                    .await
                    .is_err()
                {
                    // A database that hangs is as unavailable as one that refuses: the
                    // outage log says so once, and `/readyz` turns not ready until a call lands.
                    outage::DATABASE
                        .failed(&"the heartbeat round did not answer within its interval");
                }
            }
        };
        let react = async {
            let Some(mut notices) = notices else {
                return;
            };
            while let Some(first) = stop.run_until_cancelled(notices.next()).await {
                let claims = self.noticed(first, &mut notices);
                if claims.is_empty() {
                    continue;
                }
                if tokio::time::timeout(self.heartbeat_interval, self.renew(&claims))
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        runs = claims.len(),
                        "renewal for stop notices did not answer within a heartbeat interval"
                    );
                }
            }
        };
        tokio::join!(fence, beat, react);
    }

    /// The claims to renew for `first` and every notice already waiting behind it: a burst of
    /// cancels costs one statement, not one per run. A missed notice renews every claim.
    fn noticed(&self, first: StopNotice, notices: &mut StopNotices) -> Vec<Claim> {
        let mut run_ids = Vec::new();
        let mut notice = Some(first);
        while let Some(n) = notice {
            match n {
                StopNotice::Run(run_id) => run_ids.push(run_id),
                StopNotice::Missed => return self.handle.claims(),
            }
            notice = notices.try_next();
        }
        self.handle.claims_of(&run_ids)
    }

    async fn beat(&self) {
        self.renew(&self.handle.claims()).await;
        match self.store.worker_heartbeat(&self.info.claimant_id).await {
            Ok(Some(true)) => self.drain_requested.cancel(),
            Ok(Some(false)) => {}
            // The leader prunes the rows of workers silent for long (a process stopped for a
            // day, say); one that beats again registers again, so that it is listed and counts
            // as a worker that can take runs.
            Ok(None) => {
                tracing::warn!(
                    "the worker's row was gone (pruned after a long silence); registering again"
                );
                if let Err(e) = self.store.register_worker(&self.info).await {
                    tracing::warn!(error = %e, "registering the worker again failed");
                }
            }
            Err(e) => {
                if let Some(e) = outage::DATABASE.record(&Err::<(), _>(e)) {
                    tracing::warn!(error = %e, "the worker's heartbeat failed");
                }
            }
        }
    }

    /// Renews `claims` in one statement: moves the fence deadline of each renewed one and tells
    /// its run whether it is pausing, and stops the runs whose claims are lost.
    async fn renew(&self, claims: &[Claim]) {
        let sent_at = Instant::now();
        let beaten = self.store.heartbeat(claims, self.handle.lease).await;
        if let Some(e) = outage::DATABASE.record(&beaten) {
            tracing::warn!(error = %e, "heartbeat failed; leases run on until renewed");
        }
        let Ok(round) = beaten else { return };
        metrics::counter!("leasehold_worker_lease_renewals_total")
            .increment(round.renewed.len() as u64);
        let mut held = self.handle.lock();
        for renewed in round.renewed {
            let current = held
                .get_mut(&renewed.claim.run_id())
                .filter(|h| h.claim == renewed.claim);
            if let Some(h) = current {
                h.fence_at = sent_at + self.handle.lease - self.handle.margin;
                // A claim never leaves pausing but for the run leaving the worker, so the flag
                // only rises: an older round answering late cannot lower it.
                if renewed.status == RunStatus::Pausing && !*h.pausing.borrow() {
                    h.pausing.send_replace(true);
                }
            }
        }
        for lost in round.lost {
            let current = held.get(&lost.run_id()).is_some_and(|h| h.claim == lost);
            if let Some(h) = current.then(|| held.remove(&lost.run_id())).flatten() {
                tracing::info!(run_id = %lost.run_id(), epoch = lost.epoch().0, "lease lost; stopping the run");
                metrics::counter!("leasehold_worker_lease_losses_total").increment(1);
                h.stop.cancel();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use leasehold_core::ids::{ClaimantId, TenantId};
    use leasehold_core::spec;
    use leasehold_core::store::{StartRun, Trigger};
    use leasehold_testkit::TestDb;

    use super::*;

    /// A real claim: only the store makes one.
    async fn claimed(store: &Store) -> Claim {
        let tenant = TenantId::default();
        let spec = spec::parse_yaml("id: kept\nnodes:\n  - {id: a, kind: noop}\n").expect("spec");
        store
            .create_automation(&tenant, &spec)
            .await
            .expect("automation");
        store
            .start_run(&StartRun {
                tenant,
                automation_id: spec.id.clone(),
                trigger: Trigger::Api,
                actor: None,
                inputs: serde_json::json!({}),
                idempotency_key: None,
                priority: 0,
                concurrency_key: None,
                trace: None,
                queue: None,
            })
            .await
            .expect("start");
        let runs = store
            .claim_runs(&ClaimantId::from("w"), 1, Duration::from_secs(30))
            .await
            .expect("claim");
        runs.first().expect("one run claimed").claim
    }

    #[tokio::test]
    async fn a_run_whose_executor_panics_is_no_longer_kept() {
        let db = TestDb::new().await;
        let store = Store::connect_unchecked(db.url(), 2).expect("pool");
        store.migrate().await.expect("migrate");
        let claim = claimed(&store).await;
        let keeper = KeeperHandle {
            held: Arc::default(),
            lease: Duration::from_secs(30),
            margin: Duration::from_secs(6),
        };

        let lease = keeper.hold(claim, Instant::now());
        assert_eq!(keeper.claims(), vec![claim]);
        let executor = tokio::spawn(async move {
            let _lease = lease;
            panic!("a bug in the executor");
        });
        assert!(executor.await.expect_err("it panicked").is_panic());
        assert!(
            keeper.claims().is_empty(),
            "a panicked run's lease would be renewed forever"
        );

        // A run that leaves normally is forgotten the same way.
        let lease = keeper.hold(claim, Instant::now());
        assert_eq!(keeper.claims(), vec![claim]);
        drop(lease);
        assert!(keeper.claims().is_empty());
    }
}
