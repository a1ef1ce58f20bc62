//! Leasehold's store, with the domain it stores.
//!
//! # Layout
//! - [`ids`], [`spec`], [`kinds`], [`run`], [`retry`], [`lease`]: the pure domain, re-exported from
//!   `leasehold-domain` so that callers name one crate.
//! - [`store`]: the PostgreSQL store, the one place where SQL lives.
#![warn(missing_docs)]

pub use leasehold_domain::{
    ids, kinds, lease, retention, retry, routing, run, schedule, spec, trace,
};

pub mod store;
