//! Keeping the worker's secrets out of reach of the programs it runs.
//!
//! `/proc/<pid>/environ` shows the environment a process was *started* with: the kernel reads it
//! from the process's initial stack, and removing a variable (`remove_var`) only unlinks it from
//! libc's list, so the text stays there to be read by anything that may read that file: the
//! worker's own `exec` children, when they run as the worker's user. `/proc/<pid>/cmdline` is
//! worse: every user may read it. So a worker started with its database URL in its environment
//! or on its command line executes itself again, at once and under the same pid, with both
//! cleaned, and takes the URL from a pipe inherited across the exec, read and closed at start.
//! A URL from `--database-url-file` was never in either. Then the worker makes itself
//! non-dumpable, so that a process of the same user (an `exec` child not run as another user)
//! cannot read its memory or `/proc/<pid>/environ` at all, unless it is privileged.

use std::convert::Infallible;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};

/// Variables holding secrets of the worker or of its database, removed from the worker's
/// environment at start whether it uses them or not, and refused in `--exec-env`.
pub const SECRET_VARS: [&str; 4] = [
    "LEASEHOLD_DATABASE_URL",
    "LEASEHOLD_TOKEN",
    "PGPASSWORD",
    "DATABASE_URL",
];

/// Variables holding the trace exporter's credentials (a collector's auth header). They stay in
/// the worker's environment, where the OpenTelemetry SDK reads them, and are refused in
/// `--exec-env` with [`SECRET_VARS`].
pub const EXPORTER_SECRET_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
];

/// The variable naming the inherited pipe that carries the database URL into the executed
/// worker. Internal: set only by the worker for itself.
pub const DATABASE_URL_FD_VAR: &str = "LEASEHOLD_DATABASE_URL_FD";

/// An environment, as name and value pairs.
type Vars = Vec<(OsString, OsString)>;

/// The flag whose value must leave the command line.
const DATABASE_URL_FLAG: &str = "--database-url";

/// Why the worker could not take its database URL, or hide it.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// No URL was given in any of the ways there are.
    #[error(
        "--database-url, LEASEHOLD_DATABASE_URL or --database-url-file is required to run a worker"
    )]
    Missing,
    /// `--database-url-file` could not be read.
    #[error("reading the database URL from {}", .0.display())]
    File(PathBuf, #[source] io::Error),
    /// `--database-url-file` holds no URL.
    #[error("{} holds no database URL", .0.display())]
    EmptyFile(PathBuf),
    /// The pipe from the worker's previous image is not there.
    #[error(
        "{DATABASE_URL_FD_VAR}={0} is not a pipe this worker inherited (the variable is for the worker's own use)"
    )]
    NotInherited(RawFd),
    /// The pipe from the worker's previous image could not be read.
    #[error("reading the database URL from the inherited pipe")]
    Pipe(#[source] io::Error),
    /// The worker could not execute itself again without its secrets.
    #[error(
        "executing the worker again without the secrets in its environment and command line (pass the URL with --database-url-file instead)"
    )]
    Reexec(#[source] io::Error),
}

/// Where the database URL comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum UrlSource {
    /// `--database-url` or `LEASEHOLD_DATABASE_URL`.
    Given(String),
    /// `--database-url-file`.
    File(PathBuf),
    /// The pipe the worker's previous image left open.
    Inherited(RawFd),
}

/// The database URL, read from where it was given. An inherited pipe is closed once read.
pub(super) fn read_url(source: &UrlSource) -> Result<String, SecretsError> {
    match source {
        UrlSource::Given(url) => Ok(url.clone()),
        UrlSource::File(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| SecretsError::File(path.clone(), e))?;
            let url = text.trim();
            if url.is_empty() {
                return Err(SecretsError::EmptyFile(path.clone()));
            }
            Ok(url.to_owned())
        }
        UrlSource::Inherited(fd) => {
            let mut url = String::new();
            File::from(take_inherited_pipe(*fd)?)
                .read_to_string(&mut url)
                .map_err(SecretsError::Pipe)?;
            Ok(url)
        }
    }
}

