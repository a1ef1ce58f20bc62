//! Node checkpoints: each start, output and failure, fenced on the claim.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::Client;
use tokio_postgres::Row;

use super::query::Query;
use super::{Claim, Error, FenceError, StartedNode, Store};
use crate::ids::{LeaseEpoch, NodeId, RunId};
use crate::run::{NodeState, NodeStatus};

/// A node to start, in a batch of starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStart {
    /// The claim the start is made under.
    pub claim: Claim,
    /// The node.
    pub node_id: NodeId,
}

/// A node's output to record, in a batch of completions.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCompletion {
    /// The claim the node was started under.
    pub claim: Claim,
    /// The node.
    pub node_id: NodeId,
    /// What the handler returned.
    pub output: serde_json::Value,
    /// This is the run's last node: complete the run too, if no other node of it runs.
    pub completes_run: bool,
    /// Nodes this completion makes ready, to start in the same statement: each one's attempt
    /// is counted as [`Store::nodes_started`] counts it, if the completion lands and the run
    /// is not asked to pause. Empty for a completion that completes the run.
    pub then_start: Vec<NodeId>,
}

/// What a landed completion wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completed {
    /// The run completed with it.
    pub run_completed: bool,
    /// The nodes of [`NodeCompletion::then_start`] it started, with their attempts; a node
    /// missing from it was not started (the run was asked to pause, or the node had started
    /// under this claim already): start it with [`Store::nodes_started`], which says which.
    pub started: Vec<StartedNode>,
}

/// A node's row in the checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    /// The node.
    pub node_id: NodeId,
    /// Where it stands.
    pub status: NodeStatus,
    /// Attempts started, interrupted ones included.
    pub attempts: u32,
    /// Of those, the attempts a clean stop (a shutdown hand-back, a pause) interrupted, which do
    /// not count toward `max_attempts`.
    pub clean_interruptions: u32,
    /// Its output, once completed.
    pub output: Option<serde_json::Value>,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// Whether the last failure may succeed on another attempt.
    pub last_error_retryable: Option<bool>,
    /// The epoch of the claim that last wrote it.
    pub epoch: LeaseEpoch,
    /// When the current attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished, if it has.
    pub finished_at: Option<DateTime<Utc>>,
}

impl NodeRecord {
    /// The part of the record the ready-node rule reads.
    pub fn state(&self) -> NodeState {
        NodeState {
            status: self.status,
            attempts: self.attempts,
            retryable: self.last_error_retryable.unwrap_or(true),
            clean_interruptions: self.clean_interruptions,
        }
    }
}

// Every node write has the same shape. `held` takes the row lock of each write's run, in run-id
// order (the order every batched write and the reaper lock in, so they wait for each other
// instead of deadlocking), and checks the claim on the row's newest version, so a claim that
// moved on makes the statement write nothing for that run. The lock is taken in a LATERAL
// lookup by primary key per write: a join of the runs with the arrays is planned, with a generic
// plan, as a nested loop over every held run, quadratic in the batch. `node` then writes the node
// rows with their own conditions in the WHERE (or ON CONFLICT WHERE): those are re-checked on
// the newest row version too, where a subquery would read the statement's older snapshot and let
// a repeat that waited behind the first write count twice. `fenced` raises each run's event
// sequence by the node rows that changed, and `event` records them, unnested per run.
//
// Starts and completions are batched: one statement carries the writes of many runs (a worker
// flushes what its runs have queued), and each write is still fenced on its own claim.

