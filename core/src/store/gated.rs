//! Statements as they run on the schema the database has: fragments of a statement that name
//! what one migration added are marked with that migration's number and left out (or put in)
//! where the schema is older.
//!
//! A process rehearsing as an older release (`LEASEHOLD_SCHEMA_CEILING`), or one that was handed
//! a store before it migrated, must not name columns its schema lacks. A fragment wrapped in
//! [`since_schema!`] is kept only from its version on; one wrapped in [`before_schema!`] only
//! below it (the statement's older form, where the newer one has no place). [`Query::for_schema`]
//! gives the statement as it runs on a schema version, and [`Store::schema`] says which version
//! this store's statements may use: the lower of this build's (or its ceiling) and the
//! database's, read once per store from one column each gated migration added.
//!
//! - V12 gave runs their trace context ([`if_traced!`]): without it a run is started without one
//!   and read as having none.
//! - V13 gave versions the nodes a fresh run starts first: without it a claim starts no node,
//!   and the worker starts them as before.
//! - V14 gave runs a queue and a requirement set, and workers what they serve: without it a
//!   claim takes runs of every queue, as before, and a start names no queue.
//! - V16 gave automations and queues their limits, and runs their slots: without it a claim
//!   checks no limit.
//! - V18 gave versions their timeouts and runs their deadlines: without it a run is started
//!   without deadlines, and the deadline sweep finds none.
//! - V20 gave runs their compaction, and tenants their retention: without it the retention
//!   sweep does nothing, and every run reads as not compacted.
//! - V22 gave finished runs their counts: without it Stats counts every run, as before, and the
//!   count sweep does nothing.
//! - V23 gave automations their schedules, and runs the schedule and fire time they were
//!   started for: without it no schedule is stored or fires.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use deadpool_postgres::Client;

use super::migrate::known_version;
use super::query::Query;
use super::{Error, Store};

/// The migration that gave runs their trace context.
pub(super) const TRACE_SCHEMA_VERSION: i32 = 12;

/// The migration that gave automation versions their start nodes.
pub(super) const START_NODES_SCHEMA_VERSION: i32 = 13;

/// The migration that gave runs their queue and requirement set, and workers what they serve.
pub(super) const QUEUES_SCHEMA_VERSION: i32 = 14;

/// The migration that gave runs their limits' slots, and the limits their table.
pub(super) const LIMITS_SCHEMA_VERSION: i32 = 16;

/// The migration that gave runs their deadlines, and versions their timeouts.
pub(super) const DEADLINES_SCHEMA_VERSION: i32 = 18;

/// The migration that gave runs their compaction, and tenants their retention windows.
pub(super) const RETENTION_SCHEMA_VERSION: i32 = 20;

/// The migration that gave finished runs their counts, kept by triggers.
pub(super) const COUNTS_SCHEMA_VERSION: i32 = 22;

/// The migration that gave automations their schedules, and runs their fire times.
pub(super) const SCHEDULES_SCHEMA_VERSION: i32 = 23;

/// For each gated migration, one column it added: its presence says the database has that
/// migration. In version order.
const MARKERS: [(i32, &str, &str); 8] = [
    (TRACE_SCHEMA_VERSION, "runs", "trace_parent"),
    (
        START_NODES_SCHEMA_VERSION,
        "automation_versions",
        "start_nodes",
    ),
    (QUEUES_SCHEMA_VERSION, "runs", "queue"),
    (LIMITS_SCHEMA_VERSION, "runs", "automation_slot"),
    (DEADLINES_SCHEMA_VERSION, "runs", "start_deadline"),
    (RETENTION_SCHEMA_VERSION, "runs", "compacted_at"),
    (COUNTS_SCHEMA_VERSION, "run_status_counts", "runs"),
    (SCHEDULES_SCHEMA_VERSION, "runs", "scheduled_for"),
];

/// Marks a fragment of a statement kept only on a schema at `version` or above (it names what
/// that migration added). The markers are SQL comments, so on the newest schema the statement as
/// written runs unchanged, but for its [`before_schema!`] fragments.
macro_rules! since_schema {
    ($version:literal, $($sql:tt)+) => {
        concat!("/*since ", $version, "*/", $($sql)+, "/*end*/")
    };
}
pub(super) use since_schema;

/// Marks a fragment of a statement kept only on a schema below `version`: what stands in for a
/// [`since_schema!`] fragment there.
macro_rules! before_schema {
    ($version:literal, $sql:literal) => {
        concat!("/*before ", $version, "*/", $sql, "/*end*/")
    };
}
pub(super) use before_schema;

/// Marks a fragment that names the runs' trace context (or the arguments that fill it).
macro_rules! if_traced {
    ($sql:literal) => {
        $crate::store::gated::since_schema!(12, $sql)
    };
}
pub(super) use if_traced;

const SINCE: &str = "/*since ";
const BEFORE: &str = "/*before ";
const END: &str = "/*end*/";

// Which gated migrations' columns exist: the database may be at a schema below this build's when
// the store was made before it migrated. One catalog lookup per store.
const SCHEMA_MARKERS_PRESENT: Query = Query {
    name: "schema_markers_present",
    sql: "\
SELECT marker.version
FROM unnest($1::int[], $2::text[], $3::text[]) AS marker(version, table_name, column_name)
WHERE EXISTS (
    SELECT 1 FROM pg_attribute
    WHERE attrelid = to_regclass(marker.table_name) AND attname = marker.column_name
      AND NOT attisdropped
)",
};

