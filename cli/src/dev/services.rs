//! The coordinator and the in-process workers, started together and stopped in order: workers
//! first, so that they hand their runs back while the database is up, then the coordinator.

use std::time::Duration;

use anyhow::Context;
use leasehold_coordinator::api::Auth;
use leasehold_coordinator::sweeps;
use leasehold_core::ids::ClaimantId;
use leasehold_core::store::Store;
use leasehold_worker::handlers::{self, ExecPolicy};
use leasehold_worker::{Config, Worker};
use tokio::net::TcpListener;

use crate::coordinator::MetricsListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Database connections of each in-process worker.
const WORKER_POOL_SIZE: usize = 4;
/// Polling fallback of the workers: short, so a missed wake-up costs little in a demo.
const WORKER_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Lease length of the workers.
const WORKER_LEASE: Duration = Duration::from_secs(30);
/// Time running nodes get to finish on Ctrl-C before their runs are handed back: short, since
/// someone is waiting at the terminal.
const WORKER_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the workers are given.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// How many workers.
    pub count: u16,
    /// Programs `exec` nodes may run; `exec` is off when empty.
    pub exec_allow: Vec<String>,
}

/// The coordinator and the workers, running until [`Services::stop`].
pub struct Services {
    workers: JoinSet<anyhow::Result<()>>,
    workers_cancel: CancellationToken,
    coordinator: Option<JoinHandle<anyhow::Result<()>>>,
    coordinator_cancel: CancellationToken,
}

impl Services {
    /// Starts the coordinator on `listener` with `store`, authenticating as `auth` says, and the
    /// workers with their own pools on `url`.
    pub fn start(
        listener: TcpListener,
        metrics: Option<MetricsListener>,
        store: Store,
        auth: Auth,
        url: &str,
        settings: &WorkerSettings,
    ) -> anyhow::Result<Services> {
        let sweeps_config = sweeps::Config::default().validated()?;
        let prefix = leasehold_worker::default_claimant_id();
        let mut configs = Vec::new();
        let mut stores = Vec::new();
        for index in 1..=settings.count {
            let mut config =
                Config::new(ClaimantId(format!("{}-w{index}", prefix.0))).with_lease(WORKER_LEASE);
            config.poll_interval = WORKER_POLL_INTERVAL;
            config.shutdown_grace = WORKER_SHUTDOWN_GRACE;
            let config = config.validated()?;
            stores.push(
                Store::connect_worker_unchecked(url, WORKER_POOL_SIZE)
                    .and_then(|store| {
                        store.with_session(&config.application_name(), config.statement_timeout())
                    })
                    .context("connecting a worker to the database")?,
            );
            configs.push(config);
        }
        let coordinator_cancel = CancellationToken::new();
        let coordinator = tokio::spawn(crate::coordinator::serve(
            listener,
            metrics,
            store,
            auth,
            sweeps_config,
            coordinator_cancel.clone(),
        ));
        let workers_cancel = CancellationToken::new();
        let mut workers = JoinSet::new();
        for (config, store) in configs.into_iter().zip(stores) {
            let registry = handlers::builtin(ExecPolicy {
                allowed_programs: settings.exec_allow.clone(),
                ..ExecPolicy::default()
            });
            let cancel = workers_cancel.clone();
            let claimant = config.claimant_id.clone();
            workers.spawn(async move {
                Worker::new(store, registry, config)
                    .run(cancel)
                    .await
                    .with_context(|| format!("worker {claimant}"))?;
                Ok(())
            });
        }
        Ok(Services {
            workers,
            workers_cancel,
            coordinator: Some(coordinator),
            coordinator_cancel,
        })
    }

    /// Resolves when a service stops on its own, which they only do on failure, with the reason.
    /// Never resolves otherwise; cancel-safe.
    pub async fn failed(&mut self) -> anyhow::Error {
        let workers = &mut self.workers;
        let slot = &mut self.coordinator;
        let coordinator = async {
            match slot.as_mut() {
                Some(handle) => handle.await,
                None => std::future::pending().await,
            }
        };
        let (what, joined) = tokio::select! {
            Some(joined) = workers.join_next() => ("a worker", joined),
            joined = coordinator => {
                // A finished handle must not be polled again.
                *slot = None;
                ("the coordinator", joined)
            }
        };
        match flatten(joined) {
            Ok(()) => anyhow::anyhow!("{what} stopped unexpectedly"),
            Err(e) => e.context(format!("{what} stopped")),
        }
    }

    /// Stops the workers (they hand their runs back), then the coordinator, and returns the first
    /// failure among them.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        self.workers_cancel.cancel();
        while let Some(joined) = self.workers.join_next().await {
            if let Err(e) = flatten(joined) {
                first_error.get_or_insert(e.context("stopping a worker"));
            }
        }
        self.coordinator_cancel.cancel();
        if let Some(handle) = self.coordinator.take()
            && let Err(e) = flatten(handle.await)
        {
            first_error.get_or_insert(e.context("stopping the coordinator"));
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Services {
    /// On an early return, the tasks are told to stop; `stop` is the orderly way.
    fn drop(&mut self) {
        self.workers_cancel.cancel();
        self.coordinator_cancel.cancel();
    }
}

fn flatten(joined: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    joined.map_err(|e| anyhow::anyhow!("task failed: {e}"))?
}
