//! `leasehold-coordinator`'s integration tests against a real Postgres: the gRPC API in-process,
//! and the sweeps, one module per sweep. They are one test binary, so that a change to the crate
//! compiles and links them once. Their setup and time travel are the testkit's
//! [`fixtures`](leasehold_testkit::fixtures).

mod answers;
mod api;
mod auth;
mod coalesced_starts;
mod contract;
mod kinds;
mod limits;
mod sweeps;
