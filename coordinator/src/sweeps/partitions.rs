//! Partition upkeep: the monthly partitions of `run_events` are created ahead of time, so that
//! events never land in the default partition, from which retention could not drop them by
//! month. There is nothing to decide: the store's function creates what is missing.

use chrono::{DateTime, Utc};
use leasehold_core::store::{self, Leadership, Store};

use super::{Config, Outcome};

/// What one partition-upkeep pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionsOutcome {
    /// Partitions created.
    pub created: u64,
}

impl Outcome for PartitionsOutcome {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One upkeep pass for the month of `now` (the database's today when `None`) and the months
/// after it, under `leader`. A leadership that is gone creates nothing.
pub async fn run_once(
    store: &Store,
    leader: &Leadership,
    config: &Config,
    now: Option<DateTime<Utc>>,
) -> Result<PartitionsOutcome, store::Error> {
    let created = store
        .ensure_event_partitions(leader, now, config.partition_months_ahead)
        .await?;
    Ok(PartitionsOutcome {
        created: created.map_or(0, u64::from),
    })
}