// Counts the attempts before the handlers are called (docs/lease_protocol.md, rule 8), and marks progress
// under each claim, which decides between requeue and stale-reap if the lease later expires. A
// node that completed, was skipped, or already started under this claim is left alone, and so
// is a run asked to pause: its running nodes finish, but no new one starts.
// $1/$2/$3: the nodes to start, each with its claim, in run-id order.
const NODES_STARTED: Query = Query {
    name: "nodes_started",
    sql: "\
WITH held AS (
    SELECT start.run_id, start.epoch, start.node_id
    FROM unnest($1::uuid[], $2::bigint[], $3::text[]) AS start(run_id, epoch, node_id),
    LATERAL (
        SELECT 1 FROM runs r
        WHERE r.run_id = start.run_id AND r.lease_epoch = start.epoch AND r.status = 'running'
        FOR UPDATE
    ) AS locked
),
node AS (
    INSERT INTO run_nodes AS n (run_id, node_id, status, attempts, epoch, started_at)
    SELECT run_id, node_id, 'running', 1, epoch, now() FROM held
    ON CONFLICT (run_id, node_id) DO UPDATE
    SET status = 'running', attempts = n.attempts + 1, epoch = excluded.epoch,
        started_at = excluded.started_at, finished_at = NULL
    WHERE n.status IN ('running', 'failed') AND n.epoch < excluded.epoch
    RETURNING n.run_id, n.node_id, n.attempts, n.epoch
),
counted AS (
    SELECT run_id, count(*) AS started, array_agg(node_id ORDER BY node_id) AS nodes,
           array_agg(attempts ORDER BY node_id) AS attempts
    FROM node GROUP BY run_id
),
fenced AS (
    UPDATE runs r
    SET progress_epoch = r.lease_epoch, expired_claims = 0,
        event_seq = r.event_seq + counted.started, updated_at = now()
    FROM counted
    WHERE r.run_id = counted.run_id
    RETURNING r.run_id, r.tenant_id, r.status, r.lease_epoch,
              r.event_seq - counted.started AS seq_before, counted.nodes, counted.attempts
),
event AS (
    INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, node_id, attempt)
    SELECT fenced.run_id, fenced.seq_before + started.nth, fenced.tenant_id, 'node_started',
           fenced.status, fenced.lease_epoch, started.node_id, started.attempt
    FROM fenced, unnest(fenced.nodes, fenced.attempts) WITH ORDINALITY AS started(node_id, attempt, nth)
)
SELECT run_id, epoch, node_id, attempts FROM node",
};

