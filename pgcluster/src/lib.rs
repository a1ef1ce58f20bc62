//! A private PostgreSQL cluster made from the machine's own server binaries: finding them,
//! `initdb`, starting the server on a loopback port, waiting until it takes connections, and
//! stopping it. `leasehold dev`, the test harness, the fault suite and the benchmark all start
//! their clusters through this crate; each keeps only its own policy (where the data lives, which
//! settings, when to stop).
//!
//! Everything here blocks and uses std only, so that a cluster belongs to no async runtime; async
//! callers use `spawn_blocking`. Unix only.
//!
//! ```no_run
//! use leasehold_pgcluster::{Auth, Bindir, Init, Port, RunAs, Server, StopMode};
//!
//! # fn example() -> Result<(), leasehold_pgcluster::Error> {
//! let bindir = Bindir::find(None, None)?;
//! let run_as = RunAs::detect()?;
//! let server = Server::new(bindir, run_as, "/tmp/cluster/data".into());
//! server.initdb(server.pgdata(), &Init { auth: Auth::Trust, no_sync: true })?;
//! let port = server.start(Port::Free, "/tmp/cluster/log".as_ref(), &[("fsync", "off")])?;
//! println!("postgres://postgres@127.0.0.1:{port}/postgres");
//! server.stop(StopMode::Fast)?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - `bindir`: [`Bindir`]: finding `initdb`, `pg_ctl` and `postgres`, or saying what to install.
//! - `run_as`: [`RunAs`]: ourselves, or the `postgres` user through `runuser` when we are root
//!   (PostgreSQL refuses to run as root), and handing it the folders it needs.
//! - `server`: [`Server`]: one data folder: `initdb`, start, restart, stop, status.
//! - `tls`: [`Tls`]: a server certificate and key (and a client CA) installed with
//!   [`Server::install_tls`], for a cluster reached over TLS only.
//! - `error`: [`Error`], what went wrong, worded for the person who can fix it.

#![warn(missing_docs)]

mod bindir;
mod error;
mod run_as;
mod server;
mod tls;

pub use bindir::{Bindir, INSTALL_HINT, SEARCHED};
pub use error::Error;
pub use run_as::RunAs;
pub use server::{Auth, Init, Port, Server, StopMode, pgdata_version};
pub use tls::Tls;
