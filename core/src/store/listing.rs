//! Listings for operators: runs and per-tenant counts, and the keyset pagination every list of
//! the store shares. Workers are listed by `workers`.
//!
//! Pages are keyset pages, never `OFFSET`: a page token names the last item's sort key and id,
//! and the next page starts strictly after it, so a page costs the same however deep it is and
//! an item inserted meanwhile never shifts the items after it into a duplicate or a gap.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::gated::{COUNTS_SCHEMA_VERSION, QUEUES_SCHEMA_VERSION, since_schema};
use super::query::Query;
use super::runs::{read_run, run_columns};
use super::{Error, RequestError, RunRecord, Store};

// `mod.rs` re-exports this module's public items, so the automation records the listing serves
// are re-exported from here as well.
use crate::ids::{AutomationId, TenantId};
use crate::routing::WaitReason;
use crate::run::RunStatus;

/// Items in a page when the caller asks for none in particular (size 0).
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Most items in one page; larger requests get this many.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The page size served for a requested one: 0 means [`DEFAULT_PAGE_SIZE`], and anything above
/// [`MAX_PAGE_SIZE`] is capped to it.
pub fn page_size(requested: usize) -> usize {
    match requested {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// Which listing a page token belongs to: a token of one listing is refused by another, whose
/// order it does not describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Listing {
    /// Runs, newest first: `created_at` then `run_id`, descending.
    Runs,
    /// Automations, in creation order: `created_at` then `automation_id`, ascending.
    Automations,
    /// Pending gates, oldest first: `requested_at` then `gate_id`, ascending.
    PendingGates,
    /// Every gate, newest first: `requested_at` then `gate_id`, descending.
    Gates,
}

impl Listing {
    const ALL: [Listing; 4] = [
        Self::Runs,
        Self::Automations,
        Self::PendingGates,
        Self::Gates,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Runs => "runs",
            Self::Automations => "automations",
            Self::PendingGates => "pending_gates",
            Self::Gates => "gates",
        }
    }
}

/// Where a page ends: an opaque token that the next request hands back to continue after it.
///
/// It carries the listing it belongs to, the last item's sort time (to the microsecond, the
/// database's precision) and its id; [`Cursor::encode`] writes it as text and
/// [`Cursor::decode`] reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub(super) listing: Listing,
    pub(super) at: DateTime<Utc>,
    pub(super) id: String,
}

/// The version prefix of page tokens; a later format gets another, and old tokens stay readable
/// or are refused by name.
const TOKEN_VERSION: &str = "v1";

impl Cursor {
    pub(super) fn new(listing: Listing, at: DateTime<Utc>, id: impl Into<String>) -> Self {
        Self {
            listing,
            at,
            id: id.into(),
        }
    }

    /// The token to hand to a client: `v1:<listing>:<microseconds>:<id>`.
    pub fn encode(&self) -> String {
        format!(
            "{TOKEN_VERSION}:{}:{}:{}",
            self.listing.as_str(),
            self.at.timestamp_micros(),
            self.id
        )
    }

    /// Reads a token made by [`Cursor::encode`]; anything else is [`RequestError::BadPageToken`].
    pub fn decode(token: &str) -> Result<Cursor, RequestError> {
        let bad = |why: &str| RequestError::BadPageToken(why.to_owned());
        // The id comes last and may itself contain colons (automation ids are free text).
        let mut parts = token.splitn(4, ':');
        let (Some(version), Some(listing), Some(micros), Some(id)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not a page token"));
        };
        if version != TOKEN_VERSION {
            return Err(bad("not a page token of this version"));
        }
        let listing = Listing::ALL
            .into_iter()
            .find(|l| l.as_str() == listing)
            .ok_or_else(|| bad("unknown listing"))?;
        let at = micros
            .parse::<i64>()
            .ok()
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(|| bad("bad position"))?;
        if id.is_empty() {
            return Err(bad("no id"));
        }
        Ok(Cursor::new(listing, at, id))
    }
}

/// Which page of a listing to serve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// Items wanted; normalized by [`page_size`] (0 is the default, the cap is [`MAX_PAGE_SIZE`]).
    pub size: usize,
    /// Continue after this position, from the previous page's [`Page::next`]; `None` starts at
    /// the beginning.
    pub after: Option<Cursor>,
}

