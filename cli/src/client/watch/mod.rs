//! Following a run: its history, then its live events, until it ends.
//!
//! The stream starts at the run's first event, so a watch of a finished run replays it. When
//! the stream drops (a coordinator restarts, a proxy times out) the watch reconnects with the
//! last sequence number it saw: the coordinator sends exactly the events after it. Each event
//! updates a [`View`] of the run's nodes; how it is shown depends on the [`Mode`]. Once the run
//! has ended, one more `GetRun` settles the view with the authoritative node states.

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use leasehold_proto::v1;
use tonic::Code;

use super::connect::{Coordinator, status_line};
use super::render::{self, emit};
use super::{json, names};

mod view;

use view::{View, event_line};

/// How often the live view redraws (durations of running nodes move on between events).
const REDRAW_INTERVAL: Duration = Duration::from_millis(200);
/// First wait before reconnecting a dropped stream; it doubles up to [`RECONNECT_DELAY_MAX`].
const RECONNECT_DELAY_FIRST: Duration = Duration::from_millis(200);
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(5);
/// How long reconnecting may go on without a single new event before the watch gives up.
const RECONNECT_GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// Tries at reading the run once it has ended, before the watch settles for what the events
/// told.
const FINAL_STATE_TRIES: u32 = 4;
/// Node rows the live view shows; beyond it, the nodes that are not pending or completed.
const LIVE_NODE_ROWS_MAX: usize = 15;
/// Recent events the live view shows under the nodes.
const LIVE_RECENT_EVENTS: usize = 3;
/// Width of the live view when the terminal's is unknown (`COLUMNS` unset).
const LIVE_WIDTH_DEFAULT: usize = 80;

/// How a watch shows the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One line per event, then a summary line: for pipes and logs.
    Lines,
    /// A view of the nodes redrawn in place, then a summary line: for a terminal.
    Live,
    /// One JSON object per event per line.
    Json,
}

/// Follows `run_id` until it ends; the exit code is 0 when it completed, 1 otherwise.
pub async fn follow(c: &Coordinator, run_id: &str, mode: Mode) -> anyhow::Result<ExitCode> {
    let run = c.check(
        c.runs()
            .get_run(v1::GetRunRequest {
                run_id: run_id.to_owned(),
            })
            .await,
    )?;
    let mut view = View::new(&run);
    let mut screen = Screen::new(mode);
    let mut after = 0;
    // Since when the watch has been reconnecting without seeing a new event, and how often.
    let mut trouble: Option<(Instant, u32)> = None;
    loop {
        let before = after;
        let why = match stream(c, &run.run_id, &mut after, &mut view, &mut screen).await? {
            Attempt::Ended => break,
            Attempt::Dropped(why) => why,
        };
        if after > before {
            trouble = None;
        }
        let (since, tries) = trouble.get_or_insert((Instant::now(), 0));
        if since.elapsed() > RECONNECT_GIVE_UP_AFTER {
            anyhow::bail!(
                "lost the watch of run {}: {why}; no new event for {}",
                run.run_id,
                render::coarse(since.elapsed())
            );
        }
        let delay = RECONNECT_DELAY_FIRST
            .saturating_mul(2_u32.saturating_pow(*tries))
            .min(RECONNECT_DELAY_MAX);
        *tries += 1;
        screen.notice(
            &mut view,
            &format!(
                "watch: {why}; reconnecting after event {after} in {}",
                render::duration(delay)
            ),
        )?;
        tokio::time::sleep(delay).await;
    }
    let summary = match final_state(c, &run.run_id).await {
        Ok(run) => {
            view.settle(&run);
            summary(&run)
        }
        Err(e) => {
            // The events already told how the run ended; only the settled node states are lost.
            screen.notice(
                &mut view,
                &format!("watch: could not read the run's final state: {e:#}"),
            )?;
            view.summary()
        }
    };
    screen.finish(&view, &summary)?;
    Ok(if view.status == "completed" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The run once it has ended, asked for a few times: the coordinator may be restarting.
async fn final_state(c: &Coordinator, run_id: &str) -> anyhow::Result<v1::Run> {
    let mut delay = RECONNECT_DELAY_FIRST;
    for _ in 0..FINAL_STATE_TRIES {
        let request = v1::GetRunRequest {
            run_id: run_id.to_owned(),
        };
        match c.runs().get_run(request).await {
            Ok(run) => return Ok(run.into_inner()),
            Err(status) if retryable(&status) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RECONNECT_DELAY_MAX);
            }
            Err(status) => return Err(c.error(&status)),
        }
    }
    let request = v1::GetRunRequest {
        run_id: run_id.to_owned(),
    };
    c.check(c.runs().get_run(request).await)
}

enum Attempt {
    /// The stream ended after the run's terminal event.
    Ended,
    /// The stream broke or ended early; worth reconnecting.
    Dropped(String),
}

