//! The throwaway cluster: one `initdb` and `pg_ctl start` per test process, stopped when the
//! process exits.
//!
//! Everything here blocks and uses std only, so that the cluster belongs to no tokio runtime.

use std::env;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Prefix of every cluster directory in the temp dir, followed by `<pid>-<random>`; the sweep
/// relies on it.
const DIR_PREFIX: &str = "leasehold-test-pg-";
/// How many ports to try, for when another process binds the chosen port before the server does.
const PORT_ATTEMPTS: usize = 5;
/// How long `pg_ctl start -w` may wait for the server, in seconds.
const START_TIMEOUT_SECS: &str = "60";
/// How long to wait for a TCP connection after `pg_ctl` reports the server ready.
const TCP_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many lines of the server log a start failure quotes.
const LOG_TAIL_LINES: usize = 40;
/// Settings of every cluster: loopback TCP only, no Unix socket (a long temp path can exceed the
/// socket path limit).
const LOOPBACK_SETTINGS: &str = "-c listen_addresses=127.0.0.1 -c unix_socket_directories=''";
/// Server settings for tests: no durability, and room for many pools at once.
const TEST_SETTINGS: &str = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off \
    -c max_connections=400 -c shared_buffers=128MB";

/// A running throwaway cluster. [`Cluster::destroy`] stops it and removes its directory.
pub(crate) struct Cluster {
    /// `leasehold-test-pg-<pid>-<random>`, holding `data/` and `log`.
    dir: PathBuf,
    tools: Tools,
    port: u16,
    /// Server settings on top of [`LOOPBACK_SETTINGS`], as `-c name=value` options.
    settings: String,
}

impl Cluster {
    /// Finds the PostgreSQL binaries, sweeps leftovers of dead test processes, and starts a fresh
    /// cluster with the tests' settings.
    pub(crate) fn start() -> Result<Cluster, String> {
        Self::start_with(TEST_SETTINGS)
    }

    /// The same, with other server settings (`-c name=value` options).
    pub(crate) fn start_with(settings: &str) -> Result<Cluster, String> {
        let bindir = find_bindir().ok_or_else(|| BINARIES_MISSING.to_owned())?;
        let dir = create_dir()
            .map_err(|e| format!("could not create a cluster directory in the temp dir: {e}"))?;
        let mut cluster = Cluster {
            tools: Tools {
                bindir,
                as_postgres: false,
            },
            dir,
            port: 0,
            settings: settings.to_owned(),
        };
        match cluster.init_and_run() {
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

    /// Stops the server, if it runs, and removes the directory. Never panics: it runs in the
    /// `atexit` hook.
    pub(crate) fn destroy(&self) {
        stop_server(&self.tools, &self.dir);
        // Ignored: nothing better can be done at exit, and the next sweep retries.
        let _ = fs::remove_dir_all(&self.dir);
    }

    fn init_and_run(&mut self) -> Result<(), String> {
        // The owner of a directory we just created is our effective uid: this tells root apart
        // without `geteuid`.
        let owner = fs::metadata(&self.dir).map_err(|e| e.to_string())?.uid();
        if owner == 0 {
            let (uid, gid) = postgres_user().ok_or(ROOT_WITHOUT_POSTGRES_USER)?;
            chown(&self.dir, Some(uid), Some(gid))
                .map_err(|e| format!("could not chown {}: {e}", self.dir.display()))?;
            self.tools.as_postgres = true;
        }
        sweep(&self.tools);
        self.initdb()?;
        self.port = self.run_server()?;
        Ok(())
    }

    fn initdb(&self) -> Result<(), String> {
        let output = self
            .tools
            .command("initdb", &self.dir)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "-D"])
            .arg(data_dir(&self.dir))
            .output();
        check_output("initdb", output)
    }

    /// Starts the server on a free loopback port and returns the port once it accepts TCP
    /// connections.
    fn run_server(&self) -> Result<u16, String> {
        let log = self.dir.join("log");
        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port().map_err(|e| format!("could not find a free port: {e}"))?;
            let log_start = fs::metadata(&log).map_or(0, |m| m.len());
            let output = self
                .tools
                .command("pg_ctl", &self.dir)
                .args(["start", "-w", "-t", START_TIMEOUT_SECS, "-D"])
                .arg(data_dir(&self.dir))
                .arg("-l")
                .arg(&log)
                .arg("-o")
                .arg(format!("-p {port} {LOOPBACK_SETTINGS} {}", self.settings))
                .output();
            match check_output("pg_ctl start", output) {
                Ok(()) => return wait_for_tcp(port).map(|()| port),
                // Another process took the port between our probe and the server's bind: try
                // another one.
                Err(_)
                    if attempt < PORT_ATTEMPTS
                        && read_log(&log, log_start).contains("could not bind") => {}
                Err(message) => {
                    return Err(format!(
                        "{message}\n--- last lines of the server log {} ---\n{}",
                        log.display(),
                        tail(&read_log(&log, 0), LOG_TAIL_LINES)
                    ));
                }
            }
        }
        unreachable!("the last attempt returns")
    }
}

