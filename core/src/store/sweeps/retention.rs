//! The retention sweep's statements: finished runs compacted past their hot window and deleted
//! past their retention, in batches under the leader lease, and the event partitions of months
//! no run needs any more dropped (`leasehold_drop_event_partition`, V20).
//!
//! Each batch is one statement, its own transaction: it takes at most `limit` runs, oldest
//! finished first, and skips rows another statement holds. Claims never wait for it: it touches
//! only finished runs, which no claim reads.

use chrono::{DateTime, NaiveDate, Utc};

use super::int;
use crate::ids::TenantId;
use crate::retention::Cutoffs;
use crate::store::gated::RETENTION_SCHEMA_VERSION;
use crate::store::leader::leader_fence;
use crate::store::query::Query;
use crate::store::{Error, Leadership, Store};

/// What the sweep compares each finished run's `finished_at` with: the coordinators' cutoffs,
/// and those of the tenants with windows of their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionCutoffs {
    /// For tenants without windows of their own.
    pub default: Cutoffs,
    /// For each tenant with windows of its own.
    pub tenants: Vec<(TenantId, Cutoffs)>,
}

impl RetentionCutoffs {
    /// The latest cutoff of any tenant, per `pick`: no run finished after it can be due, so
    /// the statement's index scan stops there.
    fn latest(&self, pick: fn(&Cutoffs) -> DateTime<Utc>) -> DateTime<Utc> {
        self.tenants
            .iter()
            .map(|(_, c)| pick(c))
            .fold(pick(&self.default), DateTime::max)
    }

    fn tenant_ids(&self) -> Vec<&str> {
        self.tenants.iter().map(|(t, _)| t.0.as_str()).collect()
    }

    fn of_tenants(&self, pick: fn(&Cutoffs) -> DateTime<Utc>) -> Vec<DateTime<Utc>> {
        self.tenants.iter().map(|(_, c)| pick(c)).collect()
    }
}

fn compact_before(c: &Cutoffs) -> DateTime<Utc> {
    c.compact_before
}

fn delete_before(c: &Cutoffs) -> DateTime<Utc> {
    c.delete_before
}

// The due runs of a batch: $1, $2 are the tenants with windows of their own and their cutoffs,
// $3 the latest cutoff of all (the index scan's bound), $4 the default cutoff, $5 the batch.
macro_rules! due_runs {
    ($which:literal) => {
        concat!(
            "
    SELECT r.run_id
    FROM runs r
    LEFT JOIN unnest($1::text[], $2::timestamptz[]) AS p(tenant_id, before)
        ON p.tenant_id = r.tenant_id
    WHERE ",
            $which,
            " AND r.status IN ('completed', 'failed', 'cancelled')
      AND r.finished_at < $3::timestamptz
      AND r.finished_at < coalesce(p.before, $4::timestamptz)
      AND ",
            leader_fence!(6, 7),
            "
    ORDER BY r.finished_at
    LIMIT $5::int
    FOR UPDATE OF r SKIP LOCKED"
        )
    };
}

// Compacts a batch of finished runs past their hot window (runs_uncompacted_idx): their inputs
// and their nodes' outputs are dropped, and compacted_at says when. Everything else stays.
const COMPACT_RUNS: Query = Query {
    name: "compact_runs",
    sql: concat!(
        "\
WITH due AS (",
        due_runs!("r.compacted_at IS NULL"),
        "
),
outputs AS (
    UPDATE run_nodes n SET output = NULL
    FROM due
    WHERE n.run_id = due.run_id AND n.output IS NOT NULL
    RETURNING n.run_id
)
UPDATE runs r SET inputs = '{}'::jsonb, compacted_at = now()
FROM due
WHERE r.run_id = due.run_id
RETURNING r.run_id"
    ),
};

// Deletes a batch of compacted runs past their retention (runs_compacted_idx), with their nodes
// and gates (ON DELETE CASCADE). Their events stay until their months' partitions are dropped.
const DELETE_RUNS: Query = Query {
    name: "delete_runs",
    sql: concat!(
        "\
WITH due AS (",
        due_runs!("r.compacted_at IS NOT NULL"),
        "
)
DELETE FROM runs r
USING due
WHERE r.run_id = due.run_id
RETURNING r.run_id"
    ),
};

