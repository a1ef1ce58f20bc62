//! Partition upkeep: the monthly partitions of `run_events` are created ahead of time, so that
//! events never land in the default partition, from which retention could not drop them by
//! month. There is nothing to decide: the store's function creates what is missing.

use leasehold_core::store::{self};

use super::{Outcome, Pass};

/// One upkeep pass for the month of `pass.now` (the database's today when `None`) and the
/// months after it, under `pass.leader`. A leadership that is gone creates nothing.
pub async fn run_once(pass: Pass<'_>) -> Result<PartitionsOutcome, store::Error> {
    let created = pass
        .store
        .ensure_event_partitions(pass.leader, pass.now, pass.config.partition_months_ahead)
        .await?;
    Ok(PartitionsOutcome {
        created: created.map_or(0, u64::from),
    })
}

/// What one partition-upkeep pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionsOutcome {
    /// Partitions created.
    pub created: u64,
}

impl Outcome for PartitionsOutcome {
    fn actions(&self) -> Vec<(&'static str, u64)> {
        vec![("partitions_created", self.created)]
    }
}
