//! The worker's settings, with named defaults, checked when built.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use leasehold_core::ids::ClaimantId;
use leasehold_core::lease;
use leasehold_core::routing::DEFAULT_QUEUE;

use crate::runtime_context::{MissingContext, RuntimeContext};

/// Runs a worker holds at once unless told otherwise.
pub const CAPACITY_DEFAULT: usize = 16;
/// Nodes of one run executed at once unless told otherwise.
pub const NODE_CONCURRENCY_DEFAULT: usize = 8;
/// Polling fallback unless told otherwise.
pub const POLL_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Database connections in a worker's pool unless told otherwise.
pub const POOL_SIZE_DEFAULT: usize = 8;
/// Time running nodes get to finish on shutdown unless told otherwise; below Kubernetes' default
/// 30 s termination grace, so the hand-back happens before SIGKILL.
pub const SHUTDOWN_GRACE_DEFAULT: Duration = Duration::from_secs(25);

/// The shortest bound on a worker's statements, whatever its lease.
pub const STATEMENT_TIMEOUT_MIN: Duration = Duration::from_secs(1);

/// How a worker claims, keeps and gives back runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This process's identity in leases; unique per process start.
    pub claimant_id: ClaimantId,
    /// Runs held at once; each claim asks for the free part of it.
    pub capacity: usize,
    /// Nodes of one run executed at once.
    pub node_concurrency: usize,
    /// Lease length; clamped to [`lease::LEASE_MIN`]..=[`lease::LEASE_MAX`].
    pub lease: Duration,
    /// Time between heartbeat rounds; a third of the lease unless told otherwise.
    pub heartbeat_interval: Duration,
    /// Polling fallback for when LISTEN/NOTIFY misses a wake-up; also the only mechanism when
    /// `listen` is off.
    pub poll_interval: Duration,
    /// Whether to listen (on one connection of its own) for NOTIFY wake-ups when runs are
    /// queued, and for a user's cancel or pause of a run the worker holds, which then stops the
    /// run's nodes at once. Without it, cancels and pauses land at the next heartbeat.
    pub listen: bool,
    /// Time running nodes get to finish after a shutdown signal, before the worker stops them
    /// and hands their runs back.
    pub shutdown_grace: Duration,
    /// The queues it claims runs from.
    pub queues: BTreeSet<String>,
    /// Its labels, which nodes may require.
    pub labels: BTreeMap<String, String>,
    /// The context it holds for runs that require it.
    pub runtime_context: RuntimeContext,
}

/// A setting out of its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Capacity or node concurrency of zero would never run anything.
    #[error("{field} must be at least 1")]
    Zero {
        /// The setting.
        field: &'static str,
    },
    /// A heartbeat no more often than the lease lets every lease expire.
    #[error(
        "heartbeat interval {heartbeat:?} must be shorter than two fifths of the lease {lease:?}"
    )]
    HeartbeatTooSlow {
        /// The interval asked for.
        heartbeat: Duration,
        /// The (clamped) lease.
        lease: Duration,
    },
    /// A zero interval would spin.
    #[error("{field} must be at least 10 ms")]
    TooShort {
        /// The setting.
        field: &'static str,
    },
    /// A `--context` name without a value in the environment.
    #[error(transparent)]
    MissingContext(#[from] MissingContext),
}

impl Config {
    /// Defaults for a claimant.
    pub fn new(claimant_id: ClaimantId) -> Self {
        Self {
            claimant_id,
            capacity: CAPACITY_DEFAULT,
            node_concurrency: NODE_CONCURRENCY_DEFAULT,
            lease: lease::LEASE_DEFAULT,
            heartbeat_interval: lease::LEASE_DEFAULT / 3,
            poll_interval: POLL_INTERVAL_DEFAULT,
            listen: true,
            shutdown_grace: SHUTDOWN_GRACE_DEFAULT,
            queues: BTreeSet::from([DEFAULT_QUEUE.to_owned()]),
            labels: BTreeMap::new(),
            runtime_context: RuntimeContext::default(),
        }
    }

