//! The client commands: each talks gRPC to a coordinator and prints a readable view, or with
//! `--json` one JSON document a script can parse.
//!
//! # Layout
//!
//! - `automation`, `run`, `gate`, `workers`, `stats`: one file per command group.
//! - `watch`: following a run's event stream, resumed from the last sequence seen.
//! - `connect`: the channel to the coordinator, and a failed call as one error line.
//! - `tls`: TLS to the coordinator, and why a handshake failed.
//! - `json`: the API's messages as JSON values.
//! - `render`: tables, `key: value` views, times, ages and durations, and writing to stdout.

pub mod automation;
mod connect;
pub mod gate;
mod json;
mod names;
pub mod queues;
pub(crate) mod render;
pub mod retention;
pub mod run;
pub mod schedules;
pub mod stats;
mod tls;
mod watch;
pub mod workers;

use leasehold_core::store::{MalformedToken, Secret};
pub use tls::Tls;

/// Options every client command shares.
#[derive(Debug, Clone)]
pub struct Global {
    /// The coordinator, as `http://host:port`.
    pub endpoint: String,
    /// Print JSON for scripts instead of tables.
    pub json: bool,
    /// The token to send, from `--token` or `LEASEHOLD_TOKEN` (refused when malformed, by the
    /// commands that send it); without one, the credentials file's token for the endpoint, if
    /// any.
    pub token: Option<Result<Secret, MalformedToken>>,
    /// How to reach a coordinator that serves TLS.
    pub tls: Tls,
}
