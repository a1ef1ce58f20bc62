//! The leader loop: every coordinator runs one; the one that holds the leader lease runs the
//! sweeps.
//!
//! A follower tries to take the lease every renewal interval. A leader renews it every third of
//! the lease and runs each sweep as a task of its *term*. The term ends, and every sweep with
//! it, at once when a renewal finds the lease gone, or when the lease would run out before a
//! renewal could land (measured on the monotonic clock from when the last successful renewal
//! was sent), or when the coordinator stops. On a stop it resigns, so another coordinator takes
//! over on its next try. None of this is what keeps a former leader harmless: every sweep write
//! is fenced on the leadership in SQL; ending the term early only saves it the writes that would
//! change nothing.

use std::fmt::Debug;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::store::{self, Leadership, Store, outage};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Config, Outcome, Pass, SWEEPS, Sweep};

/// Why a term ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TermEnd {
    /// The coordinator is stopping: resign.
    Stopped,
    /// A renewal found the lease gone: another coordinator leads, or will.
    Lost,
    /// Renewals kept failing and the lease is about to run out: step down and resign, in case
    /// the database can still hear it.
    Expiring,
}

/// The leader loop's connections, apart from the API's and from each other's: a renewal never
/// waits for a connection behind a sweep or a call.
pub(super) struct Stores {
    /// Acquires, renews and resigns the lease.
    pub(super) lease: Store,
    /// Runs the sweeps.
    pub(super) sweeps: Store,
}

/// What the sweeps of one term share.
pub(crate) struct Term {
    store: Store,
    config: Config,
    leadership: Leadership,
}