/// How to run the PostgreSQL tools: where they are, and whether as the `postgres` user.
struct Tools {
    bindir: PathBuf,
    as_postgres: bool,
}

impl Tools {
    fn command(&self, tool: &str, cwd: &Path) -> Command {
        let program = self.bindir.join(tool);
        let mut command = if self.as_postgres {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(program);
            runuser
        } else {
            Command::new(program)
        };
        // The cluster directory, because the `postgres` user may not be allowed into our working
        // directory.
        command.current_dir(cwd).stdin(Stdio::null());
        command
    }
}

fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

/// Stops the server of a cluster directory, if it has one. Best effort: errors are ignored.
fn stop_server(tools: &Tools, dir: &Path) {
    let data = data_dir(dir);
    if !data.join("postmaster.pid").exists() {
        return;
    }
    let _ = tools
        .command("pg_ctl", dir)
        .args(["stop", "-m", "immediate", "-w", "-D"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stops and removes the clusters of test processes that died without running their exit hook.
fn sweep(tools: &Tools) {
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
        stop_server(tools, &dir);
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

/// The uid and gid of the `postgres` user, from `/etc/passwd`.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        // name:password:uid:gid:...
        let mut fields = line.split(':');
        if fields.next()? != "postgres" {
            return None;
        }
        let uid = fields.nth(1)?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// A port nobody listens on right now. The server may still lose it to another process;
/// `run_server` retries.
fn free_port() -> io::Result<u16> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()
        .map(|a| a.port())
}

fn wait_for_tcp(port: u16) -> Result<(), String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + TCP_READY_TIMEOUT;
    loop {
        match TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "pg_ctl reported the server ready, but {address} refuses connections: {e}"
                ));
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn check_output(what: &str, output: io::Result<Output>) -> Result<(), String> {
    let output = output.map_err(|e| format!("could not run {what}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// The server log from byte `from` on, or an empty string if it cannot be read.
fn read_log(log: &Path, from: u64) -> String {
    let bytes = fs::read(log).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Where the PostgreSQL server binaries are: `PATH`, then `pg_config --bindir`, then the usual
/// install locations.
fn find_bindir() -> Option<PathBuf> {
    let on_path = env::var_os("PATH")
        .map(|path| env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    on_path
        .into_iter()
        .chain(from_pg_config)
        .chain(newest_first("/usr/lib/postgresql", ""))
        .chain(newest_first("/opt/homebrew/opt", "postgresql"))
        .chain(newest_first("/usr/local/opt", "postgresql"))
        .find(|dir| {
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|tool| dir.join(tool).is_file())
        })
}

/// `<parent>/<prefix>*/bin`, highest version first (`postgresql@17` before `postgresql@16`, `16`
/// before `9.6`).
fn newest_first(parent: &str, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<(Vec<u32>, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name.strip_prefix(prefix)?;
            let numbers = version
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            Some((numbers, entry.path().join("bin")))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, bin)| bin).collect()
}

const BINARIES_MISSING: &str = "no PostgreSQL server binaries (initdb, pg_ctl, postgres) \
    found on PATH, in `pg_config --bindir`, in /usr/lib/postgresql/*/bin, \
    /opt/homebrew/opt/postgresql*/bin or /usr/local/opt/postgresql*/bin. Install PostgreSQL \
    (Debian/Ubuntu: `apt-get install postgresql`; macOS: `brew install postgresql@16`), or point \
    LEASEHOLD_TEST_DATABASE_URL at a running server (postgres://postgres@127.0.0.1:5432/postgres)";

const ROOT_WITHOUT_POSTGRES_USER: &str = "running as root, and PostgreSQL refuses to run as root, \
    but there is no `postgres` user to run it as. Create one (installing the `postgresql` package \
    does), run the tests as another user, or set LEASEHOLD_TEST_DATABASE_URL to a running server";

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

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
