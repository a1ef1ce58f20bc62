//! Queues for the `Workers` service: their standing and their limits, across tenants.

use leasehold_core::routing::{self, Limits};
use leasehold_core::store::QueueRecord;
use leasehold_proto::v1;

use super::Api;
use super::error::{ApiError, ApiResult};

/// Limits as messages carry them, where 0 is none.
pub(super) fn limits_from(max_running: u32, max_starts_per_second: f64, burst: u32) -> Limits {
    Limits {
        max_running: (max_running != 0).then_some(max_running),
        // NaN is not 0: it stays, for the check to refuse it by name.
        max_starts_per_second: (max_starts_per_second != 0.0).then_some(max_starts_per_second),
        burst: (burst != 0).then_some(burst),
    }
}

fn queue_message(queue: QueueRecord, workers: Vec<String>) -> v1::Queue {
    v1::Queue {
        queue: queue.queue,
        due: i64::try_from(queue.due).unwrap_or(i64::MAX),
        queued: i64::try_from(queue.queued).unwrap_or(i64::MAX),
        held: i64::try_from(queue.held).unwrap_or(i64::MAX),
        oldest_due_age_seconds: queue.oldest_due_age.map_or(0.0, |age| age.as_secs_f64()),
        max_running: queue.limits.max_running.unwrap_or(0),
        max_starts_per_second: queue.limits.max_starts_per_second.unwrap_or(0.0),
        burst: queue.limits.burst.unwrap_or(0),
        workers,
    }
}

impl Api {
    /// Every queue with runs or a limit, and the live workers that claim from it; a queue only
    /// workers serve (nothing waits, no limit) is listed too.
    pub(super) async fn queues(&self) -> ApiResult<v1::ListQueuesResponse> {
        let mut queues = self.store.queues().await?;
        let workers: Vec<_> = self
            .store
            .list_workers(None)
            .await?
            .into_iter()
            .filter(|w| w.alive && !w.draining)
            .map(|w| (w.capabilities(), w))
            .collect();
        for (_, worker) in &workers {
            for queue in worker.queues.iter().flatten() {
                if !queues.iter().any(|q| q.queue == *queue) {
                    queues.push(QueueRecord {
                        queue: queue.clone(),
                        due: 0,
                        queued: 0,
                        held: 0,
                        oldest_due_age: None,
                        limits: Limits::default(),
                    });
                }
            }
        }
        queues.sort_by(|a, b| a.queue.cmp(&b.queue));
        Ok(v1::ListQueuesResponse {
            queues: queues
                .into_iter()
                .map(|queue| {
                    let serving = workers
                        .iter()
                        .filter(|(can, _)| can.serves(&queue.queue))
                        .map(|(_, w)| w.claimant_id.0.clone())
                        .collect();
                    queue_message(queue, serving)
                })
                .collect(),
        })
    }

    /// Sets a queue's limits (all zero: none) and answers the queue as it stands.
    pub(super) async fn set_queue_limits(
        &self,
        request: &v1::SetQueueLimitsRequest,
    ) -> ApiResult<v1::SetQueueLimitsResponse> {
        routing::check_queue_name(&request.queue).map_err(|e| ApiError::field("queue", e))?;
        let limits = limits_from(
            request.max_running,
            request.max_starts_per_second,
            request.burst,
        );
        if let Some((field, message)) = limits.violations().into_iter().next() {
            return Err(ApiError::field(field, message));
        }
        self.store.set_queue_limits(&request.queue, &limits).await?;
        let listed = self.queues().await?;
        let queue = listed
            .queues
            .into_iter()
            .find(|q| q.queue == request.queue)
            .unwrap_or_else(|| v1::Queue {
                queue: request.queue.clone(),
                ..v1::Queue::default()
            });
        Ok(v1::SetQueueLimitsResponse { queue: Some(queue) })
    }
}
