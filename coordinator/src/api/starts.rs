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
/// Connections of the starts' own pool: a batch's statement, and the reads that answer the
/// requests it inserted nothing for.
const POOL_SIZE: usize = IN_FLIGHT + 1;

/// The coordinator's gatherer of single starts; cheap to share.
#[derive(Clone)]
pub(super) struct Starts {
    gatherer: Gatherer<StartRun, Result<StartOutcome, RequestError>>,
}

impl Starts {
    /// Starts the task that writes the batches, on a pool of their own beside `store`'s, whose
    /// sessions use generic plans: a batch's statement finds its rows by arrays of keys, and
    /// planning it anew for each batch cost more than its work (bench/README.md). Must be
    /// called inside a Tokio runtime.
    pub fn new(store: &Store) -> Self {
        let store = store.sibling_with_generic_plans(POOL_SIZE, "starts");
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
