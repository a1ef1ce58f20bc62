//! The schema migrations this build embeds, the runner that applies them online, the check every
//! process makes before it touches data, and the runtime role's grants.
//!
//! # Compatibility, not equality
//!
//! The database records, beside the migrations applied (`refinery_schema_history`, kept from
//! when refinery applied them), its *floor*: the oldest schema a release may know and still run
//! against it (`leasehold_schema_floor`, from V8; a database without it reads as floor 1). A
//! process serves a database when the floor is at or below the schema it knows and none of its
//! own migrations is missing: release N keeps running, restarting and scaling on N+1's expanded
//! schema, and refuses only once a contract step raised the floor above it.
//!
//! # Why not refinery's runner
//!
//! refinery 0.10 runs every migration in a transaction (which forbids `CREATE INDEX
//! CONCURRENTLY`), sets no `lock_timeout` and does not retry. What it gave besides, embedding
//! the files and a checksum, is `build.rs` and [`plan`] here, writing the same history table with
//! the same checksums, so that databases migrated by refinery carry on.
//!
//! # Layout
//! - [`plan`]: the files, their headers, and the pure rules (known schema, pending, verdict).
//! - `split`: statements of a migration outside a transaction; concurrent index names.
//! - `runner`: applying one migration with a short `lock_timeout`, retries and timings.
//! - `grants`: the runtime role's privileges.

mod grants;
pub(super) mod plan;
mod runner;
mod split;

use std::env;
use std::sync::OnceLock;
use std::time::Duration;

use deadpool_postgres::Client;

use super::query::Query;
use super::{Error, Store};
pub use plan::{Migration, SCHEMA_CEILING_ENV, Step};
use plan::{Recorded, Verdict};

/// Held while migrating so that two processes started at once do not apply the same migration.
const MIGRATION_LOCK_KEY: i64 = 0x6c65_6173_6568_6f6c; // "leasehol"

/// Where a database's schema stands against the migrations this build carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// The highest migration version applied to the database (0 for an empty database).
    pub database_version: i32,
    /// The oldest schema a release may know and still run against the database (1 for a
    /// database that predates the record; 0 for an empty one).
    pub floor: i32,
    /// The schema this build knows: the newest it carries, or [`SCHEMA_CEILING_ENV`]'s value.
    pub known_version: i32,
    /// Migrations this build would apply, in order.
    pub pending: Vec<Migration>,
}

/// A migration the runner applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Which.
    pub migration: Migration,
    /// From its first statement to its record in the history, retries included.
    pub took: Duration,
    /// Tries given up for a lock that was not granted within the lock timeout.
    pub lock_retries: u32,
}

/// Every migration this build carries, in version order.
pub fn migrations() -> Result<&'static [Migration], Error> {
    static ALL: OnceLock<Result<Vec<Migration>, String>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        let mut all = plan::FILES
            .iter()
            .map(|f| plan::parse(f.file_name, f.text))
            .collect::<Result<Vec<_>, _>>()?;
        all.sort_by_key(|m| m.version);
        Ok(all)
    });
    all.as_deref().map_err(|e| Error::Migration(e.clone()))
}

/// The newest migration version this build carries.
pub fn newest_version() -> Result<i32, Error> {
    Ok(migrations()?.iter().map(|m| m.version).max().unwrap_or(0))
}

/// The schema version this build knows: [`newest_version`], or the value of
/// [`SCHEMA_CEILING_ENV`] when it is set (a build rehearsing as an older release).
pub fn known_version() -> Result<i32, Error> {
    let ceiling = env::var(SCHEMA_CEILING_ENV).ok();
    plan::known(ceiling.as_deref(), newest_version()?).map_err(Error::BadSchemaCeiling)
}

// Which of the two bookkeeping tables exist: an empty database has neither, and a query naming
// a missing table would fail to plan.
const BOOKKEEPING_EXISTS: Query = Query {
    name: "bookkeeping_exists",
    sql: "SELECT to_regclass('refinery_schema_history') IS NOT NULL AS history, \
                 to_regclass('leasehold_schema_floor') IS NOT NULL AS floor",
};

// Every recorded migration, the checksum as refinery wrote it (text).
const RECORDED: Query = Query {
    name: "recorded_migrations",
    sql: "SELECT version, name, checksum FROM refinery_schema_history ORDER BY version",
};

// The floor record has one row (V8 inserts it; its primary key is a constant).
const FLOOR: Query = Query {
    name: "schema_floor",
    sql: "SELECT floor FROM leasehold_schema_floor",
};

