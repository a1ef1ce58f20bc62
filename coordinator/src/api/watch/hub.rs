//! The hub: one poller per coordinator that feeds every open watch stream.
//!
//! Every tick it reads, in one statement, the head (status and last seq) of every watched run;
//! for the runs that moved it reads the new events in one more statement and sends each to the
//! run's subscribers over a broadcast channel, then publishes the run's new head. Every second
//! it checks the tokens of the open streams in one statement. With nothing watched it reads
//! nothing; with a thousand idle watchers it reads one small statement per tick.
//!
//! It also counts the open streams, and refuses one past the total or per-tenant cap.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use leasehold_core::ids::{RunId, TenantId};
use leasehold_core::store::{Event, RunHead, Store, TokenId};
use tokio::sync::{broadcast, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// How often the hub looks for new events of the watched runs: how late, at most, a watcher
/// hears of an event, beyond the time it takes to read it.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often the hub checks the tokens of open streams, so that revoking a token ends its
/// watches within this long.
pub const TOKEN_RECHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Events of one run read per tick; a run that moved more catches up over the next ticks.
const EVENTS_PER_RUN_PER_TICK: usize = 500;
/// Events a subscriber may fall behind before it reads what it missed from the database.
const BROADCAST_CAPACITY: usize = 1_024;

/// What the hub knows of a run, as it publishes it to the run's subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Head {
    /// The seq through which the hub has sent the run's events; 0 until its first read of the
    /// run, which sends nothing: a subscriber reads what came before it from the database.
    pub seq: i64,
    /// The run is terminal, and its last event is `seq`.
    pub terminal: bool,
    /// The run no longer exists (its automation was deleted).
    pub gone: bool,
}

/// What the hub publishes to every stream: the tokens that no longer stand, with the status
/// that ends their streams, and the failure of its last tick, if it failed.
#[derive(Debug, Clone, Default)]
pub struct Bulletin {
    /// Tokens revoked, expired or deleted since their streams opened.
    pub refused_tokens: Arc<HashMap<TokenId, Status>>,
    /// Set while the database cannot be read: every stream ends with it.
    pub failure: Option<Status>,
}

/// A watch refused for a cap: RESOURCE_EXHAUSTED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapReached {
    /// The coordinator's total.
    #[error(
        "this coordinator has {0} watch streams open, its cap (--max-watch-streams); close one, \
         or watch through another coordinator"
    )]
    Total(usize),
    /// The caller's tenant's.
    #[error(
        "this tenant has {0} watch streams open on this coordinator, its cap \
         (--max-watch-streams-per-tenant); close one, or watch through another coordinator"
    )]
    Tenant(usize),
}

/// A watched run: its subscribers and what the hub sent them.
struct Watched {
    subscribers: usize,
    events: broadcast::Sender<Arc<Event>>,
    head: watch::Sender<Head>,
    /// `None` until the hub first read the run's head.
    sent_through: Option<i64>,
}

#[derive(Default)]
struct Registry {
    runs: HashMap<RunId, Watched>,
    tenants: HashMap<TenantId, usize>,
    tokens: HashMap<TokenId, usize>,
    open: usize,
}

struct Shared {
    registry: Mutex<Registry>,
    bulletin: watch::Sender<Bulletin>,
    max_total: usize,
    max_per_tenant: usize,
}

/// The hub's handle, cheap to clone: streams subscribe through it.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// One stream's place in the hub: its channels, and its counts, given back when dropped.
pub struct Subscription {
    shared: Arc<Shared>,
    run_id: RunId,
    tenant: TenantId,
    token: Option<TokenId>,
    /// The run's events as the hub reads them, in order.
    pub events: broadcast::Receiver<Arc<Event>>,
    /// The run's head, published after its events were sent.
    pub head: watch::Receiver<Head>,
    /// What concerns every stream.
    pub bulletin: watch::Receiver<Bulletin>,
}

