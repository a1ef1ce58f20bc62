//! Limits on queues (the automations' own come with their versions, `automations.rs`), and the
//! queues as `queue list` shows them: depth, held runs, limits, the oldest due run's age.
//! The claim enforces the limits (`claims.rs`, docs/lease_protocol.md rule 1).

use std::time::Duration;

use super::gated::LIMITS_SCHEMA_VERSION;
use super::query::Query;
use super::{Error, RequestError, Store};
use crate::routing::Limits;

// A queue's limits, or none: its row set or removed. A bucket starts full, and a smaller burst
// trims the tokens left.
const SET_QUEUE_LIMITS: Query = Query {
    name: "set_queue_limits",
    sql: "\
WITH set AS (
    INSERT INTO run_limits (scope, tenant_id, name, max_running, max_starts_per_second, burst,
                            tokens)
    SELECT 'queue', '', $1::text, $2::int, $3::float8, coalesce($4::int, 1), coalesce($4::int, 1)
    WHERE $2::int IS NOT NULL OR $3::float8 IS NOT NULL
    ON CONFLICT (scope, tenant_id, name) DO UPDATE
    SET max_running = excluded.max_running, max_starts_per_second = excluded.max_starts_per_second,
        burst = excluded.burst, tokens = least(run_limits.tokens, excluded.burst),
        updated_at = now()
)
DELETE FROM run_limits
WHERE scope = 'queue' AND tenant_id = '' AND name = $1::text
  AND $2::int IS NULL AND $3::float8 IS NULL",
};

// Every queue that has runs waiting or held, or a limit, across tenants. Each count reads a
// partial index of unfinished runs: runs_claimable_by_queue_idx (queued, led by the queue) and
// runs_held_idx (held; their few rows fetched for the queue). Finished runs are never read.
const QUEUES: Query = Query {
    name: "queues",
    sql: "\
WITH queued AS (
    SELECT queue,
           count(*) FILTER (WHERE retry_after IS NULL OR retry_after <= now()) AS due,
           count(*) AS queued,
           min(queued_at) FILTER (WHERE retry_after IS NULL OR retry_after <= now()) AS oldest_due
    FROM runs WHERE status = 'queued'
    GROUP BY queue
),
held AS (
    SELECT queue, count(*) AS held FROM runs WHERE status IN ('running', 'pausing') GROUP BY queue
),
limited AS (
    SELECT name AS queue, max_running, max_starts_per_second, burst
    FROM run_limits WHERE scope = 'queue' AND tenant_id = ''
)
SELECT queue, coalesce(queued.due, 0) AS due, coalesce(queued.queued, 0) AS queued,
       coalesce(held.held, 0) AS held,
       (extract(epoch FROM now() - queued.oldest_due) * 1000000)::bigint AS oldest_due_micros,
       limited.max_running, limited.max_starts_per_second, limited.burst
FROM queued FULL JOIN held USING (queue) FULL JOIN limited USING (queue)
ORDER BY queue",
};

pub(super) const QUERIES: &[Query] = &[SET_QUEUE_LIMITS, QUEUES];

/// Limits as `run_limits` stores them: max_running, the rate, and the bucket's size (the burst,
/// or its default).
pub(super) fn limit_columns(limits: &Limits) -> (Option<i32>, Option<f64>, Option<i32>) {
    let int = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    (
        limits.max_running.map(int),
        limits.max_starts_per_second,
        limits.bucket_size().map(int),
    )
}

/// A queue as `queue list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRecord {
    /// Its name.
    pub queue: String,
    /// Queued runs that are due now.
    pub due: u64,
    /// Queued runs, those waiting out a retry's backoff included.
    pub queued: u64,
    /// Runs a worker holds (running or pausing).
    pub held: u64,
    /// How long the oldest due run has waited; `None` when none is due.
    pub oldest_due_age: Option<Duration>,
    /// Its limits; none set is [`Limits::default`].
    pub limits: Limits,
}

impl Store {
    /// Sets `queue`'s limits; limits that limit nothing remove them.
    ///
    /// # Errors
    /// [`RequestError::NeedsMigration`] on a database below V16, which has no place for them.
    pub async fn set_queue_limits(&self, queue: &str, limits: &Limits) -> Result<(), RequestError> {
        let client = self.client().await?;
        if self.schema(&client).await? < LIMITS_SCHEMA_VERSION {
            return Err(RequestError::NeedsMigration {
                what: "queue limits",
                version: LIMITS_SCHEMA_VERSION,
            });
        }
        let (max_running, max_starts_per_second, burst) = limit_columns(limits);
        SET_QUEUE_LIMITS
            .execute(
                &client,
                &[&queue, &max_running, &max_starts_per_second, &burst],
            )
            .await?;
        Ok(())
    }

    /// Every queue with runs waiting or held, or a limit, by name, by the database's clock.
    pub async fn queues(&self) -> Result<Vec<QueueRecord>, Error> {
        let client = self.client().await?;
        if self.schema(&client).await? < LIMITS_SCHEMA_VERSION {
            return Ok(Vec::new());
        }
        let rows = QUEUES.query(&client, &[]).await?;
        let count = |row: &tokio_postgres::Row, column: &str| {
            u64::try_from(row.get::<_, i64>(column)).unwrap_or(0)
        };
        Ok(rows
            .iter()
            .map(|row| QueueRecord {
                queue: row.get("queue"),
                due: count(row, "due"),
                queued: count(row, "queued"),
                held: count(row, "held"),
                oldest_due_age: row
                    .get::<_, Option<i64>>("oldest_due_micros")
                    .map(|micros| Duration::from_micros(u64::try_from(micros).unwrap_or(0))),
                limits: Limits {
                    max_running: row
                        .get::<_, Option<i32>>("max_running")
                        .map(i32::unsigned_abs),
                    max_starts_per_second: row.get("max_starts_per_second"),
                    // Stored with every row; it means something with a rate only.
                    burst: row
                        .get::<_, Option<f64>>("max_starts_per_second")
                        .and(row.get::<_, Option<i32>>("burst"))
                        .map(i32::unsigned_abs),
                },
            })
            .collect())
    }
}
