//! Scenario bookkeeping: one at a time, each within a hard time bound, each ending with one
//! result line, and a summary table of every line so far.
//!
//! Lines and tables are written straight to the process's stderr, past the test harness's
//! output capture, so that `cargo test` shows them for passing tests too.

use std::future::Future;
use std::io::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// No scenario may take longer than this, setup and teardown included.
pub const SCENARIO_LIMIT: Duration = Duration::from_secs(120);
/// How long a scenario's runs get to finish once the fault is over.
pub const FINISH_DEADLINE: Duration = Duration::from_secs(60);
/// How long every process gets to stop on SIGTERM.
pub const STOP_DEADLINE: Duration = Duration::from_secs(15);
/// How often the suite looks at the database while it waits.
pub const POLL: Duration = Duration::from_millis(50);

/// The real `leasehold` binary and the test worker, as a
/// [`cluster::Binaries`](crate::cluster::Binaries). A macro, because the test worker's path is
/// only known to integration tests: Cargo sets `CARGO_BIN_EXE_*` when it compiles them, and the
/// macro expands there.
#[macro_export]
macro_rules! bins {
    () => {
        $crate::cluster::Binaries {
            leasehold: $crate::binaries::leasehold().to_owned(),
            worker: env!("CARGO_BIN_EXE_leasehold-test-worker").into(),
        }
    };
}

/// `n` workers with the default settings.
pub fn workers(n: usize) -> Vec<crate::cluster::WorkerOpts> {
    vec![crate::cluster::WorkerOpts::default(); n]
}

/// A duration as seconds, for scenario lines.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// One scenario's result.
#[derive(Debug, Clone)]
pub struct Line {
    /// The scenario's short name, such as `kill-9`.
    pub scenario: &'static str,
    /// Runs it started.
    pub runs: usize,
    /// Runs that did not end as the scenario expects, or are neither terminal nor visibly
    /// waiting.
    pub lost: usize,
    /// Nodes with more than one recorded completion.
    pub double_completed: usize,
    /// The fault's recovery time, as the scenario defines it.
    pub recovery: Duration,
    /// The most the recovery may take, from the configured timings.
    pub bound: Duration,
    /// The whole scenario's wall time.
    pub took: Duration,
}

impl Line {
    /// The recovery, its bound and the wall time, in seconds.
    fn seconds(&self) -> (f64, f64, f64) {
        (secs(self.recovery), secs(self.bound), secs(self.took))
    }
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Line {
            scenario,
            runs,
            lost,
            double_completed,
            ..
        } = self;
        let (recovery, bound, took) = self.seconds();
        write!(
            f,
            "scenario {scenario}: runs={runs} lost={lost} double-completed={double_completed} \
             recovery={recovery:.1}s (bound {bound:.1}s) took={took:.1}s"
        )
    }
}

static LINES: Mutex<Vec<Line>> = Mutex::new(Vec::new());

/// Names a file each scenario's line is appended to, so that a run of several test binaries can
/// print every line once at its end (`.ci/run` does).
pub const SUMMARY_FILE_ENV: &str = "LEASEHOLD_FAULT_SUMMARY";

/// Prints `line`, then the table of every line this process has printed, and appends the line to
/// the file named by [`SUMMARY_FILE_ENV`], if set.
pub fn report(line: &Line) {
    if let Some(path) = std::env::var_os(SUMMARY_FILE_ENV) {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| writeln!(file, "{line}"));
        if let Err(e) = appended {
            let _ = writeln!(
                std::io::stderr(),
                "cannot append to {}: {e}",
                path.to_string_lossy()
            );
        }
    }
    let table = {
        let mut lines = LINES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        lines.push(line.clone());
        summary(&lines)
    };
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "\n{line}\n{table}");
}

/// The table of `lines`, one row per scenario.
pub fn summary(lines: &[Line]) -> String {
    let mut out = format!(
        "fault suite summary ({} scenario{} so far)\n{:<16} {:>5} {:>5} {:>17} {:>9} {:>8} {:>7}\n",
        lines.len(),
        if lines.len() == 1 { "" } else { "s" },
        "scenario",
        "runs",
        "lost",
        "double-completed",
        "recovery",
        "bound",
        "took"
    );
    for l in lines {
        let (recovery, bound, took) = l.seconds();
        out.push_str(&format!(
            "{:<16} {:>5} {:>5} {:>17} {recovery:>8.1}s {bound:>7.1}s {took:>6.1}s\n",
            l.scenario, l.runs, l.lost, l.double_completed
        ));
    }
    out
}

/// Runs scenarios one at a time: they measure recovery times against timing bounds, and two
/// clusters sharing two cores would measure each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until no other scenario of this process runs; hold the guard for the whole test.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Runs `body`, failing the test if it takes longer than `limit`.
///
/// # Panics
/// If `limit` passes first.
pub async fn bounded<F: Future>(scenario: &str, limit: Duration, body: F) -> F::Output {
    match tokio::time::timeout(limit, body).await {
        Ok(out) => out,
        Err(_) => panic!("scenario {scenario} did not finish within {limit:?}"),
    }
}

/// The spec `id`: a chain of `nodes` nodes (`a`, `b`, …, at most 26), each of `kind` with
/// `input` (a YAML flow mapping), each depending on the one before.
///
/// # Panics
/// If `nodes` is more than 26.
pub fn chain(id: &str, nodes: u8, kind: &str, input: &str) -> String {
    assert!(nodes <= 26, "a chain has at most 26 nodes");
    let mut yaml = format!("id: {id}\nnodes:\n");
    let mut before = None;
    for node in (b'a'..b'a' + nodes).map(char::from) {
        let depends = before
            .map(|b| format!(", depends_on: [{b}]"))
            .unwrap_or_default();
        yaml.push_str(&format!(
            "  - {{id: {node}, kind: {kind}, input: {input}{depends}}}\n"
        ));
        before = Some(node);
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_depends_on_the_node_before() {
        assert_eq!(
            chain("crash", 3, "sleep", "{ms: 1500}"),
            "\
id: crash
nodes:
  - {id: a, kind: sleep, input: {ms: 1500}}
  - {id: b, kind: sleep, input: {ms: 1500}, depends_on: [a]}
  - {id: c, kind: sleep, input: {ms: 1500}, depends_on: [b]}
"
        );
    }

    #[test]
    fn a_line_reads_like_the_issue_asks() {
        let line = Line {
            scenario: "kill-9",
            runs: 300,
            lost: 0,
            double_completed: 0,
            recovery: Duration::from_millis(6_240),
            bound: Duration::from_millis(8_200),
            took: Duration::from_secs(21),
        };
        assert_eq!(
            line.to_string(),
            "scenario kill-9: runs=300 lost=0 double-completed=0 recovery=6.2s (bound 8.2s) took=21.0s"
        );
        assert!(summary(&[line]).contains("kill-9"));
    }
}
