//! The append-only history of runs, as it is read. Every event is written by the statement that
//! makes its transition, in the same statement, with the run's sequence raised under its row lock.

use chrono::{DateTime, Utc};

use super::query::Query;
use super::{Error, Store};
use crate::ids::{LeaseEpoch, NodeId, RunId};
use crate::run::RunStatus;

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The run.
    pub run_id: RunId,
    /// Its place in the run's history, from 1, without gaps.
    pub seq: i64,
    /// Its name.
    pub event: String,
    /// The run's status right after it; `None` for events recorded before the status was, or
    /// with a status this build does not know.
    pub run_status: Option<RunStatus>,
    /// When, by the database's clock.
    pub occurred_at: DateTime<Utc>,
    /// The epoch it happened under.
    pub epoch: LeaseEpoch,
    /// The node it concerns.
    pub node_id: Option<NodeId>,
    /// The node attempt it concerns.
    pub attempt: Option<i32>,
    /// Why.
    pub reason: Option<String>,
    /// The stop kind it recorded.
    pub stop_kind: Option<String>,
    /// Anything else.
    pub metadata: serde_json::Value,
}

// A run's events after a sequence number, in order: what a watcher that reconnects asks for.
const EVENTS_AFTER: Query = Query {
    name: "events_after",
    sql: "\
SELECT run_id, seq, event, run_status, occurred_at, epoch, node_id, attempt, reason, stop_kind,
       metadata
FROM run_events WHERE run_id = $1::uuid AND seq > $2::bigint
ORDER BY seq LIMIT $3::int",
};

pub(super) const QUERIES: &[Query] = &[EVENTS_AFTER];

impl Store {
    /// Up to `limit` events of a run after sequence number `after_seq`, in order.
    pub async fn events_after(
        &self,
        run_id: RunId,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<Event>, Error> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let client = self.client().await?;
        let rows = EVENTS_AFTER
            .query(&client, &[&run_id.0, &after_seq, &limit])
            .await?;
        Ok(rows.iter().map(read_event).collect())
    }
}

/// An event as a row of [`EVENTS_AFTER`] (or a statement with its columns) holds it.
pub(super) fn read_event(row: &tokio_postgres::Row) -> Event {
    Event {
        run_id: RunId(row.get("run_id")),
        seq: row.get("seq"),
        event: row.get("event"),
        run_status: row
            .get::<_, Option<&str>>("run_status")
            .and_then(|s| s.parse().ok()),
        occurred_at: row.get("occurred_at"),
        epoch: LeaseEpoch(row.get("epoch")),
        node_id: row.get::<_, Option<String>>("node_id").map(NodeId),
        attempt: row.get("attempt"),
        reason: row.get("reason"),
        stop_kind: row.get("stop_kind"),
        metadata: row.get("metadata"),
    }
}
