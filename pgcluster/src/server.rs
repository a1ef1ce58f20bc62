//! One data folder and its server: `initdb`, start on a loopback port, restart, stop.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{Bindir, Error, RunAs};

/// How long `pg_ctl` may wait for the server to start or stop, in seconds.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// How many free ports to try when another process takes the chosen one first.
const PORT_ATTEMPTS: usize = 5;
/// How long to wait for TCP connections after `pg_ctl` reports the server ready.
const TCP_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many lines of the server log a start failure quotes.
const LOG_TAIL_LINES: usize = 30;
/// The superuser `initdb` creates.
const SUPERUSER: &str = "postgres";

/// How the superuser `postgres` signs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Without a password: for a cluster only this machine's tests reach.
    Trust,
    /// With the password in `pwfile` (SCRAM), which `initdb` reads.
    Password {
        /// A file holding the password on its first line.
        pwfile: PathBuf,
    },
}

/// What `initdb` creates: always the superuser `postgres`, UTF-8 and the C locale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Init {
    /// How the superuser signs in.
    pub auth: Auth,
    /// Skip `initdb`'s final fsync: faster, for a cluster that is thrown away anyway.
    pub no_sync: bool,
}

/// Which port the server listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// A free one, chosen at start; tried again on another when a process takes it first.
    Free,
    /// This one, or [`Error::PortTaken`].
    Pinned(u16),
}

/// How `pg_ctl stop` ends the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Sessions are ended, committed work is checkpointed.
    Fast,
    /// Every process is ended at once, without a checkpoint: the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// A data folder, the binaries to run it with, and the user they run as. It listens on loopback
/// TCP only, never on a Unix socket (a long data folder path can exceed the socket path limit).
///
/// Nothing stops the server when this is dropped: the caller decides when (see
/// [`Server::stop`]).
#[derive(Debug, Clone)]
pub struct Server {
    bindir: Bindir,
    run_as: RunAs,
    pgdata: PathBuf,
}

impl Server {
    /// The server of `pgdata` (`initdb -D`), which need not exist yet. Its parent folder is the
    /// tools' working folder, so the user in `run_as` must be able to enter it.
    pub fn new(bindir: Bindir, run_as: RunAs, pgdata: PathBuf) -> Self {
        Self {
            bindir,
            run_as,
            pgdata,
        }
    }

    /// The data folder.
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// The binaries.
    pub fn bindir(&self) -> &Bindir {
        &self.bindir
    }

    /// The user the tools run as.
    pub fn run_as(&self) -> &RunAs {
        &self.run_as
    }

    /// Creates a cluster in `into`: the data folder, or a scratch folder the caller renames to
    /// it once this succeeded.
    ///
    /// # Errors
    /// If `initdb` cannot run or fails; the error quotes its output.
    pub fn initdb(&self, into: &Path, init: &Init) -> Result<(), Error> {
        let output = self.tool("initdb").args(initdb_args(into, init)).output();
        check("initdb", output)
    }

    /// Starts the server with `settings` (`name`, `value` pairs, as `-c name=value` options on
    /// top of the loopback-only listening) and its log appended to `log`, and returns the port
    /// once it takes TCP connections.
    ///
    /// # Errors
    /// [`Error::PortTaken`] for a pinned port; [`Error::Start`] quoting the log.
    pub fn start(&self, port: Port, log: &Path, settings: &[(&str, &str)]) -> Result<u16, Error> {
        let attempts = match port {
            Port::Pinned(_) => 1,
            Port::Free => PORT_ATTEMPTS,
        };
        for attempt in 1..=attempts {
            let port_now = match port {
                Port::Pinned(port) => port,
                Port::Free => {
                    free_port().map_err(Error::io("finding a free port for PostgreSQL"))?
                }
            };
            let log_start = fs::metadata(log).map_or(0, |m| m.len());
            let output = self
                .pg_ctl(&["start", "-w", "-t", PG_CTL_TIMEOUT_SECS])
                .arg("-l")
                .arg(log)
                .arg("-o")
                .arg(server_options(port_now, settings))
                .output();
            let Err(failure) = check("pg_ctl start", output) else {
                wait_for_tcp(port_now)?;
                return Ok(port_now);
            };
            let new_log = read_from(log, log_start);
            if new_log.contains("could not bind") {
                if let Port::Pinned(port) = port {
                    return Err(Error::PortTaken { port });
                }
                if attempt < attempts {
                    // Another process took the port between our probe and the server's bind.
                    continue;
                }
            }
            return Err(Error::Start {
                failure: Box::new(failure),
                log: log.to_owned(),
                tail: tail(&new_log, LOG_TAIL_LINES),
            });
        }
        unreachable!("the last attempt returns")
    }

    /// `pg_ctl restart`: stops the server in `mode` if it runs, and starts it again with the
    /// options of its last start (`postmaster.opts`), on the same port; returns once it is ready.
    ///
    /// # Errors
    /// If `pg_ctl` fails.
    pub fn restart(&self, mode: StopMode, log: &Path) -> Result<(), Error> {
        let output = self
            .pg_ctl(&[
                "restart",
                "-m",
                mode.as_arg(),
                "-w",
                "-t",
                PG_CTL_TIMEOUT_SECS,
            ])
            .arg("-l")
            .arg(log)
            .output();
        check("pg_ctl restart", output)
    }

