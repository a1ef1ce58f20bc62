//! WatchRun: a run's events after a seq, then live ones as the [`Hub`] reads them.
//!
//! A stream reads the database itself only to catch up: its backlog when it opens, a gap it
//! finds (events the hub sent before the stream subscribed), and what it missed when it fell
//! more than the broadcast's capacity behind. Everything else comes from the hub, which reads
//! for all streams at once, so idle streams cost the database nothing of their own.

mod hub;

use std::pin::Pin;

use leasehold_core::ids::RunId;
use leasehold_core::run::RunStatus;
use leasehold_core::store::{Event, RequestError, Store};
use leasehold_proto::v1;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

pub use hub::{CapReached, Hub, Subscription};

use super::convert::{self, timestamp, to_struct};
use super::error::{ApiError, ApiResult};
use super::{Api, states};

/// Events read per statement while a stream catches up, and sent ahead of a slow client.
const CATCH_UP_BATCH: usize = 500;

/// The stream a WatchRun call answers.
pub(super) type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::RunEvent, Status>> + Send>>;

pub(super) fn event_message(event: &Event) -> v1::RunEvent {
    v1::RunEvent {
        run_id: event.run_id.to_string(),
        seq: event.seq,
        event: event.event.clone(),
        occurred_at: Some(timestamp(event.occurred_at)),
        lease_epoch: event.epoch.0,
        node_id: event
            .node_id
            .as_ref()
            .map(|n| n.0.clone())
            .unwrap_or_default(),
        attempt: event.attempt.unwrap_or_default(),
        reason: event.reason.clone().unwrap_or_default(),
        stop_kind: states::stop_kind(event.stop_kind.as_deref()).into(),
        metadata: Some(to_struct(&event.metadata)),
        terminal: event.run_status.is_some_and(RunStatus::is_terminal),
        run_status: event
            .run_status
            .map_or(v1::RunStatus::Unspecified, states::run_status)
            .into(),
        node_status: states::event_node_status(&event.event).into(),
    }
}

impl Api {
    /// Opens a watch: refused past a cap before anything is read, NOT_FOUND for a run the
    /// caller's tenant does not have, before any event is sent.
    pub(super) async fn run_watch(&self, request: v1::WatchRunRequest) -> ApiResult<WatchStream> {
        let run_id = convert::run_id("run_id", &request.run_id)?;
        if request.after_seq < 0 {
            return Err(ApiError::field("after_seq", "must not be negative"));
        }
        let subscription = self
            .hub
            .subscribe(&self.tenant, run_id, self.caller.token_id())?;
        let head = self
            .store
            .run_head(&self.tenant, run_id)
            .await?
            .ok_or(RequestError::RunNotFound(run_id))?;
        let (tx, rx) = mpsc::channel(CATCH_UP_BATCH);
        let pump = Pump {
            store: self.store.clone(),
            shutdown: self.shutdown.clone(),
            run_id,
            after: request.after_seq,
            terminal_at: head.status.is_terminal().then_some(head.event_seq),
            subscription,
            tx,
        };
        tokio::spawn(pump.run());
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// One stream: sends the run's events in order, without gaps, until the run has ended and
/// everything up to its last event was sent, or the client went away, or its token no longer
/// stands (UNAUTHENTICATED), or the coordinator stops or cannot read the database (UNAVAILABLE).
struct Pump {
    store: Store,
    shutdown: CancellationToken,
    run_id: RunId,
    /// The seq of the last event sent.
    after: i64,
    /// The run's last seq, when it was terminal as the stream opened.
    terminal_at: Option<i64>,
    subscription: Subscription,
    tx: mpsc::Sender<Result<v1::RunEvent, Status>>,
}

/// Whether the client still listens.
#[derive(PartialEq, Eq)]
enum Listening {
    Yes,
    No,
}

impl Pump {
    async fn run(mut self) {
        if let Err(status) = self.pump().await {
            let _ = self.tx.send(Err(status)).await;
        }
    }

    async fn pump(&mut self) -> Result<(), Status> {
        if self.catch_up(None).await? == Listening::No {
            return Ok(());
        }
        loop {
            self.check_bulletin()?;
            // The head is read before the queue is looked at: the hub sends a run's events
            // before it publishes the head that counts them.
            let head = *self.subscription.head.borrow_and_update();
            if head.gone {
                return Err(ApiError::from(RequestError::RunNotFound(self.run_id)).into());
            }
            let ended_at = self.terminal_at.or(head.terminal.then_some(head.seq));
            if ended_at.is_some_and(|last| self.after >= last) {
                return Ok(());
            }
            // Nothing queued, yet the hub sent through a later seq: events sent before this
            // stream subscribed. They are read from the database.
            if head.seq > self.after && self.subscription.events.is_empty() {
                if self.catch_up(Some(head.seq)).await? == Listening::No {
                    return Ok(());
                }
                continue;
            }
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    return Err(Status::unavailable(
                        "the coordinator is shutting down; watch again with after_seq",
                    ));
                }
                () = self.tx.closed() => return Ok(()),
                received = self.subscription.events.recv() => match received {
                    Ok(event) if event.seq <= self.after => {}
                    Ok(event) if event.seq == self.after + 1 => {
                        if self.send(&event).await == Listening::No {
                            return Ok(());
                        }
                    }
                    // A gap, or events lost to lagging: the database has them all.
                    Ok(event) => {
                        if self.catch_up(Some(event.seq)).await? == Listening::No {
                            return Ok(());
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if self.catch_up(None).await? == Listening::No {
                            return Ok(());
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(Status::unavailable(
                            "the coordinator stopped feeding watches; watch again with after_seq",
                        ));
                    }
                },
                _ = self.subscription.head.changed() => {}
                _ = self.subscription.bulletin.changed() => {}
            }
        }
    }

    /// Ends the stream if its token no longer stands or the hub cannot read the database.
    fn check_bulletin(&mut self) -> Result<(), Status> {
        let token = self.subscription.token().cloned();
        let bulletin = self.subscription.bulletin.borrow_and_update();
        if let Some(token) = token
            && let Some(refused) = bulletin.refused_tokens.get(&token)
        {
            return Err(refused.clone());
        }
        match &bulletin.failure {
            Some(failure) => Err(failure.clone()),
            None => Ok(()),
        }
    }

    /// Sends the run's events after the last one sent, read from the database, through seq
    /// `until` at least (or until none is left).
    async fn catch_up(&mut self, until: Option<i64>) -> Result<Listening, Status> {
        loop {
            let events = self
                .store
                .events_after(self.run_id, self.after, CATCH_UP_BATCH)
                .await
                .map_err(ApiError::from)?;
            for event in &events {
                if self.send(event).await == Listening::No {
                    return Ok(Listening::No);
                }
            }
            let caught_up = until.is_none_or(|until| self.after >= until);
            if events.len() < CATCH_UP_BATCH && caught_up {
                return Ok(Listening::Yes);
            }
            if events.is_empty() {
                // The hub has sent through `until`, so the database has it: an empty read
                // cannot happen, and looping on one would spin.
                return Err(Status::internal(format!(
                    "run {} has no event {} though it was recorded",
                    self.run_id,
                    self.after + 1
                )));
            }
        }
    }

    async fn send(&mut self, event: &Event) -> Listening {
        if self.tx.send(Ok(event_message(event))).await.is_err() {
            return Listening::No;
        }
        self.after = event.seq;
        Listening::Yes
    }
}