// Records running nodes' outputs under the claims that started them: each node must be running
// under its claim's very epoch. A run whose last node this is (`finish`) completes in the same
// statement, saving the round trip of a separate completion, unless another of its nodes is
// still running. The snapshot read of the other nodes is safe: only the holder of the run's
// lock writes them.
//
// A completion may also start the nodes it makes ready ($6/$7: the completion's position among
// $1..$5 and the node to start), as a batch of starts would (NODES_STARTED: attempt counted,
// progress marked, a `node_started` event after the completions' events), if it landed and its
// run is not pausing: a chain's next node then costs no statement of its own. The run's row is
// updated once, for both, since a statement can change a row only once.
// $1..$5: the completed nodes, each with its claim and whether it completes the run, in run-id
// order.
const NODES_COMPLETED: Query = Query {
    name: "nodes_completed",
    sql: "\
WITH held AS (
    SELECT done.run_id, done.epoch, done.node_id, done.output, done.finish, done.i, locked.status
    FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::jsonb[], $5::boolean[])
             WITH ORDINALITY AS done(run_id, epoch, node_id, output, finish, i),
    LATERAL (
        SELECT r.status FROM runs r
        WHERE r.run_id = done.run_id AND r.lease_epoch = done.epoch
          AND r.status IN ('running', 'pausing')
        FOR UPDATE
    ) AS locked
),
node AS (
    UPDATE run_nodes n
    SET status = 'completed', output = held.output, last_error = NULL, finished_at = now()
    FROM held
    WHERE n.run_id = held.run_id AND n.node_id = held.node_id
      AND n.status = 'running' AND n.epoch = held.epoch
    RETURNING n.run_id, n.node_id, n.attempts, held.finish, held.status AS run_status, held.i,
              held.epoch
),
next AS (
    INSERT INTO run_nodes AS n (run_id, node_id, status, attempts, epoch, started_at)
    SELECT DISTINCT ON (node.run_id, start.node_id) node.run_id, start.node_id, 'running', 1,
           node.epoch, now()
    FROM unnest($6::int[], $7::text[]) AS start(i, node_id)
    JOIN node ON node.i = start.i
    WHERE NOT node.finish AND node.run_status = 'running'
    ORDER BY node.run_id, start.node_id
    ON CONFLICT (run_id, node_id) DO UPDATE
    SET status = 'running', attempts = n.attempts + 1, epoch = excluded.epoch,
        started_at = excluded.started_at, finished_at = NULL
    WHERE n.status IN ('running', 'failed') AND n.epoch < excluded.epoch
    RETURNING n.run_id, n.node_id, n.attempts, n.epoch
),
-- Per run, its completed nodes and the nodes started after them in one row, and whether it
-- completes: one aggregate over both (a join of two aggregates was planned as a nested loop that
-- sorted one of them again for every row of the other). MATERIALIZED so the NOT EXISTS is
-- evaluated once per run, not once per column that reads it.
finishing AS MATERIALIZED (
    SELECT c.run_id, c.done, c.nodes, c.attempts, c.run_status, c.finish AND NOT EXISTS (
        SELECT 1 FROM run_nodes other
        WHERE other.run_id = c.run_id AND other.status = 'running'
          AND other.node_id <> ALL (c.nodes)) AS finish,
           c.started, c.started_nodes, c.started_attempts
    FROM (
        SELECT run_id,
               count(*) FILTER (WHERE NOT is_start) AS done,
               array_agg(node_id ORDER BY node_id) FILTER (WHERE NOT is_start) AS nodes,
               array_agg(attempts ORDER BY node_id) FILTER (WHERE NOT is_start) AS attempts,
               bool_or(finish) AS finish, min(run_status) AS run_status,
               count(*) FILTER (WHERE is_start) AS started,
               array_agg(node_id ORDER BY node_id) FILTER (WHERE is_start) AS started_nodes,
               array_agg(attempts ORDER BY node_id) FILTER (WHERE is_start) AS started_attempts
        FROM (
            SELECT run_id, node_id, attempts, finish, run_status, false AS is_start FROM node
            UNION ALL
            SELECT run_id, node_id, attempts, false, NULL, true FROM next
        ) written
        GROUP BY run_id
    ) c
),
fenced AS (
    UPDATE runs r
    SET event_seq = r.event_seq + f.done + f.started + f.finish::int,
        progress_epoch = CASE WHEN f.started > 0 THEN r.lease_epoch ELSE r.progress_epoch END,
        expired_claims = CASE WHEN f.started > 0 THEN 0 ELSE r.expired_claims END,
        status = CASE WHEN f.finish THEN 'completed' ELSE r.status END,
        finished_at = CASE WHEN f.finish THEN now() ELSE r.finished_at END,
        claim_id = CASE WHEN f.finish THEN NULL ELSE r.claim_id END,
        claimant_id = CASE WHEN f.finish THEN NULL ELSE r.claimant_id END,
        claimed_at = CASE WHEN f.finish THEN NULL ELSE r.claimed_at END,
        lease_expires_at = CASE WHEN f.finish THEN NULL ELSE r.lease_expires_at END,
        updated_at = now()
    FROM finishing f
    WHERE r.run_id = f.run_id
    RETURNING r.run_id, r.tenant_id, r.lease_epoch,
              r.event_seq - f.done - f.started - f.finish::int AS seq_before,
              f.nodes, f.attempts, f.finish, f.run_status, f.started_nodes, f.started_attempts
),
-- A run that completes here was still running (or pausing) right after its nodes' events.
node_event AS (
    INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, node_id, attempt)
    SELECT fenced.run_id, fenced.seq_before + done.nth, fenced.tenant_id, 'node_completed',
           fenced.run_status, fenced.lease_epoch, done.node_id, done.attempt
    FROM fenced, unnest(fenced.nodes, fenced.attempts) WITH ORDINALITY AS done(node_id, attempt, nth)
),
next_event AS (
    INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, node_id, attempt)
    SELECT fenced.run_id, fenced.seq_before + cardinality(fenced.nodes) + started.nth,
           fenced.tenant_id, 'node_started', 'running', fenced.lease_epoch, started.node_id,
           started.attempt
    FROM fenced,
         unnest(fenced.started_nodes, fenced.started_attempts)
             WITH ORDINALITY AS started(node_id, attempt, nth)
),
run_event AS (
    INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch)
    SELECT run_id, seq_before + cardinality(nodes) + 1, tenant_id, 'run_completed', 'completed',
           lease_epoch
    FROM fenced WHERE finish
)
SELECT fenced.run_id, fenced.lease_epoch AS epoch, done.node_id, fenced.finish,
       NULL::int AS started_attempt