impl Subscription {
    /// The token the stream was opened with.
    pub fn token(&self) -> Option<&TokenId> {
        self.token.as_ref()
    }
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // No code panics while holding the lock; a poisoned lock still holds consistent counts.
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Hub {
    /// A hub that allows `max_total` streams, `max_per_tenant` of one tenant; it reads nothing
    /// until [`Hub::run`] polls.
    pub fn new(max_total: usize, max_per_tenant: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                registry: Mutex::new(Registry::default()),
                bulletin: watch::Sender::new(Bulletin::default()),
                max_total,
                max_per_tenant,
            }),
        }
    }

    /// A stream of `tenant`'s run `run_id`, opened with `token`; refused past a cap.
    pub fn subscribe(
        &self,
        tenant: &TenantId,
        run_id: RunId,
        token: Option<&TokenId>,
    ) -> Result<Subscription, CapReached> {
        let shared = &self.shared;
        let mut registry = shared.registry();
        if registry.open >= shared.max_total {
            return Err(CapReached::Total(shared.max_total));
        }
        let of_tenant = registry.tenants.get(tenant).copied().unwrap_or(0);
        if of_tenant >= shared.max_per_tenant {
            return Err(CapReached::Tenant(shared.max_per_tenant));
        }
        registry.open += 1;
        set_open_gauge(registry.open);
        *registry.tenants.entry(tenant.clone()).or_default() += 1;
        if let Some(token) = token {
            *registry.tokens.entry(token.clone()).or_default() += 1;
        }
        let watched = registry.runs.entry(run_id).or_insert_with(|| Watched {
            subscribers: 0,
            events: broadcast::Sender::new(BROADCAST_CAPACITY),
            head: watch::Sender::new(Head::default()),
            sent_through: None,
        });
        watched.subscribers += 1;
        Ok(Subscription {
            shared: Arc::clone(shared),
            run_id,
            tenant: tenant.clone(),
            token: token.cloned(),
            events: watched.events.subscribe(),
            head: watched.head.subscribe(),
            bulletin: shared.bulletin.subscribe(),
        })
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.shared.registry().open
    }

    /// Polls with `store` until `cancel` fires; see the module docs.
    pub async fn run(self, store: Store, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut tokens_checked = Instant::now();
        let mut failing = false;
        while cancel.run_until_cancelled(tick.tick()).await.is_some() {
            let mut result = self.poll(&store).await;
            if result.is_ok() && tokens_checked.elapsed() >= TOKEN_RECHECK_INTERVAL {
                tokens_checked = Instant::now();
                result = self.check_tokens(&store).await;
            }
            match result {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("watch streams: the database answers again");
                    self.shared
                        .bulletin
                        .send_modify(|bulletin| bulletin.failure = None);
                }
                Ok(()) => {}
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "watch streams: cannot read the database");
                    }
                    failing = true;
                    let status = Status::from(crate::api::ApiError::Store(e));
                    self.shared
                        .bulletin
                        .send_modify(|bulletin| bulletin.failure = Some(status));
                }
            }
        }
    }

    /// One tick: the heads of every watched run, and the new events of those that moved.
    async fn poll(&self, store: &Store) -> Result<(), leasehold_core::store::Error> {
        let watched: Vec<RunId> = self.shared.registry().runs.keys().copied().collect();
        if watched.is_empty() {
            return Ok(());
        }
        let asked: HashSet<RunId> = watched.iter().copied().collect();
        let heads: HashMap<RunId, RunHead> = store
            .run_heads(&watched)
            .await?
            .into_iter()
            .map(|h| (h.run_id, h))
            .collect();
        // The runs that moved past what was sent, and the seq each was sent through.
        let moved: Vec<(RunId, i64)> = {
            let mut registry = self.shared.registry();
            let mut moved = Vec::new();
            for (run_id, watched) in &mut registry.runs {
                let Some(head) = heads.get(run_id) else {
                    continue;
                };
                match watched.sent_through {
                    // The first read sends nothing: subscribers read what came before.
                    None => watched.sent_through = Some(head.event_seq),
                    Some(sent) if head.event_seq > sent => moved.push((*run_id, sent)),
                    Some(_) => {}
                }
            }
            moved
        };
        let events = if moved.is_empty() {
            Vec::new()
        } else {
            store
                .events_after_each(&moved, EVENTS_PER_RUN_PER_TICK)
                .await?
        };
        let mut registry = self.shared.registry();
        for event in events {
            let Some(watched) = registry.runs.get_mut(&event.run_id) else {
                continue;
            };
            // Only the next event in order: a run re-subscribed between the reads starts over.
            if watched
                .sent_through
                .is_some_and(|sent| event.seq == sent + 1)
            {
                watched.sent_through = Some(event.seq);
                // No receiver means every subscriber left meanwhile; nothing to do.
                let _ = watched.events.send(Arc::new(event));
            }
        }
        for (run_id, watched) in &mut registry.runs {
            let Some(head) = published_head(
                asked.contains(run_id),
                heads.get(run_id),
                watched.sent_through,
            ) else {
                continue;
            };
            // Subscribers wake only when the head changed, not every tick.
            watched.head.send_if_modified(|published| {
                let changed = *published != head;
                *published = head;
                changed
            });
        }
        Ok(())
    }

    /// Checks the tokens of every open stream in one statement, and publishes those that no
    /// longer stand.
    async fn check_tokens(&self, store: &Store) -> Result<(), leasehold_core::store::Error> {
        let tokens: Vec<TokenId> = self.shared.registry().tokens.keys().cloned().collect();
        let refused = if tokens.is_empty() {
            HashMap::new()
        } else {
            store.tokens_refused(&tokens).await?
        };
        let refused: HashMap<TokenId, Status> = refused
            .into_iter()
            .map(|(id, e)| (id, Status::unauthenticated(e.to_string())))
            .collect();
        self.shared.bulletin.send_if_modified(|bulletin| {
            let same = bulletin.refused_tokens.len() == refused.len()
                && refused
                    .keys()
                    .all(|id| bulletin.refused_tokens.contains_key(id));
            if !same {
                bulletin.refused_tokens = Arc::new(refused);
            }
            !same
        });
        Ok(())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut registry = self.shared.registry();
        registry.open -= 1;
        set_open_gauge(registry.open);
        if let Some(n) = registry.tenants.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                registry.tenants.remove(&self.tenant);
            }
        }
        if let Some(token) = &self.token
            && let Some(n) = registry.tokens.get_mut(token)
        {
            *n -= 1;
            if *n == 0 {
                registry.tokens.remove(token);
            }
        }
        if let Some(watched) = registry.runs.get_mut(&self.run_id) {
            watched.subscribers -= 1;
            if watched.subscribers == 0 {
                registry.runs.remove(&self.run_id);
            }
        }
    }
}

