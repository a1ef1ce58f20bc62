//! Statements as values: each one a [`Query`] with its name and its SQL, run through the one
//! helper below that prepares it on the connection (cached there), executes it, and traces it by
//! name. The name is also what [`super::Store::check_queries`] reports when a statement does not
//! prepare.
//!
//! The shared fragments ([`clear_lease!`], [`notify_queued!`], and the leader fence in
//! `leader.rs`) are macros that expand to string literals, so that a statement stays one
//! `concat!` of literals, checked and prepared as a whole.

use deadpool_postgres::Client;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use tracing::Instrument;

/// The arguments of a statement, in the order of its `$n` placeholders.
pub(super) type Args<'a> = [&'a (dyn ToSql + Sync)];

/// A named statement of the store.
#[derive(Debug, Clone, Copy)]
pub(super) struct Query {
    /// The statement's name, as traces and the prepare check report it.
    pub(super) name: &'static str,
    /// Its SQL.
    pub(super) sql: &'static str,
}

impl Query {
    /// Every row the statement returns.
    pub(super) async fn query(
        &self,
        client: &Client,
        args: &Args<'_>,
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        async {
            let statement = client.prepare_cached(self.sql).await?;
            client.query(&statement, args).await
        }
        .instrument(self.span())
        .await
    }

    /// The one row the statement returns; an error if it returns none or more.
    pub(super) async fn query_one(
        &self,
        client: &Client,
        args: &Args<'_>,
    ) -> Result<Row, tokio_postgres::Error> {
        async {
            let statement = client.prepare_cached(self.sql).await?;
            client.query_one(&statement, args).await
        }
        .instrument(self.span())
        .await
    }

    /// The row the statement returns, if any; an error if it returns more than one.
    pub(super) async fn query_opt(
        &self,
        client: &Client,
        args: &Args<'_>,
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        async {
            let statement = client.prepare_cached(self.sql).await?;
            client.query_opt(&statement, args).await
        }
        .instrument(self.span())
        .await
    }

    /// How many rows the statement changed.
    pub(super) async fn execute(
        &self,
        client: &Client,
        args: &Args<'_>,
    ) -> Result<u64, tokio_postgres::Error> {
        async {
            let statement = client.prepare_cached(self.sql).await?;
            client.execute(&statement, args).await
        }
        .instrument(self.span())
        .await
    }

    fn span(&self) -> tracing::Span {
        tracing::debug_span!("query", name = self.name)
    }
}

/// The assignments that give up a run's lease: no claim, no holder, no expiry. The epoch stays,
/// so that a later claim raises it past every claim before.
/// The tokens a scope's bucket holds now, refilled since the last claim up to its burst: `l` is
/// the `run_limits` row (V16). A claim that waited for the row behind a later one refills
/// nothing; a scope without a rate refills nothing.
macro_rules! bucket_now {
    () => {
        "least(l.burst::float8, l.tokens + coalesce(l.max_starts_per_second, 0)
             * greatest(extract(epoch FROM now() - l.refilled_at)::float8, 0))"
    };
}
pub(super) use bucket_now;

macro_rules! clear_lease {
    () => {
        "claim_id = NULL, claimant_id = NULL, claimed_at = NULL, lease_expires_at = NULL"
    };
}
pub(super) use clear_lease;

/// The call that wakes idle workers once the statement commits: NOTIFY is delivered at commit,
/// so a rolled-back statement wakes nobody. The channel is
/// [`QUEUED_CHANNEL`](super::QUEUED_CHANNEL).
macro_rules! notify_queued {
    () => {
        "pg_notify('leasehold_runs_queued', '')"
    };
}
pub(super) use notify_queued;

/// The request id of an operator's move, `$n`, as a fragment of the move's event metadata: absent
/// when the call carried none. `operator_request_landed` finds it there when the call is retried.
macro_rules! operator_request_id {
    ($n:literal) => {
        concat!(
            "jsonb_strip_nulls(jsonb_build_object('request_id', $",
            $n,
            "::text))"
        )
    };
}
pub(super) use operator_request_id;

/// The call that tells the worker holding a run that a user cancelled or paused it, carrying
/// the run's id (the SQL expression given) as text. Delivered at commit, like
/// [`notify_queued!`]; a hint that makes the holder check its lease at once, never the fence
/// itself (its heartbeat is the fallback). The channel is
/// [`STOPPED_CHANNEL`](super::STOPPED_CHANNEL).
macro_rules! notify_stopped {
    ($run_id:literal) => {
        concat!("pg_notify('leasehold_runs_stopped', ", $run_id, "::text)")
    };
}
pub(super) use notify_stopped;

/// The CTEs that stop what a run ended by a statement (the CTE `$ended`, one `run_id` per run)
/// left open: its running node rows fail with `$node_error` (not retryable), and its pending
/// gates close as cancelled with `$gate_reason`, so nobody is asked to approve a run that will
/// never continue. They follow the runs rows' update, the order every statement that decides a
/// gate takes the rows in.
macro_rules! close_open_work {
    ($ended:literal, $node_error:literal, $gate_reason:literal) => {
        concat!(
            "interrupted AS (
    UPDATE run_nodes n
    SET status = 'failed', last_error = '",
            $node_error,
            "', last_error_retryable = false,
        finished_at = now()
    FROM ",
            $ended,
            "
    WHERE n.run_id = ",
            $ended,
            ".run_id AND n.status = 'running'
),
gates_closed AS (
    UPDATE gates g
    SET status = 'cancelled', decided_at = now(), decision_reason = '",
            $gate_reason,
            "'
    FROM ",
            $ended,
            "
    WHERE g.run_id = ",
            $ended,
            ".run_id AND g.status = 'pending'
)"
        )
    };
}
pub(super) use close_open_work;
