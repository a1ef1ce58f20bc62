//! A process supervisor for the tests: every process gets a log file in the test's own folder,
//! its own process group, and a guaranteed end.
//!
//! - Each child's stdout and stderr go to `<dir>/<name>.log`. The folder is removed when the test
//!   calls [`Supervisor::passed`], and kept (its path printed) otherwise, so a failing or
//!   timed-out test leaves its logs behind; [`KEEP_LOGS_ENV`] keeps them always.
//! - Each child leads a process group of its own, so signals reach it and nothing else, and a
//!   teardown can kill whatever it started in that group.
//! - [`Supervisor::stop`] sends SIGTERM (and SIGCONT, in case the process was stopped), waits
//!   up to a deadline, then SIGKILLs. Dropping the supervisor SIGKILLs and reaps every child
//!   still running, and every process group adopted with [`Supervisor::adopt_group`] (an `exec`
//!   node's program, which leads a group of its own): no test leaves a process behind.

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// Set (to anything but `0`) to keep the logs of passing tests too.
pub const KEEP_LOGS_ENV: &str = "LEASEHOLD_FAULT_KEEP_LOGS";

/// How often exits are polled for.
const EXIT_POLL: Duration = Duration::from_millis(20);
/// Bytes of a log shown in a failure message.
const LOG_TAIL_BYTES: usize = 4_000;

/// A process the supervisor started, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcId(usize);

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// Set once the process was reaped.
    status: Option<ExitStatus>,
}

/// Starts processes for one test and makes sure they all end.
pub struct Supervisor {
    dir: PathBuf,
    procs: Vec<Proc>,
    groups: Vec<Pid>,
    passed: bool,
}

