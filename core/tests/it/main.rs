//! `leasehold-core`'s integration tests against a real Postgres, one module per concern of the
//! store. They are one test binary, so that a change to the crate compiles and links them once.
//! Their setup, specs and time travel are the testkit's [`fixtures`](leasehold_testkit::fixtures).

mod batched_writes;
mod claim_exclusivity;
mod claim_starts;
mod diagnostics;
mod leader;
mod lease_protocol;
mod limits;
mod operator;
mod protocol_doc;
mod queue;
mod routing;
mod schema;
mod start_runs;
mod store;
mod tls;
mod tokens;
mod trace_context;
mod watch;
mod workers;