impl PageRequest {
    /// The first page, of `size` items.
    pub fn first(size: usize) -> Self {
        Self { size, after: None }
    }

    /// Items this request is served: [`page_size`] of [`PageRequest::size`].
    pub fn limit(&self) -> usize {
        page_size(self.size)
    }

    /// The position to continue after, as (sort time, id), checked to belong to `listing`.
    pub(super) fn position(
        &self,
        listing: Listing,
    ) -> Result<(Option<DateTime<Utc>>, Option<&str>), RequestError> {
        match &self.after {
            None => Ok((None, None)),
            Some(cursor) if cursor.listing == listing => Ok((Some(cursor.at), Some(&cursor.id))),
            Some(_) => Err(RequestError::BadPageToken(format!(
                "the token belongs to another listing than {}",
                listing.as_str()
            ))),
        }
    }

    /// The row count to fetch: one more than the page, to learn whether another page follows
    /// without a count.
    pub(super) fn fetch(&self) -> i32 {
        i32::try_from(self.limit() + 1).unwrap_or(i32::MAX)
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items, in the listing's order.
    pub items: Vec<T>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

impl<T> Page<T> {
    /// Cuts `fetched` (up to [`PageRequest::fetch`] rows) to the page, with a cursor after its last
    /// item when more rows were fetched than the page holds.
    pub(super) fn cut(
        mut fetched: Vec<T>,
        request: &PageRequest,
        cursor: impl Fn(&T) -> Cursor,
    ) -> Self {
        let limit = request.limit();
        let next = if fetched.len() > limit {
            fetched.truncate(limit);
            fetched.last().map(cursor)
        } else {
            None
        };
        Self {
            items: fetched,
            next,
        }
    }
}

/// Which runs [`Store::list_runs`] returns; every field set narrows the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only runs of this automation.
    pub automation_id: Option<AutomationId>,
    /// Only runs in one of these states; empty means any state.
    pub statuses: Vec<RunStatus>,
    /// Only runs with this concurrency key.
    pub concurrency_key: Option<String>,
    /// Only runs created strictly after this instant.
    pub created_after: Option<DateTime<Utc>>,
    /// Only runs created strictly before this instant.
    pub created_before: Option<DateTime<Utc>>,
}

/// A tenant's runs at a glance.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Runs in each state, by [`RunStatus::as_str`]; every state is present, zero included.
    pub runs_by_status: BTreeMap<String, i64>,
    /// How long the oldest due queued run has waited since it became due, by the database's
    /// now; `None` when no queued run is due.
    pub oldest_queued_age: Option<Duration>,
    /// Queued runs that are due now: what a worker with capacity would claim.
    pub claimable_now: i64,
    /// Runs held under a lease (running or pausing).
    pub held_leases: i64,
    /// Queued runs no live worker could claim, by why; none when every queued run has a worker.
    pub waiting: Vec<(WaitReason, i64)>,
}

// A page of a tenant's runs, newest first, in any of the statuses in $2 (those of the status
// filter, all of them without one), with the concurrency key $8 if it is set. The lateral subquery walks runs_status_idx once per status, in
// created_at order, and stops after a page; the outer sort merges the few pages. Written so
// because the schema has no (tenant_id, created_at) index, and a plain scan of the tenant's runs
// would read all of them to sort. The keyset condition is split so its created_at half is an
// index bound; run_id breaks ties between runs created in the same transaction. Bounds that are
// not set become infinities, so a generic plan keeps the same index bounds. With a concurrency
// key, the plan built for the values walks runs_concurrency_key_idx (V9) per status instead, which
// holds only keyed runs.
const LIST_RUNS_BY_STATUS: Query = Query {
    name: "list_runs_by_status",
    sql: concat!(
        "\
SELECT page.* FROM unnest($2::text[]) AS wanted(status)
CROSS JOIN LATERAL (
    SELECT ",
        run_columns!(),
        "
    FROM runs r
    WHERE r.tenant_id = $1::text AND r.status = wanted.status
      AND ($8::text IS NULL OR r.concurrency_key = $8::text)
      AND r.created_at > coalesce($3::timestamptz, '-infinity')
      AND r.created_at < coalesce($4::timestamptz, 'infinity')
      AND r.created_at <= coalesce($5::timestamptz, 'infinity')
      AND (r.created_at < coalesce($5::timestamptz, 'infinity') OR r.run_id < $6::uuid)
    ORDER BY r.created_at DESC, r.run_id DESC
    LIMIT $7::int
) AS page
ORDER BY page.created_at DESC, page.run_id DESC
LIMIT $7::int"
    ),
};