impl Supervisor {
    /// A supervisor whose logs go to a fresh folder named after `test` under the temp dir.
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "leasehold-faults-{test}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(&dir).expect("create the test's log folder");
        Self {
            dir,
            procs: Vec::new(),
            groups: Vec::new(),
            passed: false,
        }
    }

    /// The test's folder: logs, and any file a test wants kept with them.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts `command` as `name`, logging to `<dir>/<name>.log`, in a process group of its own.
    ///
    /// # Panics
    /// If the name is taken or the program cannot be started.
    pub fn spawn(&mut self, name: &str, mut command: Command) -> ProcId {
        assert!(
            self.procs.iter().all(|p| p.name != name),
            "process name {name} used twice"
        );
        let log = self.dir.join(format!("{name}.log"));
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log file");
        let err = out.try_clone().expect("clone log file");
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        self.procs.push(Proc {
            name: name.to_owned(),
            child,
            log,
            status: None,
        });
        ProcId(self.procs.len() - 1)
    }

    /// The process's name.
    pub fn name(&self, id: ProcId) -> &str {
        &self.procs[id.0].name
    }

    /// The process's pid.
    pub fn pid(&self, id: ProcId) -> Pid {
        Pid::from_raw(i32::try_from(self.procs[id.0].child.id()).expect("pid fits i32"))
    }

    /// The process with this pid, if the supervisor started it.
    pub fn by_pid(&self, pid: u32) -> Option<ProcId> {
        self.procs
            .iter()
            .position(|p| p.child.id() == pid)
            .map(ProcId)
    }

    /// Everything the process has logged so far.
    pub fn log(&self, id: ProcId) -> String {
        fs::read_to_string(&self.procs[id.0].log).unwrap_or_default()
    }

    /// The end of the process's log, for failure messages.
    pub fn log_tail(&self, id: ProcId) -> String {
        let log = self.log(id);
        let mut start = log.len().saturating_sub(LOG_TAIL_BYTES);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        format!(
            "--- last lines of {} ({}) ---\n{}",
            self.procs[id.0].name,
            self.procs[id.0].log.display(),
            &log[start..]
        )
    }

    /// Sends `signal` to the process.
    ///
    /// # Panics
    /// If the process has already been reaped, so that a test never signals a recycled pid.
    pub fn signal(&self, id: ProcId, signal: Signal) {
        let proc = &self.procs[id.0];
        assert!(
            proc.status.is_none(),
            "{} already exited ({:?}); not signalling it",
            proc.name,
            proc.status
        );
        kill(self.pid(id), signal)
            .unwrap_or_else(|e| panic!("cannot send {signal} to {}: {e}", proc.name));
    }

    /// The exit status, if the process has exited; reaps it.
    pub fn try_exit(&mut self, id: ProcId) -> Option<ExitStatus> {
        let proc = &mut self.procs[id.0];
        if proc.status.is_none() {
            proc.status = proc.child.try_wait().expect("try_wait");
        }
        proc.status
    }

    /// Waits for the process to exit on its own, up to `deadline`.
    ///
    /// # Panics
    /// If it is still running at the deadline.
    pub async fn wait_exit(&mut self, id: ProcId, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_exit(id) {
                return status;
            }
            assert!(
                start.elapsed() < deadline,
                "{} did not exit within {deadline:?}\n{}",
                self.name(id),
                self.log_tail(id)
            );
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// SIGKILLs the process and reaps it.
    pub async fn kill9(&mut self, id: ProcId) -> ExitStatus {
        self.signal(id, Signal::SIGKILL);
        self.wait_exit(id, Duration::from_secs(10)).await
    }

    /// Stops the process: SIGTERM (and SIGCONT, in case it is stopped), then SIGKILL if it has
    /// not exited after `deadline`. Returns its exit status and whether it needed the SIGKILL.
    pub async fn stop(&mut self, id: ProcId, deadline: Duration) -> (ExitStatus, bool) {
        if let Some(status) = self.try_exit(id) {
            return (status, false);
        }
        let pid = self.pid(id);
        let _ = kill(pid, Signal::SIGTERM);
        let _ = kill(pid, Signal::SIGCONT);
        let start = Instant::now();
        while start.elapsed() < deadline {
            if let Some(status) = self.try_exit(id) {
                return (status, false);
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
        let _ = killpg(pid, Signal::SIGKILL);
        (self.wait_exit(id, Duration::from_secs(10)).await, true)
    }

    /// Stops every process still running, all at once, each as [`Supervisor::stop`] does, and
    /// then every adopted process group. Returns, for each process it stopped, its name, its exit
    /// status, and whether it needed SIGKILL.
    pub async fn stop_all(&mut self, deadline: Duration) -> Vec<(String, ExitStatus, bool)> {
        let running: Vec<ProcId> = (0..self.procs.len())
            .map(ProcId)
            .filter(|&id| self.try_exit(id).is_none())
            .collect();
        for &id in &running {
            let pid = self.pid(id);
            let _ = kill(pid, Signal::SIGTERM);
            let _ = kill(pid, Signal::SIGCONT);
        }
        let start = Instant::now();
        while start.elapsed() < deadline && running.iter().any(|&id| self.try_exit(id).is_none()) {
            tokio::time::sleep(EXIT_POLL).await;
        }
        let mut stopped = Vec::new();
        for &id in &running {
            let killed = self.try_exit(id).is_none();
            if killed {
                let _ = killpg(self.pid(id), Signal::SIGKILL);
            }
            let status = self.wait_exit(id, Duration::from_secs(10)).await;
            stopped.push((self.name(id).to_owned(), status, killed));
        }
        self.kill_groups();
        stopped
    }

    /// Kills the process group `pgid` when the test ends, if it still exists then.
    pub fn adopt_group(&mut self, pgid: Pid) {
        if !self.groups.contains(&pgid) {
            self.groups.push(pgid);
        }
    }

    fn kill_groups(&mut self) {
        for pgid in self.groups.drain(..) {
            match killpg(pgid, Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => eprintln!("could not kill process group {pgid}: {e}"),
            }
        }
    }

    /// The test passed: its log folder is removed when the supervisor is dropped.
    pub fn passed(&mut self) {
        self.passed = true;
    }

    /// SIGKILLs every process still running, with its whole process group (a stopped process
    /// dies of it too), reaps it, and kills every adopted group. Blocks only for the reaping.
    pub fn kill_all(&mut self) {
        for proc in &mut self.procs {
            if proc.status.is_some() {
                continue;
            }
            if let Ok(pid) = i32::try_from(proc.child.id()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = proc.child.kill();
            proc.status = proc.child.wait().ok();
        }
        self.kill_groups();
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.kill_all();
        let keep = std::env::var_os(KEEP_LOGS_ENV).is_some_and(|v| !v.is_empty() && v != "0");
        if keep {
            eprintln!(
                "fault suite: {KEEP_LOGS_ENV} is set; kept the logs in {}",
                self.dir.display()
            );
        } else if self.passed {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "fault suite: the test did not pass; kept its logs in {}",
                self.dir.display()
            );
        }
    }
}
