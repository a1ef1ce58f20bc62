//! Tenants' retention windows (V20): how long their finished runs keep their details, and how
//! long they are kept. A tenant without a row has the coordinators' windows.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::gated::RETENTION_SCHEMA_VERSION;
use super::query::Query;
use super::{Error, RequestError, Store};
use crate::ids::TenantId;
use crate::retention::RetentionWindows;

/// A tenant's own windows, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRetention {
    /// The windows.
    pub windows: RetentionWindows,
    /// When they were last set.
    pub updated_at: DateTime<Utc>,
    /// Who set them.
    pub updated_by: String,
}

// Every tenant's own windows: a row per tenant that set them, which is few.
const TENANT_RETENTIONS: Query = Query {
    name: "tenant_retentions",
    sql: "\
SELECT tenant_id, compact_after_secs, delete_after_secs, updated_at, updated_by
FROM tenant_retention ORDER BY tenant_id",
};

const TENANT_RETENTION: Query = Query {
    name: "tenant_retention",
    sql: "\
SELECT tenant_id, compact_after_secs, delete_after_secs, updated_at, updated_by
FROM tenant_retention WHERE tenant_id = $1::text",
};

const SET_TENANT_RETENTION: Query = Query {
    name: "set_tenant_retention",
    sql: "\
INSERT INTO tenant_retention AS t
    (tenant_id, compact_after_secs, delete_after_secs, updated_at, updated_by)
VALUES ($1::text, $2::bigint, $3::bigint, now(), $4::text)
ON CONFLICT (tenant_id) DO UPDATE
SET compact_after_secs = excluded.compact_after_secs,
    delete_after_secs = excluded.delete_after_secs,
    updated_at = excluded.updated_at, updated_by = excluded.updated_by
RETURNING tenant_id, compact_after_secs, delete_after_secs, updated_at, updated_by",
};

const CLEAR_TENANT_RETENTION: Query = Query {
    name: "clear_tenant_retention",
    sql: "DELETE FROM tenant_retention WHERE tenant_id = $1::text",
};

pub(super) const QUERIES: &[Query] = &[
    TENANT_RETENTIONS,
    TENANT_RETENTION,
    SET_TENANT_RETENTION,
    CLEAR_TENANT_RETENTION,
];

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn read(row: &Row) -> TenantRetention {
    let window = |column: &str| Duration::from_secs(row.get::<_, i64>(column).unsigned_abs());
    TenantRetention {
        windows: RetentionWindows {
            compact_after: window("compact_after_secs"),
            delete_after: window("delete_after_secs"),
        },
        updated_at: row.get("updated_at"),
        updated_by: row.get("updated_by"),
    }
}

impl Store {
    /// Every tenant's own windows; none on a schema without retention (below V20).
    pub async fn tenant_retentions(&self) -> Result<Vec<(TenantId, RetentionWindows)>, Error> {
        let client = self.client().await?;
        if self.schema(&client).await? < RETENTION_SCHEMA_VERSION {
            return Ok(Vec::new());
        }
        let rows = TENANT_RETENTIONS.query(&client, &[]).await?;
        Ok(rows
            .iter()
            .map(|row| (TenantId(row.get("tenant_id")), read(row).windows))
            .collect())
    }

    /// `tenant`'s own windows, if it set them.
    pub async fn tenant_retention(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<TenantRetention>, Error> {
        let client = self.client().await?;
        if self.schema(&client).await? < RETENTION_SCHEMA_VERSION {
            return Ok(None);
        }
        let row = TENANT_RETENTION
            .query_opt(&client, &[&tenant.as_str()])
            .await?;
        Ok(row.as_ref().map(read))
    }

    /// Sets `tenant`'s own windows (checked by the caller with
    /// [`RetentionWindows::validated`]), or with `None` clears them, so that the coordinators'
    /// apply again; `actor` is recorded. Answers what stands.
    pub async fn set_tenant_retention(
        &self,
        tenant: &TenantId,
        windows: Option<RetentionWindows>,
        actor: &str,
    ) -> Result<Option<TenantRetention>, RequestError> {
        let client = self.client().await?;
        if self.schema(&client).await? < RETENTION_SCHEMA_VERSION {
            return Err(RequestError::NeedsMigration {
                what: "retention windows",
                version: RETENTION_SCHEMA_VERSION,
            });
        }
        let Some(windows) = windows else {
            CLEAR_TENANT_RETENTION
                .execute(&client, &[&tenant.as_str()])
                .await?;
            return Ok(None);
        };
        let row = SET_TENANT_RETENTION
            .query_one(
                &client,
                &[
                    &tenant.as_str(),
                    &secs(windows.compact_after),
                    &secs(windows.delete_after),
                    &actor,
                ],
            )
            .await?;
        Ok(Some(read(&row)))
    }
}
