//! Every state and reason the API shows, mapped from the store's names to the proto's enums in
//! this one place. The store keeps its names as text; a name this build does not know shows as
//! `*_UNSPECIFIED` rather than failing the answer.

use leasehold_core::ids::NodeId;
use leasehold_core::run::{NodeStatus, RunStatus};
use leasehold_core::store::{AutomationStatus, GateStatus, RunRecord};
use leasehold_proto::v1;

pub fn run_status(status: RunStatus) -> v1::RunStatus {
    match status {
        RunStatus::Queued => v1::RunStatus::Queued,
        RunStatus::Running => v1::RunStatus::Running,
        RunStatus::Pausing => v1::RunStatus::Pausing,
        RunStatus::Paused => v1::RunStatus::Paused,
        RunStatus::AwaitingApproval => v1::RunStatus::AwaitingApproval,
        RunStatus::Completed => v1::RunStatus::Completed,
        RunStatus::Failed => v1::RunStatus::Failed,
        RunStatus::Blocked => v1::RunStatus::Blocked,
        RunStatus::Cancelled => v1::RunStatus::Cancelled,
    }
}

/// The store's status for a status a client named; `None` for UNSPECIFIED.
pub fn run_status_from(status: v1::RunStatus) -> Option<RunStatus> {
    RunStatus::ALL
        .into_iter()
        .find(|s| run_status(*s) == status)
}

/// A recorded node's status. A failed node whose retry the run is waiting for is shown waiting,
/// not failed: another attempt follows without anyone acting.
pub fn node_status(status: NodeStatus, waiting_retry: bool) -> v1::NodeStatus {
    match status {
        NodeStatus::Running => v1::NodeStatus::Running,
        NodeStatus::Completed => v1::NodeStatus::Completed,
        NodeStatus::Failed if waiting_retry => v1::NodeStatus::WaitingRetry,
        NodeStatus::Failed => v1::NodeStatus::Failed,
        NodeStatus::Skipped => v1::NodeStatus::Skipped,
    }
}

/// The node whose retry the run waits for, if it waits out a backoff: queued, with the failed
/// attempt it will retry still recorded (a claim clears it). A resume keeps it, so a run paused
/// during its backoff still waits for the same retry once resumed.
pub fn retrying_node(run: &RunRecord) -> Option<&NodeId> {
    if run.status == RunStatus::Queued && run.retry_after.is_some() {
        run.retry_node_id.as_ref()
    } else {
        None
    }
}

pub fn gate_status(status: GateStatus) -> v1::GateStatus {
    match status {
        GateStatus::Pending => v1::GateStatus::Pending,
        GateStatus::Suspended => v1::GateStatus::Suspended,
        GateStatus::Approved => v1::GateStatus::Approved,
        GateStatus::Rejected => v1::GateStatus::Rework,
        GateStatus::Cancelled => v1::GateStatus::Cancelled,
    }
}

pub fn automation_status(status: AutomationStatus) -> v1::AutomationStatus {
    match status {
        AutomationStatus::Active => v1::AutomationStatus::Active,
        AutomationStatus::Paused => v1::AutomationStatus::Paused,
    }
}

/// `runs.queue_reason`, as the statements write it.
pub fn queue_reason(reason: Option<&str>) -> v1::QueueReason {
    match reason {
        Some("started") => v1::QueueReason::Started,
        Some("retry_backoff") => v1::QueueReason::RetryBackoff,
        Some("claim_expired") => v1::QueueReason::ClaimExpired,
        Some("released_shutdown") => v1::QueueReason::ReleasedShutdown,
        Some("gate_approved") => v1::QueueReason::GateApproved,
        Some("rework_requested") => v1::QueueReason::ReworkRequested,
        Some("resumed") => v1::QueueReason::Resumed,
        Some("auto_resumed") => v1::QueueReason::AutoResumed,
        Some("recovered") => v1::QueueReason::Recovered,
        _ => v1::QueueReason::Unspecified,
    }
}

/// `runs.stop_kind` and `run_events.stop_kind`, as the schema's CHECK lists them.
pub fn stop_kind(kind: Option<&str>) -> v1::StopKind {
    match kind {
        Some("operator_paused") => v1::StopKind::OperatorPaused,
        Some("stale_reaped") => v1::StopKind::StaleReaped,
        Some("cancelled") => v1::StopKind::Cancelled,
        Some("node_failed") => v1::StopKind::NodeFailed,
        Some("poisoned") => v1::StopKind::Poisoned,
        Some("unreadable") => v1::StopKind::Unreadable,
        Some("no_capable_worker") => v1::StopKind::NoCapableWorker,
        Some("startup_runtime_context_missing") => v1::StopKind::StartupRuntimeContextMissing,
        Some("start_timed_out") => v1::StopKind::StartTimedOut,
        Some("run_timed_out") => v1::StopKind::RunTimedOut,
        _ => v1::StopKind::Unspecified,
    }
}

/// The status of the node an event concerns, right after it: node events say it by their name.
/// Events that name a node without changing it (a gate asked or marked stale) have none.
pub fn event_node_status(event: &str) -> v1::NodeStatus {
    match event {
        "node_started" => v1::NodeStatus::Running,
        "node_completed" => v1::NodeStatus::Completed,
        "node_failed" | "run_failed" => v1::NodeStatus::Failed,
        "node_retry_backoff_scheduled" => v1::NodeStatus::WaitingRetry,
        _ => v1::NodeStatus::Unspecified,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_status_maps_to_its_own_value_and_back() {
        let mut seen = std::collections::HashSet::new();
        for status in RunStatus::ALL {
            let mapped = run_status(status);
            assert_ne!(mapped, v1::RunStatus::Unspecified, "{status}");
            assert!(seen.insert(mapped), "{status} shares {mapped:?}");
            assert_eq!(run_status_from(mapped), Some(status));
            // The enum's value names the stored name: RUN_STATUS_AWAITING_APPROVAL.
            assert_eq!(
                mapped.as_str_name(),
                format!("RUN_STATUS_{}", status.as_str().to_uppercase())
            );
        }
        assert_eq!(run_status_from(v1::RunStatus::Unspecified), None);
    }

    #[test]
    fn every_stored_reason_and_kind_has_a_value_named_after_it() {
        for value in 1..=9 {
            let reason = v1::QueueReason::try_from(value).expect("a queue reason");
            let stored = reason
                .as_str_name()
                .trim_start_matches("QUEUE_REASON_")
                .to_lowercase();
            assert_eq!(queue_reason(Some(&stored)), reason);
        }
        for value in 1..=10 {
            let kind = v1::StopKind::try_from(value).expect("a stop kind");
            let stored = kind
                .as_str_name()
                .trim_start_matches("STOP_KIND_")
                .to_lowercase();
            assert_eq!(stop_kind(Some(&stored)), kind);
        }
        assert_eq!(queue_reason(None), v1::QueueReason::Unspecified);
        assert_eq!(
            stop_kind(Some("guardrail_stopped")),
            v1::StopKind::Unspecified
        );
    }

    #[test]
    fn a_failed_node_waiting_for_its_retry_is_shown_waiting() {
        assert_eq!(
            node_status(NodeStatus::Failed, true),
            v1::NodeStatus::WaitingRetry
        );
        assert_eq!(
            node_status(NodeStatus::Failed, false),
            v1::NodeStatus::Failed
        );
        assert_eq!(
            node_status(NodeStatus::Completed, true),
            v1::NodeStatus::Completed
        );
    }
}
