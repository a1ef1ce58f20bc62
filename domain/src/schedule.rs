//! Schedules: an automation's cron schedules, when they fire, which missed fires are caught up
//! after downtime, and whether a fire may start a run while earlier ones are unfinished.
//!
//! A schedule fires at each instant its cron pattern matches in its time zone. The leader keeps
//! a cursor per schedule, the next fire time not yet decided. A fire decided within `grace` of
//! its time is on time and always runs (subject to overlap); older ones were missed (the leader
//! was down, or the schedule's automation paused) and run only as the catch-up policy says:
//! none (`skip_missed`), or the latest `n`.

use std::collections::VecDeque;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::{Deserialize, Serialize};

/// The time zone of a schedule that names none.
pub const UTC: &str = "UTC";
/// The id of an automation's schedule when it has only one and names none.
pub const DEFAULT_SCHEDULE_ID: &str = "default";
/// Schedules one automation may have.
pub const MAX_SCHEDULES: usize = 20;
/// The most missed fires a catch-up policy may run.
pub const MAX_CATCH_UP: u32 = 1_000;
/// Missed fires one decision counts one by one; past that, the cursor jumps to the on-time ones
/// (a per-second schedule after a day down would otherwise walk 86,400 fires).
pub const MAX_MISSED_WALKED: usize = 10_000;

/// One cron schedule of an automation, as its spec states it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique within the automation; `default` when the automation has only this one.
    #[serde(default = "default_id")]
    pub id: String,
    /// Five fields (`*/5 * * * *`: minute, hour, day of month, month, day of week) or six, a
    /// leading one for seconds (`* * * * * *`: every second).
    pub cron: String,
    /// An IANA time zone the pattern is read in (`Europe/Berlin`); UTC when unset.
    #[serde(default = "utc")]
    pub timezone: String,
    /// The inputs of each run it starts.
    #[serde(default = "empty_object")]
    pub inputs: serde_json::Value,
    /// What a fire does while runs of earlier fires are unfinished.
    #[serde(default)]
    pub overlap: Overlap,
    /// Which missed fires run after downtime.
    #[serde(default)]
    pub catch_up: CatchUp,
}

fn default_id() -> String {
    DEFAULT_SCHEDULE_ID.to_owned()
}

fn utc() -> String {
    UTC.to_owned()
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

/// What a fire does while runs of the schedule's earlier fires are unfinished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Starts nothing: the fire is skipped.
    #[default]
    Skip,
    /// Starts a run that waits for the earlier one (the schedule's runs share a concurrency
    /// key), unless one already waits: at most one running and one waiting.
    QueueOne,
    /// Starts a run regardless.
    Allow,
}

impl Overlap {
    /// The name the spec and the store use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::QueueOne => "queue_one",
            Self::Allow => "allow",
        }
    }

    /// Whether a fire starts a run while `unfinished` runs of the schedule have not finished.
    pub fn admits(self, unfinished: u64) -> bool {
        match self {
            Self::Skip => unfinished == 0,
            Self::QueueOne => unfinished <= 1,
            Self::Allow => true,
        }
    }
}

impl FromStr for Overlap {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Skip, Self::QueueOne, Self::Allow]
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown overlap policy {s:?}"))
    }
}

/// Which missed fires run after downtime: `skip_missed`, or a number, the most recent that
/// many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CatchUp {
    /// `skip_missed`: none.
    Named(NamedCatchUp),
    /// The latest this many.
    Latest(u32),
}

/// The catch-up policies with a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamedCatchUp {
    /// No missed fire runs.
    SkipMissed,
}

impl Default for CatchUp {
    /// The latest missed fire runs once: a nightly job whose leader was down at midnight still
    /// runs, once.
    fn default() -> Self {
        Self::Latest(1)
    }
}

impl CatchUp {
    /// How many of the missed fires run, the latest ones.
    pub fn latest(self) -> u32 {
        match self {
            Self::Named(NamedCatchUp::SkipMissed) => 0,
            Self::Latest(n) => n,
        }
    }

    /// The policy that runs the latest `n` missed fires; 0 is `skip_missed`.
    pub fn from_latest(n: u32) -> Self {
        if n == 0 {
            Self::Named(NamedCatchUp::SkipMissed)
        } else {
            Self::Latest(n)
        }
    }
}

/// A schedule's pattern in its time zone: when it fires.
#[derive(Debug, Clone)]
pub struct Timetable {
    cron: Cron,
    zone: Tz,
}

impl Timetable {
    /// The timetable of `cron` read in `timezone`; the error says which is wrong and why.
    pub fn parse(cron: &str, timezone: &str) -> Result<Self, TimetableError> {
        let parser = CronParser::builder().seconds(Seconds::Optional).build();
        let cron = parser
            .parse(cron)
            .map_err(|e| TimetableError::Cron(e.to_string()))?;
        let zone: Tz = timezone
            .parse()
            .map_err(|_| TimetableError::TimeZone(timezone.to_owned()))?;
        Ok(Self { cron, zone })
    }

