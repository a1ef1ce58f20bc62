//! `leasehold-worker`'s integration tests: the worker in-process against a real Postgres, and the
//! built-in `exec` and `http` handlers. They are one test binary, so that a change to the crate
//! compiles and links them once.

mod bundle;
mod exec_handler;
mod handler_errors;
mod http_handler;
mod idempotency;
mod logs;
mod probes;
mod registration;
mod runtime_context;
mod stops;
mod worker;
