//! Automations and their immutable versions.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use super::gated::{
    DEADLINES_SCHEMA_VERSION, LIMITS_SCHEMA_VERSION, QUEUES_SCHEMA_VERSION,
    START_NODES_SCHEMA_VERSION, since_schema,
};
use super::limits::limit_columns;
use super::listing::Listing;
use super::query::Query;
use super::workers::labels_json;
use super::{Cursor, Error, Page, PageRequest, RequestError, Store};
use crate::ids::{AutomationId, NodeId, TenantId};
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

// A version's requirement set, found or added ($5 kinds and $7 context sorted and without
// duplicates, $6 labels as one object, so that equal sets are equal rows). DO UPDATE rather than
// DO NOTHING, so that an existing set answers its id too (also one a concurrent statement just
// added); versions are stored rarely, so the row's rewrite costs nothing that matters.
macro_rules! requirement_set {
    () => {
        "
    INSERT INTO requirement_sets (kinds, labels, context)
    VALUES ($5::text[], $6::jsonb, $7::text[])
    ON CONFLICT (kinds, labels, context) DO UPDATE SET kinds = excluded.kinds
    RETURNING set_id
"
    };
}

// The automation's limits (V16) as the version just stored ($1, $2) sets them ($9 max_running,
// $10 max_starts_per_second, $11 burst), once the CTE named `stored` answered a row: a row of
// `run_limits` for an automation that has any, none for one that has none. A bucket starts
// full; a smaller burst trims the tokens left.
macro_rules! automation_limits {
    ($stored:literal) => {
        concat!(
            ",
limits_set AS (
    INSERT INTO run_limits (scope, tenant_id, name, max_running, max_starts_per_second, burst,
                            tokens)
    SELECT 'automation', $1::text, $2::text, $9::int, $10::float8, coalesce($11::int, 1),
           coalesce($11::int, 1)
    WHERE ($9::int IS NOT NULL OR $10::float8 IS NOT NULL)
      AND EXISTS (SELECT 1 FROM ",
            $stored,
            ")
    ON CONFLICT (scope, tenant_id, name) DO UPDATE
    SET max_running = excluded.max_running, max_starts_per_second = excluded.max_starts_per_second,
        burst = excluded.burst, tokens = least(run_limits.tokens, excluded.burst),
        updated_at = now()
),
limits_cleared AS (
    DELETE FROM run_limits
    WHERE scope = 'automation' AND tenant_id = $1::text AND name = $2::text
      AND $9::int IS NULL AND $10::float8 IS NULL
      AND EXISTS (SELECT 1 FROM ",
            $stored,
            ")
)"
        )
    };
}

// The automation row and its first version in one statement; ON CONFLICT DO NOTHING turns a
// duplicate id into zero rows rather than an aborted transaction. The hash is taken of the
// jsonb's canonical text, so key order in the author's file does not matter. $4: the nodes a
// fresh run starts first ([`Spec::start_nodes`]), which its claim starts (V13). $5 to $8 (V14):
// what its runs require (kinds, labels, context; found or added as a requirement set) and the
// queue they go to. $9 to $11 (V16): its limits. $12, $13 (V18): its runs' timeouts, which a
// start turns into deadlines.
const CREATE_AUTOMATION: Query = Query {
    name: "create_automation",
    sql: concat!(
        "WITH ",
        since_schema!(14, "requirement AS (", requirement_set!(), "), "),
        "automation AS (
    INSERT INTO automations (tenant_id, automation_id, current_version)
    VALUES ($1::text, $2::text, 1)
    ON CONFLICT (tenant_id, automation_id) DO NOTHING
    RETURNING tenant_id, automation_id
)",
        since_schema!(16, automation_limits!("automation")),
        "
INSERT INTO automation_versions (tenant_id, automation_id, version, spec, spec_hash",
        since_schema!(13, ", start_nodes"),
        since_schema!(14, ", requirement_set, queue"),
        since_schema!(18, ", schedule_to_start_timeout_ms, run_timeout_ms"),
        ")
SELECT tenant_id, automation_id, 1, $3::jsonb, sha256(convert_to($3::jsonb::text, 'UTF8'))",
        since_schema!(13, ", $4::text[]"),
        since_schema!(14, ", (SELECT set_id FROM requirement), $8::text"),
        since_schema!(18, ", $12::bigint, $13::bigint"),
        "
FROM automation
RETURNING version"
    ),
};

// Locks the automation row so that two concurrent updates get consecutive versions, and adds a
// version only when the spec differs from the current one, so re-applying a file is a no-op.
const CREATE_AUTOMATION_VERSION: Query = Query {
    name: "create_automation_version",
    sql: concat!(
        "WITH ",
        since_schema!(14, "requirement AS (", requirement_set!(), "), "),
        "current AS (
    SELECT a.tenant_id, a.automation_id, a.current_version, v.spec_hash
    FROM automations a
    JOIN automation_versions v
      ON v.tenant_id = a.tenant_id AND v.automation_id = a.automation_id
     AND v.version = a.current_version
    WHERE a.tenant_id = $1::text AND a.automation_id = $2::text
    FOR UPDATE OF a
),
added AS (
    INSERT INTO automation_versions (tenant_id, automation_id, version, spec, spec_hash",
        since_schema!(13, ", start_nodes"),
        since_schema!(14, ", requirement_set, queue"),
        since_schema!(18, ", schedule_to_start_timeout_ms, run_timeout_ms"),
        ")
    SELECT tenant_id, automation_id, current_version + 1, $3::jsonb,
           sha256(convert_to($3::jsonb::text, 'UTF8'))",
        since_schema!(13, ", $4::text[]"),
        since_schema!(14, ", (SELECT set_id FROM requirement), $8::text"),
        since_schema!(18, ", $12::bigint, $13::bigint"),
        "
    FROM current
    WHERE spec_hash <> sha256(convert_to($3::jsonb::text, 'UTF8'))
    RETURNING version
),
bumped AS (
    UPDATE automations a SET current_version = added.version, updated_at = now()
    FROM added
    WHERE a.tenant_id = $1::text AND a.automation_id = $2::text
)",
        since_schema!(16, automation_limits!("added")),
        "
SELECT current.current_version, (SELECT version FROM added) AS added_version FROM current"
    ),
};

// A version by number, or the current one when the number is null.
const AUTOMATION_VERSION: Query = Query {
    name: "automation_version",
    sql: "\
SELECT v.version, v.spec
FROM automations a
JOIN automation_versions v
  ON v.tenant_id = a.tenant_id AND v.automation_id = a.automation_id
 AND v.version = coalesce($3::int, a.current_version)
WHERE a.tenant_id = $1::text AND a.automation_id = $2::text",
};

// An automation with its current version's spec: what `automation get` shows.
const AUTOMATION: Query = Query {
    name: "automation",
    sql: "\
SELECT a.automation_id, a.current_version, a.status, a.created_at, a.updated_at, v.spec
FROM automations a
JOIN automation_versions v
  ON v.tenant_id = a.tenant_id AND v.automation_id = a.automation_id
 AND v.version = a.current_version
WHERE a.tenant_id = $1::text AND a.automation_id = $2::text",
};

// A page of a tenant's automations in creation order, after the keyset ($2, $3). A tenant has
// few automations, so sorting them is cheap and no index on created_at is kept for it; the
// automation id breaks ties between automations created in the same transaction.
const LIST_AUTOMATIONS: Query = Query {
    name: "list_automations",
    sql: "\
SELECT a.automation_id, a.current_version, a.status, a.created_at, a.updated_at, v.spec
FROM automations a
JOIN automation_versions v
  ON v.tenant_id = a.tenant_id AND v.automation_id = a.automation_id
 AND v.version = a.current_version
WHERE a.tenant_id = $1::text
  AND ($2::timestamptz IS NULL OR (a.created_at, a.automation_id) > ($2::timestamptz, $3::text))
ORDER BY a.created_at, a.automation_id
LIMIT $4::int",
};

// Pauses or activates an automation and returns it as it now stands, in one statement. A
// paused automation starts no runs (start_run checks the status it reads); runs already started
// go on. updated_at moves only when the status changes, so repeating the request is a no-op.
const SET_AUTOMATION_STATUS: Query = Query {
    name: "set_automation_status",
    sql: "\
WITH updated AS (
    UPDATE automations a
    SET status = $3::text,
        updated_at = CASE WHEN a.status = $3::text THEN a.updated_at ELSE now() END
    WHERE a.tenant_id = $1::text AND a.automation_id = $2::text
    RETURNING a.tenant_id, a.automation_id, a.current_version, a.status, a.created_at,
              a.updated_at
)
SELECT u.automation_id, u.current_version, u.status, u.created_at, u.updated_at, v.spec
FROM updated u
JOIN automation_versions v
  ON v.tenant_id = u.tenant_id AND v.automation_id = u.automation_id
 AND v.version = u.current_version",
};

// Deletes an automation, its versions and its finished runs in one statement, or nothing while
// any of its runs has not finished. Runs reference their pinned version without a cascade, so
// the finished runs go in the same statement (their gates cascade from runs; run_nodes and
// run_events have no foreign key, the one to spare every node write a check, the other being
// partitioned, and are deleted by run id). The automation row and then every run of it are
// locked, so a run's status is read after any concurrent transition commits: a failed run being
// recovered counts as unfinished once it is queued. A run started concurrently is not locked
// here; its insert holds a key-share lock on its version, so the version's cascade waits for it
// and then fails the foreign-key check, and the caller asks again, when the new run counts.
const DELETE_AUTOMATION: Query = Query {
    name: "delete_automation",
    sql: "\
WITH target AS (
    SELECT tenant_id, automation_id FROM automations
    WHERE tenant_id = $1::text AND automation_id = $2::text
    FOR UPDATE
),
its_runs AS (
    SELECT r.run_id, r.status FROM runs r
    JOIN target t ON r.tenant_id = t.tenant_id AND r.automation_id = t.automation_id
    FOR UPDATE OF r
),
unfinished AS (
    SELECT count(*) AS n FROM its_runs
    WHERE status NOT IN ('completed', 'failed', 'cancelled')
),
doomed AS (
    SELECT run_id FROM its_runs WHERE (SELECT n FROM unfinished) = 0
),
events AS (
    DELETE FROM run_events e USING doomed WHERE e.run_id = doomed.run_id
),
nodes AS (
    DELETE FROM run_nodes n USING doomed WHERE n.run_id = doomed.run_id
),
deleted_runs AS (
    DELETE FROM runs r USING doomed WHERE r.run_id = doomed.run_id
    RETURNING r.run_id
),
deleted AS (
    DELETE FROM automations a USING target
    WHERE a.tenant_id = target.tenant_id AND a.automation_id = target.automation_id
      AND (SELECT n FROM unfinished) = 0
    RETURNING a.automation_id
)
SELECT (SELECT count(*) FROM target) AS found,
       (SELECT n FROM unfinished) AS unfinished,
       (SELECT count(*) FROM deleted) AS deleted,
       (SELECT count(*) FROM deleted_runs) AS deleted_runs",
};

