//! `exec`: runs an allow-listed program per attempt, JSON on stdin, JSON on stdout.

mod allow;
mod child;

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

pub use self::allow::{ExecAllow, ExecAllowError};
pub use self::child::{ExecUser, ExecUserError};
use crate::handler::{Context, Handler, HandlerError};

/// The default [`ExecPolicy::max_output_bytes`].
const MAX_OUTPUT_BYTES_DEFAULT: usize = 1024 * 1024;

/// How much of the end of stderr goes into an error message.
const STDERR_EXCERPT_BYTES: usize = 2048;

/// How much of stdout goes into the message when it is not JSON.
const STDOUT_EXCERPT_BYTES: usize = 256;

const FIELDS: [&str; 3] = ["argv", "terminal_exit_codes", "timeout_ms"];

/// What [`Exec`] may run, and with what. The default allows nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecPolicy {
    /// What nodes may run: each entry a program, which `argv[0]` must name as an exact string
    /// (`sh` allows `sh`, not `/bin/sh`), optionally followed by the arguments `argv` must go on
    /// with ([`ExecAllow`] has the syntax). A bare name is looked up on the worker's `PATH`
    /// before the child's environment is cleared, so the child does not need `PATH` to be
    /// started. The worker's `--exec-allow`. An entry that does not parse allows nothing, and
    /// [`Exec::new`] logs why.
    pub allowed_programs: Vec<String>,
    /// The variables of the worker's environment passed on to the child, by name; the child gets
    /// no others. The worker command removes its own secrets (the database URL among them) from
    /// its environment at start ([`crate::cli`]), so naming them here passes nothing.
    pub allowed_env: Vec<String>,
    /// How much of stdout, and separately of stderr, is kept. The child may write more; the rest
    /// is read and discarded so that the child never blocks on a full pipe.
    pub max_output_bytes: usize,
    /// The user children run as; the worker's by default. The worker's `--exec-user`.
    pub user: Option<ExecUser>,
}

impl Default for ExecPolicy {
    fn default() -> Self {
        Self {
            allowed_programs: Vec::new(),
            allowed_env: Vec::new(),
            max_output_bytes: MAX_OUTPUT_BYTES_DEFAULT,
            user: None,
        }
    }
}

/// The `exec` node kind: an allow-listed program per attempt, JSON on stdin, JSON on stdout.
///
/// The node's input:
///
/// ```json
/// { "argv": ["python3", "charge.py"], "terminal_exit_codes": [2], "timeout_ms": 60000 }
/// ```
///
/// `argv` is the program and its arguments, passed as they are: there is no shell, so nothing in
/// them is expanded or split. An entry of the worker's allow-list ([`ExecPolicy`]) must permit
/// it: name `argv[0]`, and the arguments `argv` goes on with, if the entry names any.
///
/// # The child's side
/// - stdin: `{"run_id", "node_id", "attempt", "input", "run_inputs", "upstream"}`, then end of file.
/// - stdout: the node's output as JSON; empty stdout is `null`.
/// - environment: only the variables [`ExecPolicy::allowed_env`] names that are set in the worker's
///   own environment, plus `LEASEHOLD_RUN_ID`, `LEASEHOLD_NODE_ID`, `LEASEHOLD_ATTEMPT` and
///   `LEASEHOLD_IDEMPOTENCY_KEY`, and with [`ExecPolicy::user`], that user's `HOME`, `USER` and
///   `LOGNAME`.
/// - user: the worker's, or [`ExecPolicy::user`].
/// - process group: its own. When the attempt ends, for any reason (exit, timeout, cancellation,
///   the worker dropping the attempt), the whole group is killed with `SIGKILL`, so that nothing
///   the program started outlives the attempt. A grandchild that moves to another group or
///   session escapes this.
/// - parent death: the child gets `SIGKILL` when the worker dies, even by `SIGKILL` or the OOM
///   killer, when nothing is left to kill the group. What the program started itself is not
///   reached then; a program that starts others should have them die with it in turn.
///
/// # Outcomes
/// - exit 0: the parsed stdout; stdout that is not JSON, or longer than the cap, is terminal.
/// - a non-zero exit: retryable, with the code and the end of stderr, unless the code is in
///   `terminal_exit_codes`, which makes it terminal.
/// - killed by a signal, timed out, cancelled: retryable.
/// - not allowed, not found, not executable, bad input: terminal.
#[derive(Debug, Clone)]
pub struct Exec {
    policy: ExecPolicy,
    allowed: Vec<ExecAllow>,
}

