//! The private PostgreSQL cluster: created once in the data folder, started on a loopback port by
//! every `leasehold dev`, and stopped when it ends, on error paths included ([`Cluster`] stops its
//! server when dropped).
//!
//! Everything here blocks and uses std only; the async flow calls it through `spawn_blocking`.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use leasehold_pgcluster::{self as pgcluster, Auth, Bindir, Init, Port, RunAs, Server, StopMode};

use super::folder::{self, Layout};

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
    server: Server,
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
        let run_as = RunAs::detect().map_err(explain)?;
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
            pgcluster::pgdata_version(&layout.pgdata())
        };
        let bindir =
            Bindir::find(options.bindir.as_deref(), existing.as_deref()).map_err(explain)?;
        fs::create_dir_all(layout.root())
            .with_context(|| format!("creating the data folder {}", layout.root().display()))?;
        run_as.give(layout.root()).map_err(explain)?;
        run_as.check_writable(layout.root()).map_err(explain)?;
        let lock = take_lock(&layout)?;
        let mut cluster = Cluster {
            server: Server::new(bindir, run_as, layout.pgdata()),
            layout,
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
        if pgcluster::pgdata_version(&cluster.layout.pgdata()).is_some() {
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
        self.server.stop(StopMode::Fast)?;
        self.running = false;
        Ok(())
    }

    /// An earlier `leasehold dev` that was killed leaves its server running (pg_ctl detaches
    /// it); stop it, so that this one starts the server with its own settings and port.
    fn stop_leftover(&self) -> anyhow::Result<()> {
        if self.server.is_running() {
            eprintln!(
                "dev: stopping the PostgreSQL server an earlier `leasehold dev` left running in {}",
                self.layout.pgdata().display()
            );
            self.server
                .stop(StopMode::Fast)
                .context("stopping the server left running in the data folder")?;
        }
        Ok(())
    }

    /// `--fresh`: deletes the cluster, its password, its log and the API token kept for it, and
    /// nothing else.
    fn delete(&self) -> anyhow::Result<()> {
        eprintln!(
            "dev: --fresh: deleting the cluster in {}",
            self.layout.pgdata().display()
        );
        remove_dir(&self.layout.pgdata())?;
        remove_dir(&self.layout.pgdata_creating())?;
        remove_file(&self.layout.password())?;
        remove_file(&self.layout.token())?;
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
        self.server.run_as().give(&self.layout.password())?;
        let init = Init {
            auth: Auth::Password {
                pwfile: self.layout.password(),
            },
            no_sync: false,
        };
        self.server.initdb(&creating, &init)?;
        fs::rename(&creating, &pgdata)
            .with_context(|| format!("renaming {} to {}", creating.display(), pgdata.display()))
    }

    /// Starts the server on the `pinned` port, or on a free one, and returns the port once it
    /// takes TCP connections.
    fn run_server(&self, pinned: Option<u16>) -> anyhow::Result<u16> {
        let log = self.layout.log();
        let port = pinned.map_or(Port::Free, Port::Pinned);
        let port = self.server.start(port, &log, &[]).map_err(explain)?;
        eprintln!(
            "dev: PostgreSQL {} listening on 127.0.0.1:{port} (log: {})",
            self.server.bindir().version().unwrap_or_default(),
            log.display()
        );
        Ok(port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        // Best effort on an error path: a fast stop, then an immediate one. Nothing better can
        // be done if both fail; the next `leasehold dev` stops what is left.
        if self.server.stop(StopMode::Fast).is_err() {
            let _ = self.server.stop(StopMode::Immediate);
        }
    }
}

/// The cluster library's error, with what dev offers instead: its flags and `--database-url`.
fn explain(error: pgcluster::Error) -> anyhow::Error {
    use pgcluster::Error;
    match error {
        Error::NotFound { .. } => anyhow::anyhow!(
            "{error}, point --pg-bindir (or LEASEHOLD_PG_BINDIR) at the folder holding initdb, \
             pg_ctl and postgres, or pass --database-url to use a PostgreSQL you already run"
        ),
        Error::WrongVersion { .. } => anyhow::anyhow!(
            "{error} (or point --pg-bindir at it), or start over with --fresh, which deletes the \
             cluster's data"
        ),
        Error::NoPostgresUser | Error::NoRunuser => {
            anyhow::anyhow!("{error}, run `leasehold dev` as a normal user, or pass --database-url")
        }
        Error::NotWritable { .. } => anyhow::anyhow!(
            "{error}: choose a --data-dir it can reach, such as one under /var/lib or /tmp"
        ),
        Error::PortTaken { port } => anyhow::anyhow!(
            "PostgreSQL could not listen on 127.0.0.1:{port} (--postgres-port): the port is \
             taken; choose another, or leave --postgres-port out to get a free one"
        ),
        other => other.into(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hex_and_differ() {
        let a = new_password().expect("password");
        let b = new_password().expect("password");
        assert_eq!(a.len(), PASSWORD_BYTES * 2);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }
}