// The node ids of one version's spec, in spec order: what a run's view needs of its spec to list
// the nodes that have not started. The ids are taken out in the database, so a spec whose node
// inputs are large (256 KiB each) is not sent whole to name its nodes. Null when the spec's nodes
// are not a list of objects with ids, which only a spec this build cannot read has.
const SPEC_NODE_IDS: Query = Query {
    name: "spec_node_ids",
    sql: "\
SELECT CASE WHEN jsonb_typeof(v.spec->'nodes') = 'array' THEN (
           SELECT array_agg(n.node->>'id' ORDER BY n.i)
           FROM jsonb_array_elements(v.spec->'nodes') WITH ORDINALITY AS n(node, i)
       ) END AS node_ids
FROM automation_versions v
WHERE v.tenant_id = $1::text AND v.automation_id = $2::text AND v.version = $3::int",
};

pub(super) const QUERIES: &[Query] = &[
    SPEC_NODE_IDS,
    CREATE_AUTOMATION,
    CREATE_AUTOMATION_VERSION,
    AUTOMATION_VERSION,
    AUTOMATION,
    LIST_AUTOMATIONS,
    SET_AUTOMATION_STATUS,
    DELETE_AUTOMATION,
];

/// Whether an automation starts runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AutomationStatus {
    /// Starts runs.
    Active,
    /// Starts no runs; runs already started go on.
    Paused,
}