// Whether a database of this name exists in the server this store is connected to.
const DATABASE_EXISTS: Query = Query {
    name: "database_exists",
    sql: "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1::text)",
};

// Serialises concurrent migrators: a session lock, so that it spans the transactions of the
// migrations and the statements of those outside one.
const MIGRATION_LOCK: Query = Query {
    name: "migration_lock",
    sql: "SELECT pg_advisory_lock($1)",
};

// Ends the migrator's session lock; the connection's end would too.
const MIGRATION_UNLOCK: Query = Query {
    name: "migration_unlock",
    sql: "SELECT pg_advisory_unlock($1)",
};

pub(super) const QUERIES: &[Query] = &[
    BOOKKEEPING_EXISTS,
    RECORDED,
    FLOOR,
    DATABASE_EXISTS,
    MIGRATION_LOCK,
    MIGRATION_UNLOCK,
    runner::SESSION_SETTING,
    runner::RESET_LOCK_TIMEOUT,
    runner::RESET_STATEMENT_TIMEOUT,
    runner::CREATE_HISTORY,
    runner::RECORD,
    runner::RAISE_FLOOR,
    runner::INDEX_IS_INVALID,
];

/// The runtime role's grant, apart: it names the tables of a migrated schema.
pub(super) const GRANT_QUERIES: &[Query] = grants::QUERIES;

/// What the database has recorded: its migrations and its floor.
struct History {
    has_history: bool,
    recorded: Vec<Recorded>,
    floor: i32,
}

async fn read_recorded(client: &Client) -> Result<History, Error> {
    let exists = BOOKKEEPING_EXISTS.query_one(client, &[]).await?;
    if !exists.get::<_, bool>("history") {
        return Ok(History {
            has_history: false,
            recorded: Vec::new(),
            floor: 0,
        });
    }
    let recorded = RECORDED
        .query(client, &[])
        .await?
        .iter()
        .map(|row| Recorded {
            version: row.get("version"),
            name: row.get::<_, Option<String>>("name").unwrap_or_default(),
            checksum: row.get::<_, Option<String>>("checksum").unwrap_or_default(),
        })
        .collect();
    let floor = if exists.get::<_, bool>("floor") {
        FLOOR.query_one(client, &[]).await?.get("floor")
    } else {
        1
    };
    Ok(History {
        has_history: true,
        recorded,
        floor,
    })
}

fn status(found: &History, known: i32) -> Result<SchemaStatus, Error> {
    let pending = plan::pending(migrations()?, &found.recorded, known)
        .map_err(Error::Migration)?
        .into_iter()
        .cloned()
        .collect();
    Ok(SchemaStatus {
        database_version: found.recorded.iter().map(|r| r.version).max().unwrap_or(0),
        floor: found.floor,
        known_version: known,
        pending,
    })
}

fn judge(status: &SchemaStatus) -> Result<(), Error> {
    match plan::verdict(status.floor, status.known_version, status.pending.len()) {
        Verdict::Serve => Ok(()),
        Verdict::TooNew => Err(Error::SchemaTooNew {
            database: status.database_version,
            floor: status.floor,
            known: status.known_version,
        }),
        Verdict::Behind => Err(Error::SchemaBehind {
            database: status.database_version,
            known: status.known_version,
        }),
    }
}

impl Store {
    /// Creates the database `name` in this store's server unless it exists; returns whether it
    /// created it. For a private cluster's first start; `name` is a plain lowercase identifier.
    pub async fn create_database_if_missing(&self, name: &str) -> Result<bool, Error> {
        let plain = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !plain {
            return Err(Error::OutOfRange {
                constraint: format!("database name {name:?}: lowercase letters, digits and _"),
            });
        }
        let client = self.client().await?;
        if DATABASE_EXISTS.query_one(&client, &[&name]).await?.get(0) {
            return Ok(false);
        }
        // CREATE DATABASE takes no parameters; the name was checked to be a plain identifier.
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        Ok(true)
    }

    /// Where the database's schema stands for this build ([`known_version`]); changes nothing.
    pub async fn schema_status(&self) -> Result<SchemaStatus, Error> {
        self.schema_status_for(known_version()?).await
    }

    /// Where the database's schema stands for a build that knows schema `known`.
    pub async fn schema_status_for(&self, known: i32) -> Result<SchemaStatus, Error> {
        let client = self.client().await?;
        status(&read_recorded(&client).await?, known)
    }

