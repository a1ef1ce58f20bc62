//! The fault suite's harness: real `leasehold` processes against a throwaway PostgreSQL, faults
//! injected from outside, and the design's invariants checked afterwards.
//!
//! The scenarios are in `tests/faults.rs`; `src/bin/leasehold-test-worker.rs` is the worker
//! binary they run, built on the `leasehold_worker` library with the suite's `ledger` kind.
//!
//! # Layout
//! - [`supervisor`]: starts processes with a log file each, in their own process groups;
//!   SIGTERM then SIGKILL on teardown; a drop guard that leaves no process behind; logs kept
//!   when a test fails.
//! - [`cluster`]: one scenario's database, coordinators and workers, their readiness, the
//!   timings they run with and the bounds computed from them, and the reads scenarios observe.
//! - [`binaries`]: finds (and builds, with the test's own profile) the real `leasehold` binary.
//! - [`ledger`]: the effects ledger table the `ledger` kind writes every execution to.
//! - [`invariants`]: the checker run after every scenario, returning a [`invariants::Report`].
//! - [`scenario`]: one scenario at a time, a hard time bound each, result lines and the summary
//!   table.

pub mod api;
pub mod binaries;
pub mod cluster;
pub mod invariants;
pub mod ledger;
pub mod pg_server;
pub mod scenario;
pub mod supervisor;