// A page of one automation's runs, newest first, walking runs_automation_idx in created_at
// order; the optional statuses and concurrency key filter that walk. Keyset and bounds as in
// list_runs_by_status.
const LIST_RUNS_OF_AUTOMATION: Query = Query {
    name: "list_runs_of_automation",
    sql: concat!(
        "SELECT ",
        run_columns!(),
        "
FROM runs r
WHERE r.tenant_id = $1::text AND r.automation_id = $2::text
  AND ($3::text[] IS NULL OR r.status = ANY($3::text[]))
  AND ($9::text IS NULL OR r.concurrency_key = $9::text)
  AND r.created_at > coalesce($4::timestamptz, '-infinity')
  AND r.created_at < coalesce($5::timestamptz, 'infinity')
  AND r.created_at <= coalesce($6::timestamptz, 'infinity')
  AND (r.created_at < coalesce($6::timestamptz, 'infinity') OR r.run_id < $7::uuid)
ORDER BY r.created_at DESC, r.run_id DESC
LIMIT $8::int"
    ),
};

// One tenant's counts in one statement. The per-status count reads the tenant's entries of
// runs_status_idx (an index-only scan once vacuumed); the due count and the oldest due queued
// time read only its queued entries. Age is measured from queued_at, which a retry moves to its
// due time, so a run waiting in backoff does not look old. The age is null when nothing is due.
const TENANT_STATS: Query = Query {
    name: "tenant_stats",
    sql: concat!(
        "\
WITH by_status AS (
    SELECT status, count(*) AS n FROM runs WHERE tenant_id = $1::text",
        since_schema!(14, " AND ($2::text IS NULL OR queue = $2::text)"),
        " GROUP BY status
),
due AS (
    SELECT count(*) AS n, min(queued_at) AS oldest FROM runs
    WHERE tenant_id = $1::text AND status = 'queued'
      AND (retry_after IS NULL OR retry_after <= now())",
        since_schema!(14, " AND ($2::text IS NULL OR queue = $2::text)"),
        "
)
SELECT coalesce((SELECT jsonb_object_agg(status, n) FROM by_status), '{}'::jsonb) AS by_status,
       due.n AS claimable,
       (extract(epoch FROM now() - due.oldest) * 1000000)::bigint AS oldest_due_micros
FROM due"
    ),
};

// One tenant's counts without reading its finished runs (V22): unfinished runs, which are few,
// counted from runs_status_idx's ranges of their statuses; finished ones read from the counts
// the triggers keep (folded, and the deltas not folded yet: one snapshot sees each move in one
// of the two). `counted` is false until the leader counted the finished runs once; the caller
// then counts them all with TENANT_STATS. The due count and age as in TENANT_STATS.
const TENANT_STATS_COUNTED: Query = Query {
    name: "tenant_stats_counted",
    sql: "\
WITH live AS (
    SELECT status, count(*) AS n FROM runs
    WHERE tenant_id = $1::text
      AND status IN ('queued', 'running', 'pausing', 'paused', 'awaiting_approval', 'blocked')
      AND ($2::text IS NULL OR queue = $2::text)
    GROUP BY status
),
finished AS (
    SELECT status, sum(runs)::bigint AS n FROM (
        SELECT status, runs FROM run_status_counts
        WHERE tenant_id = $1::text AND ($2::text IS NULL OR queue = $2::text)
        UNION ALL
        SELECT status, runs FROM run_status_deltas
        WHERE tenant_id = $1::text AND ($2::text IS NULL OR queue = $2::text)
    ) moves
    GROUP BY status
),
by_status AS (
    SELECT status, n FROM live UNION ALL SELECT status, n FROM finished
),
due AS (
    SELECT count(*) AS n, min(queued_at) AS oldest FROM runs
    WHERE tenant_id = $1::text AND status = 'queued'
      AND (retry_after IS NULL OR retry_after <= now())
      AND ($2::text IS NULL OR queue = $2::text)
)
SELECT EXISTS (SELECT 1 FROM run_status_baseline) AS counted,
       coalesce((SELECT jsonb_object_agg(status, n) FROM by_status), '{}'::jsonb) AS by_status,
       due.n AS claimable,
       (extract(epoch FROM now() - due.oldest) * 1000000)::bigint AS oldest_due_micros
