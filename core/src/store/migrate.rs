//! The embedded schema migrations, and the check every process makes before it touches data.

use deadpool_postgres::Client;

use super::query::Query;
use super::{Error, Store};

refinery::embed_migrations!("../migrations");

/// Held while migrating so that two processes started at once do not apply the same migration.
const MIGRATION_LOCK_KEY: i64 = 0x6c65_6173_6568_6f6c; // "leasehol"

/// Where a database's schema stands against the migrations this build carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// The highest migration version applied to the database (0 for an empty database).
    pub database_version: i32,
    /// The highest migration version this build knows.
    pub known_version: i32,
    /// Migrations this build would apply, as `(version, name)`, in order.
    pub pending: Vec<(i32, String)>,
}

/// The highest migration version this build carries.
pub fn known_version() -> i32 {
    migrations::runner()
        .get_migrations()
        .iter()
        .map(refinery::Migration::version)
        .max()
        .unwrap_or(0)
}

// An empty database has no history table, and a query naming it would fail to plan.
const HISTORY_EXISTS: Query = Query {
    name: "history_exists",
    sql: "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
};

// Reads refinery's history table directly: refinery's own reader fails on an empty database.
const APPLIED_VERSION: Query = Query {
    name: "applied_version",
    sql: "SELECT coalesce(max(version), 0) FROM refinery_schema_history",
};

// Whether a database of this name exists in the server this store is connected to.
const DATABASE_EXISTS: Query = Query {
    name: "database_exists",
    sql: "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1::text)",
};

// Serialises concurrent migrators: a session lock, so it needs no transaction around refinery's.
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
    HISTORY_EXISTS,
    APPLIED_VERSION,
    DATABASE_EXISTS,
    MIGRATION_LOCK,
    MIGRATION_UNLOCK,
];

async fn applied_version(client: &Client) -> Result<i32, Error> {
    if !HISTORY_EXISTS
        .query_one(client, &[])
        .await?
        .get::<_, bool>(0)
    {
        return Ok(0);
    }
    Ok(APPLIED_VERSION.query_one(client, &[]).await?.get(0))
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

    /// Where the database's schema stands; changes nothing.
    pub async fn schema_status(&self) -> Result<SchemaStatus, Error> {
        let client = self.client().await?;
        let database_version = applied_version(&client).await?;
        let pending = migrations::runner()
            .get_migrations()
            .iter()
            .filter(|m| m.version() > database_version)
            .map(|m| (m.version(), m.name().to_owned()))
            .collect();
        Ok(SchemaStatus {
            database_version,
            known_version: known_version(),
            pending,
        })
    }

    /// Refuses a database this build cannot serve: one migrated past what it knows, or one not
    /// yet migrated to it.
    pub async fn check_schema(&self) -> Result<(), Error> {
        let status = self.schema_status().await?;
        if status.database_version > status.known_version {
            Err(Error::SchemaTooNew {
                database: status.database_version,
                known: status.known_version,
            })
        } else if status.database_version < status.known_version {
            Err(Error::SchemaBehind {
                database: status.database_version,
                known: status.known_version,
            })
        } else {
            Ok(())
        }
    }

    /// Applies the pending migrations and returns what it applied, as `(version, name)`.
    ///
    /// # Locks
    /// Holds a session advisory lock for the duration, so concurrent callers apply each migration
    /// once; the lock ends with the call (or the connection), never outliving it.
    pub async fn migrate(&self) -> Result<Vec<(i32, String)>, Error> {
        let mut client = self.client().await?;
        MIGRATION_LOCK
            .execute(&client, &[&MIGRATION_LOCK_KEY])
            .await?;
        let result = self.migrate_locked(&mut client).await;
        MIGRATION_UNLOCK
            .execute(&client, &[&MIGRATION_LOCK_KEY])
            .await?;
        result
    }

    async fn migrate_locked(
        &self,
        client: &mut deadpool_postgres::Object,
    ) -> Result<Vec<(i32, String)>, Error> {
        let database = applied_version(client).await?;
        let known = known_version();
        if database > known {
            return Err(Error::SchemaTooNew { database, known });
        }
        let report = migrations::runner()
            .run_async(&mut ***client)
            .await
            .map_err(|e| Error::Migration(e.to_string()))?;
        Ok(report
            .applied_migrations()
            .iter()
            .map(|m| (m.version(), m.name().to_owned()))
            .collect())
    }
}
