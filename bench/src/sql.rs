//! The benchmark's own SQL, all of it: the raw-SQL limit loop, the backlog fill, the database's
//! statistics, and the polls that see a phase finish. The product's SQL stays in
//! `leasehold_core::store`; nothing here writes a row the product would not, so that the limit
//! and the backlog stand on the product's own schema.

use anyhow::Context;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

/// Connects one session; the connection ends when the client is dropped.
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(connection);
    Ok(client)
}

// --- The server and the benchmark's database -------------------------------------------------

/// What the server is, for the report.
pub struct ServerInfo {
    /// `PostgreSQL 15.x …`.
    pub version: String,
    /// `on` or `off`.
    pub fsync: String,
    /// `on`, `off`, `local`, …
    pub synchronous_commit: String,
    /// With its unit.
    pub shared_buffers: String,
    /// This session's backend, a child of the postmaster.
    pub backend_pid: u32,
}

const SERVER_INFO: &str = "\
SELECT version(), current_setting('fsync'), current_setting('synchronous_commit'),
       current_setting('shared_buffers'), pg_backend_pid()";

pub async fn server_info(client: &Client) -> anyhow::Result<ServerInfo> {
    let row = client.query_one(SERVER_INFO, &[]).await?;
    Ok(ServerInfo {
        version: row.get(0),
        fsync: row.get(1),
        synchronous_commit: row.get(2),
        shared_buffers: row.get(3),
        backend_pid: u32::try_from(row.get::<_, i32>(4))?,
    })
}

fn check_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "database name {name:?}: lowercase letters, digits and _ only"
    );
    Ok(())
}

/// Creates the benchmark's database; `name` is a plain identifier (checked).
pub async fn create_database(admin: &Client, name: &str) -> anyhow::Result<()> {
    check_name(name)?;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .with_context(|| format!("creating database {name}"))
}

/// Drops it, ending any session still connected.
pub async fn drop_database(admin: &Client, name: &str) -> anyhow::Result<()> {
    check_name(name)?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .with_context(|| format!("dropping database {name}"))
}

// --- Statistics, read from the admin database so that reading them adds nothing -----------------

// Transactions committed and rolled back in a database: with every product statement in
// autocommit, one per statement (pipelined statements included, one per explicit transaction).
const XACTS: &str = "\
SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database WHERE datname = $1::text";

pub async fn transactions(admin: &Client, database: &str) -> anyhow::Result<i64> {
    Ok(admin.query_one(XACTS, &[&database]).await?.get(0))
}

// Client sessions on a database. A backend flushes its statistics before it leaves
// pg_stat_activity, so once none is left every transaction made on the database is counted.
const CLIENT_SESSIONS: &str = "\
SELECT count(*) FROM pg_stat_activity
WHERE datname = $1::text AND backend_type = 'client backend' AND pid <> pg_backend_pid()";

pub async fn client_sessions(admin: &Client, database: &str) -> anyhow::Result<i64> {
    Ok(admin.query_one(CLIENT_SESSIONS, &[&database]).await?.get(0))
}

// Sessions that listen for wake-ups and stop notices: a worker's listening connection runs only
// its two LISTENs, the stop channel's last.
const LISTENING: &str = "\
SELECT count(*) FROM pg_stat_activity WHERE datname = $1::text AND query = $2::text";

pub async fn listening(admin: &Client, database: &str) -> anyhow::Result<i64> {
    let listen = format!("LISTEN {}", leasehold_core::store::STOPPED_CHANNEL);
    Ok(admin
        .query_one(LISTENING, &[&database, &listen])
        .await?
        .get(0))
}

// --- Phases: resetting, settling, seeing them finish --------------------------------------------

// Every run and what hangs off it; automations and workers stay. Each repetition starts from
// the same empty tables.
const RESET: &str = "TRUNCATE runs, run_nodes, run_events, gates";

pub async fn reset(client: &Client) -> anyhow::Result<()> {
    client.batch_execute(RESET).await.context("truncating runs")
}