FROM fenced, unnest(fenced.nodes) AS done(node_id)
UNION ALL
SELECT next.run_id, next.epoch, next.node_id, false, next.attempts FROM next",
};

// Records a running node's failed attempt under the claim that started it. Whether it is retried
// is the caller's next write (schedule_retry or fail_run).
const NODE_FAILED: Query = Query {
    name: "node_failed",
    sql: "\
WITH held AS (
    SELECT r.run_id FROM runs r
    WHERE r.run_id = $1::uuid AND r.lease_epoch = $2::bigint AND r.status IN ('running', 'pausing')
    FOR UPDATE
),
node AS (
    UPDATE run_nodes n
    SET status = 'failed', last_error = left($4::text, 8192), last_error_retryable = $5::boolean,
        finished_at = now()
    FROM held
    WHERE n.run_id = held.run_id AND n.node_id = $3::text
      AND n.status = 'running' AND n.epoch = $2::bigint
    RETURNING n.run_id, n.attempts
),
fenced AS (
    UPDATE runs r
    SET event_seq = r.event_seq + 1, updated_at = now()
    FROM node
    WHERE r.run_id = node.run_id
    RETURNING r.run_id, r.tenant_id, r.status, r.lease_epoch, r.event_seq
),
event AS (
    INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, node_id, attempt,
                            reason, metadata)
    SELECT fenced.run_id, fenced.event_seq, fenced.tenant_id, 'node_failed', fenced.status,
           fenced.lease_epoch,
           $3::text, node.attempts, left($4::text, 4096), jsonb_build_object('retryable', $5::boolean)
    FROM fenced, node
)
SELECT attempts FROM node",
};

// Read only when a fenced node write changed nothing: did the same write land before (a lost
// acknowledgement), is the lease gone, or does the checkpoint contradict the write?
const NODE_FENCE_STATE: Query = Query {
    name: "node_fence_state",
    sql: "\
SELECT r.status, r.lease_epoch, n.status AS node_status, n.epoch AS node_epoch, n.attempts,
       n.output, n.last_error
FROM runs r
LEFT JOIN run_nodes n ON n.run_id = r.run_id AND n.node_id = $2::text
WHERE r.run_id = $1::uuid",
};

// Every node row of a run: what a worker resuming it must not run again.
const CHECKPOINT: Query = Query {
    name: "checkpoint",
    sql: "\
SELECT node_id, status, attempts, clean_interruptions, output, last_error, last_error_retryable,
       epoch, started_at, finished_at
FROM run_nodes WHERE run_id = $1::uuid ORDER BY node_id",
};