// The months of run_events' monthly partitions, oldest first.
const EVENT_PARTITION_MONTHS: Query = Query {
    name: "event_partition_months",
    sql: "\
SELECT to_date(substring(c.relname FROM 12), 'YYYY_MM') AS month
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'run_events'::regclass AND c.relname ~ '^run_events_[0-9]{4}_[0-9]{2}$'
ORDER BY month",
};

// Drops the partition of the month of $1 if V20's function finds it can go, under the
// leadership. Null when it stays, or when the leadership is gone.
const DROP_EVENT_PARTITION: Query = Query {
    name: "drop_event_partition",
    sql: concat!(
        "\
SELECT CASE WHEN ",
        leader_fence!(2, 3),
        "
            THEN leasehold_drop_event_partition($1::date)
       END AS dropped"
    ),
};

pub(super) const QUERIES: &[Query] = &[
    COMPACT_RUNS,
    DELETE_RUNS,
    EVENT_PARTITION_MONTHS,
    DROP_EVENT_PARTITION,
];

impl Store {
    /// Compacts, under `leader`, at most `limit` finished runs that finished before their
    /// tenant's compaction cutoff, oldest first: their inputs and node outputs are dropped.
    /// Returns how many it compacted; none on a schema without retention (below V20).
    ///
    /// # Locks
    /// The runs rows it takes (skipping any locked) and their node rows, for the statement only.
    pub async fn compact_finished_runs(
        &self,
        leader: &Leadership,
        cutoffs: &RetentionCutoffs,
        limit: usize,
    ) -> Result<u64, Error> {
        self.retention_batch(COMPACT_RUNS, leader, cutoffs, compact_before, limit)
            .await
    }

    /// Deletes, under `leader`, at most `limit` compacted runs that finished before their
    /// tenant's deletion cutoff, oldest first, with their nodes and gates. Returns how many it
    /// deleted; none on a schema without retention (below V20).
    ///
    /// # Locks
    /// The runs rows it takes (skipping any locked), and their node and gate rows as they go.
    pub async fn delete_finished_runs(
        &self,
        leader: &Leadership,
        cutoffs: &RetentionCutoffs,
        limit: usize,
    ) -> Result<u64, Error> {
        self.retention_batch(DELETE_RUNS, leader, cutoffs, delete_before, limit)
            .await
    }

    async fn retention_batch(
        &self,
        statement: Query,
        leader: &Leadership,
        cutoffs: &RetentionCutoffs,
        pick: fn(&Cutoffs) -> DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, Error> {
        let client = self.client().await?;
        if self.schema(&client).await? < RETENTION_SCHEMA_VERSION {
            return Ok(0);
        }
        let (name, epoch) = (leader.name(), leader.epoch().0);
        let rows = statement
            .query(
                &client,
                &[
                    &cutoffs.tenant_ids(),
                    &cutoffs.of_tenants(pick),
                    &cutoffs.latest(pick),
                    &pick(&cutoffs.default),
                    &int(limit),
                    &name,
                    &epoch,
                ],
            )
            .await?;
        Ok(u64::try_from(rows.len()).unwrap_or(u64::MAX))
    }

    /// The first days of the months that have a partition of `run_events`, oldest first.
    pub async fn event_partition_months(&self) -> Result<Vec<NaiveDate>, Error> {
        let client = self.client().await?;
        let rows = EVENT_PARTITION_MONTHS.query(&client, &[]).await?;
        Ok(rows.iter().map(|row| row.get("month")).collect())
    }

    /// Drops, under `leader`, the event partition of `month`'s month if the month ended more
    /// than a day ago and no run that still exists has an event in it; returns the partition's
    /// name when it did. `None` when it stays, on a schema without retention, or when the
    /// leadership is gone.
    ///
    /// # Locks
    /// Reads the partition and `runs`; the detach then holds `run_events` in ACCESS EXCLUSIVE
    /// mode for a moment, and waits at most half a second for it (else it fails with
    /// `55P03`, lock_not_available, and changes nothing).
    pub async fn drop_event_partition(
        &self,
        leader: &Leadership,
        month: NaiveDate,
    ) -> Result<Option<String>, Error> {
        let client = self.client().await?;
        if self.schema(&client).await? < RETENTION_SCHEMA_VERSION {
            return Ok(None);
        }
        let (name, epoch) = (leader.name(), leader.epoch().0);
        let row = DROP_EVENT_PARTITION
            .query_one(&client, &[&month, &name, &epoch])
            .await?;
        Ok(row.get("dropped"))
    }
}
