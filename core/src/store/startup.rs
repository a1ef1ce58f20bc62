//! Starting without the database: a process that cannot reach PostgreSQL when it starts keeps
//! trying, with backoff, instead of exiting, so that an orchestrator does not crash-loop it while
//! the database fails over or comes up beside it.

use std::time::Duration;

use super::{Error, Store, outage};

/// The first pause between tries.
pub const STARTUP_RETRY_FIRST: Duration = Duration::from_millis(250);
/// The longest pause between tries.
pub const STARTUP_RETRY_MAX: Duration = Duration::from_secs(10);

/// How a process treats a database it cannot reach when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenUnavailable {
    /// Keep trying, with backoff, until it answers (or the caller gives up on the future).
    Wait,
    /// Fail at once, for scripts that want the old behaviour.
    Exit,
}

/// The pause before try number `tries + 1`, after `tries` failed: doubling from
/// `STARTUP_RETRY_FIRST` (250 ms) up to `STARTUP_RETRY_MAX` (10 s).
pub fn startup_retry_delay(tries: u32) -> Duration {
    let factor = 2u32.saturating_pow(tries.saturating_sub(1));
    STARTUP_RETRY_FIRST
        .saturating_mul(factor)
        .min(STARTUP_RETRY_MAX)
}

impl Store {
    /// Waits until the database answers and its schema is one this build can serve
    /// ([`Store::check_schema`]). A failure that trying again may mend (the server is down,
    /// refuses connections, is starting) is retried with backoff under `policy`, and logged as
    /// an outage; any other (a refused schema, bad credentials) is returned at once.
    pub async fn wait_until_served(&self, policy: WhenUnavailable) -> Result<(), Error> {
        let mut tries = 0;
        loop {
            let checked = self.check_schema().await;
            match checked {
                Ok(()) => {
                    outage::DATABASE.succeeded();
                    return Ok(());
                }
                Err(e) if e.is_transient() && policy == WhenUnavailable::Wait => {
                    outage::DATABASE.failed(&e);
                    tries += 1;
                    tokio::time::sleep(startup_retry_delay(tries)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_up_to_its_cap() {
        let delays: Vec<_> = (1..=8).map(startup_retry_delay).collect();
        assert_eq!(delays[0], STARTUP_RETRY_FIRST);
        assert_eq!(delays[1], STARTUP_RETRY_FIRST * 2);
        assert_eq!(delays[2], STARTUP_RETRY_FIRST * 4);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(delays[7], STARTUP_RETRY_MAX);
        assert_eq!(startup_retry_delay(u32::MAX), STARTUP_RETRY_MAX);
    }
}