// How often an operator reset each node of a run (a recover, a rework), read from those events'
// `reset` lists: a recover's lists rows (`{"node_id": …}`), a rework's lists node ids. Read only
// when a worker resumes a run; a run has few such events.
const NODE_RESETS: Query = Query {
    name: "node_resets",
    sql: "\
SELECT coalesce(reset.entry->>'node_id', reset.entry #>> '{}') AS node_id,
       count(*)::int AS resets
FROM run_events e
CROSS JOIN LATERAL jsonb_array_elements(
    CASE WHEN jsonb_typeof(e.metadata->'reset') = 'array' THEN e.metadata->'reset'
         ELSE '[]'::jsonb END) AS reset(entry)
WHERE e.run_id = $1::uuid AND e.event IN ('run_recovered', 'run_rework_requested')
GROUP BY 1",
};

pub(super) const QUERIES: &[Query] = &[
    NODES_STARTED,
    NODES_COMPLETED,
    NODE_FAILED,
    NODE_FENCE_STATE,
    CHECKPOINT,
    NODE_RESETS,
];

/// A node write that changed nothing: what the row says about why.
struct NodeFence {
    held_by_claim: bool,
    pausing: bool,
    node_status: Option<String>,
    node_epoch: Option<i64>,
    attempts: Option<i32>,
    output: Option<serde_json::Value>,
    last_error: Option<String>,
}

impl NodeFence {
    fn landed(&self, claim: &Claim, status: &str) -> bool {
        self.node_status.as_deref() == Some(status) && self.node_epoch == Some(claim.epoch.0)
    }

    fn attempts(&self) -> u32 {
        self.attempts.map_or(0, i32::unsigned_abs)
    }

    /// The error for a write that did not land.
    fn refusal(&self, claim: &Claim, node_id: &NodeId) -> FenceError {
        if !self.held_by_claim {
            return FenceError::LeaseLost {
                run_id: claim.run_id,
                epoch: claim.epoch,
            };
        }
        let reason = match (&self.node_status, self.node_epoch) {
            (None, _) => "the node has not started".to_owned(),
            (Some(status), Some(epoch)) => format!("the node is {status} (epoch {epoch})"),
            (Some(status), None) => format!("the node is {status}"),
        };
        FenceError::NodeConflict {
            run_id: claim.run_id,
            node_id: node_id.clone(),
            reason,
        }
    }
}

impl Store {
    /// Counts a new attempt of `node_id` and returns its number (1 for the first). Call it before
    /// the handler runs. Repeating it under the same claim returns the same attempt.
    pub async fn node_started(&self, claim: &Claim, node_id: &NodeId) -> Result<u32, FenceError> {
        let start = NodeStart {
            claim: *claim,
            node_id: node_id.clone(),
        };
        one(self.nodes_started(std::slice::from_ref(&start)).await?)
    }

    /// [`Store::node_started`] for many nodes, of one run or many, in one statement; answers in
    /// the order asked. The outer error is the statement's (the database unreachable, say); the
    /// inner ones are each start's own (its lease lost, its run pausing).
    pub async fn nodes_started(
        &self,
        starts: &[NodeStart],
    ) -> Result<Vec<Result<u32, FenceError>>, Error> {
        if starts.is_empty() {
            return Ok(Vec::new());
        }
        let unique = distinct_in_lock_order(starts, |s| (s.claim, s.node_id.as_str()));
        let run_ids: Vec<_> = unique.iter().map(|s| s.claim.run_id.0).collect();
        let epochs: Vec<_> = unique.iter().map(|s| s.claim.epoch.0).collect();
        let node_ids: Vec<_> = unique.iter().map(|s| s.node_id.as_str()).collect();
        let client = self.client().await?;
        let rows = NODES_STARTED
            .query(&client, &[&run_ids, &epochs, &node_ids])
            .await?;
        let landed = Landed::read(&rows, "attempts", |row, at| {
            row.get::<_, i32>(at).unsigned_abs()
        });
        let mut answers = Vec::with_capacity(starts.len());
        for start in starts {
            answers.push(match landed.get(&start.claim, start.node_id.as_str()) {
                Some(attempts) => Ok(attempts),
                None => start_not_written(&client, &start.claim, &start.node_id).await,
            });
        }
        Ok(answers)
    }

