//! The reaper: runs whose lease expired go back to the queue when no node started under the
//! claim, are stale-reaped when one did, and are blocked when their claims keep expiring before
//! any progress (docs/lease_protocol.md, rules 4, 5 and 9). The decision is [`lease::reap`].

use leasehold_core::lease::{self, LeaseView, Reap};
use leasehold_core::store::{self, ReapParams};

use super::{Outcome, Pass, count};

/// One reaper pass at `pass.now` (the database's clock when `None`), under `pass.leader`.
pub async fn run_once(pass: Pass<'_>) -> Result<ReapOutcome, store::Error> {
    let now = pass.now().await?;
    let params = ReapParams {
        now: Some(now),
        limit: pass.config.batch_limit,
        poison_limit: pass.config.poison_limit,
    };
    let expired = pass.store.expired_leases(&params).await?;
    let (mut requeue, mut stale_reap, mut block): (Vec<LeaseView>, Vec<_>, Vec<_>) =
        Default::default();
    for view in expired {
        match lease::reap(&view, now, params.poison_limit) {
            Reap::Leave => {}
            Reap::Requeue => requeue.push(view),
            Reap::StaleReap => stale_reap.push(view),
            Reap::BlockPoisoned => block.push(view),
        }
    }
    let requeued = pass
        .store
        .requeue_expired_as_leader(pass.leader, &requeue, &params)
        .await?;
    let stale_reaped = pass
        .store
        .stale_reap_as_leader(pass.leader, &stale_reap, &params)
        .await?;
    let blocked = pass
        .store
        .block_poisoned_as_leader(pass.leader, &block, &params)
        .await?;
    Ok(ReapOutcome {
        requeued: count(&requeued),
        stale_reaped: count(&stale_reaped),
        blocked: count(&blocked),
    })
}

/// What one reaper pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReapOutcome {
    /// Runs back in `queued`, their attempts untouched.
    pub requeued: u64,
    /// Runs paused as stale-reaped, their interrupted attempts counted.
    pub stale_reaped: u64,
    /// Runs blocked as poison.
    pub blocked: u64,
}

impl Outcome for ReapOutcome {
    fn actions(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("requeued", self.requeued),
            ("stale_reaped", self.stale_reaped),
            ("poisoned", self.blocked),
        ]
    }
}
