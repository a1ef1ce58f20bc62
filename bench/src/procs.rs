//! The real `leasehold` binary: finding (or building) it, and running its processes so that none
//! outlives the benchmark.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use leasehold_testkit::{Rebuild, workspace_binary};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;

/// How often a waiting loop looks at a child again.
const CHILD_POLL: Duration = Duration::from_millis(10);
/// Lines of a child's log quoted when it fails.
const LOG_TAIL_LINES: usize = 30;

/// The `leasehold` binary: `explicit` if given, otherwise the one beside this program, built
/// first by cargo with this program's own profile (a no-op when it is fresh). Returns it with
/// the profile it was built with.
pub fn leasehold_binary(explicit: Option<&Path>) -> anyhow::Result<(PathBuf, String)> {
    if let Some(path) = explicit {
        anyhow::ensure!(path.is_file(), "{} is not a file", path.display());
        return Ok((path.to_path_buf(), "given".to_owned()));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the bench crate has no parent folder")?;
    let built =
        workspace_binary(workspace, "leasehold", "leasehold", Rebuild::Always).map_err(|e| {
            anyhow::anyhow!(
                "{e}; build it with `cargo build --release -p leasehold` and pass --leasehold-bin \
                 target/release/leasehold"
            )
        })?;
    Ok((built.path, built.profile))
}

/// A child process of the benchmark, killed when dropped if it still runs.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `bin args…` with its output in `log`.
    pub fn spawn(name: &str, bin: &Path, args: &[String], log: PathBuf) -> anyhow::Result<Self> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error naming the process and quoting its log if it has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log)
            ),
        }
    }

    /// Asks it to stop (SIGTERM), as Kubernetes would.
    fn terminate(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            let pid = Pid::from_raw(i32::try_from(self.child.id())?);
            // It may exit between the check and the signal: nothing to stop then.
            let _ = kill(pid, Signal::SIGTERM);
        }
        Ok(())
    }

    /// Waits for it to exit after [`Proc::terminate`], and kills it at `deadline`.
    async fn wait_exit(mut self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::ensure!(
                    status.success(),
                    "{} exited with {status} on SIGTERM; see {}",
                    self.name,
                    self.log.display()
                );
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "{} did not exit in time after SIGTERM and was killed",
                    self.name
                );
            }
            tokio::time::sleep(CHILD_POLL).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Stops every process: all are signalled at once, then each gets until `grace` from now to
/// exit. The first failure is returned after all have stopped.
pub async fn stop_all(mut procs: Vec<Proc>, grace: Duration) -> anyhow::Result<()> {
    for p in &mut procs {
        p.terminate()?;
    }
    let deadline = Instant::now() + grace;
    let mut first_error = None;
    for p in procs {
        if let Err(e) = p.wait_exit(deadline).await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Runs `bin args…` to completion within `limit`; an error quotes its output if it fails.
pub async fn run_to_end(bin: &Path, args: &[String], limit: Duration) -> anyhow::Result<()> {
    let output = tokio::time::timeout(
        limit,
        tokio::process::Command::new(bin)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("{} {} took over {limit:?}", bin.display(), args.join(" ")))??;
    anyhow::ensure!(
        output.status.success(),
        "{} {} failed ({}):\n{}{}",
        bin.display(),
        args.first().map_or("", String::as_str),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
