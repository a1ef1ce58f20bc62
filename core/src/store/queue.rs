//! The queue's standing, for the metrics the leader publishes: what waits, what is held, how
//! long the oldest due run has waited. One statement, reading only the partial indexes of
//! unfinished runs, never the finished ones, which grow without bound.

use std::time::Duration;

use super::query::Query;
use super::{Error, Store};

// Each part reads one partial index whose predicate it repeats exactly, so the planner can use
// it: runs_claimable_idx (queued), runs_held_idx (running, pausing), runs_stale_reaped_idx.
// Due is what the claim statement would consider (retry_after passed), before concurrency
// keys; a run waiting in backoff is counted apart, and its queued_at is its due time, so it
// does not look old. The age is null when nothing is due.
const QUEUE_STANDING: Query = Query {
    name: "queue_standing",
    sql: "\
WITH queued AS (
    SELECT count(*) FILTER (WHERE retry_after IS NULL OR retry_after <= now()) AS due,
           count(*) FILTER (WHERE retry_after > now()) AS in_backoff,
           min(queued_at) FILTER (WHERE retry_after IS NULL OR retry_after <= now()) AS oldest_due
    FROM runs WHERE status = 'queued'
),
held AS (
    SELECT count(*) FILTER (WHERE status = 'running') AS running,
           count(*) FILTER (WHERE status = 'pausing') AS pausing
    FROM runs WHERE status IN ('running', 'pausing')
),
stale AS (
    SELECT count(*) AS stale_reaped FROM runs WHERE status = 'paused' AND stop_kind = 'stale_reaped'
)
SELECT queued.due, queued.in_backoff, held.running, held.pausing, stale.stale_reaped,
       (extract(epoch FROM now() - queued.oldest_due) * 1000000)::bigint AS oldest_due_micros
FROM queued, held, stale",
};

/// The runs a worker pool is needed for now: queued runs that are due (what the claim statement
/// would take, concurrency keys aside) and runs a worker holds (running or pausing). The
/// autoscaler of `deploy/` (KEDA's `postgresql` trigger) runs this text as it is, and sizes the
/// pool as `ceil(demand / runs per worker)`.
///
/// Held runs count so that a pool busy with long nodes and an empty queue is not scaled down
/// under its runs: counting only due runs would send the demand to 0 the moment every run is
/// claimed. Runs in backoff, paused, awaiting approval or finished need no worker, and are not
/// counted. One line of SQL returning one number, as the trigger needs; each count reads the
/// partial index of its statuses (`runs_claimable_idx`, `runs_held_idx`).
pub const WORKER_DEMAND_SQL: &str = "SELECT (SELECT count(*) FROM runs WHERE status = 'queued' AND (retry_after IS NULL OR retry_after <= now())) + (SELECT count(*) FROM runs WHERE status IN ('running', 'pausing')) AS demand";

/// [`WORKER_DEMAND_SQL`] for a pool that serves `queue` alone (V14): that queue's due and held
/// runs, so that each pool scales on its own queue. The text goes into the pool's KEDA
/// ScaledObject as it is (deploy/README.md, "More than one worker pool"); the name is checked
/// first, and a checked name holds nothing a literal would need escaped. The due count reads
/// runs_claimable_by_queue_idx, led by the queue.
///
/// # Errors
/// A name that is not a queue's, saying why.
pub fn queue_demand_sql(queue: &str) -> Result<String, String> {
    crate::routing::check_queue_name(queue)?;
    Ok(format!(
        "SELECT (SELECT count(*) FROM runs WHERE status = 'queued' AND queue = '{queue}' AND (retry_after IS NULL OR retry_after <= now())) + (SELECT count(*) FROM runs WHERE status IN ('running', 'pausing') AND queue = '{queue}') AS demand"
    ))
}

const WORKER_DEMAND: Query = Query {
    name: "worker_demand",
    sql: WORKER_DEMAND_SQL,
};

pub(super) const QUERIES: &[Query] = &[QUEUE_STANDING, WORKER_DEMAND];

/// The queue at one instant, across tenants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStanding {
    /// Queued runs that are due: what workers may claim now (concurrency keys aside).
    pub due: u64,
    /// Queued runs waiting out a retry's backoff.
    pub in_backoff: u64,
    /// Runs held by a worker and running.
    pub running: u64,
    /// Runs held by a worker and pausing.
    pub pausing: u64,
    /// Runs paused as stale-reaped, awaiting auto-resume or an operator.
    pub stale_reaped: u64,
    /// How long the oldest due run has waited; `None` when none is due.
    pub oldest_due_age: Option<Duration>,
}

impl Store {
    /// The queue's standing now; see [`QueueStanding`].
    pub async fn queue_standing(&self) -> Result<QueueStanding, Error> {
        let client = self.client().await?;
        let row = QUEUE_STANDING.query_one(&client, &[]).await?;
        let count = |column: &str| u64::try_from(row.get::<_, i64>(column)).unwrap_or(0);
        let age: Option<i64> = row.get("oldest_due_micros");
        Ok(QueueStanding {
            due: count("due"),
            in_backoff: count("in_backoff"),
            running: count("running"),
            pausing: count("pausing"),
            stale_reaped: count("stale_reaped"),
            oldest_due_age: age
                .map(|micros| Duration::from_micros(u64::try_from(micros).unwrap_or(0))),
        })
    }

    /// The runs a worker pool is needed for now; see [`WORKER_DEMAND_SQL`].
    pub async fn worker_demand(&self) -> Result<u64, Error> {
        let client = self.client().await?;
        let row = WORKER_DEMAND.query_one(&client, &[]).await?;
        Ok(u64::try_from(row.get::<_, i64>("demand")).unwrap_or(0))
    }
}