/// The pipe `fd`, which this process inherited from its previous image, now owned here.
fn take_inherited_pipe(fd: RawFd) -> Result<OwnedFd, SecretsError> {
    // Only a pipe past stdio is taken: a wrong number in the variable must not close, say,
    // stdin or the database connection of an embedding program.
    let is_pipe = fd > 2
        && std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .is_ok_and(|target| target.to_string_lossy().starts_with("pipe:"));
    if !is_pipe {
        return Err(SecretsError::NotInherited(fd));
    }
    #[allow(unsafe_code)]
    // SAFETY: `fd` is open (its /proc entry exists) and is a pipe that the worker's previous
    // image created for this process alone and named in DATABASE_URL_FD_VAR; nothing else in
    // this process knows it, so taking ownership (and closing it when read) frees no one else's
    // descriptor.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(owned)
}

/// Executes the worker again, under the same pid, if its environment or command line holds a
/// secret: with the secrets removed from both, and `url` in a pipe the new image inherits.
/// Returns only if there was nothing to hide.
pub(super) fn hide(url: &str) -> Result<(), SecretsError> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let env: Vars = std::env::vars_os().collect();
    let Some((argv, env)) = cleaned(&argv, &env) else {
        return Ok(());
    };
    tracing::debug!("executing the worker again without its secrets in its environment");
    Err(SecretsError::Reexec(
        reexec(url, &argv, env).unwrap_err_infallible(),
    ))
}

/// The command line and environment to execute the worker with, without its secrets; `None`
/// if neither holds one.
fn cleaned(argv: &[OsString], env: &[(OsString, OsString)]) -> Option<(Vec<OsString>, Vars)> {
    let is_secret = |name: &OsStr| SECRET_VARS.iter().any(|s| OsStr::new(s) == name);
    let clean_argv = without_database_url_flag(argv);
    if clean_argv.len() == argv.len() && !env.iter().any(|(name, _)| is_secret(name)) {
        return None;
    }
    let clean_env = env
        .iter()
        .filter(|(name, _)| !is_secret(name) && name != DATABASE_URL_FD_VAR)
        .cloned()
        .collect();
    Some((clean_argv, clean_env))
}

/// `argv` without `--database-url URL` and `--database-url=URL`, up to a `--`, after which
/// words are values, not flags.
fn without_database_url_flag(argv: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::with_capacity(argv.len());
    let mut words = argv.iter();
    while let Some(word) = words.next() {
        if word == "--" {
            out.push(word.clone());
            out.extend(words.cloned());
            break;
        }
        if word == DATABASE_URL_FLAG {
            words.next();
            continue;
        }
        let with_value = word
            .to_str()
            .and_then(|w| w.strip_prefix(DATABASE_URL_FLAG))
            .is_some_and(|rest| rest.starts_with('='));
        if !with_value {
            out.push(word.clone());
        }
    }
    out
}

/// Replaces this process's image with the same program, `argv` and `env`, and `url` in an
/// inherited pipe named by [`DATABASE_URL_FD_VAR`]. Returns only on failure.
fn reexec(url: &str, argv: &[OsString], mut env: Vars) -> io::Result<Infallible> {
    // Both ends are close-on-exec, so no child another thread might start holds them; only the
    // read end is then opened to the new image. The URL fits the pipe's buffer (64 KiB on
    // Linux) many times over, so writing it before anyone reads cannot block.
    let (read, mut write) = io::pipe()?;
    write.write_all(url.as_bytes())?;
    drop(write);
    let read = OwnedFd::from(read);
    fcntl(&read, FcntlArg::F_SETFD(FdFlag::empty()))?;
    env.push((
        DATABASE_URL_FD_VAR.into(),
        read.as_raw_fd().to_string().into(),
    ));

    let (arg0, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::other("no argv[0]"))?;
    // The running program, even if its file was replaced since it started.
    let program = if Path::new("/proc/self/exe").exists() {
        PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe()?
    };
    let error = Command::new(program)
        .arg0(arg0)
        .args(args)
        .env_clear()
        .envs(env)
        .exec();
    Err(error)
}

trait UnwrapErrInfallible<E> {
    fn unwrap_err_infallible(self) -> E;
}

