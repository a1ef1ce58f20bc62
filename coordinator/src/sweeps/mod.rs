//! The sweeps that keep runs moving, run only by the coordinator that holds the leader lease.
//!
//! # Layout
//! - [`leader`]: the loop that acquires and renews the leader lease and runs the sweeps while,
//!   and only while, it leads.
//! - [`reaper`]: runs whose lease expired go back to the queue, are stale-reaped, or are blocked
//!   as poison.
//! - [`pausing`]: pausing runs whose holder died are settled into `paused`.
//! - [`auto_resume`]: stale-reaped runs are requeued within a window, up to a cap.
//! - [`stale_gates`]: approval gates pending too long are marked stale, once.
//! - [`deadlines`]: runs past their start or run deadline fail.
//! - [`workers`]: the rows of workers silent for long are removed.
//! - [`retention`]: finished runs are compacted, then deleted, past their tenant's windows.
//! - [`partitions`]: monthly event partitions are created ahead of time, and those of months no
//!   run needs any more are dropped.
//! - [`schedules`]: automations' cron schedules fire, each fire time once.
//! - [`counts`]: the finished runs' counts, kept by triggers, folded for Stats.
//! - [`queue`]: the queue's standing, published as gauges (reads only).
//!
//! Each sweep reads candidates, decides for each with a pure rule that takes `now`, and applies
//! each kind of decision with one conditional statement of the store, fenced on the leadership.
//! A pass returns an outcome, which the loop logs and tests assert on. Each sweep is a [`Sweep`];
//! the leader runs the list `SWEEPS`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use leasehold_core::lease;
use leasehold_core::retention::{RetentionError, RetentionWindows};
use leasehold_core::store::{self, Leadership, Store};
use tokio_util::sync::CancellationToken;

pub mod auto_resume;
pub mod counts;
pub mod deadlines;
pub mod leader;
pub mod partitions;
pub mod pausing;
pub mod queue;
pub mod reaper;
pub mod retention;
pub mod schedules;
pub mod stale_gates;
pub mod workers;

pub use auto_resume::AutoResumeOutcome;
pub use counts::CountsOutcome;
pub use deadlines::DeadlinesOutcome;
pub use partitions::PartitionsOutcome;
pub use pausing::PausingOutcome;
pub use reaper::ReapOutcome;
pub use retention::RetentionOutcome;
pub use schedules::SchedulesOutcome;
pub use stale_gates::StaleGatesOutcome;
pub use workers::WorkersOutcome;

/// The leader lease's role name unless configured otherwise.
pub const LEADER_NAME_DEFAULT: &str = "sweeps";
/// Longest role name the `leader_leases` table takes.
pub const LEADER_NAME_MAX_CHARS: usize = 64;
/// Longest holder id the `leader_leases` table takes.
pub const HOLDER_MAX_CHARS: usize = 256;

/// The leader lease unless configured otherwise; it is renewed every third of it.
pub const LEADER_LEASE_DEFAULT: Duration = Duration::from_secs(15);
/// Shorter leader leases would change hands on an ordinary network hiccup.
pub const LEADER_LEASE_MIN: Duration = Duration::from_secs(1);
/// Longer leader leases would leave the sweeps stopped for too long after a leader dies.
pub const LEADER_LEASE_MAX: Duration = Duration::from_secs(5 * 60);

