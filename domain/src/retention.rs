//! History retention: how long a finished run keeps its details, and how long it is kept at all.
//!
//! A finished run (completed, failed or cancelled) is *hot* for `compact_after`: it has its
//! inputs and its nodes' outputs. Past that it is *compacted*: they are dropped, and its status,
//! timings, attempts, errors, gates and events stay. Past `delete_after` it is deleted with its
//! nodes and gates; its events go with their month's partition, once no run left has an event in
//! it. A blocked run is not finished: it waits for a person, and is kept.
//!
//! Each tenant may have its own windows; a tenant without them has the coordinators' defaults.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// The hot window unless configured otherwise: a week, as the original engine kept.
pub const COMPACT_AFTER_DEFAULT: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// The full retention unless configured otherwise: ninety days.
pub const DELETE_AFTER_DEFAULT: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// No window is shorter: an hour leaves time to read a run that just failed.
pub const WINDOW_MIN: Duration = Duration::from_secs(60 * 60);
/// No window is longer than ten years.
pub const WINDOW_MAX: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// How long finished runs keep their details, and how long they are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionWindows {
    /// After it finished, how long a run keeps its inputs and outputs.
    pub compact_after: Duration,
    /// After it finished, how long a run is kept at all.
    pub delete_after: Duration,
}

impl Default for RetentionWindows {
    fn default() -> Self {
        Self {
            compact_after: COMPACT_AFTER_DEFAULT,
            delete_after: DELETE_AFTER_DEFAULT,
        }
    }
}

/// Windows that cannot be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    /// A window outside [`WINDOW_MIN`]..=[`WINDOW_MAX`].
    #[error("{field} is {value:?}; it must be between 1 hour and 10 years")]
    OutOfBounds {
        /// `compact_after` or `delete_after`.
        field: &'static str,
        /// Its value.
        value: Duration,
    },
    /// A run would be deleted before it is compacted.
    #[error(
        "delete_after ({delete_after:?}) must not be shorter than compact_after ({compact_after:?})"
    )]
    DeleteBeforeCompact {
        /// The hot window.
        compact_after: Duration,
        /// The full retention.
        delete_after: Duration,
    },
}

impl RetentionWindows {
    /// The windows, if each is within bounds and runs are compacted before they are deleted.
    pub fn validated(self) -> Result<Self, RetentionError> {
        for (field, value) in [
            ("compact_after", self.compact_after),
            ("delete_after", self.delete_after),
        ] {
            if !(WINDOW_MIN..=WINDOW_MAX).contains(&value) {
                return Err(RetentionError::OutOfBounds { field, value });
            }
        }
        if self.delete_after < self.compact_after {
            return Err(RetentionError::DeleteBeforeCompact {
                compact_after: self.compact_after,
                delete_after: self.delete_after,
            });
        }
        Ok(self)
    }

    /// The instants before which, at `now`, a finished run is compacted and deleted: it is
    /// compacted when it finished strictly before the first, deleted strictly before the second.
    pub fn cutoffs(&self, now: DateTime<Utc>) -> Cutoffs {
        let before = |window: Duration| now - TimeDelta::from_std(window).unwrap_or(TimeDelta::MAX);
        Cutoffs {
            compact_before: before(self.compact_after),
            delete_before: before(self.delete_after),
        }
    }

    /// What becomes, at `now`, of a run that finished at `finished_at`.
    pub fn stage(&self, finished_at: DateTime<Utc>, now: DateTime<Utc>) -> Stage {
        let cutoffs = self.cutoffs(now);
        if finished_at < cutoffs.delete_before {
            Stage::Deleted
        } else if finished_at < cutoffs.compact_before {
            Stage::Compacted
        } else {
            Stage::Hot
        }
    }
}

/// [`RetentionWindows::cutoffs`]: what the sweep's statements compare `finished_at` with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoffs {
    /// Finished before it: compacted.
    pub compact_before: DateTime<Utc>,
    /// Finished before it: deleted.
    pub delete_before: DateTime<Utc>,
}

/// Where a finished run stands in its retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// It has all its details.
    Hot,
    /// Its inputs and outputs are dropped.
    Compacted,
    /// It is gone.
    Deleted,
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid timestamp")
    }

    fn ago(d: Duration) -> DateTime<Utc> {
        t0() - TimeDelta::from_std(d).expect("small")
    }

    #[test]
    fn a_run_is_hot_then_compacted_then_deleted() {
        let windows = RetentionWindows {
            compact_after: 7 * DAY,
            delete_after: 30 * DAY,
        };
        let ms = Duration::from_millis(1);
        assert_eq!(windows.stage(ago(7 * DAY), t0()), Stage::Hot);
        assert_eq!(windows.stage(ago(7 * DAY + ms), t0()), Stage::Compacted);
        assert_eq!(windows.stage(ago(30 * DAY), t0()), Stage::Compacted);
        assert_eq!(windows.stage(ago(30 * DAY + ms), t0()), Stage::Deleted);
        assert_eq!(windows.stage(t0(), t0()), Stage::Hot);
    }

    #[test]
    fn equal_windows_delete_what_they_compact() {
        let windows = RetentionWindows {
            compact_after: DAY,
            delete_after: DAY,
        };
        assert_eq!(windows.validated(), Ok(windows));
        assert_eq!(windows.stage(ago(2 * DAY), t0()), Stage::Deleted);
    }

    #[test]
    fn windows_out_of_bounds_or_deleting_first_are_refused() {
        let bad = RetentionWindows {
            compact_after: HOUR - Duration::from_secs(1),
            delete_after: DAY,
        };
        assert!(matches!(
            bad.validated(),
            Err(RetentionError::OutOfBounds {
                field: "compact_after",
                ..
            })
        ));
        let bad = RetentionWindows {
            compact_after: DAY,
            delete_after: WINDOW_MAX + HOUR,
        };
        assert!(matches!(
            bad.validated(),
            Err(RetentionError::OutOfBounds {
                field: "delete_after",
                ..
            })
        ));
        let bad = RetentionWindows {
            compact_after: 2 * DAY,
            delete_after: DAY,
        };
        assert_eq!(
            bad.validated(),
            Err(RetentionError::DeleteBeforeCompact {
                compact_after: 2 * DAY,
                delete_after: DAY
            })
        );
        assert_eq!(
            RetentionWindows::default().validated(),
            Ok(RetentionWindows::default())
        );
    }
}
