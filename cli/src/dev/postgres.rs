//! The private PostgreSQL cluster: created once in the data folder, started on a loopback port by
//! every `leasehold dev`, and stopped when it ends, on error paths included ([`Cluster`] stops its
//! server when dropped).
//!
//! Everything here blocks and uses std only; the async flow calls it through `spawn_blocking`.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::binaries::{self, Bindir};
use super::folder::{self, Layout};
use super::user::RunAs;

/// How long `pg_ctl` may wait for the server to start or stop, in seconds.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// How many free ports to try when another process takes the chosen one first.
const PORT_ATTEMPTS: usize = 5;
/// How long to wait for TCP connections after `pg_ctl` reports the server ready.
const TCP_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many lines of the server log a start failure quotes.
const LOG_TAIL_LINES: usize = 20;
/// Random bytes in the superuser password.
const PASSWORD_BYTES: usize = 16;

/// What `--data-dir`, `--fresh`, `--postgres-port` and `--pg-bindir` asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The data folder; the platform's default when `None`.
    pub data_dir: Option<PathBuf>,
    /// The only folder to take the binaries from; searched for when `None`.
    pub bindir: Option<PathBuf>,
    /// The server's port; a free one when `None`.
    pub port: Option<u16>,
    /// Delete the cluster first.
    pub fresh: bool,
}

/// A running private cluster. Dropping it stops the server; [`Cluster::stop`] does so and reports
/// failure.
#[derive(Debug)]
pub struct Cluster {
    layout: Layout,
    bindir: Bindir,
    run_as: RunAs,
    port: u16,
    password: String,
    /// The server may be running: `stop` has not succeeded yet.
    running: bool,
    /// Held until the cluster is dropped, after the server has stopped, so that no second
    /// `leasehold dev` starts on the folder meanwhile.
    _lock: File,
}

impl Cluster {
    /// Takes the data folder, stops a server an earlier `leasehold dev` left running in it,
    /// creates the cluster when there is none (or `fresh`), and starts the server.
    pub fn start(options: Options) -> anyhow::Result<Cluster> {
        let run_as = RunAs::detect()?;
        let root = match options.data_dir {
            Some(dir) => dir,
            None => folder::default_dir(matches!(run_as, RunAs::Postgres { .. }))?,
        };
        let root = std::path::absolute(&root)
            .with_context(|| format!("resolving the data folder {}", root.display()))?;
        let layout = Layout::new(root);
        let existing = if options.fresh {
            None
        } else {
            cluster_version(&layout)
        };
        let bindir = binaries::find(options.bindir.as_deref(), existing.as_deref())?;
        fs::create_dir_all(layout.root())
            .with_context(|| format!("creating the data folder {}", layout.root().display()))?;
        run_as.give(layout.root())?;
        run_as.check_writable(layout.root())?;
        let lock = take_lock(&layout)?;
        let mut cluster = Cluster {
            layout,
            bindir,
            run_as,
            port: 0,
            password: String::new(),
            // A server left running by an earlier `leasehold dev` is stopped next; if that
            // fails, dropping the cluster tries again.
            running: true,
            _lock: lock,
        };
        cluster.stop_leftover()?;
        if options.fresh {
            cluster.delete()?;
        }
        if cluster_version(&cluster.layout).is_some() {
            eprintln!(
                "dev: reusing the PostgreSQL cluster in {}",
                cluster.layout.pgdata().display()
            );
        } else {
            cluster.initdb()?;
        }
        cluster.password = read_password(&cluster.layout)?;
        cluster.port = cluster.run_server(options.port)?;
        Ok(cluster)
    }

