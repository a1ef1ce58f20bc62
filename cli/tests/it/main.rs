//! The `leasehold` binary's integration tests: the client commands against an in-process
//! coordinator, `coordinator` (with TLS too), `dev`, `migrate` and `worker`, each run as the real binary. They are
//! one test binary, so that a change to the crates compiles and links them once.

mod auth;
mod client;
mod coordinator;
mod deploy;
mod dev;
mod exposition;
mod logs;
mod metrics;
mod migrate;
mod python_client;
mod rolling_restarts;
mod startup;
mod support;
mod tls;
mod traces;
mod upgrade;
mod watch_load;
mod worker;
mod worker_handlers;
