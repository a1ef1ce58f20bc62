//! Auto-resume: a run stale-reaped recently, and not too often, goes back to the queue when one
//! of its unfinished nodes has an attempt left (docs/lease_protocol.md, rule 5); otherwise it waits
//! for an operator. The decision is [`lease::auto_resume`].

use leasehold_core::lease;
use leasehold_core::store::{self, AutoResumeParams};

use super::{Outcome, Pass, count};

/// One auto-resume pass at `pass.now` (the database's clock when `None`), under
/// `pass.leader`. Does nothing when auto-resume is switched off.
pub async fn run_once(pass: Pass<'_>) -> Result<AutoResumeOutcome, store::Error> {
    let mut outcome = AutoResumeOutcome::default();
    if !pass.config.auto_resume_enabled {
        return Ok(outcome);
    }
    let now = pass.now().await?;
    let params = AutoResumeParams {
        now: Some(now),
        window: pass.config.auto_resume_window,
        cap: pass.config.auto_resume_cap,
        limit: pass.config.batch_limit,
    };
    let views = pass.store.stale_reaped_runs(&params).await?;
    let mut resume = Vec::new();
    let mut declined = Vec::new();
    for view in &views {
        let decision = lease::auto_resume(view, now, params.window, params.cap);
        match decision {
            lease::AutoResume::Resume => resume.push(view.clone()),
            lease::AutoResume::WindowPassed => outcome.window_passed += 1,
            lease::AutoResume::CapReached => outcome.cap_reached += 1,
            lease::AutoResume::NoBudget => outcome.no_budget += 1,
            lease::AutoResume::UnreadableSpec => {
                if let Err(reason) = &view.nodes {
                    tracing::warn!(run_id = %view.run_id, reason, "spec unreadable; not resuming");
                }
                outcome.unreadable_spec += 1;
            }
        }
        if let Some(reason) = decision.declined_reason() {
            declined.push((view, reason));
        }
    }
    outcome.declined = count(
        &pass
            .store
            .decline_auto_resume(pass.leader, &declined)
            .await?,
    );
    outcome.resumed = count(
        &pass
            .store
            .auto_resume(pass.leader, &resume, &params)
            .await?,
    );
    Ok(outcome)
}

/// What one auto-resume pass did, and why it left the runs it left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AutoResumeOutcome {
    /// Runs back in `queued`.
    pub resumed: u64,
    /// Left: stale-reaped longer ago than the window.
    pub window_passed: u64,
    /// Left: auto-resumed as often as the cap allows.
    pub cap_reached: u64,
    /// Left: no unfinished node has an attempt left.
    pub no_budget: u64,
    /// Left: the pinned spec cannot be read.
    pub unreadable_spec: u64,
    /// Of those left for the cap, the budget or the spec: marked so that no later pass reads
    /// them again for this stale reap (fewer than counted when a run changed meanwhile).
    pub declined: u64,
}

impl Outcome for AutoResumeOutcome {
    /// A run is looked at once per stale reap: a resume and a decline are news.
    fn is_empty(&self) -> bool {
        self.resumed == 0 && self.declined == 0
    }

    /// Runs left for the window are looked at again each pass: only news is counted.
    fn actions(&self) -> Vec<(&'static str, u64)> {
        vec![("auto_resumed", self.resumed), ("declined", self.declined)]
    }
}