impl Exec {
    /// A handler that runs what `policy` allows.
    pub fn new(policy: ExecPolicy) -> Self {
        let allowed = policy
            .allowed_programs
            .iter()
            .filter_map(|entry| {
                entry
                    .parse()
                    .inspect_err(|e| tracing::error!("{e}; the entry allows nothing"))
                    .ok()
            })
            .collect();
        Self { policy, allowed }
    }

    /// Why `argv` may not run, if it may not.
    fn refusal(&self, argv: &[String]) -> Option<String> {
        if self.allowed.iter().any(|entry| entry.permits(argv)) {
            return None;
        }
        let program = &argv[0];
        Some(
            if self.allowed.iter().any(|entry| entry.program == *program) {
                format!(
                    "program {program:?} is allowed only with the arguments the worker's \
                     --exec-allow names after it, and argv does not start with them"
                )
            } else {
                format!(
                    "program {program:?} is not allowed: the worker's --exec-allow list does not include it"
                )
            },
        )
    }
}

impl Handler for Exec {
    async fn run(&self, ctx: Context) -> Result<Value, HandlerError> {
        let input = Input::parse(&ctx.input)?;
        let program = &input.argv[0];
        if let Some(refusal) = self.refusal(&input.argv) {
            return Err(HandlerError::Terminal(refusal));
        }
        let path = resolve(program, std::env::var_os("PATH")).ok_or_else(|| {
            HandlerError::Terminal(format!(
                "program {program:?} was not found on the worker's PATH"
            ))
        })?;

        let mut command = Command::new(&path);
        command
            .arg0(program)
            .args(&input.argv[1..])
            .env_clear()
            .envs(self.passed_env())
            .env("LEASEHOLD_RUN_ID", ctx.run_id.to_string())
            .env("LEASEHOLD_NODE_ID", ctx.node_id.as_str())
            .env("LEASEHOLD_ATTEMPT", ctx.attempt.to_string())
            .env("LEASEHOLD_IDEMPOTENCY_KEY", &ctx.idempotency_key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(user) = &self.policy.user {
            user.apply(&mut command);
        }
        child::die_with_worker(&mut command);
        let mut child = command
            .spawn()
            .map_err(|e| HandlerError::Terminal(format!("cannot start {program:?}: {e}")))?;
        // Declared after `child` so that it drops first: the group dies before tokio kills and
        // reaps the child itself.
        let group = Group::of(&child);

        let stdin = json!({
            "run_id": ctx.run_id,
            "node_id": ctx.node_id,
            "attempt": ctx.attempt,
            "input": ctx.input,
            "run_inputs": ctx.run_inputs,
            "upstream": ctx.upstream,
        });
        let mut stdout = Capture::new(self.policy.max_output_bytes);
        let mut stderr = Capture::new(self.policy.max_output_bytes);

        let ended = {
            let io = communicate(&mut child, &group, &stdin, &mut stdout, &mut stderr);
            let timed = async {
                match input.timeout {
                    Some(t) => tokio::time::timeout(t, io)
                        .await
                        .map_err(|_| Ended::TimedOut(t)),
                    None => Ok(io.await),
                }
            };
            tokio::select! {
                ended = timed => ended,
                () = ctx.cancel.cancelled() => Err(Ended::Cancelled),
            }
        };
        let status = match ended {
            Ok(status) => status,
            Err(why) => {
                group.kill();
                // The child was killed just now, so this returns at once; it reaps it.
                let _ = child.wait().await;
                let message = match why {
                    Ended::TimedOut(t) => format!("timed out after {} ms", t.as_millis()),
                    Ended::Cancelled => "cancelled".to_owned(),
                };
                return Err(HandlerError::Retryable(with_stderr(message, &stderr)));
            }
        };
        let status =
            status.map_err(|e| HandlerError::Retryable(format!("waiting for {program:?}: {e}")))?;
        outcome(status, &input.terminal_exit_codes, &stdout, &stderr)
    }

    fn input_schema(&self) -> Option<Value> {
        super::schema_of("exec")
    }
}

impl Exec {
    fn passed_env(&self) -> Vec<(String, OsString)> {
        self.policy
            .allowed_env
            .iter()
            .filter_map(|name| Some((name.clone(), std::env::var_os(name)?)))
            .collect()
    }
}

/// Why the child was stopped before it exited.
enum Ended {
    TimedOut(Duration),
    Cancelled,
}

/// Feeds stdin, drains stdout and stderr, and waits for the exit, all at once: a child that
/// fills a pipe before reading its input would otherwise wait for us while we wait for it.
async fn communicate(
    child: &mut Child,
    group: &Group,
    stdin: &Value,
    stdout: &mut Capture,
    stderr: &mut Capture,
) -> io::Result<ExitStatus> {
    let mut pipe_in = child.stdin.take();
    let mut pipe_out = child.stdout.take();
    let mut pipe_err = child.stderr.take();
    let feed = async {
        if let Some(mut pipe) = pipe_in.take() {
            let bytes = serde_json::to_vec(stdin).expect("a serde_json::Value always serializes");
            // A child that exits without reading its input is not an error of ours.
            let _ = pipe.write_all(&bytes).await;
            let _ = pipe.shutdown().await;
        }
    };
    let wait = async {
        let status = child.wait().await;
        // Whatever the program left running in its group would hold the pipes open, and the
        // attempt owns nothing once it ends.
        group.kill();
        status
    };
    let ((), status, (), ()) = tokio::join!(
        feed,
        wait,
        stdout.drain(pipe_out.as_mut()),
        stderr.drain(pipe_err.as_mut()),
    );
    status
}

fn outcome(
    status: ExitStatus,
    terminal_exit_codes: &[i32],
    stdout: &Capture,
    stderr: &Capture,
) -> Result<Value, HandlerError> {
    match status.code() {
        Some(0) => {
            if stdout.truncated {
                return Err(HandlerError::Terminal(format!(
                    "stdout longer than {} bytes",
                    stdout.bytes.len()
                )));
            }
            if stdout.bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Null);
            }
            serde_json::from_slice(&stdout.bytes).map_err(|e| {
                let excerpt = lossy(&stdout.bytes[..stdout.bytes.len().min(STDOUT_EXCERPT_BYTES)]);
                HandlerError::Terminal(format!("stdout is not JSON ({e}): {}", excerpt.trim()))
            })
        }
        Some(code) => {
            let message = with_stderr(format!("exited with code {code}"), stderr);
            if terminal_exit_codes.contains(&code) {
                Err(HandlerError::Terminal(message))
            } else {
                Err(HandlerError::Retryable(message))
            }
        }
        None => {
            let signal = status.signal().map_or("?".to_owned(), |s| s.to_string());
            Err(HandlerError::Retryable(with_stderr(
                format!("killed by signal {signal}"),
                stderr,
            )))
        }
    }
}

