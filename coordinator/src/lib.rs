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