impl<E> UnwrapErrInfallible<E> for Result<Infallible, E> {
    fn unwrap_err_infallible(self) -> E {
        match self {
            Err(e) => e,
        }
    }
}

/// Makes the worker non-dumpable: its memory, `/proc/<pid>/environ` and the rest of its
/// `/proc` entries become root's, and processes of the same user cannot attach to it. Its
/// children start dumpable again when they execute their program.
pub(super) fn harden() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "could not make the worker non-dumpable");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    #[test]
    fn the_database_url_flag_leaves_the_command_line() {
        let check = |argv: &[&str], want: &[&str]| {
            assert_eq!(without_database_url_flag(&os(argv)), os(want), "{argv:?}");
        };
        check(&["leasehold", "worker"], &["leasehold", "worker"]);
        check(
            &[
                "leasehold",
                "worker",
                "--database-url",
                "postgres://u:pw@h/db",
                "--capacity",
                "4",
            ],
            &["leasehold", "worker", "--capacity", "4"],
        );
        check(
            &["w", "--database-url=postgres://u:pw@h/db", "--no-listen"],
            &["w", "--no-listen"],
        );
        check(&["w", "--database-url"], &["w"]);
        check(
            &["w", "--database-url-file", "/run/url"],
            &["w", "--database-url-file", "/run/url"],
        );
        check(
            &["w", "--", "--database-url", "x"],
            &["w", "--", "--database-url", "x"],
        );
    }

    #[test]
    fn secrets_in_the_environment_or_on_the_command_line_call_for_an_exec() {
        let plain_argv = os(&["leasehold", "worker"]);
        let plain_env = vars(&[("PATH", "/bin"), ("LEASEHOLD_CAPACITY", "4")]);
        assert_eq!(cleaned(&plain_argv, &plain_env), None);

        for secret in SECRET_VARS {
            let mut env = plain_env.clone();
            env.push((secret.into(), "s3cret".into()));
            assert_eq!(
                cleaned(&plain_argv, &env),
                Some((plain_argv.clone(), plain_env.clone())),
                "{secret}"
            );
        }

        let flagged = os(&["leasehold", "worker", "--database-url", "postgres://x"]);
        assert_eq!(
            cleaned(&flagged, &plain_env),
            Some((plain_argv.clone(), plain_env.clone()))
        );

        // A stale pipe number is not passed on: the new image gets a fresh one.
        let mut env = vars(&[(DATABASE_URL_FD_VAR, "7"), ("PGPASSWORD", "pw")]);
        env.extend(plain_env.clone());
        assert_eq!(cleaned(&plain_argv, &env), Some((plain_argv, plain_env)));
    }

    #[test]
    fn a_url_file_is_read_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("leasehold-url-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("url");
        std::fs::write(&file, "postgres://u:pw@h/db\n").unwrap();
        assert_eq!(
            read_url(&UrlSource::File(file.clone())).unwrap(),
            "postgres://u:pw@h/db"
        );
        std::fs::write(&file, " \n").unwrap();
        assert!(matches!(
            read_url(&UrlSource::File(file.clone())),
            Err(SecretsError::EmptyFile(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            read_url(&UrlSource::File(file)),
            Err(SecretsError::File(..))
        ));
    }

    #[test]
    fn only_an_inherited_pipe_is_taken() {
        // Stdin, and a descriptor that is not open, are refused without being closed.
        assert!(matches!(
            read_url(&UrlSource::Inherited(0)),
            Err(SecretsError::NotInherited(0))
        ));
        assert!(matches!(
            read_url(&UrlSource::Inherited(1_000_000)),
            Err(SecretsError::NotInherited(_))
        ));
        let (read, mut write) = io::pipe().unwrap();
        write.write_all(b"postgres://from-the-pipe").unwrap();
        drop(write);
        let fd = OwnedFd::from(read);
        let raw = fd.as_raw_fd();
        // Ownership moves to `read_url`, which closes the pipe once read.
        std::mem::forget(fd);
        assert_eq!(
            read_url(&UrlSource::Inherited(raw)).unwrap(),
            "postgres://from-the-pipe"
        );
    }
}
