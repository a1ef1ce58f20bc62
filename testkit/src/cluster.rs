//! The throwaway cluster: one `initdb` and `pg_ctl start` per test process, stopped when the
//! process exits.
//!
//! Everything here blocks and uses std only, so that the cluster belongs to no tokio runtime.

use std::env;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use leasehold_pgcluster::{
    self as pgcluster, Auth, Bindir, Init, Port, RunAs, Server, StopMode, Tls,
};

/// Prefix of every cluster directory in the temp dir, followed by `<pid>-<random>`; the sweep
/// relies on it.
const DIR_PREFIX: &str = "leasehold-test-pg-";
/// Server settings for tests: no durability, room for many pools at once, and commit times, so
/// that a test replaying history can order it as it committed (`now()` is when a transaction
/// began, and a claim may begin before the completion whose slot it then takes commits).
const TEST_SETTINGS: &[(&str, &str)] = &[
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("max_connections", "400"),
    ("shared_buffers", "128MB"),
    ("track_commit_timestamp", "on"),
];

/// A running throwaway cluster. [`Cluster::destroy`] stops it and removes its directory.
pub(crate) struct Cluster {
    /// `leasehold-test-pg-<pid>-<random>`, holding `data/` and `log`.
    dir: PathBuf,
    server: Server,
    port: u16,
}

impl Cluster {
    /// Finds the PostgreSQL binaries, sweeps leftovers of dead test processes, and starts a fresh
    /// cluster with the tests' settings.
    pub(crate) fn start() -> Result<Cluster, String> {
        Self::start_with(TEST_SETTINGS)
    }

    /// The same, with other server settings (`name`, `value` pairs).
    pub(crate) fn start_with(settings: &[(&str, &str)]) -> Result<Cluster, String> {
        Self::start_with_tls(settings, None)
    }

    /// The same, serving TLS only when `tls` is given (see [`Server::install_tls`]).
    pub(crate) fn start_with_tls(
        settings: &[(&str, &str)],
        tls: Option<&Tls>,
    ) -> Result<Cluster, String> {
        let bindir = Bindir::find(None, None).map_err(explain)?;
        let run_as = RunAs::detect().map_err(explain)?;
        let dir = create_dir()
            .map_err(|e| format!("could not create a cluster directory in the temp dir: {e}"))?;
        let mut cluster = Cluster {
            server: Server::new(bindir, run_as, dir.join("data")),
            dir,
            port: 0,
        };
        match cluster.init_and_run(settings, tls) {
            Ok(()) => Ok(cluster),
            Err(message) => {
                cluster.destroy();
                Err(message)
            }
        }
    }

    /// The URL of the `postgres` database, as the `postgres` superuser (trust authentication).
    pub(crate) fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port it listens on, on 127.0.0.1.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server, if it runs, and removes the directory. Never panics: it runs in the
    /// `atexit` hook.
    pub(crate) fn destroy(&self) {
        // Ignored: nothing better can be done at exit, and the next sweep retries.
        let _ = self.server.stop(StopMode::Immediate);
        let _ = fs::remove_dir_all(&self.dir);
    }

    fn init_and_run(&mut self, settings: &[(&str, &str)], tls: Option<&Tls>) -> Result<(), String> {
        self.server.run_as().give(&self.dir).map_err(explain)?;
        sweep(&self.server);
        let init = Init {
            auth: Auth::Trust,
            no_sync: true,
        };
        self.server
            .initdb(self.server.pgdata(), &init)
            .map_err(explain)?;
        if let Some(tls) = tls {
            self.server.install_tls(tls).map_err(explain)?;
        }
        self.port = self
            .server
            .start(Port::Free, &self.dir.join("log"), settings)
            .map_err(explain)?;
        Ok(())
    }
}

/// The cluster library's error, with what the tests can do instead.
fn explain(error: pgcluster::Error) -> String {
    use pgcluster::Error;
    match error {
        Error::NotFound { .. } => format!(
            "{error}, or point {} at a running server \
             (postgres://postgres@127.0.0.1:5432/postgres)",
            crate::DATABASE_URL_ENV
        ),
        Error::NoPostgresUser | Error::NoRunuser => format!(
            "{error}, run the tests as another user, or set {} to a running server",
            crate::DATABASE_URL_ENV
        ),
        other => other.to_string(),
    }
}

/// Stops and removes the clusters of test processes that died without running their exit hook.
fn sweep(server: &Server) {
    let Ok(entries) = fs::read_dir(env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else {
            continue;
        };
        // `file_type` does not follow symlinks: only real directories are swept.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) || process_alive(pid) {
            continue;
        }
        let dir = entry.path();
        let leftover = Server::new(
            server.bindir().clone(),
            server.run_as().clone(),
            dir.join("data"),
        );
        let _ = leftover.stop(StopMode::Immediate);
        if fs::remove_dir_all(&dir).is_ok() {
            eprintln!(
                "leasehold-testkit: removed {}, left behind by dead process {pid}",
                dir.display()
            );
        }
    }
}

/// The pid in a cluster directory name `leasehold-test-pg-<pid>-<random>`.
fn owner_pid(dir_name: &str) -> Option<u32> {
    let (pid, _random) = dir_name.strip_prefix(DIR_PREFIX)?.split_once('-')?;
    pid.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    if Path::new("/proc/self").exists() {
        return Path::new("/proc").join(pid.to_string()).exists();
    }
    // No procfs (macOS): ask `ps`. If `ps` cannot run, assume alive and leave the directory alone.
    let status = Command::new("ps")
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(status) => status.success(),
        Err(_) => true,
    }
}

fn create_dir() -> io::Result<PathBuf> {
    loop {
        let random = uuid::Uuid::new_v4().simple().to_string();
        let dir = env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{}",
            std::process::id(),
            &random[..12]
        ));
        match fs::create_dir(&dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            result => return result.map(|()| dir),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_only_cluster_directory_names() {
        assert_eq!(owner_pid("leasehold-test-pg-1234-0123456789ab"), Some(1234));
        assert_eq!(owner_pid("leasehold-test-pg-1234"), None);
        assert_eq!(owner_pid("leasehold-test-pg-x-0123456789ab"), None);
        assert_eq!(owner_pid("other-1234-0123456789ab"), None);
    }
}