impl AutomationStatus {
    /// The name stored in `automations.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Active, Self::Paused]
            .into_iter()
            .find(|status| status.as_str() == s)
    }
}

/// An automation as stored, with its current version's spec.
#[derive(Debug, Clone, PartialEq)]
pub struct AutomationRecord {
    /// The automation.
    pub id: AutomationId,
    /// The version new runs pin.
    pub current_version: i32,
    /// Whether it starts runs.
    pub status: AutomationStatus,
    /// The current version's spec.
    pub spec: Spec,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed: a new version or a status change.
    pub updated_at: DateTime<Utc>,
}

fn spec_json(spec: &Spec) -> serde_json::Value {
    serde_json::to_value(spec).expect("a Spec always serializes: its fields are plain data")
}

/// The nodes a fresh run of `spec` starts first, as the version records them.
fn start_nodes(spec: &Spec) -> Vec<&str> {
    spec.start_nodes().map(NodeId::as_str).collect()
}

impl Store {
    /// Stores a new automation at version 1. The spec must be valid (see [`spec::validate`]).
    pub async fn create_automation(
        &self,
        tenant: &TenantId,
        spec: &Spec,
    ) -> Result<i32, RequestError> {
        let rows = self.store_version(CREATE_AUTOMATION, tenant, spec).await?;
        match rows.first() {
            Some(row) => Ok(row.get(0)),
            None => Err(RequestError::AutomationExists(spec.id.clone())),
        }
    }