/// Leads whenever it can until `cancel` fires; see the module docs. `config` must be validated.
pub(super) async fn run(stores: Stores, config: Config, holder: String, cancel: CancellationToken) {
    let store = &stores.lease;
    let renew_every = config.leader_renew_interval();
    loop {
        let sent = Instant::now();
        let acquired = tokio::select! {
            () = cancel.cancelled() => return,
            acquired = store.try_acquire_leadership(&config.leader_name, &holder, config.leader_lease) => acquired,
        };
        if let Some(e) = outage::DATABASE.record(&acquired) {
            tracing::warn!(error = %e, "could not try for the leader lease");
        }
        if let Ok(Some(leadership)) = acquired {
            tracing::info!(
                role = leadership.name(),
                epoch = %leadership.epoch(),
                "took the leader lease; sweeping"
            );
            let valid_until = sent + config.leader_lease;
            metrics::gauge!("leasehold_leader").set(1.0);
            #[allow(clippy::cast_precision_loss)] // an epoch is far below 2^52
            metrics::gauge!("leasehold_leader_epoch").set(leadership.epoch().0 as f64);
            let end = lead(&stores, &config, leadership, valid_until, &cancel).await;
            metrics::gauge!("leasehold_leader").set(0.0);
            if end == TermEnd::Stopped {
                return;
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(renew_every) => {}
        }
    }
}

/// One term: runs the sweeps and renews the lease until the term ends; then stops the sweeps,
/// waits for them, and resigns unless the lease was lost.
async fn lead(
    stores: &Stores,
    config: &Config,
    leadership: Leadership,
    mut valid_until: Instant,
    cancel: &CancellationToken,
) -> TermEnd {
    let store = &stores.lease;
    let term_token = cancel.child_token();
    let term = Arc::new(Term {
        store: stores.sweeps.clone(),
        config: config.clone(),
        leadership,
    });
    let sweeps = spawn_sweeps(&term, &term_token);
    let end = keep(store, &term, &mut valid_until, cancel).await;
    term_token.cancel();
    sweeps.join_all().await;
    let leadership = &term.leadership;
    match end {
        TermEnd::Lost => {
            tracing::warn!(
                role = leadership.name(),
                epoch = %leadership.epoch(),
                "lost the leader lease; sweeps stopped"
            );
        }
        TermEnd::Stopped | TermEnd::Expiring => match store.resign_leadership(leadership).await {
            Ok(true) => tracing::info!(
                role = leadership.name(),
                epoch = %leadership.epoch(),
                ?end,
                "resigned the leader lease; sweeps stopped"
            ),
            Ok(false) => tracing::info!(
                role = leadership.name(),
                epoch = %leadership.epoch(),
                ?end,
                "sweeps stopped; the leader lease had already passed on"
            ),
            Err(e) => tracing::warn!(error = %e, "could not resign the leader lease"),
        },
    }
    end
}

/// Renews the lease every renewal interval, with `store`, the lease's own connection, until the
/// term must end.
async fn keep(
    store: &Store,
    term: &Term,
    valid_until: &mut Instant,
    cancel: &CancellationToken,
) -> TermEnd {
    let Term {
        store: _,
        config,
        leadership,
    } = term;
    loop {
        let next = Instant::now() + config.leader_renew_interval();
        tokio::select! {
            () = cancel.cancelled() => return TermEnd::Stopped,
            () = tokio::time::sleep_until(next.min(*valid_until)) => {}
        }
        if Instant::now() >= *valid_until {
            return TermEnd::Expiring;
        }
        let sent = Instant::now();
        // A renewal that has not landed by the time the lease would run out is as good as
        // failed: the term ends then rather than whenever the database answers.
        let renewed = tokio::select! {
            () = cancel.cancelled() => return TermEnd::Stopped,
            renewed = tokio::time::timeout_at(
                *valid_until,
                store.renew_leadership(leadership, config.leader_lease),
            ) => renewed,
        };
        if let Ok(result) = &renewed
            && let Some(e) = outage::DATABASE.record(result)
        {
            tracing::warn!(error = %e, "could not renew the leader lease");
        }
        match renewed {
            Ok(Ok(true)) => *valid_until = sent + config.leader_lease,
            Ok(Ok(false)) => return TermEnd::Lost,
            Ok(Err(_)) => {}
            Err(_elapsed) => return TermEnd::Expiring,
        }
    }
}

/// Starts one task per sweep of [`SWEEPS`], each stopping when `term_token` fires.
fn spawn_sweeps(term: &Arc<Term>, term_token: &CancellationToken) -> JoinSet<()> {
    let mut sweeps = JoinSet::new();
    for &sweep in SWEEPS {
        sweeps.spawn(every(sweep, Arc::clone(term), term_token.clone()));
    }
    sweeps
}

/// A sweep's pass with the outcome's type erased: its debug form when it changed something.
type ErasedPass<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Box<dyn Debug + Send>>, store::Error>> + Send + 'a>>;

/// A [`Sweep`] with its outcome's type erased, so that [`SWEEPS`] can list every sweep.
pub(crate) trait AnySweep: Send + Sync {
    fn name(&self) -> &'static str;
    fn interval(&self, config: &Config) -> Duration;
    fn pass<'a>(&'a self, term: &'a Term) -> ErasedPass<'a>;
}

impl<S: Sweep> AnySweep for S {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn interval(&self, config: &Config) -> Duration {
        S::interval(config)
    }

    fn pass<'a>(&'a self, term: &'a Term) -> ErasedPass<'a> {
        Box::pin(async move {
            let pass = Pass::new(&term.store, &term.leadership, &term.config, None);
            let started = Instant::now();
            let outcome = self.run_once(pass).await?;
            metrics::histogram!("leasehold_sweep_pass_duration_seconds", "sweep" => S::NAME)
                .record(started.elapsed().as_secs_f64());
            for (action, count) in outcome.actions() {
                metrics::counter!("leasehold_sweep_actions_total", "sweep" => S::NAME, "action" => action)
                    .increment(count);
            }
            Ok((!outcome.is_empty()).then(|| Box::new(outcome) as Box<dyn Debug + Send>))
        })
    }
}

/// Runs `sweep` at once and then every interval until `stop` fires, dropping a pass in flight
/// when it does. Logs what a pass changed; a failed pass is logged and tried again next time.
async fn every(sweep: &'static dyn AnySweep, term: Arc<Term>, stop: CancellationToken) {
    let name = sweep.name();
    let interval = sweep.interval(&term.config);
    loop {
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = sweep.pass(&term) => result,
        };
        if let Some(e) = outage::DATABASE.record(&result) {
            tracing::warn!(sweep = name, error = %e, "sweep pass failed");
        }
        if let Ok(Some(outcome)) = result {
            tracing::info!(sweep = name, ?outcome, "sweep pass");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