FROM due",
};

// The tenant's queued runs by queue and requirement set (of one queue, $2, if set), for the
// runs Stats says wait for a worker: groups are few, however many runs wait. Reads
// runs_claimable_by_queue_idx, which holds only queued runs.
const QUEUED_BY_REQUIREMENTS: Query = Query {
    name: "queued_by_requirements",
    sql: "\
SELECT queue, requirement_set, count(*) AS n FROM runs
WHERE status = 'queued' AND tenant_id = $1::text AND ($2::text IS NULL OR queue = $2::text)
GROUP BY queue, requirement_set",
};

pub(super) const QUERIES: &[Query] = &[
    LIST_RUNS_BY_STATUS,
    LIST_RUNS_OF_AUTOMATION,
    TENANT_STATS_COUNTED,
    TENANT_STATS,
    QUEUED_BY_REQUIREMENTS,
];

impl Store {
    /// A page of the tenant's runs that match `filter`, newest first.
    pub async fn list_runs(
        &self,
        tenant: &TenantId,
        filter: &RunFilter,
        page: &PageRequest,
    ) -> Result<Page<RunRecord>, RequestError> {
        let (at, id) = page.position(Listing::Runs)?;
        let id: Option<Uuid> = id
            .map(|id| {
                id.parse()
                    .map_err(|_| RequestError::BadPageToken("bad run id".to_owned()))
            })
            .transpose()?;
        let fetch = page.fetch();
        let client = self.client().await?;
        let schema = self.schema(&client).await?;
        let rows = match &filter.automation_id {
            Some(automation_id) => {
                let statuses: Option<Vec<&str>> = (!filter.statuses.is_empty())
                    .then(|| filter.statuses.iter().map(|s| s.as_str()).collect());
                LIST_RUNS_OF_AUTOMATION
                    .for_schema(schema)
                    .query(
                        &client,
                        &[
                            &tenant.as_str(),
                            &automation_id.as_str(),
                            &statuses,
                            &filter.created_after,
                            &filter.created_before,
                            &at,
                            &id,
                            &fetch,
                            &filter.concurrency_key,
                        ],
                    )
                    .await?
            }
            None => {
                let wanted = if filter.statuses.is_empty() {
                    &RunStatus::ALL[..]
                } else {
                    &filter.statuses[..]
                };
                // Each status is one walk of the index: name each once.
                let mut statuses: Vec<&str> = wanted.iter().map(|s| s.as_str()).collect();
                statuses.sort_unstable();
                statuses.dedup();
                LIST_RUNS_BY_STATUS
                    .for_schema(schema)
                    .query(
                        &client,
                        &[
                            &tenant.as_str(),
                            &statuses,
                            &filter.created_after,
                            &filter.created_before,
                            &at,
                            &id,
                            &fetch,
                            &filter.concurrency_key,
                        ],
                    )
                    .await?
            }
        };
        let runs = rows.iter().map(read_run).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::cut(runs, page, |run| {
            Cursor::new(Listing::Runs, run.created_at, run.run_id.to_string())
        }))
    }

    /// The tenant's runs by state, its queue's backlog, and its held leases.
    pub async fn stats(&self, tenant: &TenantId, queue: Option<&str>) -> Result<Stats, Error> {
        let client = self.client().await?;
        let schema = self.schema(&client).await?;
        let counted = if schema >= COUNTS_SCHEMA_VERSION {
            let row = TENANT_STATS_COUNTED
                .query_one(&client, &[&tenant.as_str(), &queue])
                .await?;
            row.get::<_, bool>("counted").then_some(row)
        } else {
            None
        };
        let stats = TENANT_STATS.for_schema(schema);
        let row = if let Some(row) = counted {
            row
        } else if schema >= QUEUES_SCHEMA_VERSION {
            stats
                .query_one(&client, &[&tenant.as_str(), &queue])
                .await?
        } else {
            stats.query_one(&client, &[&tenant.as_str()]).await?
        };
        let counted: BTreeMap<String, i64> =
            serde_json::from_value(row.get("by_status")).unwrap_or_default();
        let runs_by_status: BTreeMap<String, i64> = RunStatus::ALL
            .iter()
            .map(|s| (s.as_str().to_owned(), 0))
            .chain(counted)
            .collect();
        let held_leases = RunStatus::ALL
            .iter()
            .filter(|s| s.is_held())
            .map(|s| runs_by_status.get(s.as_str()).copied().unwrap_or(0))
            .sum();
        let oldest_queued_age = row
            .get::<_, Option<i64>>("oldest_due_micros")
            // A queued_at ahead of now (a clock step back) is no wait at all.
            .map(|micros| Duration::from_micros(u64::try_from(micros).unwrap_or(0)));
        let waiting = if schema >= QUEUES_SCHEMA_VERSION {
            self.waiting_for_workers(&client, tenant, queue).await?
        } else {
            Vec::new()
        };
        Ok(Stats {
            runs_by_status,
            oldest_queued_age,
            claimable_now: row.get("claimable"),
            held_leases,
            waiting,
        })
    }

    /// The tenant's queued runs no live worker could claim, counted by reason, most first.
    async fn waiting_for_workers(
        &self,
        client: &deadpool_postgres::Client,
        tenant: &TenantId,
        queue: Option<&str>,
    ) -> Result<Vec<(WaitReason, i64)>, Error> {
        let groups = QUEUED_BY_REQUIREMENTS
            .query(client, &[&tenant.as_str(), &queue])
            .await?;
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let reasons = self
            .worker_reasons(groups.iter().map(|g| {
                (
                    g.get::<_, &str>("queue"),
                    g.get::<_, i64>("requirement_set"),
                )
            }))
            .await?;
        let mut waiting: Vec<(WaitReason, i64)> = Vec::new();
        for (group, reason) in groups.iter().zip(reasons) {
            let Some(reason) = reason else {
                continue;
            };
            let n: i64 = group.get("n");
            match waiting.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, count)) => *count += n,
                None => waiting.push((reason, n)),
            }
        }
        waiting.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| a.0.to_string().cmp(&b.0.to_string()))
        });
        Ok(waiting)
    }
}

