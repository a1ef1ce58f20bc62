//! Metric handles made once and kept, so that a run or a node attempt records its metrics
//! without building label sets (allocating each label's text) and looking them up in the
//! recorder every time. Each handle is made on first use, so the exposition shows exactly the
//! series it showed when the macros were called per run.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use leasehold_core::ids::{AutomationId, TenantId};
use leasehold_core::spec::Spec;
use leasehold_core::store::ClaimedRun;
use metrics::{Counter, Gauge, Histogram};

use super::Outcome;

/// How a node attempt ended, as the metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attempt {
    Completed,
    RetryableError,
    TerminalError,
    Panicked,
    TimedOut,
}

impl Attempt {
    const COUNT: usize = 5;

    /// The outcome label of `leasehold_worker_node_attempts_total` and its duration.
    pub fn label(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::RetryableError => "retryable_error",
            Self::TerminalError => "terminal_error",
            Self::Panicked => "panicked",
            Self::TimedOut => "timed_out",
        }
    }
}

/// The node metrics of one kind.
pub(crate) struct KindMetrics {
    kind: String,
    attempts: [OnceLock<(Counter, Histogram)>; Attempt::COUNT],
}

impl KindMetrics {
    pub fn new(kind: String) -> Self {
        Self {
            kind,
            attempts: Default::default(),
        }
    }

    /// Counts an attempt that ended as `attempt` after `seconds`.
    pub fn record(&self, attempt: Attempt, seconds: f64) {
        let (count, duration) =
            self.attempts[attempt as usize].get_or_init(|| attempt_handles(&self.kind, attempt));
        count.increment(1);
        duration.record(seconds);
    }
}

/// Counts an attempt of a kind no handler is registered for (it failed at once).
pub(super) fn record_unregistered(kind: &str, attempt: Attempt, seconds: f64) {
    let (count, duration) = attempt_handles(kind, attempt);
    count.increment(1);
    duration.record(seconds);
}

fn attempt_handles(kind: &str, attempt: Attempt) -> (Counter, Histogram) {
    let outcome = attempt.label();
    (
        metrics::counter!("leasehold_worker_node_attempts_total", "kind" => kind.to_owned(), "outcome" => outcome),
        metrics::histogram!("leasehold_worker_node_duration_seconds", "kind" => kind.to_owned(), "outcome" => outcome),
    )
}

/// A pinned automation version, and the handles its runs count into.
pub(crate) struct Pinned {
    pub spec: Arc<Spec>,
    tenant: TenantId,
    automation: AutomationId,
    /// `leasehold_worker_runs_left_total` of this tenant and automation, by outcome.
    runs_left: [OnceLock<Counter>; Outcome::COUNT],
}

impl Pinned {
    /// The counter of runs of this version that left this worker as `outcome`.
    pub fn run_left(&self, outcome: &Outcome) -> &Counter {
        self.runs_left[outcome.index()]
            .get_or_init(|| runs_left(&self.tenant, &self.automation, outcome))
    }
}

/// `leasehold_worker_runs_left_total` for `run` and `outcome`, made afresh.
pub(super) fn run_left(run: &ClaimedRun, outcome: &Outcome) -> Counter {
    runs_left(&run.tenant, &run.automation_id, outcome)
}

fn runs_left(tenant: &TenantId, automation: &AutomationId, outcome: &Outcome) -> Counter {
    metrics::counter!("leasehold_worker_runs_left_total", "outcome" => outcome.label(), "tenant" => tenant.to_string(), "automation" => automation.to_string())
}

/// Pinned versions by tenant, automation and version: nested, so that a lookup borrows the
/// claimed run's names instead of cloning them into a key; ordered, as comparing a few short
/// names costs less than hashing them, twice for every run.
#[derive(Default)]
pub(crate) struct Pins(BTreeMap<TenantId, BTreeMap<AutomationId, BTreeMap<i32, Arc<Pinned>>>>);

impl Pins {
    pub fn get(&self, run: &ClaimedRun) -> Option<Arc<Pinned>> {
        self.0
            .get(&run.tenant)?
            .get(&run.automation_id)?
            .get(&run.automation_version)
            .cloned()
    }

    pub fn insert(&mut self, run: &ClaimedRun, spec: Arc<Spec>) {
        let pinned = Pinned {
            spec,
            tenant: run.tenant.clone(),
            automation: run.automation_id.clone(),
            runs_left: Default::default(),
        };
        self.0
            .entry(run.tenant.clone())
            .or_default()
            .entry(run.automation_id.clone())
            .or_default()
            .insert(run.automation_version, Arc::new(pinned));
    }
}

/// The worker's metrics that carry no labels, made once when it starts claiming: a run records
/// into them without a lookup in the recorder.
pub(crate) struct WorkerMetrics {
    pub claimed_runs: Counter,
    pub claim_batch_size: Histogram,
    pub claim_duration: Histogram,
    pub claim_wait: Histogram,
    pub claim_to_start: Histogram,
    pub runs_held: Gauge,
}

impl WorkerMetrics {
    pub fn new() -> Self {
        Self {
            claimed_runs: metrics::counter!("leasehold_worker_claimed_runs_total"),
            claim_batch_size: metrics::histogram!("leasehold_worker_claim_batch_size"),
            claim_duration: metrics::histogram!("leasehold_worker_claim_duration_seconds"),
            claim_wait: metrics::histogram!("leasehold_worker_claim_wait_seconds"),
            claim_to_start: metrics::histogram!("leasehold_worker_claim_to_start_seconds"),
            runs_held: metrics::gauge!("leasehold_worker_runs_held"),
        }
    }
}