    /// Makes `spec` the automation's current version, unless it equals the current one.
    /// Runs already started keep the version they pinned.
    pub async fn create_automation_version(
        &self,
        tenant: &TenantId,
        spec: &Spec,
    ) -> Result<Stored, RequestError> {
        let rows = self
            .store_version(CREATE_AUTOMATION_VERSION, tenant, spec)
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| RequestError::AutomationNotFound(spec.id.clone()))?;
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

    /// Runs `query` (a statement storing a version of `spec`), with the version's start nodes
    /// where the schema has their column (V13); without it the statement has no place for them.
    async fn store_version(
        &self,
        query: Query,
        tenant: &TenantId,
        spec: &Spec,
    ) -> Result<Vec<Row>, RequestError> {
        let client = self.client().await?;
        let schema = self.schema(&client).await?;
        let start_nodes = start_nodes(spec);
        let (tenant, automation, spec_json) = (tenant.as_str(), spec.id.as_str(), spec_json(spec));
        let requirements = spec.requirements();
        let kinds: Vec<&str> = requirements.kinds.iter().map(String::as_str).collect();
        let labels = labels_json(&requirements.labels);
        let context: Vec<&str> = requirements.context.iter().map(String::as_str).collect();
        let queue = spec.queue();
        let mut args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&tenant, &automation, &spec_json];
        if schema >= START_NODES_SCHEMA_VERSION {
            args.push(&start_nodes);
        }
        if schema >= QUEUES_SCHEMA_VERSION {
            args.push(&kinds);
            args.push(&labels);
            args.push(&context);
            args.push(&queue);
        }
        let (max_running, max_starts_per_second, burst) = limit_columns(&spec.limits());
        if schema >= LIMITS_SCHEMA_VERSION {
            args.push(&max_running);
            args.push(&max_starts_per_second);
            args.push(&burst);
        }
        // Validation bounds both far below i64::MAX.
        let millis = |ms: Option<u64>| ms.map(|ms| i64::try_from(ms).unwrap_or(i64::MAX));
        let start_timeout = millis(spec.schedule_to_start_timeout_ms);
        let run_timeout = millis(spec.run_timeout_ms);
        if schema >= DEADLINES_SCHEMA_VERSION {
            args.push(&start_timeout);
            args.push(&run_timeout);
        }
        Ok(query.for_schema(schema).query(&client, &args).await?)
    }

    /// Creates the automation, or adds a version when it exists: what `automation apply` does.
    pub async fn apply_automation(
        &self,
        tenant: &TenantId,
        spec: &Spec,
    ) -> Result<Stored, RequestError> {
        match self.create_automation(tenant, spec).await {
            Ok(version) => Ok(Stored {
                version,
                created: true,
            }),
            Err(RequestError::AutomationExists(_)) => {
                self.create_automation_version(tenant, spec).await
            }
            Err(e) => Err(e),
        }
    }

    /// A stored version (the current one when `version` is `None`), read back and validated.
    pub async fn automation_version(
        &self,
        tenant: &TenantId,
        automation_id: &AutomationId,
        version: Option<i32>,
    ) -> Result<AutomationVersion, RequestError> {
        let client = self.client().await?;
        let row = AUTOMATION_VERSION
            .query_opt(
                &client,
                &[&tenant.as_str(), &automation_id.as_str(), &version],
            )
            .await?;
        match (row, version) {
            (Some(row), _) => Ok(read_version(automation_id, &row)?),
            (None, None) => Err(RequestError::AutomationNotFound(automation_id.clone())),
            // Tell a missing version of an existing automation from a missing automation.
            (None, Some(version)) => {
                let current = self
                    .automation(tenant, automation_id)
                    .await?
                    .current_version;
                Err(RequestError::AutomationVersionNotFound {
                    automation_id: automation_id.clone(),
                    version,
                    current,
                })
            }
        }
    }
}

