//! Waiting for something observable, with a deadline, never sleeping for things to settle.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `f` every `every` until it returns `Some`, and returns that value.
///
/// `f` runs at least once, and once more at the deadline before giving up. The deadline is in
/// real time.
///
/// # Panics
/// If `f` still returns `None` after `deadline`, naming `what`.
pub async fn until<T, F, Fut>(what: &str, deadline: Duration, every: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        let last = start.elapsed() >= deadline;
        if let Some(value) = f().await {
            return value;
        }
        assert!(!last, "timed out after {deadline:?} waiting for {what}");
        let left = deadline.saturating_sub(start.elapsed());
        tokio::time::sleep(every.min(left)).await;
    }
}