    /// Records the output of the running attempt of `node_id`.
    pub async fn node_completed(
        &self,
        claim: &Claim,
        node_id: &NodeId,
        output: &serde_json::Value,
    ) -> Result<(), FenceError> {
        let completion = NodeCompletion {
            claim: *claim,
            node_id: node_id.clone(),
            output: output.clone(),
            completes_run: false,
            then_start: Vec::new(),
        };
        one(self
            .nodes_completed(std::slice::from_ref(&completion))
            .await?)
        .map(|_| ())
    }

    /// [`Store::node_completed`] for many nodes in one statement, completing the runs whose last
    /// node a completion is; answers in the order asked, each saying whether the run completed.
    /// A run that could not complete (another of its nodes runs) or whose completion was not
    /// seen (a repeat after a lost acknowledgement) answers `false`: complete it with
    /// [`Store::complete_run`], which succeeds quietly if it already did.
    pub async fn nodes_completed(
        &self,
        completions: &[NodeCompletion],
    ) -> Result<Vec<Result<bool, FenceError>>, Error> {
        let answers = self.nodes_completed_and_started(completions).await?;
        Ok(answers
            .into_iter()
            .map(|answer| answer.map(|completed| completed.run_completed))
            .collect())
    }

    /// [`Store::nodes_completed`], also starting each completion's
    /// [`NodeCompletion::then_start`] in the same statement; answers in the order asked. A
    /// completion whose landing was not seen (a repeat after a lost acknowledgement) answers
    /// that it started nothing.
    pub async fn nodes_completed_and_started(
        &self,
        completions: &[NodeCompletion],
    ) -> Result<Vec<Result<Completed, FenceError>>, Error> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        let unique = distinct_in_lock_order(completions, |c| (c.claim, c.node_id.as_str()));
        let run_ids: Vec<_> = unique.iter().map(|c| c.claim.run_id.0).collect();
        let epochs: Vec<_> = unique.iter().map(|c| c.claim.epoch.0).collect();
        let node_ids: Vec<_> = unique.iter().map(|c| c.node_id.as_str()).collect();
        let outputs: Vec<_> = unique.iter().map(|c| &c.output).collect();
        let finish: Vec<_> = unique.iter().map(|c| c.completes_run).collect();
        // Each node to start, with the (1-based) position of the completion it follows.
        let (start_after, start_nodes): (Vec<i32>, Vec<&str>) = unique
            .iter()
            .zip(1..)
            .flat_map(|(c, i)| c.then_start.iter().map(move |n| (i, n.as_str())))
            .unzip();
        let client = self.client().await?;
        let rows = NODES_COMPLETED
            .query(
                &client,
                &[
                    &run_ids,
                    &epochs,
                    &node_ids,
                    &outputs,
                    &finish,
                    &start_after,
                    &start_nodes,
                ],
            )
            .await?;
        // A start's row carries its attempt; a completion's, none. The column is found once.
        let started_attempt = rows.first().and_then(|row| {
            row.columns()
                .iter()
                .position(|c| c.name() == "started_attempt")
        });
        let (started_rows, completed_rows): (Vec<&Row>, Vec<&Row>) = rows.iter().partition(|row| {
            started_attempt.is_some_and(|at| row.get::<_, Option<i32>>(at).is_some())
        });
        let landed = Landed::read(completed_rows, "finish", |row, at| row.get::<_, bool>(at));
        let started = Landed::read(started_rows, "started_attempt", |row, at| {
            row.get::<_, i32>(at).unsigned_abs()
        });
        let mut answers = Vec::with_capacity(completions.len());
        for c in completions {
            answers.push(match landed.get(&c.claim, c.node_id.as_str()) {
                Some(run_completed) => Ok(Completed {
                    run_completed,
                    started: c
                        .then_start
                        .iter()
                        .filter_map(|node_id| {
                            let attempt = started.get(&c.claim, node_id.as_str())?;
                            Some(StartedNode {
                                node_id: node_id.clone(),
                                attempt,
                            })
                        })
                        .collect(),
                }),
                None => completion_not_written(&client, &c.claim, &c.node_id, &c.output)
                    .await
                    .map(|()| Completed::default()),
            });
        }
        Ok(answers)
    }

    /// Records that the running attempt of `node_id` failed with `error`.
    pub async fn node_failed(
        &self,
        claim: &Claim,
        node_id: &NodeId,
        error: &str,
        retryable: bool,
    ) -> Result<(), FenceError> {
        let client = self.client().await?;
        let rows = NODE_FAILED
            .query(
                &client,
                &[
                    &claim.run_id.0,
                    &claim.epoch.0,
                    &node_id.as_str(),
                    &error,
                    &retryable,
                ],
            )
            .await?;
        if !rows.is_empty() {
            return Ok(());
        }
        let fence = node_fence(&client, claim, node_id).await?;
        let stored_error = fence.last_error.as_deref();
        if fence.landed(claim, "failed") && stored_error.is_some_and(|e| error.starts_with(e)) {
            Ok(())
        } else {
            Err(fence.refusal(claim, node_id))
        }
    }

    /// Every node row of a run.
    pub async fn checkpoint(&self, run_id: RunId) -> Result<Vec<NodeRecord>, Error> {
        let client = self.client().await?;
        let rows = CHECKPOINT.query(&client, &[&run_id.0]).await?;
        rows.iter().map(|row| read_node(run_id, row)).collect()
    }

    /// How often an operator reset each node of the run, by a recover or a rework; nodes never
    /// reset are absent. A reset node's next attempts are a new execution of it, which outside
    /// services must not take for a retry of the old one (`Context::idempotency_key`).
    pub async fn node_resets(&self, run_id: RunId) -> Result<HashMap<NodeId, u32>, Error> {
        let client = self.client().await?;
        let rows = NODE_RESETS.query(&client, &[&run_id.0]).await?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    NodeId(row.get("node_id")),
                    row.get::<_, i32>("resets").unsigned_abs(),
                )
            })
            .collect())
    }
}

