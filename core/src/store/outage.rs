//! The database outage as a process's log tells it: once when it begins, every so often while it
//! lasts (with how many calls failed meanwhile), and once when it ends. Without this, every run
//! of a worker logged its own retry every 200 ms, and an outage of a minute buried the log.
//!
//! One outage per process ([`DATABASE`]): the database is one, whichever run or sweep noticed.

use std::fmt::Display;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Time between the reminders that an outage still lasts.
pub const REMINDER_INTERVAL: Duration = Duration::from_secs(30);

/// The process's view of whether the database answers.
pub static DATABASE: OutageLog = OutageLog::new();

/// What the log should say after a call, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The first failure after calls succeeded.
    Began,
    /// The outage lasts: it began `lasted` ago, and `failures` calls failed since.
    Lasts {
        /// Since the first failure.
        lasted: Duration,
        /// Calls failed since the first failure, that one included.
        failures: u64,
    },
    /// A call succeeded after the outage lasted `lasted` with `failures` calls failed.
    Ended {
        /// From the first failure to this success.
        lasted: Duration,
        /// Calls failed meanwhile.
        failures: u64,
    },
}

/// An outage's state; a pure function of the calls' results and the times given.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outage {
    /// When the first failed call of this outage was seen; `None` while calls succeed.
    began: Option<Instant>,
    /// When the outage was last reported.
    reported: Option<Instant>,
    failures: u64,
}

impl Outage {
    /// A call failed at `now`.
    pub fn failed(&mut self, now: Instant) -> Option<Report> {
        self.failures += 1;
        let Some(began) = self.began else {
            self.began = Some(now);
            self.reported = Some(now);
            return Some(Report::Began);
        };
        let reported = self.reported.unwrap_or(began);
        if now.saturating_duration_since(reported) < REMINDER_INTERVAL {
            return None;
        }
        self.reported = Some(now);
        Some(Report::Lasts {
            lasted: now.saturating_duration_since(began),
            failures: self.failures,
        })
    }

    /// A call succeeded at `now`.
    pub fn succeeded(&mut self, now: Instant) -> Option<Report> {
        let began = self.began?;
        let report = Report::Ended {
            lasted: now.saturating_duration_since(began),
            failures: self.failures,
        };
        *self = Self::default();
        Some(report)
    }
}

/// An [`Outage`] that logs its reports; shared by every task of a process.
#[derive(Debug)]
pub struct OutageLog {
    /// Whether an outage is under way: a success outside one costs one atomic load.
    ongoing: AtomicBool,
    outage: Mutex<Outage>,
}

impl OutageLog {
    /// No outage yet.
    pub const fn new() -> Self {
        Self {
            ongoing: AtomicBool::new(false),
            outage: Mutex::new(Outage {
                began: None,
                reported: None,
                failures: 0,
            }),
        }
    }

    /// A call failed with `error`, a failure that trying again may mend (the caller retries).
    pub fn failed(&self, error: &dyn Display) {
        let report = self.with(|outage| outage.failed(Instant::now()));
        self.ongoing.store(true, Ordering::Release);
        match report {
            Some(Report::Began) => tracing::warn!(
                %error,
                "database unavailable; retrying (reported again every {}s while it lasts)",
                REMINDER_INTERVAL.as_secs()
            ),
            Some(Report::Lasts { lasted, failures }) => tracing::warn!(
                %error,
                lasted_s = lasted.as_secs(),
                failures,
                "database still unavailable"
            ),
            Some(Report::Ended { .. }) | None => {
                tracing::debug!(%error, "database call failed; retrying");
            }
        }
    }

    /// Whether the last call this process made failed for a reason trying again may mend: the
    /// database is unreachable now, as far as this process knows. A worker's `/readyz` reads it.
    pub fn is_ongoing(&self) -> bool {
        self.ongoing.load(Ordering::Acquire)
    }

    /// A call succeeded.
    pub fn succeeded(&self) {
        if !self.ongoing.load(Ordering::Acquire) {
            return;
        }
        let report = self.with(|outage| outage.succeeded(Instant::now()));
        self.ongoing.store(false, Ordering::Release);
        if let Some(Report::Ended { lasted, failures }) = report {
            tracing::info!(
                lasted_ms = u64::try_from(lasted.as_millis()).unwrap_or(u64::MAX),
                failures,
                "database available again"
            );
        }
    }

    /// Records a call's result: success, or a failure that trying again may mend, which this
    /// log reports. Returns any other error, which the caller must report itself.
    pub fn record<'a, T>(&self, result: &'a Result<T, super::Error>) -> Option<&'a super::Error> {
        match result {
            Ok(_) => {
                self.succeeded();
                None
            }
            Err(e) if e.is_transient() => {
                self.failed(e);
                None
            }
            Err(e) => Some(e),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Outage) -> T) -> T {
        // The state is plain data, valid after any panic.
        let mut outage = self
            .outage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut outage)
    }
}

impl Default for OutageLog {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_when_it_begins_every_interval_and_when_it_ends() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut outage = Outage::default();
        assert_eq!(outage.succeeded(at(0)), None, "no outage, nothing to say");
        assert_eq!(outage.failed(at(0)), Some(Report::Began));
        // Retries of many runs within the interval are counted, not reported.
        for ms in (200..30_000).step_by(200) {
            assert_eq!(outage.failed(at(ms)), None, "at {ms} ms");
        }
        assert_eq!(
            outage.failed(at(30_000)),
            Some(Report::Lasts {
                lasted: Duration::from_secs(30),
                failures: 151
            })
        );
        assert_eq!(outage.failed(at(45_000)), None);
        assert_eq!(
            outage.succeeded(at(46_000)),
            Some(Report::Ended {
                lasted: Duration::from_secs(46),
                failures: 152
            })
        );
        assert_eq!(outage.succeeded(at(47_000)), None, "ended once");
        assert_eq!(
            outage.failed(at(50_000)),
            Some(Report::Began),
            "a new outage"
        );
    }
}
