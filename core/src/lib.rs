//! Leasehold's domain and its store.
//!
//! # Layout
//! - [`ids`]: newtypes for run, node, automation, tenant and claimant ids, and the lease epoch.
//! - [`spec`]: automation specs: parsing from YAML or JSON, and validation.
//! - [`run`]: the run state machine and the ready nodes of a run's checkpoint.
//! - [`retry`]: the backoff between attempts.
//! - [`lease`]: lease expiry, reap decisions, and whether a queued run is due.
//! - [`store`]: the PostgreSQL store, the one place where SQL lives.
//!
//! Everything but [`store`] is a pure function of its arguments, `now` included.
#![warn(missing_docs)]

pub mod ids;
pub mod lease;
pub mod retry;
pub mod run;
pub mod spec;
pub mod store;
