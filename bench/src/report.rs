//! Figures, their bars, the printed table and the JSON lines.

use std::fmt::Write as _;

use serde_json::json;

use crate::stats::{Summary, summarize};

/// What a figure must reach, as the issue sets it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bar {
    /// The median must exceed this.
    Above(f64),
    /// The median must not exceed this.
    AtMost(f64),
    /// The median must be at least this percentage of the limit.
    PctOfLimit(f64),
    /// The median must be at least this percentage of the lean limit.
    PctOfLean(f64),
}

impl Bar {
    fn met(self, median: f64, pct: Percentages) -> bool {
        match self {
            Self::Above(v) => median > v,
            Self::AtMost(v) => median <= v,
            Self::PctOfLimit(p) => pct.of_limit.is_some_and(|pct| pct >= p),
            Self::PctOfLean(p) => pct.of_lean.is_some_and(|pct| pct >= p),
        }
    }

    fn label(self) -> String {
        match self {
            Self::Above(v) => format!("> {}", bound(v)),
            Self::AtMost(v) => format!("≤ {}", bound(v)),
            Self::PctOfLimit(p) => format!("≥ {}% limit", bound(p)),
            Self::PctOfLean(p) => format!("≥ {}% lean", bound(p)),
        }
    }
}

/// One measured quantity: a value per repetition.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Dotted name, phase first: `process.one_node`.
    pub name: String,
    /// `runs/s`, `ms`, `µs/run`, …
    pub unit: &'static str,
    /// One value per repetition.
    pub values: Vec<f64>,
    /// A throughput, also reported as a percentage of the limit.
    pub throughput: bool,
    /// What it must reach, if the issue says.
    pub bars: Vec<Bar>,
}

impl Figure {
    /// A figure without a bar.
    pub fn new(name: impl Into<String>, unit: &'static str, values: Vec<f64>) -> Self {
        Self {
            name: name.into(),
            unit,
            values,
            throughput: false,
            bars: Vec::new(),
        }
    }

    /// The same, reported as a percentage of the limit too.
    pub fn throughput(name: impl Into<String>, unit: &'static str, values: Vec<f64>) -> Self {
        Self {
            throughput: true,
            ..Self::new(name, unit, values)
        }
    }

    /// With a bar to meet.
    #[must_use]
    pub fn bar(mut self, bar: Bar) -> Self {
        self.bars.push(bar);
        self
    }
}

/// The median throughputs a throughput is given as a percentage of, when they were measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// `limit.claim_complete`: the product's own `runs` table, claimed and completed bare.
    pub claim_complete: Option<f64>,
    /// `limit.lean`: a narrow queue of its own, the shape of the fastest queues.
    pub lean: Option<f64>,
}

/// A figure's median as percentages of the limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Percentages {
    of_limit: Option<f64>,
    of_lean: Option<f64>,
}

/// A figure summarized against the limits, ready to print.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    figure: Figure,
    summary: Option<Summary>,
    pct: Percentages,
    met: Option<bool>,
}

impl Row {
    /// Summarizes `figure` against the `limits` measured.
    pub fn new(figure: Figure, limits: Limits) -> Self {
        let summary = summarize(&figure.values);
        let pct_of = |limit: Option<f64>| match (figure.throughput, summary, limit) {
            (true, Some(s), Some(limit)) if limit > 0.0 => Some(100.0 * s.median / limit),
            _ => None,
        };
        let pct = Percentages {
            of_limit: pct_of(limits.claim_complete),
            of_lean: pct_of(limits.lean),
        };
        let met = match summary {
            Some(s) if !figure.bars.is_empty() => {
                Some(figure.bars.iter().all(|bar| bar.met(s.median, pct)))
            }
            _ => None,
        };
        Self {
            figure,
            summary,
            pct,
            met,
        }
    }

    /// The figure as one JSON line, with `run` describing the run that measured it.
    pub fn json_line(&self, run: &serde_json::Value) -> String {
        let f = &self.figure;
        json!({
            "figure": f.name,
            "unit": f.unit,
            "median": self.summary.map(|s| s.median),
            "min": self.summary.map(|s| s.min),
            "max": self.summary.map(|s| s.max),
            "values": f.values,
            "pct_of_limit": self.pct.of_limit,
            "pct_of_lean": self.pct.of_lean,
            "bar": (!f.bars.is_empty()).then(|| bar_labels(&f.bars)),
            "bar_met": self.met,
            "run": run,
        })
        .to_string()
    }
}

fn bar_labels(bars: &[Bar]) -> String {
    bars.iter()
        .map(|b| b.label())
        .collect::<Vec<_>>()
        .join(", ")
}

const HEADERS: [&str; 9] = [
    "figure", "median", "min", "max", "unit", "% limit", "% lean", "bar", "met",
];

