//! Leasehold's coordinator: the gRPC API clients talk to, and the sweeps that keep runs moving,
//! run by whichever coordinator holds the leader lease.
//!
//! # Layout
//! - [`api`]: the gRPC services, health and reflection; errors map to statuses in one place.
//! - [`sweeps`]: the leader lease and the sweeps (reaper, auto-resume, pausing settlement, stale
//!   gates, partition upkeep), each a pure decision applied by conditional statements.
//! - [`tls`]: TLS for the API, with certificates reloaded when their files change.
#![warn(missing_docs)]

pub mod api;

pub mod sweeps;
pub mod tls;

use std::time::Duration;

/// The name of the coordinator's database sessions, as `pg_stat_activity` shows them.
pub const APPLICATION_NAME: &str = "leasehold-coordinator";

/// The bound on each of the coordinator's statements. Every statement it makes reads or writes
/// rows by key or by an indexed page; one that runs longer is stuck behind a lock or a loaded
/// server, and holding its connection longer only starves the others. The database URL's own
/// `options=-c statement_timeout=…` wins.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// `store` with the coordinator's sessions: named [`APPLICATION_NAME`], bounded by
/// [`STATEMENT_TIMEOUT`]. Every pool the coordinator opens (the API's, the tokens', and those it
/// makes beside them for the leader, the sweeps and the health check) should come from it.
pub fn with_coordinator_session(
    store: &leasehold_core::store::Store,
) -> Result<leasehold_core::store::Store, leasehold_core::store::Error> {
    Ok(store
        .with_session(APPLICATION_NAME, STATEMENT_TIMEOUT)?
        .named("api"))
}
