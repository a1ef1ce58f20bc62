//! Single `StartRun` calls gathered into batches ([`super::gather`]): the calls in flight share
//! one statement ([`Store::start_each`]) instead of taking a few round trips each, and each
//! call is answered as if it had been alone.

use leasehold_core::store::{RequestError, StartOutcome, StartRun, Store};

use super::error::ApiResult;
use super::gather::Gatherer;

/// Starts in one statement at most: the bound of a `StartRuns` call, for the same reasons.
const MAX_BATCH: usize = super::runs::MAX_START_RUNS;
/// Batches written at once: one is written while the next one fills. Two made smaller batches
/// and cost more CPU per run for no more throughput (bench/README.md).
const IN_FLIGHT: usize = 1;

/// The coordinator's gatherer of single starts; cheap to share.
#[derive(Clone)]
pub(super) struct Starts {
    gatherer: Gatherer<StartRun, Result<StartOutcome, RequestError>>,
}

impl Starts {
    /// Starts the task that writes the batches; must be called inside a Tokio runtime.
    pub fn new(store: Store) -> Self {
        let gatherer = Gatherer::spawn(IN_FLIGHT, MAX_BATCH, move |requests: Vec<StartRun>| {
            let store = store.clone();
            async move { store.start_each(&requests).await }
        });
        Self { gatherer }
    }

    /// Starts `request`'s run in the next batch, and answers as [`Store::start_each`] answers it.
    pub async fn start(&self, request: StartRun) -> ApiResult<StartOutcome> {
        Ok(self.gatherer.ask(request).await??)
    }
}
