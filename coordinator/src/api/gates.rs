//! The `Gates` service.

use leasehold_core::ids::NodeId;
use leasehold_core::store::{Decision, DecisionKind, GateRecord};
use leasehold_proto::v1;
use leasehold_proto::v1::gates_server::Gates;

use super::convert::{self, opt_timestamp, timestamp};
use super::error::{ApiError, ApiResult};
use super::{Api, page_request, page_token, respond, service, states};

pub(super) fn gate_message(gate: &GateRecord) -> v1::Gate {
    v1::Gate {
        gate_id: gate.gate_id.to_string(),
        run_id: gate.run_id.to_string(),
        node_id: gate.node_id.0.clone(),
        prompt: gate.prompt.clone(),
        status: states::gate_status(gate.status).into(),
        requested_at: Some(timestamp(gate.requested_at)),
        decided_at: opt_timestamp(gate.decided_at),
        decided_by: gate.decided_by.clone().unwrap_or_default(),
        reason: gate.reason.clone().unwrap_or_default(),
        stale: gate.stale,
        rework_nodes: gate.rework_nodes.iter().map(|n| n.0.clone()).collect(),
    }
}

impl Api {
    async fn list_gates_page(
        &self,
        request: v1::ListGatesRequest,
    ) -> ApiResult<v1::ListGatesResponse> {
        let page = page_request(request.page_size, &request.page_token)?;
        let page = self
            .store
            .list_gates(&self.tenant, request.include_decided, &page)
            .await?;
        Ok(v1::ListGatesResponse {
            gates: page.items.iter().map(gate_message).collect(),
            next_page_token: page_token(page.next.as_ref()),
        })
    }

    async fn decide(&self, request: v1::DecideGateRequest) -> ApiResult<v1::Gate> {
        let gate_id = convert::gate_id("gate_id", &request.gate_id)?;
        let kind = match v1::Decision::try_from(request.decision) {
            Ok(v1::Decision::Approve) => DecisionKind::Approve,
            Ok(v1::Decision::Cancel) => DecisionKind::Cancel,
            Ok(v1::Decision::Rework) => {
                if request.rework_nodes.is_empty() {
                    return Err(ApiError::field(
                        "rework_nodes",
                        "name at least one node to run again",
                    ));
                }
                let nodes = request
                    .rework_nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| convert::name(&format!("rework_nodes[{i}]"), n).map(NodeId))
                    .collect::<ApiResult<Vec<_>>>()?;
                DecisionKind::Rework { nodes }
            }
            Ok(v1::Decision::Unspecified) | Err(_) => {
                return Err(ApiError::field(
                    "decision",
                    "one of APPROVE, REWORK or CANCEL",
                ));
            }
        };
        if !matches!(kind, DecisionKind::Rework { .. }) && !request.rework_nodes.is_empty() {
            return Err(ApiError::field(
                "rework_nodes",
                "only a REWORK decision names nodes",
            ));
        }
        let text = |field: &str, value: &str| -> ApiResult<Option<String>> {
            let value = convert::text(field, value)?;
            Ok((!value.is_empty()).then(|| value.to_owned()))
        };
        let decision = Decision {
            gate_id,
            kind,
            reason: text("reason", &request.reason)?,
            // The decider is the caller; the request's decided_by is ignored (the proto says so).
            decided_by: self.caller.name.clone(),
            request_id: convert::optional_key("request_id", &request.request_id)?,
        };
        let gate = self.store.decide_gate(&self.tenant, &decision).await?;
        Ok(gate_message(&gate))
    }
}

service! {
    impl Gates {
        rpc list_gates(ListGatesRequest) -> v1::ListGatesResponse =
            |api, m| api.list_gates_page(m);
        rpc decide_gate(DecideGateRequest) -> v1::Gate = |api, m| api.decide(m);
    }
}
