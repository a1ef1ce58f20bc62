//! The `Runs` service; its watch stream is `watch/`'s.

use leasehold_core::ids::{AutomationId, RunId};
use leasehold_core::routing::WaitReason;
use leasehold_core::run::{MAX_NODE_OUTPUT_BYTES, RunStatus};
use leasehold_core::store::{
    GateRecord, NodeRecord, RunFilter, RunRecord, StartOutcome, StartRun, Trigger,
};
use leasehold_proto::v1;
use leasehold_proto::v1::runs_server::Runs;
use prost::Message as _;
use tonic::{Request, Response, Status};

use super::convert::{self, opt_timestamp, timestamp, to_struct, to_value};
use super::error::{ApiError, ApiResult};
use super::gates::gate_message;
use super::{Api, MAX_RESPONSE_BYTES, page_request, page_token, respond, service, states};

/// Largest inputs a run may be started with, as JSON; the same bound as a node's output.
const MAX_INPUTS_BYTES: usize = MAX_NODE_OUTPUT_BYTES;
/// Most runs one StartRuns call may start: a batch is one statement, and a bounded one keeps
/// the statement's time and memory, and the message, in check.
pub const MAX_START_RUNS: usize = 1_000;

/// A node as recorded; `waiting_retry` when the run waits to retry it.
fn node_message(node: &NodeRecord, waiting_retry: bool) -> v1::NodeState {
    v1::NodeState {
        node_id: node.node_id.0.clone(),
        status: states::node_status(node.status, waiting_retry).into(),
        attempts: node.attempts,
        output: node.output.as_ref().map(to_value),
        last_error: node.last_error.clone().unwrap_or_default(),
        started_at: opt_timestamp(node.started_at),
        finished_at: opt_timestamp(node.finished_at),
        output_omitted: false,
    }
}

fn pending_node(node_id: &str) -> v1::NodeState {
    v1::NodeState {
        node_id: node_id.to_owned(),
        status: v1::NodeStatus::Pending.into(),
        ..v1::NodeState::default()
    }
}

/// A run as the API shows it; `nodes` and `gates` are left empty by listings.
pub(super) fn run_message(
    run: &RunRecord,
    nodes: Vec<v1::NodeState>,
    gates: Vec<v1::Gate>,
) -> v1::Run {
    v1::Run {
        run_id: run.run_id.to_string(),
        automation_id: run.automation_id.0.clone(),
        automation_version: run.automation_version,
        status: states::run_status(run.status).into(),
        priority: i32::from(run.priority),
        inputs: Some(to_struct(&run.inputs)),
        queue_reason: if run.status == RunStatus::Queued {
            states::queue_reason(run.queue_reason.as_deref()).into()
        } else {
            v1::QueueReason::Unspecified.into()
        },
        waiting_retry: states::retrying_node(run).map(|node| v1::WaitingRetry {
            node_id: node.0.clone(),
            next_attempt: run.retry_attempt.unwrap_or_default(),
            error: run.retry_error.clone().unwrap_or_default(),
            due_at: opt_timestamp(run.retry_after),
        }),
        lease: run.claimant_id.as_ref().map(|claimant| v1::Lease {
            claimant_id: claimant.0.clone(),
            expires_at: opt_timestamp(run.lease_expires_at),
        }),
        lease_epoch: run.lease_epoch.0,
        stop_kind: states::stop_kind(run.stop_kind.as_deref()).into(),
        stop_reason: run.stop_reason.clone().unwrap_or_default(),
        last_failure: run.failed_node_id.as_ref().map(|node| v1::Failure {
            node_id: node.0.clone(),
            attempt: run.failed_attempt.unwrap_or_default(),
            reason: run.stop_reason.clone().unwrap_or_default(),
        }),
        nodes,
        gates,
        event_seq: run.event_seq,
        created_at: Some(timestamp(run.created_at)),
        finished_at: opt_timestamp(run.finished_at),
        concurrency_key: run.concurrency_key.clone().unwrap_or_default(),
        trace_id: run
            .trace_parent
            .as_ref()
            .map(|t| t.trace_id().to_owned())
            .unwrap_or_default(),
        queue: run.queue.clone(),
        waiting: None,
        start_deadline: opt_timestamp(run.deadline_view().pending_start()),
        run_deadline: opt_timestamp(run.deadline_view().pending_run()),
        compacted_at: opt_timestamp(run.compacted_at),
        trigger: run.trigger.as_str().to_owned(),
        schedule_id: match &run.trigger {
            Trigger::Schedule(fire) => fire.schedule_id.clone(),
            Trigger::Manual | Trigger::Api => String::new(),
        },
        scheduled_for: match &run.trigger {
            Trigger::Schedule(fire) => Some(timestamp(fire.fire_at)),
            Trigger::Manual | Trigger::Api => None,
        },
    }
}

