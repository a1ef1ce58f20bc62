//! Every error a client can see, mapped to a gRPC status in one place.

use leasehold_core::spec::SpecError;
use leasehold_core::store;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// What an RPC failed with, before it becomes a [`Status`].
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field is missing or malformed.
    #[error("{field}: {message}")]
    InvalidField {
        /// The field, as a path (`spec.nodes[2].id`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The spec broke one or more rules; each violation names its field within the spec.
    #[error("invalid spec: {error}")]
    Spec {
        /// How the request carried the spec.
        carried_in: SpecSource,
        /// What is wrong with it.
        error: SpecError,
    },
    /// The store refused the request.
    #[error(transparent)]
    Refused(#[from] store::RequestError),
    /// The caller may not (or no longer) make the call.
    #[error(transparent)]
    Auth(#[from] super::auth::AuthError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A watch past a cap of open streams.
    #[error(transparent)]
    WatchCap(#[from] super::watch::CapReached),
    /// The coordinator cannot take the call now (it is stopping); another may.
    #[error("{0}")]
    Unavailable(&'static str),
}

/// Where a request carried its spec, which decides how a violation's field is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecSource {
    /// `spec.structured`: a violation names the message's field, `spec.structured.nodes[2].id`.
    Structured,
    /// `spec.text`: a violation names `spec.text`, and its description the place in the text,
    /// `nodes[2].id (node "a"): ...`.
    Text,
}

impl ApiError {
    /// A spec that broke its rules.
    pub fn spec(carried_in: SpecSource, error: SpecError) -> Self {
        Self::Spec { carried_in, error }
    }

    /// A bad field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }
}

fn invalid(field: &str, message: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {message}"),
        ErrorDetails::with_bad_request_violation(field, message),
    )
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::InvalidField { field, message } => invalid(&field, &message),
            ApiError::Spec { carried_in, error } => {
                let violations: Vec<FieldViolation> = error
                    .violations
                    .iter()
                    .map(|v| match carried_in {
                        SpecSource::Structured => FieldViolation::new(
                            format!("spec.structured.{}", v.field),
                            v.to_string(),
                        ),
                        // The violation's text names the place in the spec text.
                        SpecSource::Text => FieldViolation::new("spec.text", v.to_string()),
                    })
                    .collect();
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("invalid spec: {error}"),
                    ErrorDetails::with_bad_request(violations),
                )
            }
            ApiError::Auth(refused) => refused.into(),
            ApiError::Refused(refused) => refusal(refused),
            ApiError::Store(failed) => failure(failed),
            ApiError::WatchCap(cap) => Status::resource_exhausted(cap.to_string()),
            ApiError::Unavailable(why) => Status::unavailable(why),
        }
    }
}

/// The status of a request the store refused.
fn refusal(refused: store::RequestError) -> Status {
    use store::RequestError as R;
    let message = refused.to_string();
    match refused {
        R::InBatch { index, source } => {
            // The status the request would get alone, naming it within the batch.
            let alone = refusal(*source);
            Status::new(
                alone.code(),
                format!("requests[{index}]: {}", alone.message()),
            )
        }
        R::RunNotFound(_)
        | R::AutomationNotFound(_)
        | R::AutomationVersionNotFound { .. }
        | R::GateNotFound(_)
        | R::ScheduleNotFound { .. }
        | R::WorkerNotFound(_) => Status::not_found(message),
        R::AutomationExists(_) => Status::already_exists(message),
        R::AutomationPaused(_)
        | R::AutomationHasUnfinishedRuns { .. }
        | R::Transition(_)
        | R::GateAlreadyDecided { .. }
        | R::NeedsMigration { .. }
        | R::Compacted { .. }
        | R::IdempotencyConflict { .. } => Status::failed_precondition(message),
        R::RunConflict { .. } => Status::aborted(message),
        R::BadPageToken(_) => invalid("page_token", &message),
        R::ReworkNodeNotInSpec { .. } => invalid("rework_nodes", &message),
        R::Store(failed) => failure(failed),
    }
}

/// The status of a store that failed.
fn failure(failed: store::Error) -> Status {
    use store::Error as S;
    let message = failed.to_string();
    match failed {
        S::OutOfRange { constraint } => invalid(&constraint, &message),
        S::UnreadableSpec { .. } | S::UnreadableRun { .. } | S::UnreadableSchedule { .. } => {
            Status::data_loss(message)
        }
        other if other.is_transient() => Status::unavailable(message),
        other => {
            tracing::error!(error = %other, "internal error");
            Status::internal("internal error; see the coordinator's log")
        }
    }
}

/// The result of an RPC body.
pub type ApiResult<T> = Result<T, ApiError>;
