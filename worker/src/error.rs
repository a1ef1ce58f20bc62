//! The worker's own errors: the store's (a failure, a fenced write refused, a read refused), and
//! the failures of the worker's batched writes.

use std::sync::Arc;

use leasehold_core::store;

/// Why a worker call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The store could not answer the call.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A fenced write of the run changed nothing: its lease is lost, it contradicts the
    /// checkpoint, or the run is pausing.
    #[error(transparent)]
    Fenced(#[from] store::FenceError),
    /// The store refused a read the run needs (its automation version is gone, say).
    #[error(transparent)]
    Refused(#[from] store::RequestError),
    /// A batched statement failed, and every write it carried fails with it.
    #[error("{0}")]
    FlushFailed(Arc<store::Error>),
    /// A write was dropped before it reached the database (its writer stopped); it may be
    /// sent again.
    #[error("write interrupted: {0}")]
    Interrupted(&'static str),
}

impl Error {
    /// The database could not be reached, the connection broke, or the write never left the
    /// worker: the same call may succeed later. See [`store::Error::is_transient`].
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Self::Store(e) => e.is_transient(),
            Self::Fenced(e) => e.is_transient(),
            Self::Refused(store::RequestError::Store(e)) => e.is_transient(),
            Self::Refused(_) => false,
            Self::FlushFailed(e) => e.is_transient(),
            Self::Interrupted(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_that_never_left_is_transient_and_a_flush_is_as_transient_as_its_cause() {
        assert!(Error::Interrupted("stopped").is_transient());
        let refused = || store::Error::Migration("x".into());
        assert!(!Error::FlushFailed(Arc::new(refused())).is_transient());
        assert!(!Error::from(refused()).is_transient());
        let lost = store::FenceError::LeaseLost {
            run_id: leasehold_core::ids::RunId::new(),
            epoch: leasehold_core::ids::LeaseEpoch(1),
        };
        assert!(!Error::from(lost).is_transient());
    }
}