    /// The first fire strictly after `after`; `None` when the pattern never fires again.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.zone), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The first fire at or after `at`.
    pub fn first_from(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&at.with_timezone(&self.zone), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// A pattern or time zone that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimetableError {
    /// The cron pattern.
    #[error("not a cron pattern: {0}")]
    Cron(String),
    /// The time zone.
    #[error("{0:?} is not an IANA time zone (such as Europe/Berlin or UTC)")]
    TimeZone(String),
}

/// Names a schedule within a tenant in keys of at most 256 characters, whatever the lengths of
/// its automation's and its own ids: a name-based UUID (v5) of both.
fn schedule_uuid(automation_id: &str, schedule_id: &str) -> uuid::Uuid {
    let name = format!("{automation_id}\u{0}{schedule_id}");
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes())
}

/// The idempotency key of the run a schedule's fire at `fire_at` starts: the same for every
/// coordinator and every retry, so that a fire starts one run.
pub fn fire_key(automation_id: &str, schedule_id: &str, fire_at: DateTime<Utc>) -> String {
    format!(
        "schedule:{}:{}",
        schedule_uuid(automation_id, schedule_id),
        fire_at.timestamp_millis()
    )
}

/// The idempotency key of a run started by hand for a schedule (`schedule trigger`) with the
/// caller's request id: a retried call returns the same run.
pub fn trigger_key(automation_id: &str, schedule_id: &str, request_id: &str) -> String {
    format!(
        "schedule:{}:trigger:{request_id}",
        schedule_uuid(automation_id, schedule_id)
    )
}

/// The concurrency key of a `queue_one` schedule's runs, so that one waits for the other.
pub fn concurrency_key(automation_id: &str, schedule_id: &str) -> String {
    format!("schedule:{}", schedule_uuid(automation_id, schedule_id))
}

/// What the fires from a schedule's cursor up to `now` come to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Fire times that run (subject to overlap), oldest first: the missed ones the catch-up
    /// policy keeps, then the on-time ones.
    pub fires: Vec<DateTime<Utc>>,
    /// How many of `fires`, the first ones, were missed and are caught up.
    pub caught_up: usize,
    /// Missed fires skipped by the catch-up policy (at least; see [`MAX_MISSED_WALKED`]).
    pub skipped: u64,
    /// The cursor after them: the first fire after `now`, `None` when there is none.
    pub next: Option<DateTime<Utc>>,
}