    /// Stops the server if one runs in the data folder; a no-op when none does.
    ///
    /// # Errors
    /// If `pg_ctl stop` fails.
    pub fn stop(&self, mode: StopMode) -> Result<(), Error> {
        if !self.is_running() {
            return Ok(());
        }
        let output = self
            .pg_ctl(&["stop", "-w", "-t", PG_CTL_TIMEOUT_SECS, "-m", mode.as_arg()])
            .output();
        check("pg_ctl stop", output)
    }

    /// Whether a server runs in the data folder (`pg_ctl status` exits 0 only then).
    pub fn is_running(&self) -> bool {
        if !self.pgdata.join("postmaster.pid").exists() {
            return false;
        }
        self.pg_ctl(&["status"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// `pg_ctl <args> -D <pgdata>`.
    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut command = self.tool("pg_ctl");
        command.args(args).arg("-D").arg(&self.pgdata);
        command
    }

    fn tool(&self, name: &str) -> Command {
        let cwd = self.pgdata.parent().unwrap_or(Path::new("/"));
        self.run_as.command(&self.bindir.tool(name), cwd)
    }
}

/// The major version in a data folder's `PG_VERSION`, if the folder holds a cluster.
pub fn pgdata_version(pgdata: &Path) -> Option<String> {
    let text = fs::read_to_string(pgdata.join("PG_VERSION")).ok()?;
    let version = text.trim();
    (!version.is_empty()).then(|| version.to_owned())
}

fn initdb_args(into: &Path, init: &Init) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec!["-D".into(), into.into(), "-U".into()];
    args.push(SUPERUSER.into());
    match &init.auth {
        Auth::Trust => args.push("--auth=trust".into()),
        Auth::Password { pwfile } => {
            args.push("--auth=scram-sha-256".into());
            let mut pwfile_arg = std::ffi::OsString::from("--pwfile=");
            pwfile_arg.push(pwfile);
            args.push(pwfile_arg);
        }
    }
    args.extend(["-E", "UTF8", "--locale=C"].map(Into::into));
    if init.no_sync {
        args.push("--no-sync".into());
    }
    args
}

/// The server's options for `pg_ctl -o`, which hands them to a shell: the port, loopback TCP
/// only, no Unix socket, then `settings`, each value quoted for the shell where it needs it.
fn server_options(port: u16, settings: &[(&str, &str)]) -> String {
    let mut options =
        format!("-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''");
    for (name, value) in settings {
        options.push_str(&format!(" -c {name}={}", shell_word(value)));
    }
    options
}

/// `text` as one shell word: as it is when it holds only plain characters, else single-quoted.
fn shell_word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-.,:/+@%".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// A loopback port nobody listens on right now; the server may still lose it to another
/// process, and `start` then tries another.
fn free_port() -> io::Result<u16> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()
        .map(|a| a.port())
}

fn wait_for_tcp(port: u16) -> Result<(), Error> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + TCP_READY_TIMEOUT;
    loop {
        match TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() >= deadline => {
                return Err(Error::NotReachable { address, error });
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn check(what: &str, output: io::Result<Output>) -> Result<(), Error> {
    let output = output.map_err(Error::io(format!("running {what}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Failed {
        what: what.to_owned(),
        status: output.status,
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    })
}

/// The file from byte `from` on; empty if it cannot be read.
fn read_from(path: &Path, from: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn initdb_creates_the_postgres_superuser_with_the_asked_auth() {
        let check = |init: Init, want: &[&str]| {
            let args = initdb_args(Path::new("/d/pgdata"), &init);
            assert_eq!(args, want, "{init:?}");
        };
        check(
            Init {
                auth: Auth::Trust,
                no_sync: true,
            },
            &[
                "-D",
                "/d/pgdata",
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        check(
            Init {
                auth: Auth::Password {
                    pwfile: "/d/password".into(),
                },
                no_sync: false,
            },
            &[
                "-D",
                "/d/pgdata",
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "--pwfile=/d/password",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
    }

    #[test]
    fn server_options_listen_on_loopback_and_quote_values() {
        assert_eq!(
            server_options(5433, &[]),
            "-p 5433 -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        );
        assert_eq!(
            server_options(1, &[("shared_buffers", "1GB"), ("fsync", "off")]),
            "-p 1 -c listen_addresses=127.0.0.1 -c unix_socket_directories='' \
             -c shared_buffers=1GB -c fsync=off"
        );
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("128MB"), "128MB");
        assert_eq!(shell_word("/var/run/x,/tmp"), "/var/run/x,/tmp");
        assert_eq!(shell_word(""), "''");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word("$HOME"), "'$HOME'");
    }

    #[test]
    fn the_cluster_version_is_read_from_pg_version() {
        let dir =
            std::env::temp_dir().join(format!("leasehold-pgcluster-v-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create");
        assert_eq!(pgdata_version(&dir), None);
        fs::write(dir.join("PG_VERSION"), "16\n").expect("write");
        assert_eq!(pgdata_version(&dir).as_deref(), Some("16"));
        fs::remove_dir_all(&dir).expect("remove");
    }
}
