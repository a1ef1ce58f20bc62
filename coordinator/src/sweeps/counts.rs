//! Run counts: the triggers of V22 record each move of a run into or out of a finished status
//! as a delta; this sweep folds them into the per-tenant, per-queue counts that `GetStats`
//! reads, so that Stats never reads finished runs. Its first pass counts the finished runs
//! once. There is nothing to decide: the store's statements do both in one snapshot each.

use leasehold_core::store;

use super::{Outcome, Pass};

/// One pass under `pass.leader`: the first count, or a fold of the deltas since the last pass.
pub async fn run_once(pass: Pass<'_>) -> Result<CountsOutcome, store::Error> {
    let folded = pass.store.fold_run_counts(pass.leader).await?;
    Ok(CountsOutcome {
        baselined: u64::from(folded.baselined),
        deltas_folded: folded.deltas,
    })
}

/// What one run-count pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountsOutcome {
    /// 1 when this pass counted the finished runs for the first time.
    pub baselined: u64,
    /// Moves of runs into or out of a finished status folded into the counts.
    pub deltas_folded: u64,
}

impl Outcome for CountsOutcome {
    fn actions(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("counts_baselined", self.baselined),
            ("deltas_folded", self.deltas_folded),
        ]
    }
}
