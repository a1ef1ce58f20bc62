//! The registry of worker processes (with their liveness and the node kinds they advertise), and
//! the channels they listen on: wake-ups for queued runs, and stop notices for held ones.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;

use super::connect::Connector;
use super::gated::{QUEUES_SCHEMA_VERSION, before_schema, since_schema};
use super::query::Query;
use super::{Error, Store, millis};
use crate::ids::{ClaimantId, RunId};
use crate::kinds::Schema;
use crate::routing::Capabilities;

/// The channel a NOTIFY on it wakes idle workers through. It carries no payload: it is a hint
/// that runs are due, never the queue itself.
pub const QUEUED_CHANNEL: &str = "leasehold_runs_queued";

// On a connection of its own, outside the pool: a pooled connection would be handed to others.
const LISTEN_QUEUED: Query = Query {
    name: "listen_queued",
    sql: "LISTEN leasehold_runs_queued",
};

/// The channel on which a user's cancel or pause of a held run tells its holder, with the run's
/// id as the payload, so that the holder checks its lease at once instead of at its next
/// heartbeat. A hint like [`QUEUED_CHANNEL`]: the heartbeat still learns of every cancel and
/// pause when a notification is missed.
pub const STOPPED_CHANNEL: &str = "leasehold_runs_stopped";

// On the same connection as LISTEN_QUEUED: a worker costs the database one listening session.
const LISTEN_STOPPED: Query = Query {
    name: "listen_stopped",
    sql: "LISTEN leasehold_runs_stopped",
};

/// Stop notices a listener keeps for a receiver that has not read them yet. A receiver that
/// falls further behind reads [`StopNotice::Missed`] and checks every lease it holds.
const STOP_NOTICES_BUFFERED: usize = 1024;

/// Delay before listening again after the listening connection dropped.
const RELISTEN_DELAY: Duration = Duration::from_secs(1);

/// How long after its last heartbeat a worker that did not state its lease (one of a release
/// before leases were stated) is still shown alive: a few heartbeats of the default lease.
pub const ALIVE_WITHOUT_STATED_LEASE: Duration = Duration::from_secs(60);

/// A worker process as it registers itself.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerInfo {
    /// Unique per process start.
    pub claimant_id: ClaimantId,
    /// The machine.
    pub host: String,
    /// The process.
    pub pid: u32,
    /// The build.
    pub version: String,
    /// Runs it holds at most at once.
    pub capacity: u32,
    /// The lease it takes on runs: it is shown alive while its last heartbeat is younger.
    pub lease: Duration,
    /// The node kinds it executes, with the input schemas they declared.
    pub kinds: Vec<AdvertisedKind>,
    /// The queues it claims from.
    pub queues: BTreeSet<String>,
    /// Its labels (`gpu=a100`).
    pub labels: BTreeMap<String, String>,
    /// The names of the context it holds (never the values).
    pub context: BTreeSet<String>,
}

/// A registered worker process, with what the database knows of it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRecord {
    /// Unique per process start.
    pub claimant_id: ClaimantId,
    /// The machine.
    pub host: String,
    /// The process.
    pub pid: u32,
    /// The build.
    pub version: String,
    /// Runs it holds at most at once.
    pub capacity: u32,
    /// The node kinds it executes.
    pub handlers: Vec<String>,
    /// The lease it takes on runs, as it stated when it registered; `None` for a worker of a
    /// release that did not state it.
    pub lease: Option<Duration>,
    /// When it registered.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat, by the database's clock.
    pub last_heartbeat: DateTime<Utc>,
    /// Asked to stop claiming and hand its runs back.
    pub draining: bool,
    /// Its last heartbeat is younger than its lease (or, without one,
    /// [`ALIVE_WITHOUT_STATED_LEASE`]), by the database's now:
    /// a worker that stopped beating is shown dead once the runs it held could have been reaped.
    pub alive: bool,
    /// Runs it holds a lease on now (running or pausing), in every tenant.
    pub held_runs: i64,
    /// The queues it claims from; `None` for a worker of a release before queues, which claims
    /// from every queue.
    pub queues: Option<BTreeSet<String>>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The names of the context it holds.
    pub context: BTreeSet<String>,
}

impl WorkerRecord {
    /// What it can run, as a claim judges it.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            queues: self.queues.clone(),
            kinds: self.handlers.iter().cloned().collect(),
            labels: self.labels.clone(),
            context: self.context.clone(),
        }
    }
}

/// A node kind as a worker advertises it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdvertisedKind {
    /// The kind's name, as specs write it.
    pub kind: String,
    /// The inputs it accepts; `None` accepts any.
    pub input_schema: Option<Schema>,
}