/// Whether a view says why its run waits: GetRun's and ListRuns' do; a StartRun answer does
/// not (the reason costs two reads, and a start is the hot path), nor does an action's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Said,
    Unsaid,
}

/// Why a queued run waits for a worker.
pub(super) fn waiting_message(reason: &WaitReason) -> v1::Waiting {
    v1::Waiting {
        code: reason.code().to_owned(),
        message: reason.to_string(),
        missing: match reason {
            WaitReason::NoWorkerForQueue { .. }
            | WaitReason::AtMaxRunning { .. }
            | WaitReason::RateLimited { .. } => Vec::new(),
            WaitReason::Missing { missing } => missing.iter().map(ToString::to_string).collect(),
        },
    }
}

/// Room left in an answer for what wraps a run (a `StartRunResponse`'s tag, length and flag).
const ANSWER_ENVELOPE_BYTES: usize = 1024;

/// Leaves out the largest node outputs of `view`, each marked `output_omitted`, until it encodes
/// in at most `budget` bytes; a view that fits is left alone. An answer over the limit would be
/// refused as a whole after the call did its work, and an operator's call that succeeded must
/// say so (docs/api.md, "Limits").
fn fit_answer(view: &mut v1::Run, budget: usize) {
    let mut size = view.encoded_len();
    if size <= budget {
        return;
    }
    let mut largest: Vec<(usize, usize)> = view
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.output.as_ref().map(|o| (o.encoded_len(), i)))
        .collect();
    largest.sort_unstable_by(|a, b| b.cmp(a));
    for (_, i) in largest {
        if size <= budget {
            break;
        }
        let node = &mut view.nodes[i];
        let before = node.encoded_len();
        node.output = None;
        node.output_omitted = true;
        // The node's length prefix shrinks too, so the true size is at most this.
        size -= before - node.encoded_len();
    }
}

fn reason(field: &str, text: &str) -> ApiResult<String> {
    Ok(convert::text(field, text)?.to_owned())
}

impl Api {
    /// The run `run_id` names, as [`Api::run_view`] shows it, with why it waits if it does.
    async fn run_get(&self, run_id: &str) -> ApiResult<v1::Run> {
        self.run_view_with(convert::run_id("run_id", run_id)?, Waiting::Said)
            .await
    }

    /// A run with its node states (pending ones included) and gates.
    pub(super) async fn run_view(&self, run_id: RunId) -> ApiResult<v1::Run> {
        self.run_view_with(run_id, Waiting::Unsaid).await
    }

    async fn run_view_with(&self, run_id: RunId, waiting: Waiting) -> ApiResult<v1::Run> {
        let run = self.store.run(&self.tenant, run_id).await?;
        let recorded = self.store.checkpoint(run_id).await?;
        // The spec lists the nodes that have not started (only their ids are read); a run whose
        // spec is unreadable still shows what was recorded.
        let spec_nodes = self
            .store
            .spec_node_ids(&self.tenant, &run.automation_id, run.automation_version)
            .await?;
        let retrying = states::retrying_node(&run);
        let message = |node: &NodeRecord| node_message(node, Some(&node.node_id) == retrying);
        let nodes = match spec_nodes {
            Some(ids) => ids
                .iter()
                .map(|id| {
                    recorded
                        .iter()
                        .find(|r| r.node_id == *id)
                        .map_or_else(|| pending_node(id.as_str()), message)
                })
                .collect(),
            None => recorded.iter().map(message).collect(),
        };
        let gates: Vec<GateRecord> = self.store.gates_of_run(&self.tenant, run_id).await?;
        let mut view = run_message(&run, nodes, gates.iter().map(gate_message).collect());
        if waiting == Waiting::Said {
            view.waiting = self
                .store
                .wait_reasons([&run])
                .await?
                .get(&run.run_id)
                .map(waiting_message);
        }
        fit_answer(&mut view, MAX_RESPONSE_BYTES - ANSWER_ENVELOPE_BYTES);
        Ok(view)
    }

