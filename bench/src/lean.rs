//! The lean limit: a narrow queue table of the benchmark's own, claimed and completed the way
//! the fastest PostgreSQL queues do it (graphile-worker's shape). A job is a few fixed-width
//! columns and one partial index of the jobs not taken; a claim takes a batch with `SKIP
//! LOCKED` and marks it with its claimant; a completion deletes the batch, fenced on the
//! claimant. There is no history: this is what a queue costs when it keeps nothing, the bound
//! the product's full-history queue is measured against.

use tokio_postgres::{Client, Statement};

use crate::sql;

const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS bench_lean_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    priority smallint NOT NULL DEFAULT 0,
    run_at timestamptz NOT NULL DEFAULT now(),
    attempts smallint NOT NULL DEFAULT 0,
    locked_by text,
    locked_at timestamptz
);
CREATE INDEX IF NOT EXISTS bench_lean_jobs_due_idx
    ON bench_lean_jobs (priority DESC, run_at, id) WHERE locked_at IS NULL;
TRUNCATE bench_lean_jobs";

// Due one microsecond apart, in id order, as arrivals would be.
const FILL: &str = "\
INSERT INTO bench_lean_jobs (run_at)
SELECT now() - interval '1 hour' + g * interval '1 microsecond'
FROM generate_series(1, $1::int8) AS g";

const CLAIM: &str = "\
UPDATE bench_lean_jobs SET locked_by = $2::text, locked_at = now(), attempts = attempts + 1
WHERE id IN (
    SELECT id FROM bench_lean_jobs
    WHERE locked_at IS NULL AND run_at <= now()
    ORDER BY priority DESC, run_at, id
    LIMIT $1::int
    FOR UPDATE SKIP LOCKED)
RETURNING id";

// Fenced on the claimant: a job another session took over is not deleted.
const COMPLETE: &str = "\
DELETE FROM bench_lean_jobs WHERE id = ANY($1::int8[]) AND locked_by = $2::text";

const REMAINING: &str = "SELECT count(*) FROM bench_lean_jobs";

/// Creates the lean queue if needed, empties it and queues `n` due jobs.
pub async fn fill(client: &Client, n: usize) -> anyhow::Result<()> {
    client.batch_execute(SCHEMA).await?;
    client.execute(FILL, &[&i64::try_from(n)?]).await?;
    Ok(())
}

/// Jobs left in the lean queue.
pub async fn remaining(client: &Client) -> anyhow::Result<i64> {
    Ok(client.query_one(REMAINING, &[]).await?.get(0))
}

/// One session of the lean loop, with its statements prepared.
pub struct LeanSession {
    client: Client,
    claimant: String,
    claim: Statement,
    complete: Statement,
}

impl LeanSession {
    /// Connects as claimant `claimant`, which must be this session's alone.
    pub async fn connect(url: &str, claimant: String) -> anyhow::Result<Self> {
        let client = sql::connect(url).await?;
        let claim = client.prepare(CLAIM).await?;
        let complete = client.prepare(COMPLETE).await?;
        Ok(Self {
            client,
            claimant,
            claim,
            complete,
        })
    }

    /// Claims up to `batch` jobs and completes them; returns how many, 0 once none is left.
    pub async fn claim_and_complete(&self, batch: i32) -> anyhow::Result<usize> {
        let rows = self
            .client
            .query(&self.claim, &[&batch, &self.claimant])
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let done = self
            .client
            .execute(&self.complete, &[&ids, &self.claimant])
            .await?;
        anyhow::ensure!(
            usize::try_from(done)? == ids.len(),
            "the lean loop lost {} of its claims",
            ids.len() - usize::try_from(done)?
        );
        Ok(ids.len())
    }
}
