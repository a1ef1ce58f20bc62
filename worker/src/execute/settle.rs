//! The end of a run's stay on this worker, once nothing of it runs: complete, fail, queue for a
//! retry, pause, wait at a gate, or hand back.

use leasehold_core::ids::NodeId;
use leasehold_core::run::{self, Budget, NodeStatus};
use leasehold_core::spec::NodeSpec;
use leasehold_core::store::{self, Failure};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Execution, Outcome, Shutdown, Stop, fenced};

impl Execution<'_> {
    /// Nothing runs any more: end, queue, pause or hand back the run, whichever applies.
    pub(super) async fn settle(
        &mut self,
        stop: &CancellationToken,
        shutdown: &Shutdown,
    ) -> Result<Outcome, Stop> {
        let claim = self.claim();
        let store = &self.shared.store;
        if let Some(failure) = self.failure.take().or_else(|| self.exhausted()) {
            let skipped: Vec<NodeId> = run::downstream(&self.spec, &failure.node_id)
                .into_iter()
                .filter(|id| !self.checkpoint.contains_key(*id))
                .cloned()
                .collect();
            fenced(stop, || store.fail_run(&claim, &failure, &skipped)).await?;
            return Ok(Outcome::Failed);
        }
        let all_completed = self.spec.nodes.iter().all(|n| {
            self.checkpoint
                .get(&n.id)
                .is_some_and(|s| s.status == NodeStatus::Completed)
        });
        if all_completed {
            if !self.run_completed {
                fenced(stop, || store.complete_run(&claim)).await?;
            }
            return Ok(Outcome::Completed);
        }
        if self.pausing() {
            fenced(stop, || store.settle_pause(&claim)).await?;
            return Ok(Outcome::Paused);
        }
        if let Some((node_id, attempt, delay)) = self.retry.take() {
            let scheduled = fenced(stop, || {
                store.schedule_retry(&claim, &node_id, attempt, delay)
            })
            .await;
            return match scheduled {
                Err(e) if e.is_pause_requested() => {
                    fenced(stop, || store.settle_pause(&claim)).await?;
                    Ok(Outcome::Paused)
                }
                other => other.map(|()| Outcome::RetryScheduled),
            };
        }
        if shutdown.drain.is_cancelled() {
            return self.release(stop).await;
        }
        // Nothing is ready, nothing runs, nothing failed, yet not every node completed: the
        // checkpoint contradicts the spec. Block the run for an operator rather than spin.
        Err(Stop::Db(
            store::Error::UnreadableRun {
                run_id: claim.run_id(),
                reason: "no node can run, yet not every node completed".into(),
            }
            .into(),
        ))
    }

    /// A node that failed for good under an earlier claim (its attempts used up by interrupted
    /// attempts, a terminal failure whose run failing was interrupted, or clean stops up to
    /// their cap) fails the run too.
    fn exhausted(&self) -> Option<Failure> {
        self.spec.nodes.iter().find_map(|node| {
            let state = self.checkpoint.get(&node.id)?;
            let reason = state.budget(node.max_attempts).reason()?;
            Some(Failure {
                node_id: node.id.clone(),
                attempt: state.attempts,
                reason: match state.budget(node.max_attempts) {
                    Budget::AttemptsUsed { .. } => format!("{reason}, the last one interrupted"),
                    Budget::Terminal => format!("attempt {} failed for good", state.attempts),
                    _ => reason,
                },
            })
        })
    }

    pub(super) async fn await_approval(
        &mut self,
        stop: &CancellationToken,
        node_id: &NodeId,
    ) -> Result<Outcome, Stop> {
        let claim = self.claim();
        let store = &self.shared.store;
        let node = self.spec.node(node_id).expect("gated node from the spec");
        let prompt = gate_prompt(node);
        match fenced(stop, || store.await_approval(&claim, node_id, &prompt)).await {
            Err(e) if e.is_pause_requested() => {
                fenced(stop, || store.settle_pause(&claim)).await?;
                Ok(Outcome::Paused)
            }
            other => other.map(|_| Outcome::AwaitingApproval),
        }
    }

    pub(super) async fn release(&mut self, stop: &CancellationToken) -> Result<Outcome, Stop> {
        let claim = self.claim();
        let store = &self.shared.store;
        let claims = [claim];
        let released = fenced(stop, || store.release_on_shutdown(&claims)).await?;
        if released.released.contains(&claim.run_id()) {
            Ok(Outcome::Released)
        } else {
            Err(Stop::LeaseLost)
        }
    }
}

fn gate_prompt(node: &NodeSpec) -> String {
    node.approval
        .as_ref()
        .map(|a| a.prompt.clone())
        .or_else(|| {
            node.input
                .get("prompt")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("Approve node {}?", node.id))
}
