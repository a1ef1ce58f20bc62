//! Readable output: aligned tables, `key: value` views, times, ages and durations.
//!
//! Times are shown in UTC (RFC 3339, `Z`), the same clock the coordinator and the database use.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, SystemTime};

/// Longest cell a table shows; longer text (an error, a prompt) ends in `…`. `--json` has it all.
const CELL_CHARS_MAX: usize = 60;

/// A table with a header row; columns are as wide as their widest cell, two spaces apart.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; cells are flattened to one line and cut at [`CELL_CHARS_MAX`].
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| cell(&c)).collect());
    }

    /// The table as lines, each without trailing spaces.
    pub fn lines(&self) -> Vec<String> {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        std::iter::once(&self.header)
            .chain(&self.rows)
            .map(|row| {
                let mut line = String::new();
                for (i, cell) in row.iter().enumerate().take(columns) {
                    if i > 0 {
                        line.push_str("  ");
                    }
                    line.push_str(cell);
                    let pad = widths[i].saturating_sub(cell.chars().count());
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                line.trim_end().to_owned()
            })
            .collect()
    }

    pub fn render(&self) -> String {
        let mut out = self.lines().join("\n");
        out.push('\n');
        out
    }
}

/// One line of at most [`CELL_CHARS_MAX`] characters; an empty cell shows as `-`.
pub fn cell(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        return "-".to_owned();
    }
    truncate(&flat, CELL_CHARS_MAX)
}

/// `text` cut to `max` characters, the last one `…` when something was cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `key: value` lines with the values aligned; empty values are left out.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, _)| k.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        let key = format!("{key}:");
        let _ = writeln!(out, "{key:<width$}  {value}");
    }
    out
}

/// Writes to stdout. A reader that went away (`| head`) is not an error.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing to stdout"))
        }
        _ => Ok(()),
    }
}

/// Writes `value` as one pretty-printed JSON document.
pub fn emit_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    emit(&text)
}

/// A protobuf timestamp as a point in time; `None` when unset or out of range.
pub fn time(ts: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    ts.and_then(|ts| SystemTime::try_from(*ts).ok())
}

/// RFC 3339 in UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The time of day in UTC with milliseconds: `12:00:01.234`.
pub fn clock(t: SystemTime) -> String {
    let full = rfc3339(t);
    // `YYYY-MM-DDTHH:MM:SS.mmmZ`: the time of day sits at a fixed offset.
    full.get(11..23).map_or(full.clone(), str::to_owned)
}

/// A time as `2026-01-02T03:04:05.678Z (3m12s ago)`, or empty when unset.
pub fn when(ts: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    match time(ts) {
        Some(t) => format!("{} ({})", rfc3339(t), relative(t, now)),
        None => String::new(),
    }
}

/// `3m12s ago`, or `in 20s` for a time still to come.
pub fn relative(t: SystemTime, now: SystemTime) -> String {
    match now.duration_since(t) {
        Ok(past) => format!("{} ago", coarse(past)),
        Err(future) => format!("in {}", coarse(future.duration())),
    }
}

/// How long ago `t` was, coarsely (`45s`, `3m12s`, `2h05m`, `4d3h`); `0s` for a time to come.
pub fn age(t: SystemTime, now: SystemTime) -> String {
    coarse(now.duration_since(t).unwrap_or_default())
}

/// Whole seconds and up: for ages and waits.
pub fn coarse(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3_600..86_400 => format!("{}h{:02}m", secs / 3_600, secs % 3_600 / 60),
        _ => format!("{}d{}h", secs / 86_400, secs % 86_400 / 3_600),
    }
}

/// Precise below a minute (`850ms`, `1.23s`), coarse above: for how long something ran.
pub fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(60) && d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(60) {
        format!("{:.2}s", d.as_secs_f64())
    } else {
        coarse(d)
    }
}

/// How long from `start` to `end` (or to `now` while it has not ended); empty before `start`.
pub fn span(start: Option<SystemTime>, end: Option<SystemTime>, now: SystemTime) -> String {
    match start {
        Some(start) => duration(end.unwrap_or(now).duration_since(start).unwrap_or_default()),
        None => String::new(),
    }
}

/// Milliseconds as a duration (`5m00s`), for spec fields such as timeouts.
pub fn millis(ms: u64) -> String {
    duration(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_lines_carry_no_trailing_spaces() {
        let mut table = Table::new(&["NODE", "STATUS", "ERROR"]);
        table.row(vec!["a".into(), "completed".into(), String::new()]);
        table.row(vec![
            "long-node".into(),
            "failed".into(),
            "boom\nagain".into(),
        ]);
        assert_eq!(
            table.lines(),
            vec![
                "NODE       STATUS     ERROR",
                "a          completed  -",
                "long-node  failed     boom again",
            ]
        );
    }

    #[test]
    fn long_cells_are_cut_with_an_ellipsis() {
        let cut = cell(&"x".repeat(100));
        assert_eq!(cut.chars().count(), CELL_CHARS_MAX);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn fields_align_and_skip_empty_values() {
        assert_eq!(
            fields(&[
                ("id", "hello".into()),
                ("description", String::new()),
                ("status", "active".into())
            ]),
            "id:      hello\nstatus:  active\n"
        );
    }

    #[test]
    fn durations_are_precise_when_short_and_coarse_when_long() {
        let check = |d: Duration, expected: &str| assert_eq!(duration(d), expected);
        check(Duration::from_millis(850), "850ms");
        check(Duration::from_millis(1_234), "1.23s");
        check(Duration::from_secs(10), "10s");
        check(Duration::from_secs(192), "3m12s");
        check(Duration::from_secs(7_500), "2h05m");
        check(Duration::from_secs(2 * 86_400 + 3 * 3_600), "2d3h");
    }

    #[test]
    fn clock_is_the_utc_time_of_day_with_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(43_201_234);
        assert_eq!(clock(t), "12:00:01.234");
        assert_eq!(rfc3339(t), "1970-01-01T12:00:01.234Z");
    }
}
