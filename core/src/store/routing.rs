//! Why a queued run waits: the requirement sets runs refer to, judged against the live workers'
//! capabilities, and the limits of their automations and queues (`routing::wait_reason` and
//! `routing::limit_reason` are the rules; this reads what they judge).

use std::collections::{BTreeSet, HashMap};

use super::gated::{LIMITS_SCHEMA_VERSION, QUEUES_SCHEMA_VERSION};
use super::query::{Query, bucket_now};
use super::workers::labels_from_json;
use super::{Error, RunRecord, Store};
use crate::ids::RunId;
use crate::routing::{
    Capabilities, LimitScope, Limits, Requirements, WaitReason, limit_reason, wait_reason,
};
use crate::run::RunStatus;

// The requirement sets of a page of runs, by id: a handful of rows, each by primary key.
const REQUIREMENT_SETS: Query = Query {
    name: "requirement_sets",
    sql: "\
SELECT set_id, kinds, labels, context FROM requirement_sets WHERE set_id = ANY($1::bigint[])",
};

// The limits of these automations ($1 tenants, $2 automation ids) and queues ($3), each with the
// runs it holds in a slot now (read from the slot's unique index) and its bucket refilled to now.
const LIMIT_STANDING: Query = Query {
    name: "limit_standing",
    sql: concat!(
        "\
SELECT l.scope, l.tenant_id, l.name, l.max_running, l.max_starts_per_second, l.burst,
       CASE WHEN l.scope = 'automation' THEN (
           SELECT count(*) FROM runs h
           WHERE h.tenant_id = l.tenant_id AND h.automation_id = l.name
             AND h.automation_slot IS NOT NULL AND h.status IN ('running', 'pausing'))
       ELSE (
           SELECT count(*) FROM runs h
           WHERE h.queue = l.name AND h.queue_slot IS NOT NULL
             AND h.status IN ('running', 'pausing'))
       END AS held,
       ",
        bucket_now!(),
        " AS tokens
FROM run_limits l
WHERE (l.scope = 'automation'
       AND (l.tenant_id, l.name) IN (SELECT * FROM unnest($1::text[], $2::text[])))
   OR (l.scope = 'queue' AND l.tenant_id = '' AND l.name = ANY($3::text[]))"
    ),
};

pub(super) const QUERIES: &[Query] = &[REQUIREMENT_SETS, LIMIT_STANDING];

/// A limit and how its scope stands now.
struct Standing {
    limits: Limits,
    held: u64,
    tokens: f64,
}

