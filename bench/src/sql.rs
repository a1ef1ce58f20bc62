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