/// The fires due at `now` of a schedule whose cursor is `cursor` (its first undecided fire
/// time): fires older than `grace` before `now` are missed and kept only as `catch_up` says;
/// the rest up to `now` are on time.
pub fn due(
    table: &Timetable,
    cursor: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: Duration,
    catch_up: CatchUp,
) -> Due {
    let missed_before = now - TimeDelta::from_std(grace).unwrap_or(TimeDelta::MAX);
    let keep = catch_up.latest() as usize;
    let mut kept = VecDeque::with_capacity(keep.min(64));
    let mut skipped = 0u64;
    let mut walked = 0usize;
    let mut at = Some(cursor);
    while let Some(t) = at.filter(|t| *t < missed_before) {
        if walked == MAX_MISSED_WALKED {
            // Jump to the on-time fires; what lies between is skipped, uncounted.
            at = table.first_from(missed_before);
            break;
        }
        walked += 1;
        kept.push_back(t);
        if kept.len() > keep {
            kept.pop_front();
            skipped += 1;
        }
        at = table.next_after(t);
    }
    let mut fires: Vec<_> = kept.into_iter().collect();
    let caught_up = fires.len();
    while let Some(t) = at.filter(|t| *t <= now) {
        fires.push(t);
        at = table.next_after(t);
    }
    Due {
        fires,
        caught_up,
        skipped,
        next: at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("a time")
            .with_timezone(&Utc)
    }

    fn every_second() -> Timetable {
        Timetable::parse("* * * * * *", UTC).expect("valid")
    }

    #[test]
    fn five_and_six_field_patterns_fire_in_their_time_zone() {
        let five = Timetable::parse("*/5 * * * *", UTC).expect("five fields");
        assert_eq!(
            five.next_after(t("2026-01-01T00:00:00Z")),
            Some(t("2026-01-01T00:05:00Z"))
        );
        assert_eq!(
            every_second().next_after(t("2026-01-01T00:00:00Z")),
            Some(t("2026-01-01T00:00:01Z"))
        );
        // 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
        let berlin = Timetable::parse("0 9 * * *", "Europe/Berlin").expect("valid");
        assert_eq!(
            berlin.next_after(t("2026-01-10T00:00:00Z")),
            Some(t("2026-01-10T08:00:00Z"))
        );
        assert_eq!(
            berlin.next_after(t("2026-07-10T00:00:00Z")),
            Some(t("2026-07-10T07:00:00Z"))
        );
    }

    #[test]
    fn bad_patterns_and_zones_are_refused() {
        assert!(matches!(
            Timetable::parse("61 * * * *", UTC),
            Err(TimetableError::Cron(_))
        ));
        assert!(matches!(
            Timetable::parse("* * *", UTC),
            Err(TimetableError::Cron(_))
        ));
        assert_eq!(
            Timetable::parse("* * * * *", "Mars/Olympus").err(),
            Some(TimetableError::TimeZone("Mars/Olympus".to_owned()))
        );
    }

    #[test]
    fn on_time_fires_all_run() {
        let due = due(
            &every_second(),
            t("2026-01-01T00:00:01Z"),
            t("2026-01-01T00:00:03.5Z"),
            Duration::from_secs(5),
            CatchUp::from_latest(0),
        );
        assert_eq!(
            due.fires,
            vec![
                t("2026-01-01T00:00:01Z"),
                t("2026-01-01T00:00:02Z"),
                t("2026-01-01T00:00:03Z")
            ]
        );
        assert_eq!(due.skipped, 0);
        assert_eq!(due.caught_up, 0);
        assert_eq!(due.next, Some(t("2026-01-01T00:00:04Z")));
    }

    #[test]
    fn after_an_outage_missed_fires_run_as_the_catch_up_policy_says() {
        // Down from 00:00:01 to 00:00:11, with a grace of 2 s: 00:00:01 to 00:00:08 are missed,
        // 00:00:09 to 00:00:11 on time.
        let (cursor, now) = (t("2026-01-01T00:00:01Z"), t("2026-01-01T00:00:11Z"));
        let grace = Duration::from_secs(2);
        let skip = due(
            &every_second(),
            cursor,
            now,
            grace,
            CatchUp::Named(NamedCatchUp::SkipMissed),
        );
        assert_eq!(skip.fires.first(), Some(&t("2026-01-01T00:00:09Z")));
        assert_eq!(skip.fires.len(), 3);
        assert_eq!(skip.skipped, 8);
        assert_eq!(skip.caught_up, 0);
        let three = due(&every_second(), cursor, now, grace, CatchUp::Latest(3));
        assert_eq!(three.fires.first(), Some(&t("2026-01-01T00:00:06Z")));
        assert_eq!(three.fires.len(), 6);
        assert_eq!(three.skipped, 5);
        assert_eq!(three.caught_up, 3);
        let all = due(&every_second(), cursor, now, grace, CatchUp::Latest(100));
        assert_eq!(all.fires.len(), 11);
        assert_eq!(all.skipped, 0);
        assert_eq!(all.next, Some(t("2026-01-01T00:00:12Z")));
    }

    #[test]
    fn a_long_outage_jumps_to_the_on_time_fires() {
        let due = due(
            &every_second(),
            t("2026-01-01T00:00:00Z"),
            t("2026-01-02T00:00:00Z"),
            Duration::from_secs(2),
            CatchUp::Latest(2),
        );
        assert_eq!(due.skipped, MAX_MISSED_WALKED as u64 - 2);
        // The two kept from the walk, then the three on time.
        assert_eq!(due.fires.len(), 2 + 3);
        assert_eq!(due.fires[2], t("2026-01-01T23:59:58Z"));
        assert_eq!(due.next, Some(t("2026-01-02T00:00:01Z")));
    }

    #[test]
    fn overlap_policies_admit_fires_by_the_runs_unfinished() {
        assert!(Overlap::Skip.admits(0));
        assert!(!Overlap::Skip.admits(1));
        assert!(Overlap::QueueOne.admits(1));
        assert!(!Overlap::QueueOne.admits(2));
        assert!(Overlap::Allow.admits(50));
        for o in [Overlap::Skip, Overlap::QueueOne, Overlap::Allow] {
            assert_eq!(o.as_str().parse::<Overlap>(), Ok(o));
        }
    }

    #[test]
    fn keys_are_stable_short_and_distinct() {
        let at = t("2026-01-01T00:00:01Z");
        let long = "a".repeat(128);
        let key = fire_key(&long, &long, at);
        assert!(key.len() <= 256, "{key}");
        assert_eq!(key, fire_key(&long, &long, at));
        assert_ne!(fire_key("a", "bc", at), fire_key("ab", "c", at));
        assert_ne!(
            fire_key("a", "b", at),
            fire_key("a", "b", t("2026-01-01T00:00:02Z"))
        );
        let key = fire_key("nightly", "default", at);
        assert!(
            key.starts_with("schedule:") && key.ends_with(":1767225601000"),
            "{key}"
        );
        assert!(concurrency_key(&long, &long).len() <= 256);
    }

    #[test]
    fn catch_up_reads_as_a_name_or_a_number() {
        let named: CatchUp = serde_json::from_str("\"skip_missed\"").expect("named");
        assert_eq!(named.latest(), 0);
        let n: CatchUp = serde_json::from_str("3").expect("number");
        assert_eq!(n, CatchUp::Latest(3));
        assert!(serde_json::from_str::<CatchUp>("\"all\"").is_err());
        assert_eq!(CatchUp::default().latest(), 1);
    }
}
