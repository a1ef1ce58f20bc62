//! What the coordinator's watch streams read. One poller per coordinator feeds every open
//! stream: each tick it reads the heads of all watched runs in one statement, and the new events
//! of the runs that moved in one more, so that idle watchers cost the database one small
//! statement per tick however many there are. A stream reads the database itself only to catch
//! up: its backlog when it opens, and a gap it finds.

use std::collections::HashMap;

use super::events::read_event;
use super::query::Query;
use super::{Error, Event, Store, TokenError, TokenId};
use crate::ids::{RunId, TenantId};
use crate::run::{RunStatus, UnknownStatus};

/// Where a run stands, as a watcher needs it: its status and the seq of its last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunHead {
    /// The run.
    pub run_id: RunId,
    /// Its status.
    pub status: RunStatus,
    /// The seq of its last event.
    pub event_seq: i64,
}

// One run's head, scoped to its tenant: a watch opens with it. Only the two columns it needs,
// so a run with large inputs costs no more than any other.
const RUN_HEAD: Query = Query {
    name: "run_head",
    sql: "\
SELECT run_id, status, event_seq FROM runs WHERE run_id = $1::uuid AND tenant_id = $2::text",
};

// The heads of every watched run, by primary key, in one statement per poller tick: the only
// statement idle watchers cost. A run that is not returned was deleted.
const RUN_HEADS: Query = Query {
    name: "run_heads",
    sql: "SELECT run_id, status, event_seq FROM runs WHERE run_id = ANY($1::uuid[])",
};

// The events of several runs, each after its own seq, at most $3 per run, in (run, seq) order:
// the poller reads the runs that moved in one statement. Each lateral read walks the primary
// key (run_id, seq, …) of every event partition.
const EVENTS_AFTER_EACH: Query = Query {
    name: "events_after_each",
    sql: "\
SELECT e.run_id, e.seq, e.event, e.run_status, e.occurred_at, e.epoch, e.node_id, e.attempt,
       e.reason, e.stop_kind, e.metadata
FROM unnest($1::uuid[], $2::bigint[]) AS wanted(run_id, after_seq)
CROSS JOIN LATERAL (
    SELECT * FROM run_events e
    WHERE e.run_id = wanted.run_id AND e.seq > wanted.after_seq
    ORDER BY e.seq LIMIT $3::int
) AS e
ORDER BY e.run_id, e.seq",
};

// Whether each token still stands: the poller checks the tokens of every open watch in one
// statement, so that revoking a token ends its watches without a statement per watch. A token
// that is not returned was deleted.
const TOKENS_STANDING: Query = Query {
    name: "tokens_standing",
    sql: "\
SELECT token_id, revoked_at IS NOT NULL AS revoked,
       expires_at IS NOT NULL AND expires_at <= now() AS expired
FROM api_tokens WHERE token_id = ANY($1::text[])",
};

pub(super) const QUERIES: &[Query] = &[RUN_HEAD, RUN_HEADS, EVENTS_AFTER_EACH, TOKENS_STANDING];

fn read_head(row: &tokio_postgres::Row) -> Result<RunHead, Error> {
    let run_id = RunId(row.get("run_id"));
    let status = row
        .get::<_, &str>("status")
        .parse()
        .map_err(|e: UnknownStatus| Error::UnreadableRun {
            run_id,
            reason: e.to_string(),
        })?;
    Ok(RunHead {
        run_id,
        status,
        event_seq: row.get("event_seq"),
    })
}

impl Store {
    /// The head of `tenant`'s run `run_id`, if the tenant has that run.
    pub async fn run_head(
        &self,
        tenant: &TenantId,
        run_id: RunId,
    ) -> Result<Option<RunHead>, Error> {
        let client = self.client().await?;
        RUN_HEAD
            .query_opt(&client, &[&run_id.0, &tenant.as_str()])
            .await?
            .as_ref()
            .map(read_head)
            .transpose()
    }

    /// The heads of the runs of `run_ids` that exist, in no particular order.
    pub async fn run_heads(&self, run_ids: &[RunId]) -> Result<Vec<RunHead>, Error> {
        let ids: Vec<_> = run_ids.iter().map(|r| r.0).collect();
        let client = self.client().await?;
        let rows = RUN_HEADS.query(&client, &[&ids]).await?;
        rows.iter().map(read_head).collect()
    }

    /// For each `(run, after_seq)`, up to `limit_per_run` of the run's events after `after_seq`;
    /// ordered by run, then seq.
    pub async fn events_after_each(
        &self,
        wanted: &[(RunId, i64)],
        limit_per_run: usize,
    ) -> Result<Vec<Event>, Error> {
        let ids: Vec<_> = wanted.iter().map(|(r, _)| r.0).collect();
        let after: Vec<_> = wanted.iter().map(|(_, seq)| *seq).collect();
        let limit = i32::try_from(limit_per_run).unwrap_or(i32::MAX);
        let client = self.client().await?;
        let rows = EVENTS_AFTER_EACH
            .query(&client, &[&ids, &after, &limit])
            .await?;
        Ok(rows.iter().map(read_event).collect())
    }

    /// The tokens of `ids` that no longer stand, each with why: revoked, expired, or gone.
    /// Their secrets were checked when their calls began; this checks only what can change.
    pub async fn tokens_refused(
        &self,
        ids: &[TokenId],
    ) -> Result<HashMap<TokenId, TokenError>, Error> {
        let texts: Vec<&str> = ids.iter().map(TokenId::as_str).collect();
        let client = self.client().await?;
        let rows = TOKENS_STANDING.query(&client, &[&texts]).await?;
        let mut refused: HashMap<TokenId, TokenError> = ids
            .iter()
            .map(|id| (id.clone(), TokenError::Unknown))
            .collect();
        let by_text: HashMap<&str, &TokenId> = ids.iter().map(|id| (id.as_str(), id)).collect();
        for row in &rows {
            let Some(&id) = by_text.get(row.get::<_, &str>("token_id")) else {
                continue;
            };
            if row.get("revoked") {
                refused.insert(id.clone(), TokenError::Revoked(id.clone()));
            } else if row.get("expired") {
                refused.insert(id.clone(), TokenError::Expired(id.clone()));
            } else {
                refused.remove(id);
            }
        }
        Ok(refused)
    }
}