// A write that changed nothing reads why on the connection it wrote with: taking a second one
// while holding the first would let as many repeats as the pool has connections (a cut that lost
// as many acknowledgements) wait for each other until the worker self-fences.

/// A start that changed nothing: the same start landed before (a lost acknowledgement), or why
/// it cannot land.
async fn start_not_written(
    client: &Client,
    claim: &Claim,
    node_id: &NodeId,
) -> Result<u32, FenceError> {
    let fence = node_fence(client, claim, node_id).await?;
    if fence.landed(claim, "running") && fence.held_by_claim {
        Ok(fence.attempts())
    } else if fence.pausing {
        Err(FenceError::PauseRequested {
            run_id: claim.run_id,
        })
    } else {
        Err(fence.refusal(claim, node_id))
    }
}

/// A completion that changed nothing: the same completion landed before (a lost
/// acknowledgement), or why it cannot land.
async fn completion_not_written(
    client: &Client,
    claim: &Claim,
    node_id: &NodeId,
    output: &serde_json::Value,
) -> Result<(), FenceError> {
    let fence = node_fence(client, claim, node_id).await?;
    if fence.landed(claim, "completed") && fence.output.as_ref() == Some(output) {
        Ok(())
    } else {
        Err(fence.refusal(claim, node_id))
    }
}