pub(super) const QUERIES: &[Query] = &[SCHEMA_MARKERS_PRESENT];

impl Query {
    /// This statement as it runs on schema `version`.
    pub(super) fn for_schema(self, version: i32) -> Query {
        if !self.sql.contains(SINCE) && !self.sql.contains(BEFORE) {
            return self;
        }
        // Made once per statement and version and kept for the process's life: a handful.
        type Forms = HashMap<(&'static str, i32), &'static str>;
        static FORMS: Mutex<Option<Forms>> = Mutex::new(None);
        let mut forms = FORMS.lock().unwrap_or_else(PoisonError::into_inner);
        let sql = *forms
            .get_or_insert_with(HashMap::new)
            .entry((self.name, version))
            .or_insert_with(|| Box::leak(at_version(self.sql, version).into_boxed_str()));
        Query {
            name: self.name,
            sql,
        }
    }

    /// The schema versions whose forms of this statement differ: the newest, and the one below
    /// each gated fragment's version. What [`Store::check_queries`] prepares.
    pub(super) fn forms(self, newest: i32) -> Vec<Query> {
        let mut versions = vec![newest];
        versions.extend(
            MARKERS
                .iter()
                .map(|(version, ..)| version - 1)
                .filter(|v| *v < newest),
        );
        let mut forms: Vec<Query> = Vec::new();
        for version in versions {
            let form = self.for_schema(version);
            if !forms.iter().any(|f| f.sql == form.sql) {
                forms.push(form);
            }
        }
        forms
    }
}

/// `sql` as it runs on schema `version`: each gated fragment kept or left out, its markers with
/// it. A marker the macros did not write (no number, no end) is left as it stands, and the
/// statement then fails the prepare check.
fn at_version(sql: &str, version: i32) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    loop {
        let next = [SINCE, BEFORE]
            .into_iter()
            .filter_map(|marker| rest.find(marker).map(|at| (at, marker)))
            .min_by_key(|(at, _)| *at);
        let Some((at, marker)) = next else { break };
        let after = &rest[at + marker.len()..];
        let parsed = after.split_once("*/").and_then(|(number, body)| {
            let gate: i32 = number.parse().ok()?;
            let (fragment, tail) = body.split_once(END)?;
            Some((gate, fragment, tail))
        });
        let Some((gate, fragment, tail)) = parsed else {
            break;
        };
        out.push_str(&rest[..at]);
        let keep = if marker == SINCE {
            version >= gate
        } else {
            version < gate
        };
        if keep {
            out.push_str(fragment);
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// The schema version a database whose gated columns are `present` serves, for a build that
/// knows `known`: below the first gated migration it lacks.
fn served(known: i32, present: &[i32]) -> i32 {
    MARKERS
        .iter()
        .find(|(version, ..)| *version <= known && !present.contains(version))
        .map_or(known, |(version, ..)| version - 1)
}

impl Store {
    /// The schema version this store's statements may use: this build's schema (or its
    /// ceiling), lowered to below the first gated migration the database lacks. Asked of the
    /// database once per store.
    pub(super) async fn schema(&self, client: &Client) -> Result<i32, Error> {
        if let Some(&version) = self.schema.get() {
            return Ok(version);
        }
        let known = known_version()?;
        let versions: Vec<i32> = MARKERS.iter().map(|m| m.0).collect();
        let tables: Vec<&str> = MARKERS.iter().map(|m| m.1).collect();
        let columns: Vec<&str> = MARKERS.iter().map(|m| m.2).collect();
        let present: Vec<i32> = SCHEMA_MARKERS_PRESENT
            .query(client, &[&versions, &tables, &columns])
            .await?
            .iter()
            .map(|row| row.get("version"))
            .collect();
        Ok(*self.schema.get_or_init(|| served(known, &present)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_schema_gets_its_own_fragments() {
        const SQL: &str = concat!(
            "INSERT INTO runs (a",
            if_traced!(", trace_parent"),
            ") VALUES ($1",
            if_traced!(", $2"),
            ") RETURNING ",
            since_schema!(13, "b"),
            before_schema!(13, "'{}'::text[] AS b"),
        );
        let query = Query {
            name: "test_insert",
            sql: SQL,
        };
        assert_eq!(
            query.for_schema(11).sql,
            "INSERT INTO runs (a) VALUES ($1) RETURNING '{}'::text[] AS b"
        );
        assert_eq!(
            query.for_schema(12).sql,
            "INSERT INTO runs (a, trace_parent) VALUES ($1, $2) RETURNING '{}'::text[] AS b"
        );
        assert_eq!(
            query.for_schema(13).sql,
            "INSERT INTO runs (a, trace_parent) VALUES ($1, $2) RETURNING b"
        );
        assert_eq!(query.forms(13).len(), 3);
        assert_eq!(query.forms(12).len(), 2);
        assert_eq!(at_version("SELECT 1", 11), "SELECT 1");
        let plain = Query {
            name: "plain",
            sql: "SELECT 1",
        };
        assert_eq!(plain.for_schema(11).sql, "SELECT 1");
    }

    #[test]
    fn a_database_serves_up_to_its_first_missing_gated_migration() {
        assert_eq!(served(13, &[12, 13]), 13);
        assert_eq!(served(13, &[12]), 12);
        assert_eq!(served(13, &[]), 11);
        assert_eq!(served(12, &[12]), 12);
        assert_eq!(served(11, &[]), 11);
        // A database ahead of this build serves this build's schema.
        assert_eq!(served(12, &[12, 13]), 12);
    }
}
