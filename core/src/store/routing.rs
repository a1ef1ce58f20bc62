//! Why a queued run waits: the requirement sets runs refer to, judged against the live workers'
//! capabilities (`routing::wait_reason` is the rule; this reads what it judges).

use std::collections::{BTreeSet, HashMap};

use super::gated::QUEUES_SCHEMA_VERSION;
use super::query::Query;
use super::workers::labels_from_json;
use super::{Error, RunRecord, Store};
use crate::ids::RunId;
use crate::routing::{Requirements, WaitReason, wait_reason};
use crate::run::RunStatus;

// The requirement sets of a page of runs, by id: a handful of rows, each by primary key.
const REQUIREMENT_SETS: Query = Query {
    name: "requirement_sets",
    sql: "\
SELECT set_id, kinds, labels, context FROM requirement_sets WHERE set_id = ANY($1::bigint[])",
};

pub(super) const QUERIES: &[Query] = &[REQUIREMENT_SETS];

impl Store {
    /// Why each queued run of `runs` waits, where no live worker that claims (alive, not
    /// draining) could take it: none serves its queue, or none has all it requires. Runs that
    /// are not queued, or that some worker could take, are left out. Two reads: the workers and
    /// the runs' requirement sets.
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
        let workers: Vec<_> = self
            .list_workers(None)
            .await?
            .into_iter()
            .filter(|worker| worker.alive && !worker.draining)
            .map(|worker| worker.capabilities())
            .collect();
        let sets = self
            .requirement_sets(queued.iter().map(|run| run.requirement_set))
            .await?;
        let none = Requirements::default();
        Ok(queued
            .into_iter()
            .filter_map(|run| {
                let requirements = sets.get(&run.requirement_set).unwrap_or(&none);
                wait_reason(&run.queue, requirements, &workers).map(|reason| (run.run_id, reason))
            })
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