async fn node_fence(
    client: &Client,
    claim: &Claim,
    node_id: &NodeId,
) -> Result<NodeFence, FenceError> {
    let row = NODE_FENCE_STATE
        .query_opt(client, &[&claim.run_id.0, &node_id.as_str()])
        .await?
        .ok_or(FenceError::RunNotFound(claim.run_id))?;
    let status: &str = row.get("status");
    let ours = row.get::<_, i64>("lease_epoch") == claim.epoch.0;
    Ok(NodeFence {
        held_by_claim: ours && matches!(status, "running" | "pausing"),
        pausing: ours && status == "pausing",
        node_status: row.get("node_status"),
        node_epoch: row.get("node_epoch"),
        attempts: row.get("attempts"),
        output: row.get("output"),
        last_error: row.get("last_error"),
    })
}

fn read_node(run_id: RunId, row: &Row) -> Result<NodeRecord, Error> {
    let status_text: &str = row.get("status");
    let status = NodeStatus::parse(status_text).ok_or_else(|| Error::UnreadableRun {
        run_id,
        reason: format!("unknown node status {status_text:?}"),
    })?;
    Ok(NodeRecord {
        node_id: NodeId(row.get("node_id")),
        status,
        attempts: row.get::<_, i32>("attempts").unsigned_abs(),
        clean_interruptions: row.get::<_, i32>("clean_interruptions").unsigned_abs(),
        output: row.get("output"),
        last_error: row.get("last_error"),
        last_error_retryable: row.get("last_error_retryable"),
        epoch: LeaseEpoch(row.get("epoch")),
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
    })
}

/// The node rows a batch's statement wrote, each under the claim it was written with (a batch
/// may carry an old claim of a run beside its current one, and only the current one's writes
/// land), with one value of each. Sorted and searched: a batch is a few hundred rows at most, and
/// hashing each key cost more than the search.
struct Landed<'r, V> {
    rows: Vec<((RunId, i64, &'r str), V)>,
}

impl<'r, V: Copy> Landed<'r, V> {
    /// Reads `rows`' claim and node, and `value` from the column `value_column`.
    fn read(
        rows: impl IntoIterator<Item = &'r Row>,
        value_column: &str,
        value: impl Fn(&'r Row, usize) -> V,
    ) -> Self {
        let rows: Vec<&'r Row> = rows.into_iter().collect();
        let Some(first) = rows.first() else {
            return Self { rows: Vec::new() };
        };
        let at = |name: &str| {
            first
                .columns()
                .iter()
                .position(|c| c.name() == name)
                .unwrap_or_else(|| panic!("the statement answers {name}"))
        };
        let (run_id, epoch, node_id, value_at) =
            (at("run_id"), at("epoch"), at("node_id"), at(value_column));
        let mut landed: Vec<_> = rows
            .into_iter()
            .map(|row| {
                let key = (RunId(row.get(run_id)), row.get(epoch), row.get(node_id));
                (key, value(row, value_at))
            })
            .collect();
        landed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Self { rows: landed }
    }

    fn get(&self, claim: &Claim, node_id: &str) -> Option<V> {
        let key = (claim.run_id, claim.epoch.0, node_id);
        self.rows
            .binary_search_by(|(landed, _)| landed.cmp(&key))
            .ok()
            .map(|i| self.rows[i].1)
    }
}

/// The one answer of a batch of one.
fn one<T>(answers: Vec<Result<T, FenceError>>) -> Result<T, FenceError> {
    answers
        .into_iter()
        .next()
        .expect("a batch answers every item it was given")
}

/// Each item once (a node written twice in one statement is an error in Postgres), in run-id
/// order: the order `held` locks the runs in.
fn distinct_in_lock_order<'a, T>(
    items: &'a [T],
    key: impl Fn(&'a T) -> (Claim, &'a str),
) -> Vec<&'a T> {
    let order = |item: &&'a T| {
        let (claim, node_id) = key(item);
        (claim.run_id, claim.epoch.0, node_id)
    };
    let mut unique: Vec<&T> = items.iter().collect();
    // A stable sort keeps equal items in their order, so the first of each is kept.
    unique.sort_by_key(order);
    unique.dedup_by_key(|item| order(item));
    unique
}
