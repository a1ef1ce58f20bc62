//! What can go wrong in the store, typed by concern so that callers can tell a lost lease from
//! bad input from a broken connection:
//! - [`Error`]: the store itself failed: the database, the connection, the schema, stored data it
//!   cannot read. Every other error can carry one.
//! - [`FenceError`]: a fenced write of a held run changed nothing (docs/lease_protocol.md,
//!   rule 3): the lease is lost, the write contradicts the checkpoint, or the run is pausing.
//! - [`RequestError`]: a request of a client or an operator was refused: what it names does not
//!   exist, exists already, or is in a state that forbids it.

mod describe;
mod fence;
mod request;

/// The driver's and the pool's errors convert into `$error` as the store's failure
/// (`$error::Store`), so that `?` works on database calls in methods that return `$error`.
macro_rules! carries_store_failures {
    ($error:ident) => {
        impl From<tokio_postgres::Error> for $error {
            fn from(e: tokio_postgres::Error) -> Self {
                Self::Store(e.into())
            }
        }

        impl From<deadpool_postgres::PoolError> for $error {
            fn from(e: deadpool_postgres::PoolError) -> Self {
                Self::Store(e.into())
            }
        }
    };
}
use carries_store_failures;

use tokio_postgres::error::SqlState;

use crate::ids::{AutomationId, RunId};
pub use fence::FenceError;
pub use request::RequestError;

/// The store failed, whatever was asked of it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value broke a constraint of the schema (a length, a range).
    #[error("value out of range: {constraint}")]
    OutOfRange {
        /// The constraint the database names.
        constraint: String,
    },
    /// A stored automation spec this build cannot read.
    #[error("stored spec of {automation_id} v{version} is unreadable: {reason}")]
    UnreadableSpec {
        /// The automation.
        automation_id: AutomationId,
        /// The version.
        version: i32,
        /// Why.
        reason: String,
    },
    /// A stored run this build cannot read.
    #[error("stored run {run_id} is unreadable: {reason}")]
    UnreadableRun {
        /// The run.
        run_id: RunId,
        /// Why.
        reason: String,
    },
    /// A stored schedule this build cannot read.
    #[error("stored schedule {schedule_id} is unreadable: {reason}")]
    UnreadableSchedule {
        /// The schedule.
        schedule_id: String,
        /// Why.
        reason: String,
    },
    /// A contract step raised the database's compatibility floor above the schema this build
    /// knows: the statements of this build may no longer work there.
    #[error(
        "the database (schema {database}) accepts only releases that know schema {floor} or \
         later, and this binary knows schema {known}; upgrade this binary to a release that \
         knows schema {floor} or later"
    )]
    SchemaTooNew {
        /// The highest migration version applied.
        database: i32,
        /// The oldest schema a release may know and still run against the database.
        floor: i32,
        /// The schema this build knows.
        known: i32,
    },
    /// The database lacks migrations this build needs.
    #[error(
        "the database schema is at version {database} but this build needs {known}; \
         run `leasehold migrate` first"
    )]
    SchemaBehind {
        /// Highest applied version.
        database: i32,
        /// The schema this build knows.
        known: i32,
    },
    /// The schema ceiling set in the environment cannot be used.
    #[error("{0}")]
    BadSchemaCeiling(String),
    /// The database URL could not be used.
    #[error("bad database URL: {0}")]
    BadDatabaseUrl(String),
    /// The TLS parameters of the database URL, or the files they name, could not be used.
    // Not a `source`: the message says it all, and a printed cause chain would repeat it.
    #[error("database URL: {0}")]
    TlsSettings(super::connect::TlsSettingsError),
    /// The server refused TLS, or its certificate was refused: no connection was made.
    #[error("database {server}: TLS: {reason}")]
    Tls {
        /// `host:port` as in the URL (several, comma-separated, when the failing one is unknown).
        server: String,
        /// What went wrong, such as `certificate not valid for name "db.example.com"`.
        reason: String,
    },
    /// A named query failed to prepare.
    #[error("query {name} does not prepare: {}", describe::driver_error(.source))]
    BadQuery {
        /// The query's name.
        name: &'static str,
        /// What Postgres said.
        source: tokio_postgres::Error,
    },
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// No connection could be had from the pool.
    #[error("database unavailable: {}", describe::pool_error(.0))]
    Pool(deadpool_postgres::PoolError),
    /// Postgres answered with an error, or the connection failed mid-call.
    #[error("database error: {}", describe::driver_error(.0))]
    Db(tokio_postgres::Error),
}

impl Error {
    /// The database could not be reached or the connection broke: the same call may succeed
    /// later. Errors Postgres answered with (a constraint, a lost lease) are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            // A certificate may be renewed and a server restarted with TLS: like a refused
            // connection, trying again later may succeed.
            Self::Pool(_) | Self::Tls { .. } => true,
            Self::Db(e) => match e.code() {
                None => true,
                Some(code) => [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::T_R_SERIALIZATION_FAILURE,
                    SqlState::T_R_DEADLOCK_DETECTED,
                    // The session's statement_timeout: the statement waited on a lock or a
                    // loaded server, and the same call may land once that passes.
                    SqlState::QUERY_CANCELED,
                ]
                .contains(code),
            },
            _ => false,
        }
    }
}

impl From<super::connect::TlsSettingsError> for Error {
    fn from(e: super::connect::TlsSettingsError) -> Self {
        Self::TlsSettings(e)
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        count_failure(sqlstate_class(&e));
        // A CHECK violation is bad input that slipped past validation; name the constraint.
        if e.code() == Some(&SqlState::CHECK_VIOLATION) {
            let constraint = e
                .as_db_error()
                .and_then(|db| db.constraint())
                .unwrap_or("unnamed")
                .to_owned();
            return Self::OutOfRange { constraint };
        }
        Self::Db(e)
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        count_failure(match &e {
            deadpool_postgres::PoolError::Backend(e) => sqlstate_class(e),
            deadpool_postgres::PoolError::Timeout(_) => "pool_timeout",
            _ => "pool",
        });
        Self::Pool(e)
    }
}

/// What the metrics call a failure of the database: the SQLSTATE's class (its first two
/// characters, `40` for a serialization failure, `57` for a cancelled statement), or
/// `connection` when there is none because the connection itself failed.
fn sqlstate_class(e: &tokio_postgres::Error) -> &str {
    e.code()
        .and_then(|code| code.code().get(..2))
        .unwrap_or("connection")
}

/// Every failed database call becomes an [`Error`] through `From`, once: counted here.
fn count_failure(class: &str) {
    metrics::counter!("leasehold_db_errors_total", "class" => class.to_owned()).increment(1);
}
