//! Partition upkeep: the monthly partitions of `run_events` are created ahead of time, so that
//! events never land in the default partition, from which retention could not drop them by
//! month; and the partitions of months that ended over a day ago and hold no event of a run that
//! still exists (retention deleted them all) are dropped whole. There is nothing to decide: the
//! store's functions create what is missing and check what may go.

use chrono::{Months, NaiveDate, TimeDelta};
use leasehold_core::store::{self};

use super::{Outcome, Pass};

/// One upkeep pass for the month of `pass.now` (the database's today when `None`) and the
/// months after it, under `pass.leader`; then the months before it that may go. A leadership
/// that is gone creates and drops nothing.
pub async fn run_once(pass: Pass<'_>) -> Result<PartitionsOutcome, store::Error> {
    let created = pass
        .store
        .ensure_event_partitions(pass.leader, pass.now, pass.config.partition_months_ahead)
        .await?;
    let now = pass.now().await?;
    let mut dropped = 0;
    for month in pass.store.event_partition_months().await? {
        if !ended_a_day_before(month, now.date_naive()) {
            break;
        }
        if pass
            .store
            .drop_event_partition(pass.leader, month)
            .await?
            .is_some()
        {
            dropped += 1;
        }
    }
    Ok(PartitionsOutcome {
        created: created.map_or(0, u64::from),
        dropped,
    })
}

/// Whether the month starting on `month` ended more than a day before `today`: the only months
/// the store's check will drop (an event's time is its transaction's start; a day covers any).
fn ended_a_day_before(month: NaiveDate, today: NaiveDate) -> bool {
    month
        .checked_add_months(Months::new(1))
        .is_some_and(|end| end + TimeDelta::days(1) < today)
}

/// What one partition-upkeep pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionsOutcome {
    /// Partitions created.
    pub created: u64,
    /// Partitions of past months dropped, every run with events in them gone.
    pub dropped: u64,
}

impl Outcome for PartitionsOutcome {
    fn actions(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("partitions_created", self.created),
            ("partitions_dropped", self.dropped),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("a date")
    }

    #[test]
    fn a_month_may_go_from_the_second_day_after_it() {
        let january = day(2026, 1, 1);
        assert!(!ended_a_day_before(january, day(2026, 1, 20)));
        assert!(!ended_a_day_before(january, day(2026, 2, 1)));
        assert!(!ended_a_day_before(january, day(2026, 2, 2)));
        assert!(ended_a_day_before(january, day(2026, 2, 3)));
        assert!(ended_a_day_before(day(2025, 12, 1), day(2026, 1, 3)));
    }
}