/// Time between reaper passes unless configured otherwise.
pub const REAPER_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Time between pausing-settlement passes unless configured otherwise.
pub const PAUSING_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Time between auto-resume passes unless configured otherwise.
pub const AUTO_RESUME_INTERVAL_DEFAULT: Duration = Duration::from_secs(5);
/// Time between stale-gate passes unless configured otherwise.
pub const STALE_GATE_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);
/// Time between deadline passes unless configured otherwise: how late past its deadline a run
/// fails, at most (`MIN_RUN_DEADLINE_MS` of the spec is this).
pub const DEADLINE_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Time between worker-pruning passes unless configured otherwise.
pub const WORKER_PRUNE_INTERVAL_DEFAULT: Duration = Duration::from_secs(10 * 60);
/// How long a worker may be silent before its row is removed, unless configured otherwise.
pub const DEAD_WORKER_AFTER_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);
/// Bounds of that silence: longer than any lease (6 hours), so that only workers whose runs the
/// reaper has long settled go.
pub const DEAD_WORKER_AFTER_MIN: Duration = Duration::from_secs(6 * 60 * 60);
/// A year.
pub const DEAD_WORKER_AFTER_MAX: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Time between schedule passes unless configured otherwise: how late after its time a fire
/// starts its run, at most, when all is well.
pub const SCHEDULE_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// How late a fire may be decided and still count as on time, unless configured otherwise: a
/// fire later than this (the leader was down, or changing hands) was missed, and runs only as
/// its schedule's catch-up policy says. Longer than a leader handover.
pub const SCHEDULE_GRACE_DEFAULT: Duration = Duration::from_secs(60);
/// Runs a retention pass compacts or deletes per second at most, unless configured otherwise:
/// about a tenth of a core of the database's (measured at 16,000 runs/s a core), so that
/// claims keep their latency while a backlog is worked off (a million runs in some ten
/// minutes), and well above what a busy installation finishes per second in steady state.
pub const RETENTION_RATE_DEFAULT: u32 = 2_000;
/// Runs one retention statement compacts or deletes, unless configured otherwise. Small: each
/// statement's new row versions and their full-page images go through the WAL that claims'
/// commits flush behind. At the default rate, batches of 100 raised the claims' p99 by 1.5–2.5×
/// where batches of 1,000 did by 2.1× (one run each; bench/README.md): no clear gain, and no
/// loss of throughput, which the rate sets.
pub const RETENTION_BATCH_DEFAULT: usize = 100;
/// Bounds of the retention rate.
pub const RETENTION_RATE_MAX: u32 = 1_000_000;
/// Time between retention passes unless configured otherwise.
pub const RETENTION_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);
/// Time between folds of the run counts unless configured otherwise: how many moves Stats reads
/// unfolded, at most a second's worth.
pub const COUNT_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Time between readings of the queue's standing unless configured otherwise.
pub const QUEUE_INTERVAL_DEFAULT: Duration = Duration::from_secs(5);
/// Time between partition-upkeep passes unless configured otherwise.
pub const PARTITION_INTERVAL_DEFAULT: Duration = Duration::from_secs(60 * 60);
/// Sweeps more often than this would only load the database.
pub const SWEEP_INTERVAL_MIN: Duration = Duration::from_millis(10);
/// Sweeps less often than this would leave work undone for too long.
pub const SWEEP_INTERVAL_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// How long after a stale reap a run may be auto-resumed, unless configured otherwise.
pub const AUTO_RESUME_WINDOW_DEFAULT: Duration = Duration::from_secs(20 * 60);
/// Bounds of the auto-resume window.
pub const AUTO_RESUME_WINDOW_MIN: Duration = Duration::from_secs(1);
/// Past a week, a stale-reaped run is a matter for a person.
pub const AUTO_RESUME_WINDOW_MAX: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Auto-resumes a run may have in its life unless configured otherwise.
pub const AUTO_RESUME_CAP_DEFAULT: u32 = 2;
/// A run that dies more often than this needs a person, whatever the configuration says.
pub const AUTO_RESUME_CAP_MAX: u32 = 100;

/// How long a gate may be pending before it is marked stale, unless configured otherwise.
pub const STALE_GATE_AFTER_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);
/// Bounds of the stale-gate threshold.
pub const STALE_GATE_AFTER_MIN: Duration = Duration::from_secs(60);
/// A year.
pub const STALE_GATE_AFTER_MAX: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Months of event partitions kept created, the current one included, unless configured
/// otherwise.
pub const PARTITION_MONTHS_AHEAD_DEFAULT: u32 = 3;
/// Bounds of the months kept ahead.
pub const PARTITION_MONTHS_AHEAD_MAX: u32 = 36;

/// Runs or gates one pass looks at unless configured otherwise.
pub const BATCH_LIMIT_DEFAULT: usize = 1_000;
/// Larger batches would hold row locks for too long in one statement.
pub const BATCH_LIMIT_MAX: usize = 100_000;
/// Poison limits above this would let a poison run burn workers for hours.
pub const POISON_LIMIT_MAX: u32 = 1_000;