#[cfg(test)]
mod tests {
    use tokio_postgres::{NoTls, SimpleQueryMessage};

    use super::*;

    /// The plan Postgres picks for `sql` with `args` (SQL literals), under `plan_cache_mode`.
    async fn plan(client: &tokio_postgres::Client, mode: &str, sql: &str, args: &str) -> String {
        client
            .batch_execute(&format!(
                "SET plan_cache_mode = {mode}; PREPARE listing AS {sql}"
            ))
            .await
            .expect("prepare");
        let messages = client
            .simple_query(&format!("EXPLAIN EXECUTE listing({args})"))
            .await
            .expect("explain");
        client
            .batch_execute("DEALLOCATE listing; RESET plan_cache_mode")
            .await
            .expect("deallocate");
        messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every filtered page of runs walks an index, on 50k runs of ten automations, mostly
    /// finished, under both the plan Postgres builds for the values and the generic plan a
    /// prepared statement may switch to.
    #[tokio::test]
    async fn run_pages_walk_indexes_not_the_table() {
        let db = leasehold_testkit::TestDb::new().await;
        let store = Store::connect_unchecked(db.url(), 2).expect("pool");
        store.migrate().await.expect("migrate");
        // As the owner: ANALYZE is the owner's, and the plans depend on the statistics.
        let (client, connection) = tokio_postgres::connect(db.owner_url(), NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(
                "INSERT INTO automations (tenant_id, automation_id, current_version)
                 SELECT t, 'auto-' || i, 1 FROM generate_series(0, 9) i,
                        unnest(ARRAY['default', 'other']) t;
                 INSERT INTO automation_versions (tenant_id, automation_id, version, spec, spec_hash)
                 SELECT tenant_id, automation_id, 1, '{}', '\\x00' FROM automations;
                 INSERT INTO runs (run_id, tenant_id, automation_id, automation_version, trigger,
                                   status, concurrency_key, created_at)
                 SELECT gen_random_uuid(), CASE WHEN i % 5 = 0 THEN 'other' ELSE 'default' END,
                        'auto-' || (i % 10), 1, 'api',
                        CASE WHEN i % 50 = 0 THEN 'queued' WHEN i % 50 = 1 THEN 'failed'
                             WHEN i % 50 = 2 THEN 'paused' ELSE 'completed' END,
                        CASE WHEN i % 20 = 3 THEN 'key-' || (i % 7) END,
                        now() - i * interval '1 second'
                 FROM generate_series(1, 50000) i;
                 ANALYZE runs;",
            )
            .await
            .expect("50k runs");
        let cursor = "now() - interval '1 hour', '018f0000-0000-7000-8000-000000000000'";
        let cases = [
            (
                LIST_RUNS_BY_STATUS,
                "'default', ARRAY['failed'], NULL, NULL, NULL, NULL, 51, NULL".to_owned(),
            ),
            (
                LIST_RUNS_BY_STATUS,
                format!("'default', ARRAY['queued'], NULL, NULL, {cursor}, 51, 'k'"),
            ),
            (
                LIST_RUNS_BY_STATUS,
                format!(
                    "'default', ARRAY['queued','running','pausing','paused','awaiting_approval',\
                     'completed','failed','blocked','cancelled'], NULL, NULL, {cursor}, 51, NULL"
                ),
            ),
            (
                LIST_RUNS_OF_AUTOMATION,
                "'default', 'auto-3', NULL, NULL, NULL, NULL, NULL, 51, NULL".to_owned(),
            ),
            (
                LIST_RUNS_OF_AUTOMATION,
                format!(
                    "'default', 'auto-3', ARRAY['failed','paused'], now() - interval '1 day', NULL, \
                     {cursor}, 51, NULL"
                ),
            ),
        ];
        for (sql, args) in &cases {
            for mode in ["force_custom_plan", "force_generic_plan"] {
                let plan = plan(&client, mode, sql.sql, args).await;
                assert!(
                    !plan.contains("Seq Scan") && plan.contains("Index"),
                    "{mode} ({args}):\n{plan}"
                );
            }
        }
        // One concurrency key's runs are read from V9's index, not filtered out of every run of
        // each status (the plan Postgres builds for the values).
        let keyed = plan(
            &client,
            "force_custom_plan",
            LIST_RUNS_BY_STATUS.sql,
            "'default', ARRAY['completed','failed','paused'], NULL, NULL, NULL, NULL, 51, 'key-3'",
        )
        .await;
        assert!(keyed.contains("runs_concurrency_key_idx"), "{keyed}");
        // Stats reads no finished run: the unfinished ones from their statuses' index ranges,
        // the finished ones' counts from V22's tables.
        for mode in ["force_custom_plan", "force_generic_plan"] {
            for queue in ["NULL", "'default'"] {
                let args = format!("'default', {queue}");
                let plan = plan(&client, mode, TENANT_STATS_COUNTED.sql, &args).await;
                assert!(
                    !plan.contains("Seq Scan on runs ") && plan.contains("run_status_counts"),
                    "{mode} ({args}):\n{plan}"
                );
            }
        }
    }

    #[test]
    fn counted_stats_count_every_unfinished_status_from_the_runs() {
        for status in RunStatus::ALL {
            let counted_by_trigger = matches!(
                status,
                RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
            );
            let listed = TENANT_STATS_COUNTED
                .sql
                .contains(&format!("'{}'", status.as_str()));
            assert_eq!(listed, !counted_by_trigger, "{status:?}");
        }
    }

    #[test]
    fn page_sizes_are_defaulted_and_capped() {
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(1), 1);
        assert_eq!(page_size(MAX_PAGE_SIZE), MAX_PAGE_SIZE);
        assert_eq!(page_size(MAX_PAGE_SIZE + 1), MAX_PAGE_SIZE);
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("in range");
        let cursor = Cursor::new(Listing::Automations, at, "team:nightly-report");
        let token = cursor.encode();
        assert_eq!(Cursor::decode(&token).expect("round trip"), cursor);
        for garbage in [
            "",
            "garbage",
            "v2:runs:1:x",
            "v1:nope:1:x",
            "v1:runs:soon:x",
            "v1:runs:1:",
            "v1:runs:99999999999999999999:x",
        ] {
            assert!(
                matches!(Cursor::decode(garbage), Err(RequestError::BadPageToken(_))),
                "{garbage:?}"
            );
        }
    }
}
