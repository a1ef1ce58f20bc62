//! The `Workers` and `Stats` services.

use std::collections::BTreeMap;

use leasehold_core::ids::ClaimantId;
use leasehold_core::kinds::{BUILTIN_KINDS, builtin_input_schema};
use leasehold_core::run::RunStatus;
use leasehold_core::store::WorkerRecord;
use leasehold_proto::v1;
use leasehold_proto::v1::stats_server::Stats;
use leasehold_proto::v1::workers_server::Workers;

use super::convert::{self, timestamp, to_struct};
use super::error::{ApiError, ApiResult};
use super::runs::waiting_message;
use super::{Api, respond, service, states};

fn worker_message(worker: &WorkerRecord) -> v1::Worker {
    v1::Worker {
        claimant_id: worker.claimant_id.0.clone(),
        host: worker.host.clone(),
        pid: i32::try_from(worker.pid).unwrap_or(i32::MAX),
        version: worker.version.clone(),
        capacity: i32::try_from(worker.capacity).unwrap_or(i32::MAX),
        handlers: worker.handlers.clone(),
        started_at: Some(timestamp(worker.started_at)),
        last_heartbeat: Some(timestamp(worker.last_heartbeat)),
        draining: worker.draining,
        alive: worker.alive,
        held_runs: worker.held_runs,
        lease_ms: worker
            .lease
            .map_or(0, |l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX)),
        queues: worker.queues.iter().flatten().cloned().collect(),
        labels: worker
            .labels
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        context: worker.context.iter().cloned().collect(),
    }
}

impl Api {
    async fn workers(&self) -> ApiResult<v1::ListWorkersResponse> {
        let workers = self.store.list_workers(None).await?;
        Ok(v1::ListWorkersResponse {
            workers: workers.iter().map(worker_message).collect(),
        })
    }

    async fn drain(&self, claimant: &str) -> ApiResult<v1::Worker> {
        if claimant.is_empty() || claimant.chars().count() > 256 {
            return Err(ApiError::field(
                "claimant_id",
                "required, at most 256 characters",
            ));
        }
        let claimant = ClaimantId(claimant.to_owned());
        if !self.store.set_worker_draining(&claimant).await? {
            return Err(ApiError::Refused(
                leasehold_core::store::RequestError::WorkerNotFound(claimant),
            ));
        }
        let workers = self.store.list_workers(None).await?;
        workers
            .iter()
            .find(|w| w.claimant_id == claimant)
            .map(worker_message)
            .ok_or(ApiError::Refused(
                leasehold_core::store::RequestError::WorkerNotFound(claimant),
            ))
    }

    /// The built-in kinds, with their schemas whether or not a worker advertised them (the
    /// coordinator checks inputs against these), and every kind a worker advertised, with the
    /// schema the latest one declared.
    async fn node_kinds(&self) -> ApiResult<v1::ListNodeKindsResponse> {
        let mut kinds: BTreeMap<String, v1::NodeKind> = BUILTIN_KINDS
            .iter()
            .map(|kind| {
                let message = v1::NodeKind {
                    kind: (*kind).to_owned(),
                    input_schema: builtin_input_schema(kind).map(|s| to_struct(s.as_value())),
                    builtin: true,
                    last_advertised_at: None,
                };
                ((*kind).to_owned(), message)
            })
            .collect();
        for advertised in self.store.node_kinds(None).await? {
            let last = Some(timestamp(advertised.last_advertised_at));
            kinds
                .entry(advertised.kind.clone())
                .and_modify(|builtin| builtin.last_advertised_at = last)
                .or_insert_with(|| v1::NodeKind {
                    kind: advertised.kind,
                    input_schema: advertised.input_schema.as_ref().map(to_struct),
                    builtin: false,
                    last_advertised_at: last,
                });
        }
        Ok(v1::ListNodeKindsResponse {
            kinds: kinds.into_values().collect(),
        })
    }

    async fn stats(&self, request: &v1::GetStatsRequest) -> ApiResult<v1::GetStatsResponse> {
        let queue = convert::optional_queue("queue", &request.queue)?;
        let stats = self.store.stats(&self.tenant, queue.as_deref()).await?;
        Ok(v1::GetStatsResponse {
            run_counts: RunStatus::ALL
                .into_iter()
                .map(|status| v1::StatusCount {
                    status: states::run_status(status).into(),
                    runs: stats
                        .runs_by_status
                        .get(status.as_str())
                        .copied()
                        .unwrap_or(0),
                })
                .collect(),
            oldest_queued_age_seconds: stats.oldest_queued_age.map_or(0.0, |d| d.as_secs_f64()),
            claimable_now: stats.claimable_now,
            held_leases: stats.held_leases,
            waiting: stats
                .waiting
                .iter()
                .map(|(reason, runs)| v1::WaitingCount {
                    waiting: Some(waiting_message(reason)),
                    runs: *runs,
                })
                .collect(),
        })
    }
}

service! {
    impl Workers {
        rpc list_workers(ListWorkersRequest) -> v1::ListWorkersResponse = |api, _m| api.workers();
        rpc drain_worker(DrainWorkerRequest) -> v1::Worker = |api, m| api.drain(&m.claimant_id);
        rpc list_node_kinds(ListNodeKindsRequest) -> v1::ListNodeKindsResponse =
            |api, _m| api.node_kinds();
        rpc list_queues(ListQueuesRequest) -> v1::ListQueuesResponse = |api, _m| api.queues();
        rpc set_queue_limits(SetQueueLimitsRequest) -> v1::SetQueueLimitsResponse =
            |api, m| api.set_queue_limits(&m);
    }
}

service! {
    impl Stats {
        rpc get_stats(GetStatsRequest) -> v1::GetStatsResponse = |api, m| api.stats(&m);
    }
}