// Finished one-node runs as the product leaves them: the run completed, its node row, its five
// events. A database that has been running has such a history, and the planner's statistics
// see it; without it, the empty tables' statistics make the planner pick sequential scans.
const HISTORY: &str = "\
WITH r AS (
    INSERT INTO runs (run_id, tenant_id, automation_id, automation_version, trigger, status,
                      started_at, finished_at, event_seq, lease_epoch, progress_epoch)
    SELECT gen_random_uuid(), $1::text, $2::text, 1, 'api', 'completed', now(), now(), 5, 1, 1
    FROM generate_series(1, $3::int8)
    RETURNING run_id, tenant_id
),
n AS (
    INSERT INTO run_nodes (run_id, node_id, status, attempts, output, epoch, started_at,
                           finished_at)
    SELECT run_id, $4::text, 'completed', 1, '{}'::jsonb, 1, now(), now() FROM r
)
INSERT INTO run_events (run_id, seq, tenant_id, event, epoch, node_id, attempt)
SELECT r.run_id, e.seq, r.tenant_id, e.event, least(e.seq - 1, 1),
       CASE WHEN e.node THEN $4::text END, CASE WHEN e.node THEN 1 END
FROM r CROSS JOIN (VALUES (1, 'run_started', false), (2, 'run_claimed', false),
                          (3, 'node_started', true), (4, 'node_completed', true),
                          (5, 'run_completed', false)) AS e(seq, event, node)";

/// Adds `n` finished runs of `automation`, whose one node is `node`.
pub async fn history(
    client: &Client,
    tenant: &str,
    automation: &str,
    node: &str,
    n: i64,
) -> anyhow::Result<()> {
    client
        .execute(HISTORY, &[&tenant, &automation, &n, &node])
        .await
        .context("filling the history")?;
    Ok(())
}

/// Vacuums and analyzes, then checkpoints, so that neither lands inside a timed window. Returns
/// false when the role may not checkpoint (a server the benchmark does not own).
pub async fn settle(client: &Client) -> anyhow::Result<bool> {
    client.batch_execute("VACUUM ANALYZE").await?;
    Ok(client.batch_execute("CHECKPOINT").await.is_ok())
}

// Registered workers among these processes.
const WORKERS_UP: &str = "SELECT count(*) FROM workers WHERE pid = ANY($1::int[])";

pub async fn workers_up(client: &Client, pids: &[u32]) -> anyhow::Result<i64> {
    let pids: Vec<i32> = pids
        .iter()
        .map(|p| i32::try_from(*p))
        .collect::<Result<_, _>>()?;
    Ok(client.query_one(WORKERS_UP, &[&pids]).await?.get(0))
}

// Nothing queued and nothing held: both halves walk small partial indexes, so polling costs
// the database next to nothing however many runs have finished. The queued half is a scalar
// subquery in the claim index's order because an EXISTS drops ORDER BY, and with many queued
// runs in the statistics the planner then picks a sequential scan, which reads every finished
// run before the queued ones as the queue drains: 5% of the database's CPU in the one-node
// figure.
const DRAINED: &str = "\
SELECT (SELECT run_id FROM runs WHERE status = 'queued'
        ORDER BY priority DESC, queued_at, run_id LIMIT 1) IS NULL
   AND NOT EXISTS (SELECT 1 FROM runs WHERE status IN ('running', 'pausing'))";

pub async fn drained(client: &Client) -> anyhow::Result<bool> {
    Ok(client.query_one(DRAINED, &[]).await?.get(0))
}

/// How the runs of an automation ended, and how long they took by the database's clock.
pub struct Outcome {
    /// Runs completed.
    pub completed: i64,
    /// Runs in any state.
    pub total: i64,
    /// From the first claim to the last completion, in seconds.
    pub window_s: f64,
}

const OUTCOME: &str = "\
SELECT count(*) FILTER (WHERE status = 'completed'), count(*),
       coalesce(extract(epoch FROM max(finished_at) - min(started_at))::float8, 0)
FROM runs WHERE automation_id = $1::text";

