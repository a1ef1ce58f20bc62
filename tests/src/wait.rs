//! The testkit's [`wait_for_every`](leasehold_testkit::wait_for_every) under the name `cluster`
//! calls. Scenarios and everything else call the testkit directly.

use std::future::Future;
use std::time::Duration;

/// [`leasehold_testkit::wait_for_every`], with the arguments in the order `cluster` passes them.
///
/// # Panics
/// If `f` still returns `None` after `deadline`, naming `what`.
pub async fn until<T, F, Fut>(what: &str, deadline: Duration, every: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    leasehold_testkit::wait_for_every(deadline, every, what, f).await
}