/// The rows as an aligned text table (also valid Markdown).
pub fn table(rows: &[Row]) -> String {
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            let s = r.summary;
            let num = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), number);
            [
                r.figure.name.clone(),
                num(s.map(|s| s.median)),
                num(s.map(|s| s.min)),
                num(s.map(|s| s.max)),
                r.figure.unit.to_owned(),
                percent(r.pct.of_limit),
                percent(r.pct.of_lean),
                bar_labels(&r.figure.bars),
                match r.met {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "NO".to_owned(),
                    None => String::new(),
                },
            ]
        })
        .collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        out.push('|');
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            // Names and units read left to right; numbers line up on the right.
            let pad = " ".repeat(w - cell.chars().count());
            if matches!(i, 0 | 4 | 7) {
                let _ = write!(out, " {cell}{pad} |");
            } else {
                let _ = write!(out, " {pad}{cell} |");
            }
        }
        out.push('\n');
    };
    line(&mut out, &HEADERS.map(str::to_owned));
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if matches!(i, 0 | 4 | 7) {
                "-".repeat(*w)
            } else {
                format!("{}:", "-".repeat(w - 1))
            }
        })
        .collect();
    line(&mut out, &rule);
    for row in &cells {
        line(&mut out, row);
    }
    out
}

fn percent(pct: Option<f64>) -> String {
    pct.map_or_else(String::new, |p| format!("{p:.0}%"))
}

/// A bar's bound as it was set: `1.5`, `60`, `30,000`.
fn bound(v: f64) -> String {
    if v.abs() >= 1000.0 {
        number(v)
    } else {
        v.to_string()
    }
}

/// A number as people read it: thousands grouped, and about three significant digits below
/// that.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let abs = v.abs();
    // What rounds to a whole thousand or more is grouped: 999.6 prints as 1,000.
    if abs >= 999.5 {
        // Rounded to a whole number first: the cast is exact for any figure we print.
        #[allow(clippy::cast_possible_truncation)]
        let whole = v.round() as i64;
        let digits = whole.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        return if whole < 0 {
            format!("-{grouped}")
        } else {
            grouped
        };
    }
    let decimals = if abs >= 99.95 {
        0
    } else if abs >= 10.0 {
        1
    } else if abs >= 1.0 {
        2
    } else {
        3
    };
    format!("{v:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_number(v: f64, expected: &str) {
        assert_eq!(number(v), expected, "{v}");
    }

    #[test]
    fn numbers_are_grouped_and_rounded_to_what_matters() {
        check_number(31_245.4, "31,245");
        check_number(1_000_000.0, "1,000,000");
        check_number(-1_234.0, "-1,234");
        check_number(999.6, "1,000");
        check_number(456.7, "457");
        check_number(45.67, "45.7");
        check_number(4.567, "4.57");
        check_number(0.4567, "0.457");
        check_number(0.0, "0.000");
    }

    #[test]
    fn rows_take_the_median_the_percentage_and_every_bar() {
        let figure = Figure::throughput("process.one_node", "runs/s", vec![20.0, 40.0, 30.0])
            .bar(Bar::Above(25.0))
            .bar(Bar::PctOfLimit(60.0));
        let limit = |claim_complete: f64, lean: f64| Limits {
            claim_complete: Some(claim_complete),
            lean: Some(lean),
        };
        let row = Row::new(figure.clone(), limit(50.0, 100.0));
        assert_eq!(row.pct.of_limit, Some(60.0));
        assert_eq!(row.pct.of_lean, Some(30.0));
        assert_eq!(row.met, Some(true));
        assert_eq!(
            Row::new(figure.clone(), limit(51.0, 100.0)).met,
            Some(false)
        );
        assert_eq!(
            Row::new(figure.clone(), Limits::default()).met,
            Some(false),
            "no limit, no %"
        );
        let of_lean = figure.bar(Bar::PctOfLean(30.0));
        assert_eq!(
            Row::new(of_lean.clone(), limit(50.0, 100.0)).met,
            Some(true)
        );
        assert_eq!(Row::new(of_lean, limit(50.0, 101.0)).met, Some(false));

        let latency = Figure::new("latency.notify.p50", "ms", vec![2.0, 4.0, 3.0]);
        let row = Row::new(latency.clone().bar(Bar::AtMost(3.0)), limit(50.0, 100.0));
        assert_eq!((row.pct, row.met), (Percentages::default(), Some(true)));
        assert_eq!(
            Row::new(latency, Limits::default()).met,
            None,
            "no bar, nothing to meet"
        );
    }

    #[test]
    fn the_table_aligns_every_column_and_the_json_line_carries_the_values() {
        let rows = vec![
            Row::new(
                Figure::throughput("limit.claim_complete", "runs/s", vec![40_000.0; 3]),
                Limits {
                    claim_complete: Some(40_000.0),
                    lean: Some(80_000.0),
                },
            ),
            Row::new(
                Figure::new("latency.notify.p99", "ms", vec![5.0, 6.0, 7.0]).bar(Bar::AtMost(10.0)),
                Limits::default(),
            ),
        ];
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == width), "{text}");
        assert!(
            lines[2].contains("| 40,000 |")
                && lines[2].contains("100%")
                && lines[2].contains("50%"),
            "{text}"
        );
        assert!(
            lines[3].contains("≤ 10") && lines[3].contains("yes"),
            "{text}"
        );

        let json: serde_json::Value =
            serde_json::from_str(&rows[1].json_line(&json!({"commit": "abc"}))).expect("json");
        assert_eq!(json["figure"], "latency.notify.p99");
        assert_eq!(json["median"], 6.0);
        assert_eq!(json["values"], json!([5.0, 6.0, 7.0]));
        assert_eq!(json["bar_met"], true);
        assert_eq!(json["run"]["commit"], "abc");
    }
}