/// `message`, with the end of stderr if there is any: the end is where programs say what failed.
fn with_stderr(message: String, stderr: &Capture) -> String {
    let text = stderr.bytes.trim_ascii();
    if text.is_empty() {
        return message;
    }
    let start = text.len().saturating_sub(STDERR_EXCERPT_BYTES);
    let truncated = if stderr.truncated {
        format!(" (stderr truncated at {} bytes)", stderr.bytes.len())
    } else {
        String::new()
    };
    format!("{message}; stderr{truncated}: {}", lossy(&text[start..]))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The first `cap` bytes of a stream, and whether there were more.
struct Capture {
    cap: usize,
    bytes: Vec<u8>,
    truncated: bool,
}

impl Capture {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            bytes: Vec::new(),
            truncated: false,
        }
    }

    /// Reads to the end, keeping at most `cap` bytes. A read error ends the stream: the exit
    /// status, not the pipe, says how the program did.
    async fn drain(&mut self, pipe: Option<&mut (impl AsyncRead + Unpin)>) {
        let Some(pipe) = pipe else { return };
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let room = self.cap - self.bytes.len();
            if n > room {
                self.truncated = true;
            }
            self.bytes.extend_from_slice(&buf[..n.min(room)]);
        }
    }
}

/// The child's process group, killed when the attempt ends or is dropped.
///
/// A group's id stays taken while any member lives, so killing it after the leader is reaped
/// reaches only what the program left behind. Once killed for good the guard forgets the id: an
/// empty group's id may be reused.
struct Group {
    /// The group's id, or 0 once it has been killed for good. Atomic so that the attempt's
    /// future, which holds the guard across awaits, stays `Send`.
    pgid: AtomicI32,
}

impl Group {
    fn of(child: &Child) -> Self {
        // The child leads its group, so the group's id is the child's pid.
        let pgid = child.id().and_then(|pid| i32::try_from(pid).ok());
        Self {
            pgid: AtomicI32::new(pgid.unwrap_or(0)),
        }
    }