/// The sweeps' settings. Build one with [`Config::default`] and struct update syntax, then
/// check it with [`Config::validated`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The leader lease's role; coordinators sharing it elect one leader among them.
    pub leader_name: String,
    /// How long leadership lasts without renewal: after a leader dies, the sweeps stop for at
    /// most this long. Renewed every third of it.
    pub leader_lease: Duration,
    /// Time between reaper passes: how late an expired lease is noticed, at most.
    pub reaper_interval: Duration,
    /// Unprogressed expiries in a row after which the reaper blocks a run as poison.
    pub poison_limit: u32,
    /// Time between passes that settle pausing runs whose holder died.
    pub pausing_interval: Duration,
    /// Whether stale-reaped runs are requeued without an operator.
    pub auto_resume_enabled: bool,
    /// Time between auto-resume passes.
    pub auto_resume_interval: Duration,
    /// How long after its stale reap a run may still be auto-resumed.
    pub auto_resume_window: Duration,
    /// Auto-resumes a run may have in its life.
    pub auto_resume_cap: u32,
    /// Time between stale-gate passes.
    pub stale_gate_interval: Duration,
    /// How long a gate may be pending before it is marked stale.
    pub stale_gate_after: Duration,
    /// Time between deadline passes: how late past its deadline a run fails, at most.
    pub deadline_interval: Duration,
    /// Time between worker-pruning passes.
    pub worker_prune_interval: Duration,
    /// How long a worker may be silent before its row is removed.
    pub dead_worker_after: Duration,
    /// Time between retention passes.
    pub retention_interval: Duration,
    /// Time between folds of the run counts.
    pub count_interval: Duration,
    /// Time between schedule passes.
    pub schedule_interval: Duration,
    /// How late a fire may be decided and still count as on time.
    pub schedule_grace: Duration,
    /// The retention windows of tenants without their own.
    pub retention: RetentionWindows,
    /// Runs a retention pass compacts or deletes per second, at most.
    pub retention_rate: u32,
    /// Runs one retention statement compacts or deletes.
    pub retention_batch: usize,
    /// Time between partition-upkeep passes; the first pass runs when leadership is taken.
    pub partition_interval: Duration,
    /// Months of event partitions kept created, the current one included.
    pub partition_months_ahead: u32,
    /// Time between readings of the queue's standing for the metrics.
    pub queue_interval: Duration,
    /// Most runs or gates one pass looks at; the rest wait for the next pass.
    pub batch_limit: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            leader_name: LEADER_NAME_DEFAULT.to_owned(),
            leader_lease: LEADER_LEASE_DEFAULT,
            reaper_interval: REAPER_INTERVAL_DEFAULT,
            poison_limit: lease::POISON_LIMIT_DEFAULT,
            pausing_interval: PAUSING_INTERVAL_DEFAULT,
            auto_resume_enabled: true,
            auto_resume_interval: AUTO_RESUME_INTERVAL_DEFAULT,
            auto_resume_window: AUTO_RESUME_WINDOW_DEFAULT,
            auto_resume_cap: AUTO_RESUME_CAP_DEFAULT,
            stale_gate_interval: STALE_GATE_INTERVAL_DEFAULT,
            stale_gate_after: STALE_GATE_AFTER_DEFAULT,
            deadline_interval: DEADLINE_INTERVAL_DEFAULT,
            worker_prune_interval: WORKER_PRUNE_INTERVAL_DEFAULT,
            dead_worker_after: DEAD_WORKER_AFTER_DEFAULT,
            retention_interval: RETENTION_INTERVAL_DEFAULT,
            count_interval: COUNT_INTERVAL_DEFAULT,
            schedule_interval: SCHEDULE_INTERVAL_DEFAULT,
            schedule_grace: SCHEDULE_GRACE_DEFAULT,
            retention: RetentionWindows::default(),
            retention_rate: RETENTION_RATE_DEFAULT,
            retention_batch: RETENTION_BATCH_DEFAULT,
            partition_interval: PARTITION_INTERVAL_DEFAULT,
            partition_months_ahead: PARTITION_MONTHS_AHEAD_DEFAULT,
            queue_interval: QUEUE_INTERVAL_DEFAULT,
            batch_limit: BATCH_LIMIT_DEFAULT,
        }
    }
}

/// A setting out of its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A number or a duration outside its bounds.
    #[error("{field} is {value}; it must be between {min} and {max}")]
    OutOfBounds {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// The least allowed.
        min: String,
        /// The most allowed.
        max: String,
    },
    /// Retention windows that cannot be (`--retention`, `--delete-after`).
    #[error("retention: {0}")]
    Retention(#[from] RetentionError),
    /// A name that is empty or too long.
    #[error("{field} has {chars} characters; it must have 1 to {max}")]
    BadName {
        /// The setting.
        field: &'static str,
        /// Its length.
        chars: usize,
        /// The most allowed.
        max: usize,
    },
}

fn within<T: PartialOrd + Copy + std::fmt::Debug>(
    field: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if min <= value && value <= max {
        Ok(())
    } else {
        Err(ConfigError::OutOfBounds {
            field,
            value: format!("{value:?}"),
            min: format!("{min:?}"),
            max: format!("{max:?}"),
        })
    }
}

