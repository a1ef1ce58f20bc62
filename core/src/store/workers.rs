//! The registry of worker processes, and the wake-up channel they listen on.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

use super::query::Query;
use super::{Error, Store};
use crate::ids::ClaimantId;

/// The channel a NOTIFY on it wakes idle workers through. It carries no payload: it is a hint
/// that runs are due, never the queue itself.
pub const QUEUED_CHANNEL: &str = "leasehold_runs_queued";

// On a connection of its own, outside the pool: a pooled connection would be handed to others.
const LISTEN_QUEUED: Query = Query {
    name: "listen_queued",
    sql: "LISTEN leasehold_runs_queued",
};

/// Delay before listening again after the listening connection dropped.
const RELISTEN_DELAY: Duration = Duration::from_secs(1);

/// A worker process as it registers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The node kinds it executes.
    pub handlers: Vec<String>,
}

// Upsert: a worker that lost its row (deleted by an operator) registers again on its next beat.
const REGISTER_WORKER: Query = Query {
    name: "register_worker",
    sql: "\
INSERT INTO workers (claimant_id, host, pid, version, capacity, handlers)
VALUES ($1::text, $2::text, $3::int, $4::text, $5::int, $6::text[])
ON CONFLICT (claimant_id) DO UPDATE
SET host = excluded.host, pid = excluded.pid, version = excluded.version,
    capacity = excluded.capacity, handlers = excluded.handlers, last_heartbeat = now()",
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
    WORKER_HEARTBEAT,
    SET_WORKER_DRAINING,
    DEREGISTER_WORKER,
    LISTEN_QUEUED,
];

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
    /// Adds or refreshes the worker's row.
    pub async fn register_worker(&self, info: &WorkerInfo) -> Result<(), Error> {
        let pid = i32::try_from(info.pid).unwrap_or(i32::MAX);
        let capacity = i32::try_from(info.capacity).unwrap_or(i32::MAX);
        let client = self.client().await?;
        REGISTER_WORKER
            .execute(
                &client,
                &[
                    &info.claimant_id.as_str(),
                    &info.host,
                    &pid,
                    &info.version,
                    &capacity,
                    &info.handlers,
                ],
            )
            .await?;
        Ok(())
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
        let notify = Arc::new(Notify::new());
        let config = self.config.clone();
        let wake = Arc::clone(&notify);
        let task = tokio::spawn(async move {
            loop {
                if let Err(e) = listen_once(&config, &wake).await {
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

async fn listen_once(config: &tokio_postgres::Config, wake: &Notify) -> Result<(), Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let listen = client.batch_execute(LISTEN_QUEUED.sql);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            result = &mut listen, if !listening => {
                result?;
                listening = true;
            }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
        }
    }
}