pub async fn outcome(client: &Client, automation: &str) -> anyhow::Result<Outcome> {
    let row = client.query_one(OUTCOME, &[&automation]).await?;
    Ok(Outcome {
        completed: row.get(0),
        total: row.get(1),
        window_s: row.get(2),
    })
}

const RUN_FINISHED: &str = "\
SELECT status IN ('completed', 'failed', 'cancelled', 'blocked') FROM runs WHERE run_id = $1::uuid";

pub async fn run_finished(client: &Client, run_id: Uuid) -> anyhow::Result<bool> {
    Ok(client.query_one(RUN_FINISHED, &[&run_id]).await?.get(0))
}

// From a run's creation to its first node's start, both by the database's clock: no skew.
const TRIGGER_TO_START_MS: &str = "\
SELECT extract(epoch FROM min(e.occurred_at) - r.created_at)::float8 * 1000
FROM runs r JOIN run_events e ON e.run_id = r.run_id AND e.event = 'node_started'
WHERE r.run_id = ANY($1::uuid[])
GROUP BY r.run_id, r.created_at";

pub async fn trigger_to_start_ms(client: &Client, run_ids: &[Uuid]) -> anyhow::Result<Vec<f64>> {
    let rows = client.query(TRIGGER_TO_START_MS, &[&run_ids]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

// --- The limit: the cheapest correct claim and completion ---------------------------------------

// The product's claim order over the same partial index, the same lease columns and epoch, and
// nothing else: no events, no node rows, no concurrency keys.
const LIMIT_CLAIM: &str = "\
UPDATE runs SET status = 'running', claim_id = gen_random_uuid(), claimant_id = $2::text,
       claimed_at = now(), lease_expires_at = now() + interval '30 seconds',
       lease_epoch = lease_epoch + 1, started_at = now()
WHERE run_id IN (
    SELECT run_id FROM runs
    WHERE status = 'queued' AND (retry_after IS NULL OR retry_after <= now())
    ORDER BY priority DESC, queued_at, run_id
    LIMIT $1::int
    FOR UPDATE SKIP LOCKED)
RETURNING run_id, lease_epoch";

// One statement per batch, fenced on each run's epoch.
const LIMIT_COMPLETE: &str = "\
UPDATE runs r SET status = 'completed', finished_at = now(), claim_id = NULL,
       claimant_id = NULL, claimed_at = NULL, lease_expires_at = NULL
FROM unnest($1::uuid[], $2::int8[]) AS held(run_id, epoch)
WHERE r.run_id = held.run_id AND r.lease_epoch = held.epoch AND r.status = 'running'";

/// One session of the limit loop, with its statements prepared.
pub struct LimitSession {
    client: Client,
    claim: tokio_postgres::Statement,
    complete: tokio_postgres::Statement,
}

impl LimitSession {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = connect(url).await?;
        // A prepared statement gets a generic plan after five executions, and the completion's
        // generic plan is a nested loop over every held run, quadratic in the batch (77 µs of
        // database CPU per run instead of 18, measured by the anatomy phase's method). The
        // limit is the cheapest correct statements: plan each execution for its arrays.
        client
            .batch_execute("SET plan_cache_mode = force_custom_plan")
            .await?;
        let claim = client.prepare(LIMIT_CLAIM).await?;
        let complete = client.prepare(LIMIT_COMPLETE).await?;
        Ok(Self {
            client,
            claim,
            complete,
        })
    }

    /// Claims up to `batch` runs and completes them; returns how many, 0 once the queue is empty.
    pub async fn claim_and_complete(&self, batch: i32, claimant: &str) -> anyhow::Result<usize> {
        let claimed = self.claim(batch, claimant).await?;
        if !claimed.is_empty() {
            self.complete(&claimed).await?;
        }
        Ok(claimed.len())
    }

    /// Claims up to `batch` runs: their ids and epochs, none once the queue is empty.
    pub async fn claim(&self, batch: i32, claimant: &str) -> anyhow::Result<Vec<(Uuid, i64)>> {
        let rows = self.client.query(&self.claim, &[&batch, &claimant]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Completes claimed runs, each fenced on its epoch.
    pub async fn complete(&self, claimed: &[(Uuid, i64)]) -> anyhow::Result<()> {
        let (ids, epochs): (Vec<Uuid>, Vec<i64>) = claimed.iter().copied().unzip();
        let done = self
            .client
            .execute(&self.complete, &[&ids, &epochs])
            .await?;
        anyhow::ensure!(
            usize::try_from(done)? == claimed.len(),
            "the limit loop lost {} of its claims",
            claimed.len() - usize::try_from(done)?
        );
        Ok(())
    }
}

// --- The backlog ---------------------------------------------------------------------------------

// Finished and queued runs of one automation, as the product leaves them: a completed run has
// been started and finished and holds no lease; a queued one is due, with the version's
// requirement set, as a start gives it. They arrive one microsecond apart (`first_queued_micros`
// too), so that the claim order follows the table's, as with real arrivals. The k-th queued run
// goes to queue k mod n of the n queues in $5, and the completed runs after it to the same queue,
// so that every queue holds an equal share of the queued runs, in arrival order.
const BACKLOG_FILL: &str = "\
INSERT INTO runs (run_id, tenant_id, automation_id, automation_version, trigger, status,
                  queue_reason, created_at, queued_at, started_at, finished_at, event_seq,
                  queue, requirement_set, first_queued_micros)
SELECT gen_random_uuid(), $1::text, $2::text, 1, 'api',
       CASE WHEN g % $4::int8 = 0 THEN 'queued' ELSE 'completed' END,
       CASE WHEN g % $4::int8 = 0 THEN 'started' END,
       now() + g * interval '1 microsecond', now() + g * interval '1 microsecond',
       CASE WHEN g % $4::int8 = 0 THEN NULL ELSE now() END,
       CASE WHEN g % $4::int8 = 0 THEN NULL ELSE now() END,
       CASE WHEN g % $4::int8 = 0 THEN 1 ELSE 4 END,
       ($5::text[])[1 + ((g / $4::int8) % cardinality($5::text[]))::int],
       v.requirement_set,
       (extract(epoch FROM now()) * 1000000)::int8 + g
FROM generate_series(1, $3::int8) AS g,
     (SELECT coalesce((SELECT requirement_set FROM automation_versions
                       WHERE tenant_id = $1::text AND automation_id = $2::text AND version = 1),
                      0) AS requirement_set) AS v";

/// Adds `n` runs, one in `every` of them queued and the rest completed, spread over `queues`
/// (at least one).
pub async fn backlog_fill(
    client: &Client,
    tenant: &str,
    automation: &str,
    n: i64,
    every: i64,
    queues: &[String],
) -> anyhow::Result<()> {
    anyhow::ensure!(!queues.is_empty(), "a backlog needs a queue");
    client
        .execute(BACKLOG_FILL, &[&tenant, &automation, &n, &every, &queues])
        .await
        .context("filling the backlog")?;
    Ok(())
}

// Hands the runs a claimant took back to the queue, so that every repetition claims from the
// same queue.
const BACKLOG_REQUEUE: &str = "\
UPDATE runs SET status = 'queued', claim_id = NULL, claimant_id = NULL, claimed_at = NULL,
       lease_expires_at = NULL
WHERE claimant_id = $1::text";

pub async fn backlog_requeue(client: &Client, claimant: &str) -> anyhow::Result<u64> {
    Ok(client.execute(BACKLOG_REQUEUE, &[&claimant]).await?)
}

/// Vacuums the runs table alone: the dead versions a round of claims left in the queue's index.
pub async fn vacuum_runs(client: &Client) -> anyhow::Result<()> {
    client
        .batch_execute("VACUUM runs")
        .await
        .context("vacuuming runs")
}

const COUNT_RUNS: &str = "\
SELECT count(*), count(*) FILTER (WHERE status = 'queued'),
       count(DISTINCT queue) FILTER (WHERE status = 'queued')
FROM runs";

/// All runs, the queued ones, and the queues they are queued in.
pub async fn count_runs(client: &Client) -> anyhow::Result<(i64, i64, i64)> {
    let row = client.query_one(COUNT_RUNS, &[]).await?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

// --- Stats -------------------------------------------------------------------------------------

// Forgets the finished runs' counts (V22), as before the leader's first count: Stats then counts
// every run, and the next count pass counts them again.
const FORGET_RUN_COUNTS: &str = "\
DELETE FROM run_status_baseline; DELETE FROM run_status_counts; DELETE FROM run_status_deltas";

pub async fn forget_run_counts(client: &Client) -> anyhow::Result<()> {
    client
        .batch_execute(FORGET_RUN_COUNTS)
        .await
        .context("forgetting the run counts")
}

/// VACUUM of the deltas, as autovacuum gives a table that churns (the fold deletes what the
/// triggers insert).
pub async fn vacuum_run_counts(client: &Client) -> anyhow::Result<()> {
    client
        .batch_execute("VACUUM run_status_deltas")
        .await
        .context("vacuuming the run counts' deltas")
}

const RUNS_BY_STATUS: &str = "SELECT status, count(*) FROM runs GROUP BY status";

/// Every status's runs, by a full count.
pub async fn runs_by_status(
    client: &Client,
) -> anyhow::Result<std::collections::BTreeMap<String, i64>> {
    Ok(client
        .query(RUNS_BY_STATUS, &[])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

// --- Retention ---------------------------------------------------------------------------------

// Creates the monthly event partitions from the month of $1 on, $2 of them, so that the filled
// events land in their months' partitions (which the partition sweep may drop) and not in the
// default one. The product's own upkeep function.
const ENSURE_EVENT_PARTITIONS: &str =
    "SELECT leasehold_ensure_event_partitions($1::timestamptz::date, $2::int)";

pub async fn ensure_event_partitions(
    client: &Client,
    from: chrono::DateTime<chrono::Utc>,
    months: i32,
) -> anyhow::Result<()> {
    client
        .execute(ENSURE_EVENT_PARTITIONS, &[&from, &months])
        .await
        .context("creating the event partitions")?;
    Ok(())
}

// Finished one-node runs as the product leaves them, the g-th of $6 finished $8 × g / $6 seconds
// before $7 (so, over the fill, uniformly over the last $8 seconds) and created up to a minute
// before that. Each run's id is a UUIDv7 of its created_at, as the coordinator makes them: the
// partition drop finds the runs that may have events in a month by their ids. The run has
// inputs of about 100 bytes, its node an output of about 270, and two events, at its creation
// and at its end. Runs g = $4..=$5 are inserted in the order of g, newest first: the runs the
// sweep deletes, the oldest, then fill the heaps' last pages, which VACUUM can give back.
const RETENTION_FILL: &str = "\
WITH f AS (
    SELECT g, t.finished_at, t.finished_at - (1 + random() * 59) * interval '1 second' AS created_at
    FROM generate_series($4::int8, $5::int8) AS g,
         LATERAL (SELECT $7::timestamptz
                         - ($8::float8 * g / $6::int8) * interval '1 second' AS finished_at) AS t
),
r AS (
    INSERT INTO runs (run_id, tenant_id, automation_id, automation_version, trigger, status,
                      inputs, created_at, queued_at, started_at, updated_at, finished_at,
                      event_seq, lease_epoch, progress_epoch)
    SELECT (lpad(to_hex((extract(epoch FROM f.created_at) * 1000)::int8), 12, '0') || '7'
            || substr(md5(random()::text), 1, 3) || '8'
            || substr(md5(random()::text), 1, 15))::uuid,
           $1::text, $2::text, 1, 'api', 'completed',
           jsonb_build_object('order', f.g, 'customer', md5(f.g::text), 'region', 'eu-west-1',
                              'note', 'retention'),
           f.created_at, f.created_at, f.created_at, f.finished_at, f.finished_at, 2, 1, 1
    FROM f
    ORDER BY f.g
    RETURNING run_id, tenant_id, created_at, finished_at
),
n AS (
    INSERT INTO run_nodes (run_id, node_id, status, attempts, output, epoch, started_at,
                           finished_at)
    SELECT run_id, $3::text, 'completed', 1,
           jsonb_build_object('result', repeat(md5(run_id::text), 8)), 1, created_at,
           finished_at
    FROM r
)
INSERT INTO run_events (run_id, seq, tenant_id, event, occurred_at, epoch)
SELECT r.run_id, e.seq, r.tenant_id, e.event,
       CASE WHEN e.seq = 1 THEN r.created_at ELSE r.finished_at END, e.seq - 1
FROM r CROSS JOIN (VALUES (1, 'run_started'), (2, 'run_completed')) AS e(seq, event)";

/// What a retention fill is: the runs of `automation` (whose one node is `node`) for `tenant`,
/// `runs` of them finished over the `span_s` seconds before `now`.
pub struct RetentionFill<'a> {
    pub tenant: &'a str,
    pub automation: &'a str,
    pub node: &'a str,
    pub runs: i64,
    pub now: chrono::DateTime<chrono::Utc>,
    pub span_s: f64,
}

impl RetentionFill<'_> {
    /// Inserts runs `first..=last` of the fill (1 is the newest), in one statement.
    pub async fn insert(&self, client: &Client, first: i64, last: i64) -> anyhow::Result<()> {
        client
            .execute(
                RETENTION_FILL,
                &[
                    &self.tenant,
                    &self.automation,
                    &self.node,
                    &first,
                    &last,
                    &self.runs,
                    &self.now,
                    &self.span_s,
                ],
            )
            .await
            .with_context(|| format!("filling runs {first} to {last}"))?;
        Ok(())
    }
}

/// Where the runs of an automation stand against a pair of cutoffs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stages {
    /// Finished at or after the compaction cutoff: in the hot window.
    pub hot: i64,
    /// Finished before the compaction cutoff: the sweep compacts them (and deletes some).
    pub compact: i64,
    /// Finished before the deletion cutoff: the sweep deletes them.
    pub delete: i64,
}

const RETENTION_STAGES: &str = "\
SELECT count(*) FILTER (WHERE finished_at >= $2::timestamptz),
       count(*) FILTER (WHERE finished_at < $2::timestamptz),
       count(*) FILTER (WHERE finished_at < $3::timestamptz)
FROM runs WHERE automation_id = $1::text";

/// The stages of `automation`'s runs by their `finished_at`, before the sweep.
pub async fn retention_stages(
    client: &Client,
    automation: &str,
    compact_before: chrono::DateTime<chrono::Utc>,
    delete_before: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Stages> {
    let row = client
        .query_one(
            RETENTION_STAGES,
            &[&automation, &compact_before, &delete_before],
        )
        .await?;
    Ok(Stages {
        hot: row.get(0),
        compact: row.get(1),
        delete: row.get(2),
    })
}

// The event partitions the sweep may drop once it deleted the runs finished before $1: those
// whose every event belongs to such a run, of months that ended more than a day before $2 (the
// partition sweep's and leasehold_drop_event_partition's own conditions), read from the events
// themselves (an unfinished run keeps its events). Partitions without events are left out: the
// fill makes none in the past.
const DROPPABLE_PARTITIONS: &str = "\
SELECT count(*) FROM (
    SELECT to_date(substring(e.tableoid::regclass::text FROM 12), 'YYYY_MM') AS month,
           bool_or(coalesce(r.finished_at >= $1::timestamptz, r.run_id IS NOT NULL)) AS kept
    FROM run_events e LEFT JOIN runs r ON r.run_id = e.run_id
    GROUP BY e.tableoid
) p
WHERE NOT p.kept
  AND (p.month + interval '1 month')::date + 1 < ($2::timestamptz AT TIME ZONE 'UTC')::date";

pub async fn droppable_partitions(
    client: &Client,
    delete_before: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<i64> {
    Ok(client
        .query_one(DROPPABLE_PARTITIONS, &[&delete_before, &now])
        .await?
        .get(0))
}

/// The runs of the filled automation after the sweep, by what the sweep did to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Runs left, each with its node row.
    pub left: i64,
    /// Runs in the hot window with their inputs, their node's output, and no compaction mark.
    pub hot_intact: i64,
    /// Runs before the compaction cutoff with their inputs and output dropped and the mark set.
    pub compacted: i64,
    /// Runs before the deletion cutoff still there.
    pub past_retention: i64,
    /// Runs of the workload automation compacted: none may be, all finished during the bench.
    pub workload_compacted: i64,
}

const RETENTION_SWEPT: &str = "\
SELECT count(*),
       count(*) FILTER (WHERE r.finished_at >= $2::timestamptz AND r.compacted_at IS NULL
                          AND r.inputs <> '{}'::jsonb AND n.output IS NOT NULL),
       count(*) FILTER (WHERE r.finished_at < $2::timestamptz AND r.compacted_at IS NOT NULL
                          AND r.inputs = '{}'::jsonb AND n.output IS NULL),
       count(*) FILTER (WHERE r.finished_at < $3::timestamptz),
       (SELECT count(*) FROM runs WHERE automation_id = $4::text AND compacted_at IS NOT NULL)
FROM runs r JOIN run_nodes n ON n.run_id = r.run_id
WHERE r.automation_id = $1::text";

pub async fn retention_swept(
    client: &Client,
    filled: &str,
    workload: &str,
    compact_before: chrono::DateTime<chrono::Utc>,
    delete_before: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Swept> {
    let row = client
        .query_one(
            RETENTION_SWEPT,
            &[&filled, &compact_before, &delete_before, &workload],
        )
        .await?;
    Ok(Swept {
        left: row.get(0),
        hot_intact: row.get(1),
        compacted: row.get(2),
        past_retention: row.get(3),
        workload_compacted: row.get(4),
    })
}

// Runs of an automation, in any state.
const RUNS_OF: &str = "SELECT count(*) FROM runs WHERE automation_id = $1::text";

pub async fn runs_of(client: &Client, automation: &str) -> anyhow::Result<i64> {
    Ok(client.query_one(RUNS_OF, &[&automation]).await?.get(0))
}

/// The tables retention shrinks, in the order of [`TableSizes`].
pub const RETAINED_TABLES: [&str; 3] = ["runs", "run_nodes", "run_events"];

/// Bytes on disk of each of [`RETAINED_TABLES`], with its indexes and TOAST; for `run_events`,
/// every partition's (the partitioned table itself holds nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSizes(pub [i64; 3]);

const TABLE_SIZES: &str = "\
SELECT pg_total_relation_size('runs'), pg_total_relation_size('run_nodes'),
       (SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0)::int8
        FROM pg_inherits WHERE inhparent = 'run_events'::regclass)";

pub async fn table_sizes(client: &Client) -> anyhow::Result<TableSizes> {
    let row = client.query_one(TABLE_SIZES, &[]).await?;
    Ok(TableSizes([row.get(0), row.get(1), row.get(2)]))
}

// The bytes of the rows of each of RETAINED_TABLES: what the tables hold, whatever free space
// their pages and indexes keep for new rows after a VACUUM.
const LIVE_SIZES: &str = "\
SELECT (SELECT coalesce(sum(pg_column_size(r.*)), 0)::int8 FROM runs r),
       (SELECT coalesce(sum(pg_column_size(n.*)), 0)::int8 FROM run_nodes n),
       (SELECT coalesce(sum(pg_column_size(e.*)), 0)::int8 FROM run_events e)";

pub async fn live_sizes(client: &Client) -> anyhow::Result<TableSizes> {
    let row = client.query_one(LIVE_SIZES, &[]).await?;
    Ok(TableSizes([row.get(0), row.get(1), row.get(2)]))
}

/// A plain VACUUM of the tables retention shrinks, as autovacuum would run it: the dead rows'
/// space is reusable, and empty pages at a heap's end are given back.
pub async fn vacuum_retained(client: &Client) -> anyhow::Result<()> {
    client
        .batch_execute("VACUUM runs, run_nodes, run_events")
        .await
        .context("vacuuming the retained tables")
}