/// Publishes the streams open now; set under the registry's lock, so the gauge never goes back
/// to a stale count.
fn set_open_gauge(open: usize) {
    #[allow(clippy::cast_precision_loss)] // streams are capped far below 2^52
    metrics::gauge!("leasehold_coordinator_watch_streams_open").set(open as f64);
}

/// The head to publish for a watched run after a tick, if any: `asked` says whether the tick's
/// read included the run, `head` is what it found, `sent` the seq the hub sent through.
fn published_head(asked: bool, head: Option<&RunHead>, sent: Option<i64>) -> Option<Head> {
    match (head, sent) {
        // A run subscribed while the heads were read was not asked about: absent from the
        // answer does not mean gone. The next tick reads it.
        (None, _) if !asked => None,
        (None, _) => Some(Head {
            gone: true,
            ..Head::default()
        }),
        (Some(_), None) => None,
        (Some(head), Some(sent)) => Some(Head {
            seq: sent,
            terminal: head.status.is_terminal() && sent >= head.event_seq,
            gone: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use leasehold_core::ids::RunId;
    use leasehold_core::run::RunStatus;
    use leasehold_core::store::RunHead;

    use super::{Head, published_head};

    #[test]
    fn a_run_the_tick_did_not_ask_about_is_not_gone() {
        assert_eq!(published_head(false, None, None), None);
        assert_eq!(published_head(false, None, Some(3)), None);
        assert_eq!(
            published_head(true, None, Some(3)),
            Some(Head {
                gone: true,
                ..Head::default()
            }),
            "asked and absent: deleted"
        );
    }

    #[test]
    fn a_head_counts_what_was_sent_and_is_terminal_once_the_last_event_was() {
        let head = RunHead {
            run_id: RunId::new(),
            status: RunStatus::Completed,
            event_seq: 5,
        };
        assert_eq!(published_head(true, Some(&head), None), None);
        assert_eq!(
            published_head(true, Some(&head), Some(4)),
            Some(Head {
                seq: 4,
                terminal: false,
                gone: false
            })
        );
        assert_eq!(
            published_head(true, Some(&head), Some(5)),
            Some(Head {
                seq: 5,
                terminal: true,
                gone: false
            })
        );
    }
}