    /// A start request checked field by field; `prefix` places the fields in a batch.
    fn start_request(&self, prefix: &str, request: &v1::StartRunRequest) -> ApiResult<StartRun> {
        let field = |name: &str| format!("{prefix}{name}");
        let automation_id = AutomationId(convert::name(
            &field("automation_id"),
            &request.automation_id,
        )?);
        let inputs = request
            .inputs
            .as_ref()
            .map_or_else(|| serde_json::json!({}), convert::from_struct);
        let size = serde_json::to_vec(&inputs).map_or(usize::MAX, |v| v.len());
        if size > MAX_INPUTS_BYTES {
            return Err(ApiError::field(
                field("inputs"),
                format!("{size} bytes as JSON; at most {MAX_INPUTS_BYTES}"),
            ));
        }
        let priority = i16::try_from(request.priority)
            .ok()
            .filter(|p| (-1000..=1000).contains(p))
            .ok_or_else(|| ApiError::field(field("priority"), "must be between -1000 and 1000"))?;
        Ok(StartRun {
            tenant: self.tenant.clone(),
            automation_id,
            inputs,
            priority,
            concurrency_key: convert::optional_key(
                &field("concurrency_key"),
                &request.concurrency_key,
            )?,
            idempotency_key: convert::optional_key(&field("request_id"), &request.request_id)?,
            trigger: Trigger::Api,
            actor: Some(self.caller.name.clone()),
            trace: self.trace.clone(),
            queue: convert::optional_queue(&field("queue"), &request.queue)?,
        })
    }

    /// Started in a batch with the other calls in flight ([`super::starts`]); a new run's view
    /// is built from what the batch's statement answered, since a run just queued has no node
    /// state, gate or event beyond its first.
    async fn run_start(&self, request: v1::StartRunRequest) -> ApiResult<v1::StartRunResponse> {
        let request = self.start_request("", &request)?;
        match self.starts.start(request).await? {
            StartOutcome::Inserted { run, node_ids } => {
                let nodes = node_ids
                    .iter()
                    .flatten()
                    .map(|id| pending_node(id.as_str()))
                    .collect();
                let mut view = run_message(&run, nodes, Vec::new());
                fit_answer(&mut view, MAX_RESPONSE_BYTES - ANSWER_ENVELOPE_BYTES);
                Ok(v1::StartRunResponse {
                    run: Some(view),
                    created: true,
                })
            }
            StartOutcome::Stored(started) => Ok(v1::StartRunResponse {
                run: Some(self.run_view(started.run_id).await?),
                created: started.created,
            }),
        }
    }

    /// Every request is checked before any is stored; the store then starts all or none.
    async fn runs_start(&self, request: v1::StartRunsRequest) -> ApiResult<v1::StartRunsResponse> {
        if request.requests.len() > MAX_START_RUNS {
            return Err(ApiError::field(
                "requests",
                format!(
                    "{} requests; at most {MAX_START_RUNS} per call",
                    request.requests.len()
                ),
            ));
        }
        let requests = request
            .requests
            .iter()
            .enumerate()
            .map(|(i, r)| self.start_request(&format!("requests[{i}]."), r))
            .collect::<ApiResult<Vec<_>>>()?;
        let started = self.store.start_runs(&requests).await?;
        Ok(v1::StartRunsResponse {
            runs: started
                .iter()
                .map(|s| v1::StartRunResponse {
                    run: Some(run_message(&s.run, Vec::new(), Vec::new())),
                    created: s.created,
                })
                .collect(),
        })
    }

