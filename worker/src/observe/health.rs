//! A worker's probes. `/livez` says whether its loops still turn (the lease keeper ticked
//! recently): a wedged worker is restarted. `/readyz` says whether it takes work (registered,
//! the database reachable, not draining): a rollout waits for it. A database outage makes a
//! worker not ready but leaves it alive, so that an orchestrator does not restart every worker
//! while the database fails over.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use leasehold_core::store::outage;

/// How long the keeper may go without ticking before the worker is reported dead. The keeper
/// checks its leases every 50 ms: ten seconds without a tick is a wedged runtime, not a load.
pub const KEEPER_STALL_AFTER: Duration = Duration::from_secs(10);

/// A worker's standing, updated by its loops with single atomic stores.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds from `started` to the keeper's last tick, plus one; zero before the first.
    keeper_tick: AtomicU64,
    registered: AtomicBool,
    draining: AtomicBool,
    /// How long the keeper may go without ticking; [`KEEPER_STALL_AFTER`] unless told.
    stall_after: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// A worker that has not registered yet.
    pub fn new() -> Self {
        Self::with_stall_after(KEEPER_STALL_AFTER)
    }

    /// A worker reported dead once its keeper has not ticked for `stall_after`.
    pub fn with_stall_after(stall_after: Duration) -> Self {
        Self {
            started: Instant::now(),
            keeper_tick: AtomicU64::new(0),
            registered: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            stall_after,
        }
    }

    /// The lease keeper ticked now.
    pub fn keeper_ticked(&self) {
        let since = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.keeper_tick.store(since + 1, Ordering::Relaxed);
    }

    /// The worker registered itself and claims.
    pub fn registered(&self) {
        self.registered.store(true, Ordering::Relaxed);
    }

    /// The worker stopped claiming: drained by an operator, or shutting down.
    pub fn draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// `/livez`: `Ok` with what is fine, or `Err` with what is wrong.
    pub fn live(&self) -> Result<String, String> {
        let tick = self.keeper_tick.load(Ordering::Relaxed);
        let last_tick = tick.checked_sub(1).map(Duration::from_millis);
        liveness(last_tick, self.started.elapsed(), self.stall_after)
    }

    /// `/readyz`: `Ok` with what is fine, or `Err` with what is wrong.
    pub fn ready(&self) -> Result<String, String> {
        readiness(
            self.registered.load(Ordering::Relaxed),
            outage::DATABASE.is_ongoing(),
            self.draining.load(Ordering::Relaxed),
        )
    }
}

/// Whether the worker is alive at `now` (time since start), its keeper last ticking at
/// `last_tick` (`None`: not started yet, which a worker waiting for its database at start is;
/// alive, since restarting it would not bring the database).
pub fn liveness(
    last_tick: Option<Duration>,
    now: Duration,
    stall_after: Duration,
) -> Result<String, String> {
    let Some(last_tick) = last_tick else {
        return Ok("alive: starting, the lease keeper has not started yet".to_owned());
    };
    let since = now.saturating_sub(last_tick);
    if since > stall_after {
        return Err(format!(
            "not alive: the lease keeper last ticked {} ms ago (more than {} s)",
            since.as_millis(),
            stall_after.as_secs()
        ));
    }
    Ok(format!(
        "alive: the lease keeper ticked {} ms ago",
        since.as_millis()
    ))
}

/// Whether the worker is ready: registered, its database reachable as far as its last call
/// knows, and not draining.
pub fn readiness(registered: bool, outage: bool, draining: bool) -> Result<String, String> {
    if draining {
        return Err("not ready: draining".to_owned());
    }
    if !registered {
        return Err("not ready: not registered yet".to_owned());
    }
    if outage {
        return Err("not ready: the database is unreachable".to_owned());
    }
    Ok("ready".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_while_the_keeper_ticks_or_before_it_starts() {
        let s = Duration::from_secs;
        assert!(
            liveness(None, s(600), s(10)).is_ok(),
            "waiting for the database"
        );
        assert!(liveness(Some(s(100)), s(105), s(10)).is_ok());
        assert!(
            liveness(Some(s(100)), s(110), s(10)).is_ok(),
            "bound inclusive"
        );
        let dead = liveness(Some(s(100)), s(111), s(10)).expect_err("stalled");
        assert!(dead.contains("11000 ms ago"), "{dead}");
    }

    #[test]
    fn ready_only_registered_reachable_and_not_draining() {
        assert_eq!(readiness(true, false, false), Ok("ready".to_owned()));
        assert!(
            readiness(false, false, false)
                .unwrap_err()
                .contains("registered")
        );
        assert!(
            readiness(true, true, false)
                .unwrap_err()
                .contains("database")
        );
        assert!(
            readiness(true, false, true)
                .unwrap_err()
                .contains("draining")
        );
        assert!(
            readiness(true, true, true)
                .unwrap_err()
                .contains("draining")
        );
    }

    #[test]
    fn a_fresh_worker_is_alive_and_not_ready_until_registered() {
        let health = Health::new();
        assert!(health.live().is_ok());
        assert!(health.ready().is_err());
        health.keeper_ticked();
        assert!(health.live().expect("ticked").contains("ticked"));
        health.registered();
        health.draining();
        assert!(health.ready().unwrap_err().contains("draining"));
    }
}
