//! The append-only history of runs.

use chrono::{DateTime, Utc};

use super::query::Query;
use super::{Error, Store};
use crate::ids::{LeaseEpoch, NodeId, RunId};

/// An event to append to a run's history.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The run.
    pub run_id: RunId,
    /// Its name (`gate_marked_stale`, …).
    pub event: String,
    /// The epoch it happened under.
    pub epoch: LeaseEpoch,
    /// The node it concerns, if any.
    pub node_id: Option<NodeId>,
    /// The node attempt it concerns, if any.
    pub attempt: Option<i32>,
    /// Why, for people.
    pub reason: Option<String>,
    /// Anything else, as JSON.
    pub metadata: serde_json::Value,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The run.
    pub run_id: RunId,
    /// Its place in the run's history, from 1, without gaps.
    pub seq: i64,
    /// Its name.
    pub event: String,
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

// Any number of events for any number of runs in one statement. Each run's sequence is raised
// by its count of new events under the run's row lock, and the new events take the numbers in
// between, so the history stays gap-free and ordered like the writes that made it.
const APPEND_EVENTS: Query = Query {
    name: "append_events",
    sql: "\
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::int[], $6::text[],
                         $7::jsonb[])
        WITH ORDINALITY AS e(run_id, event, epoch, node_id, attempt, reason, metadata, ord)
),
counts AS (
    SELECT run_id, count(*) AS n FROM input GROUP BY run_id
),
bumped AS (
    UPDATE runs r SET event_seq = r.event_seq + counts.n
    FROM counts
    WHERE r.run_id = counts.run_id
    RETURNING r.run_id, r.tenant_id, r.event_seq - counts.n AS base
)
INSERT INTO run_events (run_id, seq, tenant_id, event, epoch, node_id, attempt, reason, metadata)
SELECT i.run_id, b.base + row_number() OVER (PARTITION BY i.run_id ORDER BY i.ord), b.tenant_id,
       i.event, i.epoch, i.node_id, i.attempt, i.reason, i.metadata
FROM input i JOIN bumped b ON b.run_id = i.run_id
RETURNING run_id",
};

// A run's events after a sequence number, in order: what a watcher that reconnects asks for.
const EVENTS_AFTER: Query = Query {
    name: "events_after",
    sql: "\
SELECT run_id, seq, event, occurred_at, epoch, node_id, attempt, reason, stop_kind, metadata
FROM run_events WHERE run_id = $1::uuid AND seq > $2::bigint
ORDER BY seq LIMIT $3::int",
};

pub(super) const QUERIES: &[Query] = &[APPEND_EVENTS, EVENTS_AFTER];

impl Store {
    /// Appends events in one statement; returns how many were stored. Events of unknown runs
    /// are dropped.
    pub async fn append_events(&self, events: &[NewEvent]) -> Result<usize, Error> {
        if events.is_empty() {
            return Ok(0);
        }
        let run_ids: Vec<_> = events.iter().map(|e| e.run_id.0).collect();
        let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
        let epochs: Vec<i64> = events.iter().map(|e| e.epoch.0).collect();
        let nodes: Vec<Option<&str>> = events
            .iter()
            .map(|e| e.node_id.as_ref().map(NodeId::as_str))
            .collect();
        let attempts: Vec<Option<i32>> = events.iter().map(|e| e.attempt).collect();
        let reasons: Vec<Option<&str>> = events.iter().map(|e| e.reason.as_deref()).collect();
        let metadata: Vec<&serde_json::Value> = events.iter().map(|e| &e.metadata).collect();
        let client = self.client().await?;
        let rows = APPEND_EVENTS
            .query(
                &client,
                &[
                    &run_ids, &names, &epochs, &nodes, &attempts, &reasons, &metadata,
                ],
            )
            .await?;
        Ok(rows.len())
    }

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
        Ok(rows
            .iter()
            .map(|row| Event {
                run_id: RunId(row.get("run_id")),
                seq: row.get("seq"),
                event: row.get("event"),
                occurred_at: row.get("occurred_at"),
                epoch: LeaseEpoch(row.get("epoch")),
                node_id: row.get::<_, Option<String>>("node_id").map(NodeId),
                attempt: row.get("attempt"),
                reason: row.get("reason"),
                stop_kind: row.get("stop_kind"),
                metadata: row.get("metadata"),
            })
            .collect())
    }
}