/// A node kind some worker has advertised.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeKindRecord {
    /// The kind.
    pub kind: String,
    /// The schema the latest worker to advertise it declared, as stored: a newer build's may use
    /// keywords this one cannot read, so it is checked where it is used. `None`: it declared none.
    pub input_schema: Option<Value>,
    /// When a worker first advertised it.
    pub first_advertised_at: DateTime<Utc>,
    /// When a worker last advertised it.
    pub last_advertised_at: DateTime<Utc>,
}

// Upsert: a worker that lost its row (deleted by an operator) registers again when it restarts.
// The kinds are advertised in the same statement, the latest worker's schema replacing the
// previous one (during a rolling deploy the newest build registers last). Kinds are upserted in
// name order, so two workers registering at once lock the rows in the same order and never
// deadlock; DISTINCT ON keeps a repeated kind from updating its row twice.
const REGISTER_WORKER: Query = Query {
    name: "register_worker",
    sql: concat!(
        "\
WITH worker AS (
    INSERT INTO workers (claimant_id, host, pid, version, capacity, handlers, lease_ms",
        since_schema!(14, ", queues, labels, context"),
        ")
    VALUES ($1::text, $2::text, $3::int, $4::text, $5::int, $6::text[], $8::bigint",
        since_schema!(14, ", $9::text[], $10::jsonb, $11::text[]"),
        ")
    ON CONFLICT (claimant_id) DO UPDATE
    SET host = excluded.host, pid = excluded.pid, version = excluded.version,
        capacity = excluded.capacity, handlers = excluded.handlers,
        lease_ms = excluded.lease_ms, last_heartbeat = now()",
        since_schema!(
            14,
            ",
        queues = excluded.queues, labels = excluded.labels, context = excluded.context"
        ),
        "
)
INSERT INTO node_kinds (kind, input_schema)
SELECT DISTINCT ON (a.kind) a.kind, a.input_schema
FROM unnest($6::text[], $7::jsonb[]) AS a(kind, input_schema)
ORDER BY a.kind
ON CONFLICT (kind) DO UPDATE
SET input_schema = excluded.input_schema, last_advertised_at = now()"
    ),
};

// Every registered worker, with liveness judged by its own lease on the database's clock (tests
// pin now) and the runs each holds now. Workers are few (one row per process); the held counts
// are one aggregate over the held runs, which runs_held_idx keeps to the runs being executed,
// not all runs. Not tenant-scoped: workers claim across tenants.
const LIST_WORKERS: Query = Query {
    name: "list_workers",
    sql: concat!(
        "\
SELECT w.claimant_id, w.host, w.pid, w.version, w.capacity, w.handlers, w.started_at,
       w.last_heartbeat, w.draining, w.lease_ms, ",
        since_schema!(14, "w.queues, w.labels, w.context"),
        before_schema!(
            14,
            "NULL::text[] AS queues, NULL::jsonb AS labels, NULL::text[] AS context"
        ),
        ",
       w.last_heartbeat + coalesce(w.lease_ms, $1::bigint) * interval '1 millisecond'
           > coalesce($2::timestamptz, now()) AS alive,
       coalesce(held.n, 0) AS held_runs
FROM workers w
LEFT JOIN (
    SELECT claimant_id, count(*) AS n FROM runs
    WHERE status IN ('running', 'pausing')
    GROUP BY claimant_id
) AS held ON held.claimant_id = w.claimant_id
ORDER BY w.started_at, w.claimant_id"
    ),
};

// For ListNodeKinds (every kind) and for checking a spec's inputs (the kinds it uses). The table
// holds a row per kind ever advertised: a few dozen at most.
const NODE_KINDS: Query = Query {
    name: "node_kinds",
    sql: "\
SELECT kind, input_schema, first_advertised_at, last_advertised_at
FROM node_kinds
WHERE $1::text[] IS NULL OR kind = ANY($1::text[])
ORDER BY kind",
};

// Liveness for `worker list`, and the draining flag an operator may have set since the last beat.
const WORKER_HEARTBEAT: Query = Query {
    name: "worker_heartbeat",
    sql: "\
UPDATE workers SET last_heartbeat = now() WHERE claimant_id = $1::text RETURNING draining",
};

// Asks a worker to stop claiming and hand its runs back; it learns of it on its next beat.
const SET_WORKER_DRAINING: Query = Query {
    name: "set_worker_draining",
    sql: "\
UPDATE workers SET draining = true WHERE claimant_id = $1::text RETURNING claimant_id",
};

// A worker that exits cleanly removes its row.
const DEREGISTER_WORKER: Query = Query {
    name: "deregister_worker",
    sql: "DELETE FROM workers WHERE claimant_id = $1::text",
};

pub(super) const QUERIES: &[Query] = &[
    REGISTER_WORKER,
    LIST_WORKERS,
    NODE_KINDS,
    WORKER_HEARTBEAT,
    SET_WORKER_DRAINING,
    DEREGISTER_WORKER,
    LISTEN_QUEUED,
    LISTEN_STOPPED,
];

/// What a worker hears on [`STOPPED_CHANNEL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopNotice {
    /// A user cancelled or paused this run while a worker held it.
    Run(RunId),
    /// Notices may have been missed: the listening connection was (re)established, or the
    /// receiver fell behind. Check every lease held.
    Missed,
}

