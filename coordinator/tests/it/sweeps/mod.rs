//! The sweeps against a real Postgres: the reaper, pausing settlement, auto-resume, stale gates
//! and partition upkeep, each under the leader lease; and the leader loop's elections and
//! handovers between coordinators.

mod auto_resume;
mod counts;
mod deadlines;
mod leader;
mod partitions;
mod pausing;
mod reaper;
mod retention;
mod schedules;
mod stale_gates;
mod workers;

use std::fmt::Debug;
use std::time::Duration;

use chrono::{DateTime, Utc};
use leasehold_coordinator::sweeps::{self, Config};
use leasehold_coordinator::sweeps::{Pass, Sweep};
use leasehold_core::ids::{AutomationId, RunId};
use leasehold_core::store::Leadership;
use leasehold_testkit::fixtures::{Bundle, node, setup};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);
const REQUEUED: &str = "run_execution_claim_expired_requeued";
const STALE_REAPED: &str = "run_stale_reaped";

/// A stale-reaped run: started, claimed, node `a` started, then its worker froze and the reaper
/// paused it. Returns it with the instant it was reaped at.
async fn stale_reaped_run(
    b: &Bundle,
    automation: &AutomationId,
    leader: &Leadership,
) -> (RunId, DateTime<Utc>) {
    let run_id = b.progressed(automation, "frozen").await.claim.run_id();
    b.expire_lease(run_id, Duration::from_secs(1)).await;
    let reaped = pass(b, sweeps::Reaper, leader, None).await;
    assert_eq!(reaped.stale_reaped, 1);
    let row = b.row(run_id).await;
    assert_eq!(
        (row.status.as_str(), row.stop_kind.as_deref()),
        ("paused", Some("stale_reaped"))
    );
    (run_id, row.stale_reaped_at.expect("reaped at"))
}

/// What most sweep tests start from: the testkit's bundle, the sweeps' role held by `c1`, and
/// a diamond named `automation`.
async fn setup_leading(automation: &str) -> (Bundle, Leadership, AutomationId) {
    let b = setup().await;
    let leader = lead(&b, "c1").await;
    let automation = b.diamond(automation).await;
    (b, leader, automation)
}

/// `n` runs of a diamond named `automation`, all held by one worker, every other one with node
/// `a` started: once their leases expire, half requeue and half are stale-reaped.
async fn crowd(automation: &str, n: usize) -> (Bundle, Vec<RunId>) {
    let b = setup().await;
    let automation = b.diamond(automation).await;
    let mut runs = Vec::new();
    for _ in 0..n {
        runs.push(b.start(&automation).await);
    }
    let claimed = b.claim("w", n).await;
    assert_eq!(claimed.len(), n);
    for c in claimed.iter().step_by(2) {
        b.store
            .node_started(&c.claim, &node("a"))
            .await
            .expect("start a");
    }
    (b, runs)
}

/// Runs a sweep pass, `pass(now)`, 1 ms before `horizon` and at it, and asserts that neither
/// changes anything: the near side of the horizon. `what` (empty, or ending in a space) starts the
/// assertion's message.
async fn idle_until<O>(horizon: DateTime<Utc>, what: &str, pass: impl AsyncFn(DateTime<Utc>) -> O)
where
    O: Default + PartialEq + Debug,
{
    for now in [horizon - ms(1), horizon] {
        assert_eq!(pass(now).await, O::default(), "{what}at {now}");
    }
}

/// One pass of `sweep` under `leader` with the default settings, at `now` (the database's clock
/// when `None`), which must not fail.
async fn pass<S: Sweep>(
    b: &Bundle,
    sweep: S,
    leader: &Leadership,
    now: Option<DateTime<Utc>>,
) -> S::Outcome {
    sweep
        .run_once(Pass::new(&b.store, leader, &config(), now))
        .await
        .unwrap_or_else(|e| panic!("{} pass: {e}", S::NAME))
}

/// The default sweep settings, checked.
fn config() -> Config {
    Config::default().validated().expect("valid config")
}

fn ms(n: i64) -> chrono::TimeDelta {
    chrono::TimeDelta::milliseconds(n)
}

/// Takes the sweeps' role for `holder`, asserting that it was free.
async fn lead(b: &Bundle, holder: &str) -> Leadership {
    b.leader_of(sweeps::LEADER_NAME_DEFAULT, holder).await
}

/// Sweeps often and hands leadership over quickly, so that the loop tests finish in seconds.
fn fast_config() -> Config {
    Config {
        leader_lease: Duration::from_secs(1),
        reaper_interval: Duration::from_millis(20),
        pausing_interval: Duration::from_millis(20),
        auto_resume_interval: Duration::from_millis(20),
        stale_gate_interval: Duration::from_millis(20),
        ..config()
    }
    .validated()
    .expect("valid config")
}

struct Coordinator {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), sweeps::ConfigError>>,
}

impl Coordinator {
    /// Stops the coordinator and waits for its loop, which must end without an error.
    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.expect("coordinator task").expect("valid");
    }
}

fn spawn_coordinator(b: &Bundle, holder: &str, config: Config) -> Coordinator {
    let cancel = CancellationToken::new();
    let task = tokio::spawn(sweeps::run(
        b.store.clone(),
        config,
        holder.to_owned(),
        cancel.clone(),
    ));
    Coordinator { cancel, task }
}
