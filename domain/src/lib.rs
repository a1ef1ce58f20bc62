//! Leasehold's domain: the rules, with no database and no clock of their own.
//!
//! # Layout
//! - [`ids`]: newtypes for run, node, automation, tenant and claimant ids, and the lease epoch.
//! - [`spec`]: automation specs: parsing from YAML or JSON, and validation.
//! - [`kinds`]: node kinds' input schemas, the built-in kinds' own, and checking a spec's node
//!   inputs against them.
//! - [`run`]: the run state machine and the ready nodes of a run's checkpoint.
//! - [`retry`]: the backoff between attempts.
//! - [`schedule`]: cron schedules: when they fire, catch-up after downtime, overlap.
//! - [`lease`]: lease bounds, expiry and reap decisions.
//! - [`retention`]: how long finished runs keep their details, and how long they are kept.
//! - [`routing`]: queue, label and context names, what a run requires of its worker, what a
//!   worker advertises, and why a queued run waits for one.
//! - [`trace`]: a run's W3C trace context (`traceparent`, `tracestate`), read as the
//!   specification has a receiver read it.
//!
//! Everything here is a pure function of its arguments, `now` included. The crate does not
//! depend on a database driver, so the compiler keeps the rules away from the store.
#![warn(missing_docs)]

pub mod ids;
pub mod kinds;
pub mod lease;
pub mod retention;
pub mod retry;
pub mod routing;
pub mod run;
pub mod schedule;
pub mod spec;
pub mod trace;