/// Stop notices from [`STOPPED_CHANNEL`], from the listener [`Store::listen_worker`] started.
pub struct StopNotices {
    notices: broadcast::Receiver<StopNotice>,
}

impl StopNotices {
    /// The next notice; waits for ever once the listener is gone.
    pub async fn next(&mut self) -> StopNotice {
        match self.notices.recv().await {
            Ok(notice) => notice,
            Err(broadcast::error::RecvError::Lagged(_)) => StopNotice::Missed,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }

    /// A notice that is already waiting, without waiting for one.
    pub fn try_next(&mut self) -> Option<StopNotice> {
        match self.notices.try_recv() {
            Ok(notice) => Some(notice),
            Err(broadcast::error::TryRecvError::Lagged(_)) => Some(StopNotice::Missed),
            Err(_) => None,
        }
    }
}

/// Wake-ups from [`QUEUED_CHANNEL`], on a connection of their own.
///
/// Notifications are lost while the connection is down and are coalesced while nobody waits:
/// callers must also poll.
pub struct Wakeups {
    notify: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Wakeups {
    /// Waits for the next notification (or returns at once if one came since the last wait).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Store {
    /// Adds or refreshes the worker's row, and advertises its kinds with their schemas.
    pub async fn register_worker(&self, info: &WorkerInfo) -> Result<(), Error> {
        let pid = i32::try_from(info.pid).unwrap_or(i32::MAX);
        let capacity = i32::try_from(info.capacity).unwrap_or(i32::MAX);
        let kinds: Vec<&str> = info.kinds.iter().map(|k| k.kind.as_str()).collect();
        let schemas: Vec<Option<&Value>> = info
            .kinds
            .iter()
            .map(|k| k.input_schema.as_ref().map(Schema::as_value))
            .collect();
        let queues: Vec<&str> = info.queues.iter().map(String::as_str).collect();
        let labels = labels_json(&info.labels);
        let context: Vec<&str> = info.context.iter().map(String::as_str).collect();
        let client = self.client().await?;
        let schema = self.schema(&client).await?;
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 11] = [
            &info.claimant_id.as_str(),
            &info.host,
            &pid,
            &info.version,
            &capacity,
            &kinds,
            &schemas,
            &millis(info.lease),
            &queues,
            &labels,
            &context,
        ];
        let args = if schema >= QUEUES_SCHEMA_VERSION {
            &args[..]
        } else {
            &args[..8]
        };
        REGISTER_WORKER
            .for_schema(schema)
            .execute(&client, args)
            .await?;
        Ok(())
    }

    /// Every registered worker; `alive` says whether its last heartbeat is younger than its
    /// lease at `now` (the database's now when `None`; tests pin it).
    pub async fn list_workers(
        &self,
        now: Option<DateTime<Utc>>,
    ) -> Result<Vec<WorkerRecord>, Error> {
        let client = self.client().await?;
        let unstated = millis(ALIVE_WITHOUT_STATED_LEASE);
        let schema = self.schema(&client).await?;
        let rows = LIST_WORKERS
            .for_schema(schema)
            .query(&client, &[&unstated, &now])
            .await?;
        Ok(rows
            .iter()
            .map(|row| WorkerRecord {
                claimant_id: ClaimantId(row.get("claimant_id")),
                host: row.get("host"),
                pid: row.get::<_, i32>("pid").unsigned_abs(),
                version: row.get("version"),
                capacity: row.get::<_, i32>("capacity").unsigned_abs(),
                handlers: row.get("handlers"),
                lease: row
                    .get::<_, Option<i64>>("lease_ms")
                    .map(|ms| Duration::from_millis(ms.unsigned_abs())),
                started_at: row.get("started_at"),
                last_heartbeat: row.get("last_heartbeat"),
                draining: row.get("draining"),
                alive: row.get("alive"),
                held_runs: row.get("held_runs"),
                queues: row
                    .get::<_, Option<Vec<String>>>("queues")
                    .map(|queues| queues.into_iter().collect()),
                labels: labels_from_json(row.get("labels")),
                context: row
                    .get::<_, Option<Vec<String>>>("context")
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            })
            .collect())
    }

