//! Who runs the PostgreSQL tools. PostgreSQL refuses to run as root, so when we are root they run
//! as the `postgres` system user through `runuser`, and that user is handed the folders it needs.

use std::env;
use std::fs;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Error;

/// The system user PostgreSQL runs as when we are root.
const POSTGRES_USER: &str = "postgres";

/// The user the PostgreSQL tools run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// Ourselves: we are not root.
    Me,
    /// We are root: the `postgres` system user, through `runuser`.
    Postgres {
        /// The `runuser` program.
        runuser: PathBuf,
        /// The `postgres` user's id.
        uid: u32,
        /// Its primary group's id.
        gid: u32,
    },
}

impl RunAs {
    /// `Me`, unless we are root; then the `postgres` user.
    ///
    /// # Errors
    /// [`Error::NoPostgresUser`], [`Error::NoRunuser`], or when our user id cannot be read.
    pub fn detect() -> Result<RunAs, Error> {
        if effective_uid()? != 0 {
            return Ok(RunAs::Me);
        }
        let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
        let (uid, gid) = user_ids(&passwd, POSTGRES_USER).ok_or(Error::NoPostgresUser)?;
        let runuser = find_runuser().ok_or(Error::NoRunuser)?;
        Ok(RunAs::Postgres { runuser, uid, gid })
    }

    /// A command running `program` as this user, with no input, in `cwd` (a folder of the
    /// cluster's: the `postgres` user may not be allowed into our working directory).
    pub fn command(&self, program: &Path, cwd: &Path) -> Command {
        let mut command = match self {
            RunAs::Me => Command::new(program),
            RunAs::Postgres { runuser, .. } => {
                let mut command = Command::new(runuser);
                command.args(["-u", POSTGRES_USER, "--"]).arg(program);
                command
            }
        };
        command.current_dir(cwd).stdin(Stdio::null());
        command
    }

    /// Makes `path` this user's (a no-op for `Me`).
    ///
    /// # Errors
    /// If `chown` fails.
    pub fn give(&self, path: &Path) -> Result<(), Error> {
        if let RunAs::Postgres { uid, gid, .. } = self {
            chown(path, Some(*uid), Some(*gid)).map_err(Error::io(format!(
                "giving {} to the postgres user",
                path.display()
            )))?;
        }
        Ok(())
    }

    /// Fails unless this user may create files in `dir` (always true for `Me`).
    ///
    /// # Errors
    /// [`Error::NotWritable`], or when `runuser` cannot run.
    pub fn check_writable(&self, dir: &Path) -> Result<(), Error> {
        let RunAs::Postgres { .. } = self else {
            return Ok(());
        };
        let status = self
            .command(Path::new("test"), Path::new("/"))
            .arg("-w")
            .arg(dir)
            .arg("-a")
            .arg("-x")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(Error::io("running runuser"))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::NotWritable {
                dir: dir.to_owned(),
            })
        }
    }
}

/// Our effective uid: from `/proc/self/status` where there is one, else from `id -u`.
fn effective_uid() -> Result<u32, Error> {
    if let Some(uid) = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| effective_uid_in_status(&status))
    {
        return Ok(uid);
    }
    let output = Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io("running `id -u` to tell whether we are root"))?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| Error::NoUserId)
}

/// The effective uid from the `Uid:` line of `/proc/<pid>/status` (real, effective, saved, fs).
fn effective_uid_in_status(status: &str) -> Option<u32> {
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The uid and gid of `name` in the text of `/etc/passwd`.
fn user_ids(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        // name:password:uid:gid:gecos:home:shell
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let uid = fields.nth(1)?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// `runuser` on `PATH` or in the sbin folders, which a root `PATH` may lack.
fn find_runuser() -> Option<PathBuf> {
    let on_path: Vec<PathBuf> = env::var_os("PATH")
        .map(|path| env::split_paths(&path).collect())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join("runuser"))
        .find(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_uid_is_the_second_of_the_uid_line() {
        let status =
            "Name:\tleasehold\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\n";
        assert_eq!(effective_uid_in_status(status), Some(0));
        assert_eq!(effective_uid_in_status("Name:\tx\n"), None);
    }

    #[test]
    fn user_ids_are_read_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
            postgresql:x:7:7::/:/bin/false\n\
            postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(user_ids(passwd, "postgres"), Some((101, 104)));
        assert_eq!(user_ids(passwd, "root"), Some((0, 0)));
        assert_eq!(user_ids(passwd, "nobody"), None);
        assert_eq!(user_ids("postgres:x:bad:1::/:/bin/sh", "postgres"), None);
    }

    #[test]
    fn the_postgres_user_runs_tools_through_runuser() {
        let run_as = RunAs::Postgres {
            runuser: PathBuf::from("/usr/sbin/runuser"),
            uid: 101,
            gid: 104,
        };
        let command = run_as.command(Path::new("/bin/pg_ctl"), Path::new("/data"));
        assert_eq!(command.get_program(), "/usr/sbin/runuser");
        let args: Vec<_> = command.get_args().collect();
        assert_eq!(args, ["-u", "postgres", "--", "/bin/pg_ctl"]);
        assert_eq!(command.get_current_dir(), Some(Path::new("/data")));
        let me = RunAs::Me.command(Path::new("/bin/pg_ctl"), Path::new("/data"));
        assert_eq!(me.get_program(), "/bin/pg_ctl");
        assert_eq!(me.get_args().count(), 0);
    }
}
