//! The `Workers` and `Stats` services.

use std::time::Duration;

use leasehold_core::ids::ClaimantId;
use leasehold_core::run::RunStatus;
use leasehold_core::store::WorkerRecord;
use leasehold_proto::v1;
use leasehold_proto::v1::stats_server::Stats;
use leasehold_proto::v1::workers_server::Workers;

use super::convert::timestamp;
use super::error::{ApiError, ApiResult};
use super::{Api, respond, service, states};

/// A worker whose last heartbeat is older than this is shown as not alive: several heartbeat
/// intervals of the default 30 s lease.
pub const WORKER_ALIVE_WITHIN: Duration = Duration::from_secs(60);

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
        lease_ms: 0,
    }
}

impl Api {
    async fn workers(&self) -> ApiResult<v1::ListWorkersResponse> {
        let workers = self.store.list_workers(WORKER_ALIVE_WITHIN).await?;
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
        let workers = self.store.list_workers(WORKER_ALIVE_WITHIN).await?;
        workers
            .iter()
            .find(|w| w.claimant_id == claimant)
            .map(worker_message)
            .ok_or(ApiError::Refused(
                leasehold_core::store::RequestError::WorkerNotFound(claimant),
            ))
    }

    async fn stats(&self) -> ApiResult<v1::StatsResponse> {
        let stats = self.store.stats(&self.tenant).await?;
        Ok(v1::StatsResponse {
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
        })
    }
}

service! {
    impl Workers {
        rpc list_workers(ListWorkersRequest) -> v1::ListWorkersResponse = |api, _m| api.workers();
        rpc drain_worker(DrainWorkerRequest) -> v1::Worker = |api, m| api.drain(&m.claimant_id);
    }

    async fn list_node_kinds(
        &self,
        _request: tonic::Request<v1::ListNodeKindsRequest>,
    ) -> Result<tonic::Response<v1::ListNodeKindsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("ListNodeKinds is not served by this build yet"))
    }
}

service! {
    impl Stats {
        rpc get_stats(GetStatsRequest) -> v1::StatsResponse = |api, _m| api.stats();
    }
}
