//! Leasehold's worker: claims runs straight from PostgreSQL, keeps their leases, executes their
//! nodes, checkpoints each step, and hands runs back on shutdown. Embed it to add node kinds.
//!
//! # Layout
//! - [`handler`]: the [`Handler`] trait, its [`Context`], and the [`Registry`] of node kinds.
//! - [`handlers`]: the built-in kinds.
//! - [`config`]: the worker's settings and their defaults.
//! - [`cli`]: the worker command (`leasehold worker`, or a worker binary of one's own with more
//!   kinds): flags, signals, entry point, and keeping its secrets from the programs it runs.
//! - `worker`: the claim loop and the shutdown hand-back ([`Worker`]).
//! - `keeper`: batched heartbeats and the self-fence.
//! - `execute`: one run: ready nodes, fenced checkpoints, retries, gates, pauses.
//! - `error`: the worker's own errors: the store's, and its batched writes' failures.
//! - [`observe`]: metrics (`/metrics`) and the worker's probes (`/livez`, `/readyz`) over HTTP.
//! - `flusher`: node starts and completions of many runs batched into one statement per kind.
#![warn(missing_docs)]

pub mod cli;
pub mod config;
mod error;
mod execute;
mod flusher;
pub mod handler;
pub mod handlers;
mod keeper;
pub mod observe;
pub mod runtime_context;
mod worker;

pub use config::{Config, ConfigError, default_claimant_id};
pub use execute::Outcome;
pub use handler::{Context, Handler, HandlerError, Registry, ResultExt};
pub use runtime_context::RuntimeContext;
pub use worker::{Report, Worker};