    /// The URL of `database` as the `postgres` superuser, over loopback TCP.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// The data folder.
    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// Stops the server (`pg_ctl stop -m fast`: sessions are ended, committed work is kept).
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_server("fast")?;
        self.running = false;
        Ok(())
    }

    /// Stops the server if one runs in the data folder; a no-op when none does.
    fn stop_server(&self, mode: &str) -> anyhow::Result<()> {
        if !self.server_running() {
            return Ok(());
        }
        let output = self
            .pg_ctl()
            .args(["stop", "-w", "-t", PG_CTL_TIMEOUT_SECS, "-m", mode, "-D"])
            .arg(self.layout.pgdata())
            .output();
        check("pg_ctl stop", output)
    }

    /// Whether a server runs in the data folder (`pg_ctl status` exits 0 only then).
    fn server_running(&self) -> bool {
        if !self.layout.pgdata().join("postmaster.pid").exists() {
            return false;
        }
        self.pg_ctl()
            .arg("status")
            .arg("-D")
            .arg(self.layout.pgdata())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// An earlier `leasehold dev` that was killed leaves its server running (pg_ctl detaches
    /// it); stop it, so that this one starts the server with its own settings and port.
    fn stop_leftover(&self) -> anyhow::Result<()> {
        if self.server_running() {
            eprintln!(
                "dev: stopping the PostgreSQL server an earlier `leasehold dev` left running in {}",
                self.layout.pgdata().display()
            );
            self.stop_server("fast")
                .context("stopping the server left running in the data folder")?;
        }
        Ok(())
    }

    /// `--fresh`: deletes the cluster, its password and its log, and nothing else.
    fn delete(&self) -> anyhow::Result<()> {
        eprintln!(
            "dev: --fresh: deleting the cluster in {}",
            self.layout.pgdata().display()
        );
        remove_dir(&self.layout.pgdata())?;
        remove_dir(&self.layout.pgdata_creating())?;
        remove_file(&self.layout.password())?;
        remove_file(&self.layout.log())
    }

    /// Creates the cluster in a scratch folder and renames it into place once `initdb` succeeded,
    /// so that `pgdata` is always a whole cluster, however `initdb` ends.
    fn initdb(&self) -> anyhow::Result<()> {
        let pgdata = self.layout.pgdata();
        anyhow::ensure!(
            !pgdata.exists(),
            "{} holds no PostgreSQL cluster (it has no PG_VERSION): move it away, or pass --fresh \
             to delete it",
            pgdata.display()
        );
        eprintln!(
            "dev: creating a PostgreSQL cluster in {} (initdb; first start only)",
            pgdata.display()
        );
        let creating = self.layout.pgdata_creating();
        remove_dir(&creating)?;
        remove_file(&self.layout.password())?;
        write_password(&self.layout, &new_password()?)?;
        self.run_as.give(&self.layout.password())?;
        let output = self
            .run_as
            .command(&self.bindir.tool("initdb"), self.layout.root())
            .arg("-D")
            .arg(&creating)
            .args(["-U", "postgres", "--auth=scram-sha-256", "-E", "UTF8"])
            .arg("--locale=C")
            .arg(format!("--pwfile={}", self.layout.password().display()))
            .output();
        check("initdb", output)?;
        fs::rename(&creating, &pgdata)
            .with_context(|| format!("renaming {} to {}", creating.display(), pgdata.display()))
    }

    /// Starts the server on the `pinned` port, or on a free one, and returns the port once it
    /// takes TCP connections.
    fn run_server(&self, pinned: Option<u16>) -> anyhow::Result<u16> {
        let log = self.layout.log();
        let attempts = if pinned.is_some() { 1 } else { PORT_ATTEMPTS };
        for attempt in 1..=attempts {
            let port = match pinned {
                Some(port) => port,
                None => free_port().context("finding a free port for PostgreSQL")?,
            };
            let log_start = fs::metadata(&log).map_or(0, |m| m.len());
            let output = self
                .pg_ctl()
                .args(["start", "-w", "-t", PG_CTL_TIMEOUT_SECS, "-D"])
                .arg(self.layout.pgdata())
                .arg("-l")
                .arg(&log)
                // Loopback TCP only. No Unix socket: a data folder's path can exceed the socket
                // path limit, and nothing here needs one.
                .arg("-o")
                .arg(format!(
                    "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
                ))
                .output();
            let Err(error) = check("pg_ctl start", output) else {
                eprintln!(
                    "dev: PostgreSQL {} listening on 127.0.0.1:{port} (log: {})",
                    self.bindir.version().unwrap_or_default(),
                    log.display()
                );
                wait_for_tcp(port)?;
                return Ok(port);
            };
            let new_log = read_from(&log, log_start);
            if new_log.contains("could not bind") {
                anyhow::ensure!(
                    pinned.is_none(),
                    "PostgreSQL could not listen on 127.0.0.1:{port} (--postgres-port): the port \
                     is taken; choose another, or leave --postgres-port out to get a free one"
                );
                if attempt < attempts {
                    // Another process took the port between our probe and the server's bind.
                    continue;
                }
            }
            anyhow::bail!(
                "starting PostgreSQL: {error:#}\n--- the end of its log {} ---\n{}",
                log.display(),
                tail(&new_log, LOG_TAIL_LINES)
            );
        }
        unreachable!("the last attempt returns")
    }

    fn pg_ctl(&self) -> std::process::Command {
        self.run_as
            .command(&self.bindir.tool("pg_ctl"), self.layout.root())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        // Best effort on an error path: a fast stop, then an immediate one. Nothing better can
        // be done if both fail; the next `leasehold dev` stops what is left.
        if self.stop_server("fast").is_err() {
            let _ = self.stop_server("immediate");
        }
    }
}

