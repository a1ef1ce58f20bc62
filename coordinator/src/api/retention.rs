//! The `History` service: the caller's tenant's retention windows.

use std::time::Duration;

use leasehold_core::retention::{RetentionError, RetentionWindows};
use leasehold_core::store::TenantRetention;
use leasehold_proto::v1;
use leasehold_proto::v1::history_server::History;

use super::convert::timestamp;
use super::error::{ApiError, ApiResult};
use super::{Api, respond, service};

fn seconds(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn retention_message(windows: RetentionWindows, own: Option<&TenantRetention>) -> v1::Retention {
    v1::Retention {
        compact_after_seconds: seconds(windows.compact_after),
        delete_after_seconds: seconds(windows.delete_after),
        inherited: own.is_none(),
        updated_at: own.map(|o| timestamp(o.updated_at)),
        updated_by: own.map(|o| o.updated_by.clone()).unwrap_or_default(),
    }
}

/// The windows a request sets, `None` for both zero (clear), checked: each field named when it
/// is out of bounds, `delete_after_seconds` when it is shorter than `compact_after_seconds`.
fn requested(request: &v1::SetRetentionRequest) -> ApiResult<Option<RetentionWindows>> {
    let (compact, delete) = (request.compact_after_seconds, request.delete_after_seconds);
    if compact == 0 && delete == 0 {
        return Ok(None);
    }
    let window = |field: &'static str, secs: i64| {
        u64::try_from(secs)
            .map(Duration::from_secs)
            .map_err(|_| ApiError::field(field, "must not be negative"))
    };
    let windows = RetentionWindows {
        compact_after: window("compact_after_seconds", compact)?,
        delete_after: window("delete_after_seconds", delete)?,
    };
    windows.validated().map(Some).map_err(|e| match e {
        RetentionError::OutOfBounds { field, .. } => ApiError::field(
            if field == "compact_after" {
                "compact_after_seconds"
            } else {
                "delete_after_seconds"
            },
            "must be between 3600 (an hour) and 315360000 (ten years)",
        ),
        RetentionError::DeleteBeforeCompact { .. } => ApiError::field(
            "delete_after_seconds",
            "must not be shorter than compact_after_seconds: a run is compacted before it is \
             deleted",
        ),
    })
}

impl Api {
    /// The caller's tenant's windows: its own, or this coordinator's.
    async fn retention_get(&self) -> ApiResult<v1::Retention> {
        let own = self.store.tenant_retention(&self.tenant).await?;
        let windows = own.as_ref().map_or(self.retention, |o| o.windows);
        Ok(retention_message(windows, own.as_ref()))
    }

    /// Sets, or with both zero clears, the caller's tenant's own windows, recording the caller.
    async fn retention_set(&self, request: &v1::SetRetentionRequest) -> ApiResult<v1::Retention> {
        let windows = requested(request)?;
        let own = self
            .store
            .set_tenant_retention(&self.tenant, windows, &self.caller.name)
            .await?;
        let windows = own.as_ref().map_or(self.retention, |o| o.windows);
        Ok(retention_message(windows, own.as_ref()))
    }
}

service! {
    impl History {
        rpc get_retention(GetRetentionRequest) -> v1::Retention = |api, _m| api.retention_get();
        rpc set_retention(SetRetentionRequest) -> v1::Retention = |api, m| api.retention_set(&m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(compact: i64, delete: i64) -> v1::SetRetentionRequest {
        v1::SetRetentionRequest {
            compact_after_seconds: compact,
            delete_after_seconds: delete,
        }
    }

    fn refused_field(compact: i64, delete: i64) -> String {
        match requested(&request(compact, delete)) {
            Err(ApiError::InvalidField { field, .. }) => field,
            other => panic!("not refused by field: {other:?}"),
        }
    }

    #[test]
    fn windows_are_checked_field_by_field() {
        assert_eq!(requested(&request(0, 0)).expect("clear"), None);
        assert_eq!(
            requested(&request(3600, 7200)).expect("valid"),
            Some(RetentionWindows {
                compact_after: Duration::from_secs(3600),
                delete_after: Duration::from_secs(7200),
            })
        );
        assert_eq!(refused_field(-1, 7200), "compact_after_seconds");
        assert_eq!(refused_field(3599, 7200), "compact_after_seconds");
        assert_eq!(refused_field(3600, 0), "delete_after_seconds");
        assert_eq!(refused_field(7200, 3600), "delete_after_seconds");
        assert_eq!(refused_field(3600, 315_360_001), "delete_after_seconds");
    }
}
