//! Automations and their immutable versions.

use tokio_postgres::Row;

use super::{Error, Store};
use crate::ids::{AutomationId, TenantId};
use crate::spec::{self, Spec};

/// What storing a spec did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The automation's version now current.
    pub version: i32,
    /// False when the spec equalled the current version's, so no version was added.
    pub created: bool,
}

/// One stored version of an automation.
#[derive(Debug, Clone, PartialEq)]
pub struct AutomationVersion {
    /// The version number, from 1.
    pub version: i32,
    /// Its spec.
    pub spec: Spec,
}

// name: create_automation
// The automation row and its first version in one statement; ON CONFLICT DO NOTHING turns a
// duplicate id into zero rows rather than an aborted transaction. The hash is taken of the
// jsonb's canonical text, so key order in the author's file does not matter.
const CREATE_AUTOMATION: &str = "\
WITH automation AS (
    INSERT INTO automations (tenant_id, automation_id, current_version)
    VALUES ($1::text, $2::text, 1)
    ON CONFLICT (tenant_id, automation_id) DO NOTHING
    RETURNING tenant_id, automation_id
)
INSERT INTO automation_versions (tenant_id, automation_id, version, spec, spec_hash)
SELECT tenant_id, automation_id, 1, $3::jsonb, sha256(convert_to($3::jsonb::text, 'UTF8'))
FROM automation
RETURNING version";

// name: create_automation_version
// Locks the automation row so that two concurrent updates get consecutive versions, and adds a
// version only when the spec differs from the current one, so re-applying a file is a no-op.
const CREATE_AUTOMATION_VERSION: &str = "\
WITH current AS (
    SELECT a.tenant_id, a.automation_id, a.current_version, v.spec_hash
    FROM automations a
    JOIN automation_versions v
      ON v.tenant_id = a.tenant_id AND v.automation_id = a.automation_id
     AND v.version = a.current_version
    WHERE a.tenant_id = $1::text AND a.automation_id = $2::text
    FOR UPDATE OF a
),
added AS (
    INSERT INTO automation_versions (tenant_id, automation_id, version, spec, spec_hash)
    SELECT tenant_id, automation_id, current_version + 1, $3::jsonb,
           sha256(convert_to($3::jsonb::text, 'UTF8'))
    FROM current
    WHERE spec_hash <> sha256(convert_to($3::jsonb::text, 'UTF8'))
    RETURNING version
),
bumped AS (
    UPDATE automations a SET current_version = added.version, updated_at = now()
    FROM added
    WHERE a.tenant_id = $1::text AND a.automation_id = $2::text
)
SELECT current.current_version, (SELECT version FROM added) AS added_version FROM current";

// name: automation_version
// A version by number, or the current one when the number is null.
const AUTOMATION_VERSION: &str = "\
SELECT v.version, v.spec
FROM automations a
JOIN automation_versions v
  ON v.tenant_id = a.tenant_id AND v.automation_id = a.automation_id
 AND v.version = coalesce($3::int, a.current_version)
WHERE a.tenant_id = $1::text AND a.automation_id = $2::text";

pub(super) const QUERIES: &[(&str, &str)] = &[
    ("create_automation", CREATE_AUTOMATION),
    ("create_automation_version", CREATE_AUTOMATION_VERSION),
    ("automation_version", AUTOMATION_VERSION),
];

fn spec_json(spec: &Spec) -> serde_json::Value {
    serde_json::to_value(spec).expect("a Spec always serializes: its fields are plain data")
}

impl Store {
    /// Stores a new automation at version 1. The spec must be valid (see [`spec::validate`]).
    pub async fn create_automation(&self, tenant: &TenantId, spec: &Spec) -> Result<i32, Error> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(CREATE_AUTOMATION).await?;
        let rows = client
            .query(
                &stmt,
                &[&tenant.as_str(), &spec.id.as_str(), &spec_json(spec)],
            )
            .await?;
        match rows.first() {
            Some(row) => Ok(row.get(0)),
            None => Err(Error::AutomationExists(spec.id.clone())),
        }
    }

    /// Makes `spec` the automation's current version, unless it equals the current one.
    /// Runs already started keep the version they pinned.
    pub async fn create_automation_version(
        &self,
        tenant: &TenantId,
        spec: &Spec,
    ) -> Result<Stored, Error> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(CREATE_AUTOMATION_VERSION).await?;
        let rows = client
            .query(
                &stmt,
                &[&tenant.as_str(), &spec.id.as_str(), &spec_json(spec)],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::AutomationNotFound(spec.id.clone()))?;
        let added: Option<i32> = row.get("added_version");
        Ok(match added {
            Some(version) => Stored {
                version,
                created: true,
            },
            None => Stored {
                version: row.get("current_version"),
                created: false,
            },
        })
    }

    /// Creates the automation, or adds a version when it exists: what `automation apply` does.
    pub async fn apply_automation(&self, tenant: &TenantId, spec: &Spec) -> Result<Stored, Error> {
        match self.create_automation(tenant, spec).await {
            Ok(version) => Ok(Stored {
                version,
                created: true,
            }),
            Err(Error::AutomationExists(_)) => self.create_automation_version(tenant, spec).await,
            Err(e) => Err(e),
        }
    }

    /// A stored version (the current one when `version` is `None`), read back and validated.
    pub async fn automation_version(
        &self,
        tenant: &TenantId,
        automation_id: &AutomationId,
        version: Option<i32>,
    ) -> Result<AutomationVersion, Error> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(AUTOMATION_VERSION).await?;
        let row = client
            .query_opt(
                &stmt,
                &[&tenant.as_str(), &automation_id.as_str(), &version],
            )
            .await?
            .ok_or_else(|| Error::AutomationNotFound(automation_id.clone()))?;
        read_version(automation_id, &row)
    }
}

fn read_version(automation_id: &AutomationId, row: &Row) -> Result<AutomationVersion, Error> {
    let version: i32 = row.get("version");
    let spec = spec::from_stored(row.get("spec")).map_err(|e| Error::UnreadableSpec {
        automation_id: automation_id.clone(),
        version,
        reason: e.to_string(),
    })?;
    Ok(AutomationVersion { version, spec })
}
