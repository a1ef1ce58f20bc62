//! Deadlines: a run never claimed by its start deadline, or not finished by its run deadline,
//! fails. A missed start records why the run waited (`no_capable_worker`,
//! `startup_runtime_context_missing`, or `start_timed_out` when a worker could have taken it),
//! judged as `run show` judges a waiting run; a held run's nodes are stopped as a cancel stops
//! them.

use std::collections::HashMap;

use leasehold_core::ids::RunId;
use leasehold_core::routing::WaitReason;
use leasehold_core::run::deadline::{self, Missed};
use leasehold_core::store::{self, DeadlineFailure, RunRecord};

use super::{Outcome, Pass, count};

/// One deadline pass at `pass.now` (the database's clock when `None`), under `pass.leader`.
pub async fn run_once(pass: Pass<'_>) -> Result<DeadlinesOutcome, store::Error> {
    let now = pass.now().await?;
    let candidates = pass
        .store
        .past_deadlines(now, pass.config.batch_limit)
        .await?;
    let missed: Vec<(&RunRecord, Missed)> = candidates
        .iter()
        .filter_map(|run| Some((run, deadline::missed(&run.deadline_view(), now)?)))
        .collect();
    let waiting = pass
        .store
        .wait_reasons(
            missed
                .iter()
                .filter(|(_, m)| *m == Missed::Start)
                .map(|(run, _)| *run),
        )
        .await?;
    let failures: Vec<DeadlineFailure> = missed
        .iter()
        .map(|(run, m)| failure(run, *m, &waiting))
        .collect();
    let failed = pass
        .store
        .fail_past_deadlines(pass.leader, &failures, now)
        .await?;
    let kind_of: HashMap<RunId, &str> = failures.iter().map(|f| (f.run_id, f.stop_kind)).collect();
    let (run, start): (Vec<&RunId>, Vec<&RunId>) = failed
        .iter()
        .partition(|id| kind_of.get(id) == Some(&deadline::RUN_TIMED_OUT));
    Ok(DeadlinesOutcome {
        start_missed: count(&start),
        run_missed: count(&run),
    })
}

/// The failure of `run` for the deadline it `missed`: its stop kind, and a sentence naming the
/// deadline and, for a start, why it waited.
fn failure(
    run: &RunRecord,
    missed: Missed,
    waiting: &HashMap<RunId, WaitReason>,
) -> DeadlineFailure {
    let reason = waiting.get(&run.run_id);
    let at = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map_or_else(String::new, |at| {
            format!(" ({})", at.format("%Y-%m-%d %H:%M:%S%.3f UTC"))
        })
    };
    let sentence = match (missed, reason) {
        (Missed::Run, _) => format!(
            "not finished by its run deadline{}: the automation's run_timeout_ms passed",
            at(run.deadlines.run)
        ),
        (Missed::Start, Some(reason)) => format!(
            "not claimed by its start deadline{}: the automation's schedule_to_start_timeout_ms \
             passed while it was {reason}",
            at(run.deadlines.start)
        ),
        (Missed::Start, None) => format!(
            "not claimed by its start deadline{}: the automation's schedule_to_start_timeout_ms \
             passed while workers able to run it were busy",
            at(run.deadlines.start)
        ),
    };
    DeadlineFailure {
        run_id: run.run_id,
        stop_kind: missed.stop_kind(reason),
        reason: sentence,
    }
}

/// What one deadline pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeadlinesOutcome {
    /// Runs failed for a missed start deadline.
    pub start_missed: u64,
    /// Runs failed for a missed run deadline.
    pub run_missed: u64,
}

impl Outcome for DeadlinesOutcome {
    fn actions(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("runs_failed_start_deadline", self.start_missed),
            ("runs_failed_run_deadline", self.run_missed),
        ]
    }
}