impl Store {
    /// Why each queued run of `runs` waits, where no live worker that claims (alive, not
    /// draining) could take it (none serves its queue, or none has all it requires), or where a
    /// limit of its automation or queue holds it back now. Runs that are not queued, or that
    /// nothing holds back, are left out. Three reads: the workers, the runs' requirement sets,
    /// and their limits.
    pub async fn wait_reasons<'a>(
        &self,
        runs: impl IntoIterator<Item = &'a RunRecord>,
    ) -> Result<HashMap<RunId, WaitReason>, Error> {
        let queued: Vec<&RunRecord> = runs
            .into_iter()
            .filter(|run| run.status == RunStatus::Queued)
            .collect();
        if queued.is_empty() {
            return Ok(HashMap::new());
        }
        let unservable = self
            .worker_reasons(
                queued
                    .iter()
                    .map(|run| (run.queue.as_str(), run.requirement_set)),
            )
            .await?;
        let mut reasons = HashMap::new();
        let mut servable = Vec::new();
        for (run, reason) in queued.into_iter().zip(unservable) {
            match reason {
                Some(reason) => {
                    reasons.insert(run.run_id, reason);
                }
                None => servable.push(run),
            }
        }
        let standing = self.limit_standing(&servable).await?;
        for run in servable {
            let automation = (
                LimitScope::Automation,
                run.tenant.as_str(),
                run.automation_id.as_str(),
            );
            let queue = (LimitScope::Queue, "", run.queue.as_str());
            let reason = [automation, queue]
                .into_iter()
                .find_map(|(scope, tenant, name)| {
                    let s =
                        standing.get(&(scope_name(scope), tenant.to_owned(), name.to_owned()))?;
                    limit_reason(scope, name, &s.limits, s.held, s.tokens)
                });
            if let Some(reason) = reason {
                reasons.insert(run.run_id, reason);
            }
        }
        Ok(reasons)
    }

    /// How the limits of these runs' automations and queues stand, by (scope, tenant, name).
    async fn limit_standing(
        &self,
        runs: &[&RunRecord],
    ) -> Result<HashMap<(&'static str, String, String), Standing>, Error> {
        if runs.is_empty() {
            return Ok(HashMap::new());
        }
        let client = self.client().await?;
        if self.schema(&client).await? < LIMITS_SCHEMA_VERSION {
            return Ok(HashMap::new());
        }
        let tenants: Vec<&str> = runs.iter().map(|r| r.tenant.as_str()).collect();
        let automations: Vec<&str> = runs.iter().map(|r| r.automation_id.as_str()).collect();
        let queues: Vec<&str> = runs.iter().map(|r| r.queue.as_str()).collect();
        let rows = LIMIT_STANDING
            .query(&client, &[&tenants, &automations, &queues])
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let key = (
                    if row.get::<_, &str>("scope") == "queue" {
                        "queue"
                    } else {
                        "automation"
                    },
                    row.get::<_, String>("tenant_id"),
                    row.get::<_, String>("name"),
                );
                let standing = Standing {
                    limits: Limits {
                        max_running: row
                            .get::<_, Option<i32>>("max_running")
                            .map(i32::unsigned_abs),
                        max_starts_per_second: row.get("max_starts_per_second"),
                        burst: row.get::<_, Option<i32>>("burst").map(i32::unsigned_abs),
                    },
                    held: u64::try_from(row.get::<_, i64>("held")).unwrap_or(0),
                    tokens: row.get("tokens"),
                };
                (key, standing)
            })
            .collect())
    }

    /// For each (queue, requirement set) of queued runs, in order, why no worker that claims
    /// now (alive, not draining) could take such a run, or `None` when one could. Two reads:
    /// the workers and the sets.
    pub(super) async fn worker_reasons<'a>(
        &self,
        runs: impl ExactSizeIterator<Item = (&'a str, i64)> + Clone,
    ) -> Result<Vec<Option<WaitReason>>, Error> {
        let workers: Vec<Capabilities> = self
            .list_workers(None)
            .await?
            .into_iter()
            .filter(|worker| worker.alive && !worker.draining)
            .map(|worker| worker.capabilities())
            .collect();
        let sets = self
            .requirement_sets(runs.clone().map(|(_, set)| set))
            .await?;
        let none = Requirements::default();
        Ok(runs
            .map(|(queue, set)| wait_reason(queue, sets.get(&set).unwrap_or(&none), &workers))
            .collect())
    }

    /// The requirement sets of these ids; set 0 (none) has no row and is left out.
    pub(super) async fn requirement_sets(
        &self,
        ids: impl IntoIterator<Item = i64>,
    ) -> Result<HashMap<i64, Requirements>, Error> {
        let ids: Vec<i64> = ids
            .into_iter()
            .filter(|id| *id != 0)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let client = self.client().await?;
        if self.schema(&client).await? < QUEUES_SCHEMA_VERSION {
            return Ok(HashMap::new());
        }
        let rows = REQUIREMENT_SETS.query(&client, &[&ids]).await?;
        Ok(rows
            .iter()
            .map(|row| {
                let requirements = Requirements {
                    kinds: row.get::<_, Vec<String>>("kinds").into_iter().collect(),
                    labels: labels_from_json(row.get("labels")),
                    context: row.get::<_, Vec<String>>("context").into_iter().collect(),
                };
                (row.get("set_id"), requirements)
            })
            .collect())
    }
}

/// A scope as `run_limits.scope` names it.
fn scope_name(scope: LimitScope) -> &'static str {
    match scope {
        LimitScope::Automation => "automation",
        LimitScope::Queue => "queue",
    }
}