/// One `WatchRun` call from `after`, read until it ends or breaks.
async fn stream(
    c: &Coordinator,
    run_id: &str,
    after: &mut i64,
    view: &mut View,
    screen: &mut Screen,
) -> anyhow::Result<Attempt> {
    let request = v1::WatchRunRequest {
        run_id: run_id.to_owned(),
        after_seq: *after,
    };
    let mut events = match c.runs().watch_run(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if retryable(&status) => return Ok(Attempt::Dropped(status_line(&status))),
        Err(status) => return Err(c.error(&status)),
    };
    let mut redraw = tokio::time::interval(REDRAW_INTERVAL);
    redraw.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            message = events.message() => match message {
                Ok(Some(event)) => {
                    *after = event.seq;
                    view.apply(&event);
                    screen.event(&event)?;
                }
                Ok(None) if view.ended => return Ok(Attempt::Ended),
                Ok(None) => {
                    return Ok(Attempt::Dropped("the stream ended before the run did".into()));
                }
                Err(status) if retryable(&status) => {
                    return Ok(Attempt::Dropped(status_line(&status)));
                }
                Err(status) => return Err(c.error(&status)),
            },
            _ = redraw.tick(), if screen.mode == Mode::Live => screen.draw(view)?,
        }
    }
}

/// Whether a failed watch is worth another try: the stream broke, or the coordinator is
/// restarting or briefly unable to answer. Answers about the request itself are final.
fn retryable(status: &tonic::Status) -> bool {
    !matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::DataLoss
    )
}

/// Where a watch writes, by mode.
struct Screen {
    mode: Mode,
    /// Lines of the live view on screen now, which the next draw replaces.
    drawn: usize,
    width: usize,
}

impl Screen {
    fn new(mode: Mode) -> Self {
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .filter(|&c: &usize| c >= 20)
            .unwrap_or(LIVE_WIDTH_DEFAULT);
        Self {
            mode,
            drawn: 0,
            width,
        }
    }

    fn event(&self, event: &v1::RunEvent) -> anyhow::Result<()> {
        match self.mode {
            Mode::Lines => emit(&format!("{}\n", event_line(event))),
            Mode::Json => emit(&format!("{}\n", json::event(event))),
            // Drawn on the next tick: a replayed history can be thousands of events at once.
            Mode::Live => Ok(()),
        }
    }

    /// Redraws the live view in place. Lines are cut to the terminal's width, since a wrapped
    /// line would throw off how far up the next draw starts.
    fn draw(&mut self, view: &View) -> anyhow::Result<()> {
        let lines = view.frame(SystemTime::now());
        let mut out = String::new();
        if self.drawn > 0 {
            // Up to the first line of the last frame, then clear to the end of the screen.
            out.push_str(&format!("\x1b[{}F\x1b[J", self.drawn));
        }
        for line in &lines {
            out.push_str(&render::truncate(line, self.width.saturating_sub(1)));
            out.push('\n');
        }
        self.drawn = lines.len();
        emit(&out)
    }

    /// A message about the watch itself: in the live view, on stderr otherwise.
    fn notice(&mut self, view: &mut View, text: &str) -> anyhow::Result<()> {
        if self.mode == Mode::Live {
            text.clone_into(&mut view.notice);
            self.draw(view)
        } else {
            eprintln!("{text}");
            Ok(())
        }
    }

    /// The last frame, and the summary line but for JSON.
    fn finish(&mut self, view: &View, summary: &str) -> anyhow::Result<()> {
        match self.mode {
            Mode::Json => Ok(()),
            Mode::Lines => emit(&format!("{summary}\n")),
            Mode::Live => {
                self.draw(view)?;
                emit(&format!("{summary}\n"))
            }
        }
    }
}

/// The outcome in one line: `run … completed in 1.23s`, or why it did not complete.
fn summary(run: &v1::Run) -> String {
    let took = match (
        render::time(run.created_at.as_ref()),
        render::time(run.finished_at.as_ref()),
    ) {
        (Some(start), Some(end)) => format!(
            " in {}",
            render::duration(end.duration_since(start).unwrap_or_default())
        ),
        _ => String::new(),
    };
    let why = if let Some(f) = &run.last_failure {
        format!(": node {} attempt {}: {}", f.node_id, f.attempt, f.reason)
    } else if !run.stop_reason.is_empty() {
        format!(": {}", run.stop_reason)
    } else if run.stop_kind != i32::from(v1::StopKind::Unspecified) {
        format!(": {}", names::stop_kind(run.stop_kind))
    } else {
        String::new()
    };
    format!(
        "run {} {}{took}{}",
        run.run_id,
        names::run_status(run.status),
        render::truncate(&why, 500)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_failures_about_the_request_are_final() {
        assert!(retryable(&tonic::Status::unavailable("restarting")));
        assert!(retryable(&tonic::Status::internal("h2 protocol error")));
        assert!(!retryable(&tonic::Status::not_found("no such run")));
        assert!(!retryable(&tonic::Status::invalid_argument("run_id")));
    }
}
