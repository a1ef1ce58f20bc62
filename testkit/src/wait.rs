//! Waiting for something observable, with a deadline, instead of sleeping.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`wait_for`] polls.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Polls `f` about every 10 ms until it returns `Some`, and returns that value.
///
/// `f` runs at least once, and once more at the deadline before giving up. The deadline is
/// measured in real time, not on tokio's clock, so a paused clock cannot end the wait early.
///
/// ```no_run
/// # async fn example(count: impl Fn() -> std::future::Ready<u64>) {
/// use std::time::Duration;
/// use leasehold_testkit::wait_for;
///
/// wait_for(Duration::from_secs(5), "three rows", || async {
///     (count().await == 3).then_some(())
/// })
/// .await;
/// # }
/// ```
///
/// # Panics
///
/// If `f` still returns `None` after `deadline`, with `what` in the message.
pub async fn wait_for<F, Fut, T>(deadline: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_every(deadline, POLL_INTERVAL, what, f).await
}

/// [`wait_for`], polling every `every` instead of every 10 ms: for a suite that watches a busy
/// database and should not add to its load.
///
/// # Panics
///
/// If `f` still returns `None` after `deadline`, with `what` in the message.
pub async fn wait_for_every<F, Fut, T>(
    deadline: Duration,
    every: Duration,
    what: &str,
    mut f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = f().await {
            return value;
        }
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        // The last sleep ends at the deadline, so that `f` gets its last look then.
        tokio::time::sleep(every.min(deadline - elapsed)).await;
    }
}