/// The major version in the cluster's `PG_VERSION`, if the folder holds a cluster.
fn cluster_version(layout: &Layout) -> Option<String> {
    let text = fs::read_to_string(layout.pgdata().join("PG_VERSION")).ok()?;
    let version = text.trim();
    (!version.is_empty()).then(|| version.to_owned())
}

/// Locks the data folder for this process. The lock goes with the process, however it ends.
fn take_lock(layout: &Layout) -> anyhow::Result<File> {
    let path = layout.lock();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            anyhow::bail!(
                "another `leasehold dev` (pid {}) is using the data folder {}: stop it, or \
                 choose another folder with --data-dir",
                holder.trim(),
                layout.root().display()
            );
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}

fn new_password() -> anyhow::Result<String> {
    let mut bytes = [0u8; PASSWORD_BYTES];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("reading /dev/urandom for the database password")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes the password readable by its owner only; `initdb --pwfile` reads it.
fn write_password(layout: &Layout, password: &str) -> anyhow::Result<()> {
    let path = layout.password();
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut file| writeln!(file, "{password}"))
        .with_context(|| format!("writing {}", path.display()))
}

fn read_password(layout: &Layout) -> anyhow::Result<String> {
    let path = layout.password();
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "reading the database password from {}; without it the cluster cannot be reached: \
             start over with --fresh, which deletes the cluster's data",
            path.display()
        )
    })?;
    Ok(text.trim().to_owned())
}

fn remove_dir(path: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("deleting {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn remove_file(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("deleting {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// A loopback port nobody listens on right now; the server may still lose it to another
/// process, and `run_server` then tries another.
fn free_port() -> io::Result<u16> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()
        .map(|a| a.port())
}

fn wait_for_tcp(port: u16) -> anyhow::Result<()> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + TCP_READY_TIMEOUT;
    loop {
        match TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                anyhow::bail!(
                    "pg_ctl reported PostgreSQL ready, but {address} refuses connections: {e}"
                )
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn check(what: &str, output: io::Result<Output>) -> anyhow::Result<()> {
    let output = output.with_context(|| format!("running {what}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
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
    fn passwords_are_hex_and_differ() {
        let a = new_password().expect("password");
        let b = new_password().expect("password");
        assert_eq!(a.len(), PASSWORD_BYTES * 2);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }
}