fn name(field: &'static str, value: &str, max: usize) -> Result<(), ConfigError> {
    let chars = value.chars().count();
    if (1..=max).contains(&chars) {
        Ok(())
    } else {
        Err(ConfigError::BadName { field, chars, max })
    }
}

impl Config {
    /// The configuration, if every setting is within its bounds.
    pub fn validated(self) -> Result<Self, ConfigError> {
        name("leader_name", &self.leader_name, LEADER_NAME_MAX_CHARS)?;
        within(
            "leader_lease",
            self.leader_lease,
            LEADER_LEASE_MIN,
            LEADER_LEASE_MAX,
        )?;
        for (field, interval) in [
            ("reaper_interval", self.reaper_interval),
            ("pausing_interval", self.pausing_interval),
            ("auto_resume_interval", self.auto_resume_interval),
            ("stale_gate_interval", self.stale_gate_interval),
            ("deadline_interval", self.deadline_interval),
            ("worker_prune_interval", self.worker_prune_interval),
            ("retention_interval", self.retention_interval),
            ("count_interval", self.count_interval),
            ("schedule_interval", self.schedule_interval),
            ("schedule_grace", self.schedule_grace),
            ("partition_interval", self.partition_interval),
            ("queue_interval", self.queue_interval),
        ] {
            within(field, interval, SWEEP_INTERVAL_MIN, SWEEP_INTERVAL_MAX)?;
        }
        within("poison_limit", self.poison_limit, 1, POISON_LIMIT_MAX)?;
        within(
            "auto_resume_window",
            self.auto_resume_window,
            AUTO_RESUME_WINDOW_MIN,
            AUTO_RESUME_WINDOW_MAX,
        )?;
        within(
            "auto_resume_cap",
            self.auto_resume_cap,
            0,
            AUTO_RESUME_CAP_MAX,
        )?;
        within(
            "stale_gate_after",
            self.stale_gate_after,
            STALE_GATE_AFTER_MIN,
            STALE_GATE_AFTER_MAX,
        )?;
        within(
            "dead_worker_after",
            self.dead_worker_after,
            DEAD_WORKER_AFTER_MIN,
            DEAD_WORKER_AFTER_MAX,
        )?;
        within(
            "partition_months_ahead",
            self.partition_months_ahead,
            1,
            PARTITION_MONTHS_AHEAD_MAX,
        )?;
        within("batch_limit", self.batch_limit, 1, BATCH_LIMIT_MAX)?;
        within("retention_rate", self.retention_rate, 1, RETENTION_RATE_MAX)?;
        within("retention_batch", self.retention_batch, 1, BATCH_LIMIT_MAX)?;
        self.retention.validated()?;
        Ok(self)
    }

    /// How often the leader renews its lease: a third of it, so that two renewals in a row may
    /// fail before it runs out.
    pub fn leader_renew_interval(&self) -> Duration {
        self.leader_lease / 3
    }
}

/// What a sweep pass did, for the loop to log and for tests to assert on.
pub trait Outcome: std::fmt::Debug + Default + PartialEq + Send + 'static {
    /// The pass changed nothing: nothing worth logging. By default, every count is zero.
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// What the pass did, by action, as `leasehold_sweep_actions_total` counts it.
    fn actions(&self) -> Vec<(&'static str, u64)>;
}

/// What one pass works with: the store, the leadership it acts under, the settings, and the
/// instant it decides at.
#[derive(Clone, Copy)]
pub struct Pass<'a> {
    /// The store.
    pub store: &'a Store,
    /// The leadership every write of the pass is fenced on.
    pub leader: &'a Leadership,
    /// The settings.
    pub config: &'a Config,
    /// The instant the pass decides at: `None` in production, where the database's clock is
    /// read once per pass; tests pin it to stand on either side of a horizon.
    pub now: Option<DateTime<Utc>>,
}

impl<'a> Pass<'a> {
    /// A pass over `store` under `leader` with `config`, at `now`.
    pub fn new(
        store: &'a Store,
        leader: &'a Leadership,
        config: &'a Config,
        now: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            store,
            leader,
            config,
            now,
        }
    }

    /// The instant the pass decides at: the pinned `now`, else the database's clock, read once
    /// so that the pass's rules and statements agree.
    pub async fn now(&self) -> Result<DateTime<Utc>, store::Error> {
        match self.now {
            Some(now) => Ok(now),
            None => self.store.database_now().await,
        }
    }
}