impl Store {
    /// The node ids of version `version` of `automation_id`'s spec, in spec order; `None` when
    /// the version does not exist or its spec cannot be read as a list of nodes.
    pub async fn spec_node_ids(
        &self,
        tenant: &TenantId,
        automation_id: &AutomationId,
        version: i32,
    ) -> Result<Option<Vec<NodeId>>, Error> {
        let client = self.client().await?;
        let row = SPEC_NODE_IDS
            .query_opt(
                &client,
                &[&tenant.as_str(), &automation_id.as_str(), &version],
            )
            .await?;
        let ids: Option<Vec<Option<String>>> = row.and_then(|row| row.get("node_ids"));
        Ok(ids.and_then(|ids| ids.into_iter().map(|id| id.map(NodeId)).collect()))
    }

    /// An automation with its current spec. A spec this build cannot read is
    /// [`Error::UnreadableSpec`].
    pub async fn automation(
        &self,
        tenant: &TenantId,
        automation_id: &AutomationId,
    ) -> Result<AutomationRecord, RequestError> {
        let client = self.client().await?;
        let row = AUTOMATION
            .query_opt(&client, &[&tenant.as_str(), &automation_id.as_str()])
            .await?
            .ok_or_else(|| RequestError::AutomationNotFound(automation_id.clone()))?;
        Ok(read_automation(&row)?)
    }

    /// A page of the tenant's automations, in creation order. One unreadable spec fails the page
    /// with [`Error::UnreadableSpec`] naming it.
    pub async fn list_automations(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
    ) -> Result<Page<AutomationRecord>, RequestError> {
        let (at, id) = page.position(Listing::Automations)?;
        let client = self.client().await?;
        let rows = LIST_AUTOMATIONS
            .query(&client, &[&tenant.as_str(), &at, &id, &page.fetch()])
            .await?;
        let automations = rows
            .iter()
            .map(read_automation)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::cut(automations, page, |a| {
            Cursor::new(Listing::Automations, a.created_at, a.id.as_str())
        }))
    }

    /// Pauses (`paused = true`) or activates an automation; returns it as it now stands.
    /// Repeating a request changes nothing.
    pub async fn set_automation_status(
        &self,
        tenant: &TenantId,
        automation_id: &AutomationId,
        paused: bool,
    ) -> Result<AutomationRecord, RequestError> {
        let status = if paused {
            AutomationStatus::Paused
        } else {
            AutomationStatus::Active
        };
        let client = self.client().await?;
        let row = SET_AUTOMATION_STATUS
            .query_opt(
                &client,
                &[&tenant.as_str(), &automation_id.as_str(), &status.as_str()],
            )
            .await?
            .ok_or_else(|| RequestError::AutomationNotFound(automation_id.clone()))?;
        Ok(read_automation(&row)?)
    }

    /// Deletes an automation with its versions and its finished runs (their nodes, gates and
    /// events too); returns how many runs went with it. While any of its runs has not finished
    /// (completed, failed or cancelled), nothing is deleted and the answer is
    /// [`RequestError::AutomationHasUnfinishedRuns`].
    ///
    /// # Locks
    /// Locks the automation row and every run of it until the statement commits.
    pub async fn delete_automation(
        &self,
        tenant: &TenantId,
        automation_id: &AutomationId,
    ) -> Result<u64, RequestError> {
        let client = self.client().await?;
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&tenant.as_str(), &automation_id.as_str()];
        let row = match DELETE_AUTOMATION.query_one(&client, &args).await {
            // A run was started while the statement ran (see the query's comment): once more,
            // and the new run counts as unfinished.
            Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                DELETE_AUTOMATION.query_one(&client, &args).await?
            }
            other => other?,
        };
        if row.get::<_, i64>("found") == 0 {
            return Err(RequestError::AutomationNotFound(automation_id.clone()));
        }
        let unfinished: i64 = row.get("unfinished");
        if unfinished > 0 {
            return Err(RequestError::AutomationHasUnfinishedRuns {
                automation_id: automation_id.clone(),
                unfinished,
            });
        }
        Ok(row.get::<_, i64>("deleted_runs").unsigned_abs())
    }
}

fn read_automation(row: &Row) -> Result<AutomationRecord, Error> {
    let id = AutomationId(row.get("automation_id"));
    let current_version: i32 = row.get("current_version");
    let unreadable = |reason: String| Error::UnreadableSpec {
        automation_id: id.clone(),
        version: current_version,
        reason,
    };
    let status_text: &str = row.get("status");
    let status = AutomationStatus::parse(status_text)
        .ok_or_else(|| unreadable(format!("unknown automation status {status_text:?}")))?;
    let spec = spec::from_stored(row.get("spec")).map_err(|e| unreadable(e.to_string()))?;
    Ok(AutomationRecord {
        id,
        current_version,
        status,
        spec,
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
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