    /// Refuses a database this build cannot serve: one whose floor is above the schema it knows
    /// ([`Error::SchemaTooNew`]), or one that lacks migrations it needs
    /// ([`Error::SchemaBehind`]). A database migrated further by expand steps is served.
    pub async fn check_schema(&self) -> Result<(), Error> {
        judge(&self.schema_status().await?)
    }

    /// Applies the pending migrations up to [`known_version`]; see [`Store::migrate_to`].
    pub async fn migrate(&self) -> Result<Vec<Applied>, Error> {
        self.migrate_to(known_version()?, |_| {}).await
    }

    /// Applies every migration up to `known` that the database lacks, in version order, calling
    /// `on_applied` after each; returns what it applied. Refuses, applying nothing, a database
    /// whose floor is above `known` or whose history differs from this build's files.
    ///
    /// Every statement runs with a short `lock_timeout` and is tried again, a bounded number of
    /// times with backoff, when a lock was not granted in time, so that a migration never holds
    /// the queue of a hot table behind it for long.
    ///
    /// # Locks
    /// Holds a session advisory lock for the duration, so concurrent callers apply each migration
    /// once; the lock ends with the call (or the connection), never outliving it. Each migration
    /// says in its comment which table locks it takes.
    pub async fn migrate_to(
        &self,
        known: i32,
        mut on_applied: impl FnMut(&Applied),
    ) -> Result<Vec<Applied>, Error> {
        let client = self.client().await?;
        MIGRATION_LOCK
            .execute(&client, &[&MIGRATION_LOCK_KEY])
            .await?;
        let result = async {
            let found = read_recorded(&client).await?;
            let status = status(&found, known)?;
            if let Err(e @ Error::SchemaTooNew { .. }) = judge(&status) {
                return Err(e);
            }
            let mut applied = Vec::new();
            if status.pending.is_empty() {
                return Ok(applied);
            }
            runner::prepare_session(&client, found.has_history).await?;
            for migration in status.pending {
                let done = runner::apply(&client, migration).await;
                let done = match done {
                    Ok(done) => done,
                    Err(e) => {
                        let _ = runner::reset_session(&client).await;
                        return Err(e);
                    }
                };
                on_applied(&done);
                applied.push(done);
            }
            runner::reset_session(&client).await?;
            Ok(applied)
        }
        .await;
        MIGRATION_UNLOCK
            .execute(&client, &[&MIGRATION_LOCK_KEY])
            .await?;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A migration outside a transaction may stop part-way and run again from its first
    /// statement, so each statement must be a no-op when it already took effect: DDL guarded by
    /// `IF [NOT] EXISTS`, a `VALIDATE CONSTRAINT` (of a valid constraint, nothing), an insert
    /// that does nothing on conflict, or a backfill that sets only rows still null.
    #[test]
    fn statements_outside_a_transaction_can_run_again() {
        let all = migrations().expect("parse");
        let outside: Vec<&Migration> = all.iter().filter(|m| !m.transactional).collect();
        assert!(!outside.is_empty(), "no migration outside a transaction");
        for m in outside {
            for statement in split::statements(m.sql) {
                let upper = statement.to_ascii_uppercase();
                let code = upper
                    .lines()
                    .filter(|line| !line.trim_start().starts_with("--"))
                    .collect::<Vec<_>>()
                    .join("\n");
                let code = code.trim_start();
                let guarded = code.contains("IF NOT EXISTS") || code.contains("IF EXISTS");
                let validates =
                    code.starts_with("ALTER TABLE") && code.contains("VALIDATE CONSTRAINT");
                let inserts_once = code.starts_with("INSERT")
                    && code.contains("ON CONFLICT")
                    && code.contains("DO NOTHING");
                let fills_nulls = code.starts_with("UPDATE") && code.contains(" IS NULL");
                assert!(
                    guarded || validates || inserts_once || fills_nulls,
                    "{}: {statement}",
                    m.label()
                );
                split::concurrent_index(statement).expect("a plain index name");
            }
        }
    }

    #[test]
    fn contract_steps_raise_the_floor_and_expand_steps_do_not() {
        let all = migrations().expect("parse");
        let v10 = all.iter().find(|m| m.version == 10).expect("V10");
        assert_eq!(v10.step, Step::Contract { floor: 2 });
        assert!(
            all.iter()
                .filter(|m| m.version != 10)
                .all(|m| m.step == Step::Expand)
        );
    }
}