/// One sweep: its name, how often it runs, and one pass that returns what it did. A sweep reads
/// candidates, decides each with a pure rule, and applies each kind of decision with one store
/// statement fenced on the leadership.
pub trait Sweep: Send + Sync + 'static {
    /// The name the leader logs its passes under.
    const NAME: &'static str;
    /// What a pass did.
    type Outcome: Outcome;
    /// Time between passes, from the settings.
    fn interval(config: &Config) -> Duration;
    /// One pass.
    fn run_once(
        &self,
        pass: Pass<'_>,
    ) -> impl Future<Output = Result<Self::Outcome, store::Error>> + Send;
}

/// Declares the sweeps: for each, its type, its name, its pass (the `run_once` of its module),
/// what the pass returns, and the setting of its interval. Implements [`Sweep`] for each and
/// lists them all in `SWEEPS`, the list the leader runs, each as a task of its term.
macro_rules! sweeps {
    ($($(#[$doc:meta])* $sweep:ident: $name:literal, $module:ident -> $outcome:ty, every $interval:ident;)+) => {
        $(
            $(#[$doc])*
            pub struct $sweep;

            impl Sweep for $sweep {
                const NAME: &'static str = $name;
                type Outcome = $outcome;

                fn interval(config: &Config) -> Duration {
                    config.$interval
                }

                fn run_once(
                    &self,
                    pass: Pass<'_>,
                ) -> impl Future<Output = Result<$outcome, store::Error>> + Send {
                    $module::run_once(pass)
                }
            }
        )+

        pub(crate) const SWEEPS: &[&dyn leader::AnySweep] = &[$(&$sweep),+];
    };
}

// A new sweep is a file in this folder (and one in the store's) and one line here.
sweeps! {
    /// The reaper (docs/lease_protocol.md, rules 4, 5 and 9).
    Reaper: "reaper", reaper -> ReapOutcome, every reaper_interval;
    /// The pausing settlement.
    Pausing: "pausing", pausing -> PausingOutcome, every pausing_interval;
    /// Auto-resume (docs/lease_protocol.md, rule 5).
    AutoResume: "auto_resume", auto_resume -> AutoResumeOutcome, every auto_resume_interval;
    /// The stale-gate sweep.
    StaleGates: "stale_gates", stale_gates -> StaleGatesOutcome, every stale_gate_interval;
    /// Run deadlines.
    Deadlines: "deadlines", deadlines -> DeadlinesOutcome, every deadline_interval;
    /// Worker pruning.
    Workers: "workers", workers -> WorkersOutcome, every worker_prune_interval;
    /// History retention.
    Retention: "retention", retention -> RetentionOutcome, every retention_interval;
    /// Partition upkeep.
    Partitions: "partitions", partitions -> PartitionsOutcome, every partition_interval;
    /// Schedules.
    Schedules: "schedules", schedules -> SchedulesOutcome, every schedule_interval;
    /// Run counts for Stats.
    Counts: "counts", counts -> CountsOutcome, every count_interval;
    /// The queue's standing, as gauges.
    Queue: "queue", queue -> queue::QueueOutcome, every queue_interval;
}

/// How many rows a statement moved, as an outcome counts them.
fn count<T>(moved: &[T]) -> u64 {
    u64::try_from(moved.len()).unwrap_or(u64::MAX)
}

/// Runs the leader loop for `holder_id` until `cancel` fires: while this coordinator holds the
/// leader lease, the sweeps run; when it loses it, they stop at once; on the way out it resigns,
/// so that another coordinator takes over without waiting for the lease to run out.
///
/// `store` names the database; the loop never uses its pool. The leader lease has a connection
/// of its own, and the sweeps a pool of one connection each ([`sweep_pool_size`]), so that
/// neither waits behind the API's callers, nor the lease behind a slow sweep.
///
/// `holder_id` must be unique per process start (a restarted coordinator never inherits a
/// leadership). Fails at once if `config` or `holder_id` is out of bounds.
pub async fn run(
    store: Store,
    config: Config,
    holder_id: String,
    cancel: CancellationToken,
) -> Result<(), ConfigError> {
    let config = config.validated()?;
    name("holder_id", &holder_id, HOLDER_MAX_CHARS)?;
    let stores = leader::Stores {
        lease: store.sibling(LEADER_POOL_SIZE, "leader"),
        sweeps: store.sibling(sweep_pool_size(), "sweeps"),
    };
    leader::run(stores, config, holder_id, cancel).await;
    Ok(())
}

/// Connections of the leader lease's own pool: renewals are one statement at a time.
pub const LEADER_POOL_SIZE: usize = 1;

/// Connections of the sweeps' pool: one per sweep, since each runs as its own task and uses one
/// connection at a time, so that no sweep waits for another's.
pub fn sweep_pool_size() -> usize {
    SWEEPS.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validated(), Ok(Config::default()));
        assert_eq!(
            Config::default().leader_renew_interval(),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn settings_out_of_bounds_are_refused() {
        let check = |config: Config, field: &str| {
            let refused = config.validated().expect_err(field);
            let named = match &refused {
                ConfigError::OutOfBounds { field, .. } | ConfigError::BadName { field, .. } => {
                    *field
                }
                ConfigError::Retention(RetentionError::OutOfBounds { field, .. }) => field,
                ConfigError::Retention(RetentionError::DeleteBeforeCompact { .. }) => {
                    "delete_after"
                }
            };
            assert_eq!(named, field, "{refused}");
        };
        let base = Config::default;
        check(
            Config {
                leader_name: String::new(),
                ..base()
            },
            "leader_name",
        );
        check(
            Config {
                retention: RetentionWindows {
                    compact_after: Duration::from_secs(60),
                    ..RetentionWindows::default()
                },
                ..base()
            },
            "compact_after",
        );
        check(
            Config {
                retention: RetentionWindows {
                    compact_after: Duration::from_secs(30 * 86_400),
                    delete_after: Duration::from_secs(86_400),
                },
                ..base()
            },
            "delete_after",
        );
        check(
            Config {
                leader_name: "x".repeat(LEADER_NAME_MAX_CHARS + 1),
                ..base()
            },
            "leader_name",
        );
        check(
            Config {
                leader_lease: LEADER_LEASE_MIN - Duration::from_millis(1),
                ..base()
            },
            "leader_lease",
        );
        check(
            Config {
                dead_worker_after: DEAD_WORKER_AFTER_MIN - Duration::from_millis(1),
                ..base()
            },
            "dead_worker_after",
        );
        check(
            Config {
                dead_worker_after: DEAD_WORKER_AFTER_MAX + Duration::from_millis(1),
                ..base()
            },
            "dead_worker_after",
        );
        check(
            Config {
                deadline_interval: SWEEP_INTERVAL_MIN - Duration::from_millis(1),
                ..base()
            },
            "deadline_interval",
        );
        check(
            Config {
                leader_lease: LEADER_LEASE_MAX + Duration::from_millis(1),
                ..base()
            },
            "leader_lease",
        );
        check(
            Config {
                reaper_interval: Duration::ZERO,
                ..base()
            },
            "reaper_interval",
        );
        check(
            Config {
                partition_interval: SWEEP_INTERVAL_MAX * 2,
                ..base()
            },
            "partition_interval",
        );
        check(
            Config {
                poison_limit: 0,
                ..base()
            },
            "poison_limit",
        );
        check(
            Config {
                auto_resume_window: AUTO_RESUME_WINDOW_MAX * 2,
                ..base()
            },
            "auto_resume_window",
        );
        check(
            Config {
                auto_resume_cap: AUTO_RESUME_CAP_MAX + 1,
                ..base()
            },
            "auto_resume_cap",
        );
        check(
            Config {
                stale_gate_after: Duration::from_secs(1),
                ..base()
            },
            "stale_gate_after",
        );
        check(
            Config {
                partition_months_ahead: 0,
                ..base()
            },
            "partition_months_ahead",
        );
        check(
            Config {
                batch_limit: 0,
                ..base()
            },
            "batch_limit",
        );
    }

    #[test]
    fn bounds_are_inclusive() {
        let edge = Config {
            leader_lease: LEADER_LEASE_MIN,
            reaper_interval: SWEEP_INTERVAL_MIN,
            partition_interval: SWEEP_INTERVAL_MAX,
            auto_resume_cap: 0,
            auto_resume_window: AUTO_RESUME_WINDOW_MAX,
            stale_gate_after: STALE_GATE_AFTER_MIN,
            dead_worker_after: DEAD_WORKER_AFTER_MIN,
            worker_prune_interval: SWEEP_INTERVAL_MAX,
            partition_months_ahead: PARTITION_MONTHS_AHEAD_MAX,
            batch_limit: BATCH_LIMIT_MAX,
            ..Config::default()
        };
        assert_eq!(edge.clone().validated(), Ok(edge));
    }
}