    /// The node kinds workers have advertised, sorted by kind: those named in `only`, or all.
    pub async fn node_kinds(&self, only: Option<&[String]>) -> Result<Vec<NodeKindRecord>, Error> {
        let client = self.client().await?;
        let rows = NODE_KINDS.query(&client, &[&only]).await?;
        Ok(rows
            .iter()
            .map(|row| NodeKindRecord {
                kind: row.get("kind"),
                input_schema: row.get("input_schema"),
                first_advertised_at: row.get("first_advertised_at"),
                last_advertised_at: row.get("last_advertised_at"),
            })
            .collect())
    }

    /// Records the worker as alive; returns whether it was asked to drain, or `None` when its
    /// row is gone.
    pub async fn worker_heartbeat(&self, claimant: &ClaimantId) -> Result<Option<bool>, Error> {
        let client = self.client().await?;
        let row = WORKER_HEARTBEAT
            .query_opt(&client, &[&claimant.as_str()])
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Asks a worker to drain; false when no such worker is registered.
    pub async fn set_worker_draining(&self, claimant: &ClaimantId) -> Result<bool, Error> {
        let client = self.client().await?;
        Ok(SET_WORKER_DRAINING
            .query_opt(&client, &[&claimant.as_str()])
            .await?
            .is_some())
    }

    /// Removes the worker's row.
    pub async fn deregister_worker(&self, claimant: &ClaimantId) -> Result<(), Error> {
        let client = self.client().await?;
        DEREGISTER_WORKER
            .execute(&client, &[&claimant.as_str()])
            .await?;
        Ok(())
    }

    /// Listens on [`QUEUED_CHANNEL`] on a dedicated connection, listening again after it drops.
    pub fn listen_queued(&self) -> Wakeups {
        self.listen(None)
    }

    /// Listens on [`QUEUED_CHANNEL`] and [`STOPPED_CHANNEL`] on one dedicated connection,
    /// listening again after it drops. The stop notices say [`StopNotice::Missed`] each time
    /// the channel is listened to, the first time included, since a notice sent meanwhile was
    /// lost. Both end when the [`Wakeups`] are dropped.
    pub fn listen_worker(&self) -> (Wakeups, StopNotices) {
        let (sender, notices) = broadcast::channel(STOP_NOTICES_BUFFERED);
        (self.listen(Some(sender)), StopNotices { notices })
    }

    fn listen(&self, stops: Option<broadcast::Sender<StopNotice>>) -> Wakeups {
        let notify = Arc::new(Notify::new());
        let connector = self.connector.clone();
        let wake = Arc::clone(&notify);
        let task = tokio::spawn(async move {
            loop {
                if let Err(e) = listen_once(&connector, &wake, stops.as_ref()).await {
                    tracing::debug!(error = %e, "listening connection dropped; polling covers the gap");
                }
                // A missed notification delays work by one poll interval at most; wake the
                // claimer anyway in case runs were queued while nobody listened.
                wake.notify_one();
                tokio::time::sleep(RELISTEN_DELAY).await;
            }
        });
        Wakeups { notify, task }
    }
}

async fn listen_once(
    connector: &Connector,
    wake: &Notify,
    stops: Option<&broadcast::Sender<StopNotice>>,
) -> Result<(), Error> {
    let (client, mut connection) = connector.connect().await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    // The connection delivers the answers only while `messages` is polled, so the LISTENs run
    // beside it rather than before it.
    let listen = async {
        client.batch_execute(LISTEN_QUEUED.sql).await?;
        if stops.is_some() {
            client.batch_execute(LISTEN_STOPPED.sql).await?;
        }
        Ok::<_, tokio_postgres::Error>(())
    };
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            result = &mut listen, if !listening => {
                result?;
                listening = true;
                if let Some(stops) = stops {
                    // Nobody listening is not an error: the worker is stopping.
                    let _ = stops.send(StopNotice::Missed);
                }
            }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == STOPPED_CHANNEL => {
                    match (stops, n.payload().parse::<uuid::Uuid>()) {
                        (Some(stops), Ok(run_id)) => {
                            let _ = stops.send(StopNotice::Run(RunId(run_id)));
                        }
                        (Some(_), Err(_)) => {
                            tracing::debug!(payload = n.payload(), "a stop notice without a run id");
                        }
                        (None, _) => {}
                    }
                }
                Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
        }
    }
}

/// Labels as the database keeps them: one JSON object of strings.
pub(super) fn labels_json(labels: &BTreeMap<String, String>) -> Value {
    Value::Object(
        labels
            .iter()
            .map(|(key, value)| (key.clone(), Value::String(value.clone())))
            .collect(),
    )
}

/// Labels as stored; a value that is not a string (no release writes one) is left out.
pub(super) fn labels_from_json(labels: Option<Value>) -> BTreeMap<String, String> {
    match labels {
        Some(Value::Object(labels)) => labels
            .into_iter()
            .filter_map(|(key, value)| match value {
                Value::String(value) => Some((key, value)),
                _ => None,
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}
