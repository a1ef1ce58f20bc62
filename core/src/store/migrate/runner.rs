//! Applying one migration online: every statement under a short `lock_timeout`, tried again with
//! backoff when a lock was not granted in time; a migration outside a transaction statement by
//! statement, dropping the invalid index a failed concurrent build leaves before it tries again.

use std::time::{Duration, Instant};

use deadpool_postgres::Client;
use tokio_postgres::error::SqlState;

use super::plan::{Migration, Step};
use super::split;
use super::{Applied, Error};
use crate::store::query::Query;

/// How long a migration's statement waits for a table lock before it gives up and tries again.
/// Statements queued behind a waiting DDL (a worker's heartbeat among them) wait at most this
/// long: well under a fifth of the shortest lease a worker takes (5 s), which is the margin
/// before a worker fences itself.
pub(super) const LOCK_TIMEOUT: &str = "1s";
/// Tries of one statement (or one transactional migration) whose lock was not granted in time.
const LOCK_TRIES: u32 = 10;
/// The wait before the second try; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// The longest wait between tries.
const BACKOFF_MAX: Duration = Duration::from_secs(4);

// Sets a setting for the session ($3 false) or for the transaction ($3 true). The migrator's
// session takes a short lock_timeout and no statement_timeout: an index build on a big table may
// rightly take minutes, but waiting long for a lock would hold the table's queue behind it.
pub(super) const SESSION_SETTING: Query = Query {
    name: "migration_setting",
    sql: "SELECT set_config($1::text, $2::text, $3::bool)",
};

// Puts the migrator's pooled connection back as the pool handed it out.
pub(super) const RESET_LOCK_TIMEOUT: Query = Query {
    name: "migration_reset_lock_timeout",
    sql: "RESET lock_timeout",
};

// The same, for the statement timeout.
pub(super) const RESET_STATEMENT_TIMEOUT: Query = Query {
    name: "migration_reset_statement_timeout",
    sql: "RESET statement_timeout",
};

// The history table, in refinery's shape, so that databases it migrated carry on.
pub(super) const CREATE_HISTORY: Query = Query {
    name: "create_migration_history",
    sql: "CREATE TABLE IF NOT EXISTS refinery_schema_history (
            version int4 PRIMARY KEY, name varchar(255), applied_on varchar(255),
            checksum varchar(255))",
};

// Records an applied migration as refinery did: the time as RFC 3339 text, the checksum as
// decimal text.
pub(super) const RECORD: Query = Query {
    name: "record_migration",
    sql: "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
          VALUES ($1::int4, $2::text,
                  to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                  $3::text)",
};

// Raises the floor, never lowers it: a contract step applied again (or out of order) leaves a
// higher floor alone.
pub(super) const RAISE_FLOOR: Query = Query {
    name: "raise_schema_floor",
    sql: "UPDATE leasehold_schema_floor SET floor = greatest(floor, $1::int), raised_at = now()",
};

// True when an index of this name exists and is invalid: what a failed CREATE INDEX
// CONCURRENTLY leaves behind. IF NOT EXISTS would then skip the build and keep the invalid index.
pub(super) const INDEX_IS_INVALID: Query = Query {
    name: "index_is_invalid",
    sql: "SELECT NOT indisvalid AS invalid FROM pg_index WHERE indexrelid = to_regclass($1::text)",
};

/// Prepares the migrator's session, and the history table unless it `has_history`: called once
/// before the first migration.
pub(super) async fn prepare_session(client: &Client, has_history: bool) -> Result<(), Error> {
    for (name, value) in [("lock_timeout", LOCK_TIMEOUT), ("statement_timeout", "0")] {
        SESSION_SETTING
            .execute(client, &[&name, &value, &false])
            .await?;
    }
    if !has_history {
        CREATE_HISTORY.execute(client, &[]).await?;
    }
    Ok(())
}

/// Resets what [`prepare_session`] set.
pub(super) async fn reset_session(client: &Client) -> Result<(), Error> {
    RESET_LOCK_TIMEOUT.execute(client, &[]).await?;
    RESET_STATEMENT_TIMEOUT.execute(client, &[]).await?;
    Ok(())
}

