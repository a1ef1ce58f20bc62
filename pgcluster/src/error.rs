//! What can go wrong with a private cluster. Each message says what to do where the fix is the
//! same for every caller; callers append their own alternatives (a flag, an environment variable).
//!
//! Messages carry their causes' text rather than a `source()` chain, so that a caller printing
//! the chain does not print a cause twice.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;

use crate::bindir::{INSTALL_HINT, SEARCHED};

/// An error starting, stopping or finding a private cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No folder searched holds `initdb`, `pg_ctl` and `postgres`.
    #[error(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found {}: {INSTALL_HINT}",
        searched(.only)
    )]
    NotFound {
        /// The only folder searched, when the caller named one; `None` for the usual places.
        only: Option<PathBuf>,
    },
    /// Binaries were found, but none of the version an existing cluster needs.
    #[error(
        "the cluster was created by PostgreSQL {want}, but the server binaries found are \
         PostgreSQL {found} ({}): install PostgreSQL {want}",
        .dir.display()
    )]
    WrongVersion {
        /// The major version in the cluster's `PG_VERSION`.
        want: String,
        /// The version of the first binaries found.
        found: String,
        /// Where the first binaries found are.
        dir: PathBuf,
    },
    /// `postgres --version` printed something without a version.
    #[error("{} --version printed {printed:?}, which names no version", .program.display())]
    NoVersion {
        /// The `postgres` program asked.
        program: PathBuf,
        /// What it printed.
        printed: String,
    },
    /// We are root and there is no `postgres` user to run the server as.
    #[error(
        "running as root, and PostgreSQL refuses to run as root, but there is no `postgres` user \
         to run it as: create one (`useradd --system --user-group --home-dir \
         /var/lib/postgresql postgres`; installing the `postgresql` package does it)"
    )]
    NoPostgresUser,
    /// We are root and `runuser` is missing.
    #[error(
        "running as root, and PostgreSQL refuses to run as root, but `runuser` (from util-linux) \
         is not installed to run it as the `postgres` user: install util-linux"
    )]
    NoRunuser,
    /// `id -u` printed something that is not a user id.
    #[error("`id -u` printed no user id")]
    NoUserId,
    /// The `postgres` user cannot create files in the folder.
    #[error(
        "the postgres user, which runs PostgreSQL because we are root, cannot write to {} (a \
         folder above it is probably private, like /root)",
        .dir.display()
    )]
    NotWritable {
        /// The folder.
        dir: PathBuf,
    },
    /// An operating-system call failed; `what` says which, in the words of "while …".
    #[error("{what}: {error}")]
    Io {
        /// What was being done, such as "running pg_ctl start".
        what: String,
        /// The cause.
        error: io::Error,
    },
    /// A PostgreSQL tool ran and failed.
    #[error("{what} failed ({status}): {output}")]
    Failed {
        /// The tool and its verb, such as "pg_ctl stop".
        what: String,
        /// How it exited.
        status: ExitStatus,
        /// Its standard output and error, trimmed.
        output: String,
    },
    /// The server could not bind the port the caller pinned.
    #[error("PostgreSQL could not listen on 127.0.0.1:{port}: the port is taken")]
    PortTaken {
        /// The port.
        port: u16,
    },
    /// The server did not start; the log says why.
    #[error("starting PostgreSQL: {failure}\n--- the end of its log {} ---\n{tail}", .log.display())]
    Start {
        /// What `pg_ctl start` reported.
        failure: Box<Error>,
        /// The server's log.
        log: PathBuf,
        /// The last lines this start wrote to the log.
        tail: String,
    },
    /// `pg_ctl` reported the server ready, but it takes no TCP connections.
    #[error("pg_ctl reported PostgreSQL ready, but {address} refuses connections: {error}")]
    NotReachable {
        /// Where it should listen.
        address: SocketAddr,
        /// The last connection error.
        error: io::Error,
    },
}

impl Error {
    /// An [`Error::Io`] saying what was being done.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |error| Error::Io { what, error }
    }
}

/// Where the binaries were looked for, after "found".
fn searched(only: &Option<PathBuf>) -> String {
    match only {
        Some(dir) => format!("in {}", dir.display()),
        None => SEARCHED.to_owned(),
    }
}
