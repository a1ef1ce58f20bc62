//! The API's enums as the words the CLI prints and accepts: `RUN_STATUS_AWAITING_APPROVAL` is
//! `awaiting_approval`, the name the store and the docs use. A value this build does not know
//! prints as its number, so a newer coordinator's answer still shows.

use leasehold_proto::v1;

macro_rules! enum_names {
    ($($(#[$doc:meta])* $name:ident: $enum:ty = $prefix:literal;)+) => {
        $(
            $(#[$doc])*
            pub fn $name(value: i32) -> String {
                match <$enum>::try_from(value) {
                    Ok(known) => known
                        .as_str_name()
                        .trim_start_matches($prefix)
                        .to_lowercase(),
                    Err(_) => value.to_string(),
                }
            }
        )+
    };
}

enum_names! {
    /// A run's status.
    run_status: v1::RunStatus = "RUN_STATUS_";
    /// A node's status.
    node_status: v1::NodeStatus = "NODE_STATUS_";
    /// A gate's status.
    gate_status: v1::GateStatus = "GATE_STATUS_";
    /// Why a run is queued.
    queue_reason: v1::QueueReason = "QUEUE_REASON_";
    /// What stopped a run.
    stop_kind: v1::StopKind = "STOP_KIND_";
    /// Whether an automation starts runs.
    automation_status: v1::AutomationStatus = "AUTOMATION_STATUS_";
}

/// The status a user named (`failed`, `awaiting_approval`), for a filter.
pub fn parse_run_status(name: &str) -> Option<v1::RunStatus> {
    let status = v1::RunStatus::from_str_name(&format!("RUN_STATUS_{}", name.to_uppercase()))?;
    (status != v1::RunStatus::Unspecified).then_some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_lowercase_value_without_its_prefix() {
        assert_eq!(
            run_status(v1::RunStatus::AwaitingApproval.into()),
            "awaiting_approval"
        );
        assert_eq!(
            node_status(v1::NodeStatus::WaitingRetry.into()),
            "waiting_retry"
        );
        assert_eq!(stop_kind(v1::StopKind::Unspecified.into()), "unspecified");
        assert_eq!(run_status(99), "99");
    }

    #[test]
    fn a_named_status_parses_back_and_unspecified_does_not() {
        assert_eq!(parse_run_status("failed"), Some(v1::RunStatus::Failed));
        assert_eq!(
            parse_run_status("awaiting_approval"),
            Some(v1::RunStatus::AwaitingApproval)
        );
        assert_eq!(parse_run_status("unspecified"), None);
        assert_eq!(parse_run_status("done"), None);
    }
}