/// Applies `migration` and records it.
pub(super) async fn apply(client: &Client, migration: Migration) -> Result<Applied, Error> {
    let started = Instant::now();
    let mut retries = 0;
    let m = &migration;
    let failed = |e: tokio_postgres::Error| fail(m, &e);
    if let Step::Contract { floor } = migration.step {
        // Raised first, in a statement of its own: no release below the floor starts while the
        // step runs. If the step then fails, the floor stays raised, which only refuses releases
        // the step was about to break.
        with_lock_retries(m, &mut retries, || async move {
            RAISE_FLOOR.execute(client, &[&floor]).await.map(drop)
        })
        .await?;
    }
    if migration.transactional {
        with_lock_retries(m, &mut retries, || async move {
            let result = async {
                client.batch_execute("BEGIN").await?;
                client.batch_execute(m.sql).await?;
                record(client, m).await?;
                client.batch_execute("COMMIT").await
            }
            .await;
            if result.is_err() {
                let _ = client.batch_execute("ROLLBACK").await;
            }
            result
        })
        .await?;
    } else {
        for statement in split::statements(migration.sql) {
            let index = split::concurrent_index(statement)
                .map_err(|e| Error::Migration(format!("{}: {e}", m.label())))?;
            let index = index.as_deref();
            if let Some(index) = index {
                drop_if_invalid(client, index).await.map_err(failed)?;
            }
            with_lock_retries(m, &mut retries, || async move {
                let result = client.batch_execute(statement).await;
                if result.is_err()
                    && let Some(index) = index
                {
                    drop_if_invalid(client, index).await?;
                }
                result
            })
            .await?;
        }
        record(client, m).await.map_err(failed)?;
    }
    Ok(Applied {
        migration,
        took: started.elapsed(),
        lock_retries: retries,
    })
}

async fn record(client: &Client, migration: &Migration) -> Result<(), tokio_postgres::Error> {
    RECORD
        .execute(
            client,
            &[
                &migration.version,
                &migration.name,
                &migration.checksum.to_string(),
            ],
        )
        .await
        .map(drop)
}

/// Drops `index` if a failed concurrent build left it invalid. Concurrently, so that the drop
/// does not lock the table against writes either.
async fn drop_if_invalid(client: &Client, index: &str) -> Result<(), tokio_postgres::Error> {
    let invalid = INDEX_IS_INVALID
        .query_opt(client, &[&index])
        .await?
        .is_some_and(|row| row.get::<_, bool>("invalid"));
    if invalid {
        tracing::warn!(index, "dropping the invalid index a failed build left");
        // DDL takes no parameters; `split::concurrent_index` admits plain identifiers only.
        client
            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"))
            .await?;
    }
    Ok(())
}

/// Runs `attempt` until it succeeds, fails for another reason than a lock not granted in time
/// (or a deadlock), or has been tried [`LOCK_TRIES`] times.
async fn with_lock_retries<F, Fut>(
    migration: &Migration,
    retries: &mut u32,
    mut attempt: F,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), tokio_postgres::Error>>,
{
    let mut backoff = BACKOFF_FIRST;
    for tried in 1..=LOCK_TRIES {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) if is_lock_wait(&e) && tried < LOCK_TRIES => {
                *retries += 1;
                tracing::warn!(
                    migration = %migration.label(),
                    tried,
                    lock_timeout = LOCK_TIMEOUT,
                    "a lock was not granted in time; trying again in {backoff:?}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            Err(e) if is_lock_wait(&e) => {
                return Err(Error::Migration(format!(
                    "{}: a lock was not granted within {LOCK_TIMEOUT} in {LOCK_TRIES} tries, so \
                     something holds a lock on the table for long (see pg_locks); nothing after \
                     the last completed statement was applied, and `leasehold migrate` may be run \
                     again: {}",
                    migration.label(),
                    said(&e)
                )));
            }
            Err(e) => return Err(fail(migration, &e)),
        }
    }
    unreachable!("the last try returns")
}

fn is_lock_wait(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(&SqlState::LOCK_NOT_AVAILABLE | &SqlState::T_R_DEADLOCK_DETECTED)
    )
}

fn fail(migration: &Migration, e: &tokio_postgres::Error) -> Error {
    Error::Migration(format!("{}: {}", migration.label(), said(e)))
}

/// What PostgreSQL said: message, detail and SQLSTATE, or the driver's error.
fn said(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut out = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                out.push_str(&format!("; {detail}"));
            }
            out
        }
        None => e.to_string(),
    }
}
