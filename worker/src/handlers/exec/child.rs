//! How an `exec` child is started: under which user, and tied to the worker's life.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::{Pid, Uid, User, getppid};
use tokio::process::Command;

/// The user `exec` children run as instead of the worker's: the worker's `--exec-user`.
///
/// A child runs with the user's uid and primary gid and no supplementary groups, and with
/// `HOME`, `USER` and `LOGNAME` set to the user's. Running as another user, a child can neither
/// read the worker's memory or `/proc/<worker>/environ` nor signal the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    /// The user's name.
    pub name: String,
    /// The uid children run as.
    pub uid: u32,
    /// The gid children run as.
    pub gid: u32,
    /// The user's home folder, the children's `HOME`.
    pub home: PathBuf,
}

/// Why `--exec-user` cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecUserError {
    /// Only root may start processes as another user.
    #[error(
        "--exec-user {user}: the worker must run as root to start programs as another user (it runs as uid {euid})"
    )]
    NotRoot {
        /// The user asked for.
        user: String,
        /// The worker's effective uid.
        euid: u32,
    },
    /// No such user.
    #[error("--exec-user {0}: no such user")]
    Unknown(String),
    /// The user database could not be read.
    #[error("--exec-user {0}: looking the user up failed: {1}")]
    Lookup(String, Errno),
    /// Root is what children would run as anyway.
    #[error(
        "--exec-user {0}: that is root, and children would keep every privilege; name an unprivileged user"
    )]
    Root(String),
}

impl ExecUser {
    /// The user `user` names (a name, or a numeric uid), which the worker, running as root, may
    /// start programs as.
    pub fn lookup(user: &str) -> Result<Self, ExecUserError> {
        let euid = nix::unistd::geteuid();
        if !euid.is_root() {
            return Err(ExecUserError::NotRoot {
                user: user.to_owned(),
                euid: euid.as_raw(),
            });
        }
        let found = match user.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)),
            Err(_) => User::from_name(user),
        }
        .map_err(|e| ExecUserError::Lookup(user.to_owned(), e))?
        .ok_or_else(|| ExecUserError::Unknown(user.to_owned()))?;
        if found.uid.is_root() {
            return Err(ExecUserError::Root(user.to_owned()));
        }
        Ok(Self {
            name: found.name,
            uid: found.uid.as_raw(),
            gid: found.gid.as_raw(),
            home: found.dir,
        })
    }

    /// Makes `command` start its child as this user, with the user's variables.
    pub(super) fn apply(&self, command: &mut Command) {
        // When the parent is root and no groups are given, the standard library clears the
        // supplementary groups before it switches the ids, so root's groups are not inherited.
        command
            .uid(self.uid)
            .gid(self.gid)
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name);
    }
}

/// Makes `command`'s child receive SIGKILL when the worker dies, however it dies (SIGKILL, the
/// OOM killer, a crash), instead of running on, orphaned.
///
/// The kernel sends the signal when the *thread* that started the child exits. Handlers run on
/// the runtime's worker threads, which live as long as the runtime, and the worker never moves
/// a handler to a thread that could end sooner (`block_in_place`).
pub(super) fn die_with_worker(command: &mut Command) {
    let worker = nix::unistd::getpid();
    // `pre_exec` is unsafe because the closure runs in the forked child, where only
    // async-signal-safe calls are allowed.
    #[allow(unsafe_code)]
    // SAFETY: the closure makes two system calls (prctl, getppid) and builds an error from an
    // errno, which allocates nothing; it takes no lock and touches no shared state. The standard
    // library runs it after switching the user and group, which would otherwise clear the
    // parent-death signal again.
    unsafe {
        command.pre_exec(move || set_parent_death_signal(worker));
    }
}

/// In the child, between fork and exec: asks for SIGKILL when the parent dies, then checks that
/// the parent has not died already, in which case the signal would never come.
fn set_parent_death_signal(worker: Pid) -> io::Result<()> {
    prctl::set_pdeathsig(Signal::SIGKILL)?;
    if getppid() != worker {
        return Err(Errno::ESRCH.into());
    }
    Ok(())
}
