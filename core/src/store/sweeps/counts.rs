//! The run-count sweep's statements (V22): the finished runs counted once into
//! `run_status_counts`, then the deltas the triggers insert folded into it, under the leader
//! lease.

use crate::store::gated::COUNTS_SCHEMA_VERSION;
use crate::store::leader::leader_fence;
use crate::store::query::Query;
use crate::store::{Error, Leadership, Store};

/// What one pass of the run-count sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountsFolded {
    /// The finished runs were counted for the first time.
    pub baselined: bool,
    /// Deltas folded into the counts.
    pub deltas: u64,
}

// Counts the finished runs once, when no count exists yet, under the leadership. Every part of
// the statement sees one snapshot: the deltas it deletes are those of moves committed before it,
// which its count of runs already holds; later moves' deltas stay, to be folded. Reads every
// finished run once, without locking any.
const BASELINE_RUN_COUNTS: Query = Query {
    name: "baseline_run_counts",
    sql: concat!(
        "\
WITH marked AS (
    INSERT INTO run_status_baseline (singleton, counted_at)
    SELECT true, now()
    WHERE NOT EXISTS (SELECT 1 FROM run_status_baseline) AND ",
        leader_fence!(1, 2),
        "
    ON CONFLICT (singleton) DO NOTHING
    RETURNING counted_at
),
seen AS (
    DELETE FROM run_status_deltas WHERE EXISTS (SELECT 1 FROM marked)
    RETURNING 1
),
counted AS (
    INSERT INTO run_status_counts AS c (tenant_id, queue, status, runs)
    SELECT tenant_id, queue, status, count(*) FROM runs
    WHERE EXISTS (SELECT 1 FROM marked) AND status IN ('completed', 'failed', 'cancelled')
    GROUP BY tenant_id, queue, status
    ON CONFLICT (tenant_id, queue, status) DO UPDATE SET runs = excluded.runs
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM marked) AS baselined,
       (SELECT count(*) FROM seen) + (SELECT count(*) FROM counted) AS moved"
    ),
};

// Folds every delta this snapshot sees into the counts, once the baseline exists, under the
// leadership: the deltas deleted and the counts raised in one transaction, so a reader sees
// each move in exactly one of the two tables.
const FOLD_RUN_COUNTS: Query = Query {
    name: "fold_run_counts",
    sql: concat!(
        "\
WITH moved AS (
    DELETE FROM run_status_deltas
    WHERE EXISTS (SELECT 1 FROM run_status_baseline) AND ",
        leader_fence!(1, 2),
        "
    RETURNING tenant_id, queue, status, runs
),
folded AS (
    INSERT INTO run_status_counts AS c (tenant_id, queue, status, runs)
    SELECT tenant_id, queue, status, sum(runs) FROM moved
    GROUP BY tenant_id, queue, status
    ON CONFLICT (tenant_id, queue, status) DO UPDATE SET runs = c.runs + excluded.runs
    RETURNING 1
)
SELECT (SELECT count(*) FROM moved) AS deltas, (SELECT count(*) FROM folded) AS counts"
    ),
};

pub(super) const QUERIES: &[Query] = &[BASELINE_RUN_COUNTS, FOLD_RUN_COUNTS];

impl Store {
    /// Under `leader`: counts the finished runs when they were never counted, else folds the
    /// deltas the triggers inserted since the last pass into the counts. Nothing on a schema
    /// without counts (below V22), or when the leadership is gone.
    ///
    /// # Locks
    /// The delta rows it folds and the count rows it raises; the first pass reads every
    /// finished run without locking it.
    pub async fn fold_run_counts(&self, leader: &Leadership) -> Result<CountsFolded, Error> {
        let client = self.client().await?;
        if self.schema(&client).await? < COUNTS_SCHEMA_VERSION {
            return Ok(CountsFolded::default());
        }
        let (name, epoch) = (leader.name(), leader.epoch().0);
        let baseline = BASELINE_RUN_COUNTS
            .query_one(&client, &[&name, &epoch])
            .await?;
        if baseline.get("baselined") {
            return Ok(CountsFolded {
                baselined: true,
                deltas: 0,
            });
        }
        let folded = FOLD_RUN_COUNTS.query_one(&client, &[&name, &epoch]).await?;
        Ok(CountsFolded {
            baselined: false,
            deltas: folded.get::<_, i64>("deltas").unsigned_abs(),
        })
    }
}