    /// Sets the lease and, unless set after, a heartbeat of a third of it.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease::clamp(lease);
        self.heartbeat_interval = self.lease / 3;
        self
    }

    /// The name of the worker's database sessions, as `pg_stat_activity` shows them.
    pub fn application_name(&self) -> String {
        format!("leasehold-worker/{}", self.claimant_id)
    }

    /// The bound on each of the worker's statements: a third of the lease, so that a statement
    /// stuck behind a lock fails while the lease still leaves time to retry it, and at least
    /// [`STATEMENT_TIMEOUT_MIN`] so that a short lease does not cut off ordinary writes.
    pub fn statement_timeout(&self) -> Duration {
        (self.lease / 3).max(STATEMENT_TIMEOUT_MIN)
    }

    /// Clamps the lease and checks every bound.
    pub fn validated(mut self) -> Result<Self, ConfigError> {
        self.lease = lease::clamp(self.lease);
        if self.capacity == 0 {
            return Err(ConfigError::Zero { field: "capacity" });
        }
        if self.node_concurrency == 0 {
            return Err(ConfigError::Zero {
                field: "node concurrency",
            });
        }
        let min = Duration::from_millis(10);
        if self.heartbeat_interval < min {
            return Err(ConfigError::TooShort {
                field: "heartbeat interval",
            });
        }
        if self.poll_interval < min {
            return Err(ConfigError::TooShort {
                field: "poll interval",
            });
        }
        // The self-fence stops runs a fifth of a lease before expiry; a heartbeat slower than
        // two fifths of the lease would self-fence every run after one missed beat.
        if self.heartbeat_interval * 5 >= self.lease * 2 {
            return Err(ConfigError::HeartbeatTooSlow {
                heartbeat: self.heartbeat_interval,
                lease: self.lease,
            });
        }
        Ok(self)
    }

    /// How long before a lease's expiry the worker stops a run it could not renew: a fifth of
    /// the lease, so that a stopped node is dead before another worker can claim the run.
    pub fn self_fence_margin(&self) -> Duration {
        self.lease / 5
    }
}

/// A claimant id unique per process start: host, pid and a random suffix.
pub fn default_claimant_id() -> ClaimantId {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".to_owned());
    ClaimantId(format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::new(ClaimantId::from("w"))
    }

    #[test]
    fn defaults_are_valid() {
        let c = config().validated().expect("valid");
        assert_eq!(c.lease, Duration::from_secs(30));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.self_fence_margin(), Duration::from_secs(6));
    }

    #[test]
    fn lease_is_clamped_and_heartbeat_follows() {
        let c = config().with_lease(Duration::from_secs(1));
        assert_eq!(c.lease, lease::LEASE_MIN);
        assert_eq!(c.heartbeat_interval, lease::LEASE_MIN / 3);
        let c = config().with_lease(Duration::from_secs(100_000));
        assert_eq!(c.lease, lease::LEASE_MAX);
    }

    #[test]
    fn bad_settings_are_refused() {
        let zero = Config {
            capacity: 0,
            ..config()
        };
        assert_eq!(
            zero.validated(),
            Err(ConfigError::Zero { field: "capacity" })
        );
        let slow = Config {
            heartbeat_interval: Duration::from_secs(20),
            ..config()
        };
        assert!(matches!(
            slow.validated(),
            Err(ConfigError::HeartbeatTooSlow { .. })
        ));
        let spin = Config {
            poll_interval: Duration::ZERO,
            ..config()
        };
        assert!(matches!(
            spin.validated(),
            Err(ConfigError::TooShort { .. })
        ));
    }

    #[test]
    fn claimant_ids_differ_per_call() {
        assert_ne!(default_claimant_id(), default_claimant_id());
    }
}