    /// Kills every process left in the group, once.
    fn kill(&self) {
        let pgid = self.pgid.swap(0, Ordering::Relaxed);
        if pgid > 0 {
            // ESRCH: the group is empty already.
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The file to execute for `program`: a name with a slash as it is, a bare name looked up on
/// `path` (the worker's `PATH`) the way a shell would.
fn resolve(program: &str, path: Option<OsString>) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    std::env::split_paths(&path?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The node's input, checked.
#[derive(Debug)]
struct Input {
    argv: Vec<String>,
    terminal_exit_codes: Vec<i32>,
    timeout: Option<Duration>,
}

impl Input {
    fn parse(input: &Value) -> Result<Self, HandlerError> {
        let bad =
            |field: &str, why: String| HandlerError::Terminal(format!("input.{field}: {why}"));
        let input = super::input_object(input, &FIELDS, "argv")?;
        let argv = input
            .get("argv")
            .ok_or_else(|| bad("argv", "required".into()))?;
        let argv: Vec<String> = argv
            .as_array()
            .filter(|a| !a.is_empty())
            .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_owned)).collect())
            .ok_or_else(|| {
                bad(
                    "argv",
                    format!("must be a non-empty array of strings, not {argv}"),
                )
            })?;

        let terminal_exit_codes = match input.get("terminal_exit_codes") {
            None => Vec::new(),
            Some(v) => v
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|c| c.as_i64().and_then(|c| i32::try_from(c).ok()))
                        .collect()
                })
                .ok_or_else(|| {
                    bad(
                        "terminal_exit_codes",
                        format!("must be an array of exit codes, not {v}"),
                    )
                })?,
        };

        let timeout = match input.get("timeout_ms") {
            None => None,
            Some(v) => Some(Duration::from_millis(
                v.as_u64().filter(|ms| *ms > 0).ok_or_else(|| {
                    bad(
                        "timeout_ms",
                        format!("must be a positive whole number of milliseconds, not {v}"),
                    )
                })?,
            )),
        };

        Ok(Self {
            argv,
            terminal_exit_codes,
            timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handler_and_its_schema_accept_the_same_inputs() {
        super::super::tests::agree(
            &Exec::new(ExecPolicy::default()),
            |input| Input::parse(input).is_ok(),
            &[
                json!({"argv": ["sh"]}),
                json!({"argv": ["sh", "-c", "true"], "terminal_exit_codes": [2, -1], "timeout_ms": 1}),
                json!({"argv": ["sh"], "terminal_exit_codes": [2_147_483_647, -2_147_483_648]}),
                json!({"argv": ["sh"], "terminal_exit_codes": []}),
                json!({}),
                json!(null),
                json!(["sh"]),
                json!({"argv": "sh -c true"}),
                json!({"argv": []}),
                json!({"argv": ["sh", 1]}),
                json!({"argv": ["sh"], "terminal_exit_codes": [1.5]}),
                json!({"argv": ["sh"], "terminal_exit_codes": [2_147_483_648_i64]}),
                json!({"argv": ["sh"], "terminal_exit_codes": 2}),
                json!({"argv": ["sh"], "timeout_ms": 0}),
                json!({"argv": ["sh"], "timeout_ms": -1}),
                json!({"argv": ["sh"], "cmd": "x"}),
            ],
        );
    }

    #[test]
    fn bad_input_names_the_field() {
        let check = |input: Value, field: &str| {
            let err = Input::parse(&input).unwrap_err();
            assert!(
                matches!(&err, HandlerError::Terminal(m) if m.starts_with(&format!("input.{field}:"))),
                "{input} gave {err:?}"
            );
        };
        check(json!({}), "argv");
        check(json!({ "argv": "sh -c true" }), "argv");
        check(json!({ "argv": [] }), "argv");
        check(json!({ "argv": ["sh", 1] }), "argv");
        check(
            json!({ "argv": ["sh"], "terminal_exit_codes": [1.5] }),
            "terminal_exit_codes",
        );
        check(json!({ "argv": ["sh"], "timeout_ms": -1 }), "timeout_ms");
        check(json!({ "argv": ["sh"], "cmd": "x" }), "cmd");
    }

    #[test]
    fn programs_resolve_like_a_shell() {
        let path = Some(OsString::from("relative:/nonexistent:/bin:/usr/bin"));
        let sh = resolve("sh", path.clone()).unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}");
        assert_eq!(resolve("./x", path.clone()), Some(PathBuf::from("./x")));
        assert_eq!(resolve("no-such-program-here", path), None);
        assert_eq!(resolve("sh", None), None);
    }
}