    async fn run_list(&self, request: v1::ListRunsRequest) -> ApiResult<v1::ListRunsResponse> {
        let filter = RunFilter {
            automation_id: if request.automation_id.is_empty() {
                None
            } else {
                Some(AutomationId(convert::name(
                    "automation_id",
                    &request.automation_id,
                )?))
            },
            statuses: request
                .statuses
                .iter()
                .enumerate()
                .map(|(i, value)| {
                    v1::RunStatus::try_from(*value)
                        .ok()
                        .and_then(states::run_status_from)
                        .ok_or_else(|| {
                            ApiError::field(
                                format!("statuses[{i}]"),
                                format!("{value} is not a RunStatus other than UNSPECIFIED"),
                            )
                        })
                })
                .collect::<ApiResult<_>>()?,
            concurrency_key: convert::optional_key("concurrency_key", &request.concurrency_key)?,
            created_after: request
                .created_after
                .as_ref()
                .map(|t| convert::from_timestamp("created_after", t))
                .transpose()?,
            created_before: request
                .created_before
                .as_ref()
                .map(|t| convert::from_timestamp("created_before", t))
                .transpose()?,
        };
        let page = page_request(request.page_size, &request.page_token)?;
        let page = self.store.list_runs(&self.tenant, &filter, &page).await?;
        let waiting = self.store.wait_reasons(&page.items).await?;
        Ok(v1::ListRunsResponse {
            runs: page
                .items
                .iter()
                .map(|r| v1::Run {
                    waiting: waiting.get(&r.run_id).map(waiting_message),
                    ..run_message(r, Vec::new(), Vec::new())
                })
                .collect(),
            next_page_token: page_token(page.next.as_ref()),
        })
    }

    async fn run_act(
        &self,
        run_id: &str,
        reason_text: &str,
        request_id: &str,
        action: Action,
    ) -> ApiResult<v1::Run> {
        let run_id = convert::run_id("run_id", run_id)?;
        let reason = reason("reason", reason_text)?;
        let request_id = convert::optional_key("request_id", request_id)?;
        let request_id = request_id.as_deref();
        let store = &self.store;
        let (tenant, actor) = (&self.tenant, self.caller.name.as_str());
        match action {
            Action::Cancel => {
                store
                    .cancel_run(tenant, run_id, &reason, actor, request_id)
                    .await?;
            }
            Action::Pause => {
                store
                    .pause_run(tenant, run_id, &reason, actor, request_id)
                    .await?;
            }
            Action::Resume => {
                store
                    .resume_run(tenant, run_id, &reason, actor, request_id)
                    .await?;
            }
            Action::Recover => {
                store
                    .recover_run(tenant, run_id, &reason, actor, request_id)
                    .await?;
            }
        }
        self.run_view(run_id).await
    }
}

enum Action {
    Cancel,
    Pause,
    Resume,
    Recover,
}

service! {
    impl Runs {
        rpc start_run(StartRunRequest) -> v1::StartRunResponse = |api, m| api.run_start(m);
        rpc start_runs(StartRunsRequest) -> v1::StartRunsResponse = |api, m| api.runs_start(m);
        rpc get_run(GetRunRequest) -> v1::Run = |api, m| api.run_get(&m.run_id);
        rpc list_runs(ListRunsRequest) -> v1::ListRunsResponse = |api, m| api.run_list(m);
        rpc cancel_run(CancelRunRequest) -> v1::Run =
            |api, m| api.run_act(&m.run_id, &m.reason, &m.request_id, Action::Cancel);
        rpc pause_run(PauseRunRequest) -> v1::Run =
            |api, m| api.run_act(&m.run_id, &m.reason, &m.request_id, Action::Pause);
        rpc resume_run(ResumeRunRequest) -> v1::Run =
            |api, m| api.run_act(&m.run_id, &m.reason, &m.request_id, Action::Resume);
        rpc recover_run(RecoverRunRequest) -> v1::Run =
            |api, m| api.run_act(&m.run_id, &m.reason, &m.request_id, Action::Recover);
    }

    type WatchRunStream = super::watch::WatchStream;

    async fn watch_run(
        &self,
        request: Request<v1::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let api = self.api(&request)?;
        respond(api.run_watch(super::checked(request)?).await)
    }
}
