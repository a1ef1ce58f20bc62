//! Routing runs to workers: the names of queues, labels and context, what a run requires of its
//! worker, what a worker advertises, and why a queued run waits.
//!
//! A run goes to one queue, and one worker runs all of its nodes, so a run's requirements are
//! the union of its nodes' and one worker must meet them all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The queue of an automation whose spec names none, and of a run whose start names none.
pub const DEFAULT_QUEUE: &str = "default";
/// Longest queue name, in characters.
pub const MAX_QUEUE_CHARS: usize = 64;
/// Longest label key, and longest label value, in characters.
pub const MAX_LABEL_CHARS: usize = 63;
/// Longest context name, in characters.
pub const MAX_CONTEXT_NAME_CHARS: usize = 128;

/// A name's shape: its length, its first character and the others, and the rule said for people.
struct NameRule {
    max_chars: usize,
    first: fn(char) -> bool,
    rest: fn(char) -> bool,
    says: &'static str,
}

const QUEUE_RULE: NameRule = NameRule {
    max_chars: MAX_QUEUE_CHARS,
    first: |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
    rest: |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'),
    says: "must be 1 to 64 characters: lowercase letters, digits, '-', '_' and '.', starting with a letter or digit",
};

const LABEL_KEY_RULE: NameRule = NameRule {
    max_chars: MAX_LABEL_CHARS,
    first: |c| c.is_ascii_alphanumeric(),
    rest: |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'),
    says: "must be 1 to 63 characters: letters, digits, '-', '_', '.' and '/', starting with a letter or digit",
};

const LABEL_VALUE_RULE: NameRule = NameRule {
    max_chars: MAX_LABEL_CHARS,
    first: |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'),
    rest: |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'),
    says: "must be 1 to 63 characters: letters, digits, '-', '_' and '.'",
};

// A context name is an environment variable's name, since that is how a worker receives it.
const CONTEXT_RULE: NameRule = NameRule {
    max_chars: MAX_CONTEXT_NAME_CHARS,
    first: |c| c.is_ascii_alphabetic() || c == '_',
    rest: |c| c.is_ascii_alphanumeric() || c == '_',
    says: "must be 1 to 128 characters: letters, digits and '_', not starting with a digit",
};

impl NameRule {
    /// The first thing wrong with `name`, followed by the whole rule.
    fn check(&self, name: &str) -> Result<(), String> {
        let says = self.says;
        let Some(first) = name.chars().next() else {
            return Err(format!("is empty; {says}"));
        };
        let chars = name.chars().count();
        if chars > self.max_chars {
            return Err(format!("is {chars} characters long; {says}"));
        }
        if !(self.first)(first) {
            return Err(format!("starts with {first:?}; {says}"));
        }
        match name.chars().skip(1).find(|&c| !(self.rest)(c)) {
            Some(bad) => Err(format!("contains {bad:?}; {says}")),
            None => Ok(()),
        }
    }
}

/// Whether `name` can name a queue: 1 to 64 of `[a-z0-9._-]`, starting with `[a-z0-9]`.
///
/// Lowercase only, so that `GPU` and `gpu` cannot be two queues that people take for one.
pub fn check_queue_name(name: &str) -> Result<(), String> {
    QUEUE_RULE.check(name)
}

/// Whether `key` can be a label's key: 1 to 63 of `[A-Za-z0-9._/-]`, starting with `[A-Za-z0-9]`.
///
/// The `/` allows a prefix such as `example.com/gpu`.
pub fn check_label_key(key: &str) -> Result<(), String> {
    LABEL_KEY_RULE.check(key)
}

/// Whether `value` can be a label's value: 1 to 63 of `[A-Za-z0-9._-]`.
pub fn check_label_value(value: &str) -> Result<(), String> {
    LABEL_VALUE_RULE.check(value)
}

/// Whether `name` can name context (a secret or a setting): an environment variable's name,
/// `[A-Za-z_][A-Za-z0-9_]*`, of 1 to 128 characters.
pub fn check_context_name(name: &str) -> Result<(), String> {
    CONTEXT_RULE.check(name)
}

/// Reads a label written `key=value`, as a worker's flag gives it.
///
/// The text splits at its first `=`, so a second `=` lands in the value, which refuses it.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!(
            "{text:?} has no '='; a label is written key=value, like gpu=a100"
        ));
    };
    check_label_key(key).map_err(|e| format!("key {key:?} {e}"))?;
    check_label_value(value).map_err(|e| format!("value {value:?} {e}"))?;
    Ok((key.to_owned(), value.to_owned()))
}

/// What a run needs of the one worker that runs it all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// Node kinds the worker must have a handler for.
    pub kinds: BTreeSet<String>,
    /// Labels the worker must carry, each with this very value.
    pub labels: BTreeMap<String, String>,
    /// Names of context (secrets or settings) the worker must hold.
    pub context: BTreeSet<String>,
}

/// What a live worker advertises.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The queues it claims from. `None` is a worker of a release before queues, which claims
    /// from every queue.
    pub queues: Option<BTreeSet<String>>,
    /// The node kinds it has handlers for.
    pub kinds: BTreeSet<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The names of the context it holds; never the values.
    pub context: BTreeSet<String>,
}

/// One thing a run needs that a worker lacks.
///
/// The order of the variants is the order in which they are listed: kinds, labels, context.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Requirement {
    /// A handler for this node kind.
    Kind(String),
    /// This label with this value.
    Label {
        /// The label's key.
        key: String,
        /// The value the run needs.
        value: String,
    },
    /// Context of this name.
    Context(String),
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kind(kind) => write!(f, "kind {kind}"),
            Self::Label { key, value } => write!(f, "label {key}={value}"),
            Self::Context(name) => write!(f, "context {name}"),
        }
    }
}

impl Requirements {
    /// What `worker` lacks of these requirements, sorted: kinds, then labels, then context.
    ///
    /// A label is met only by the same key with the same value.
    pub fn unmet_by(&self, worker: &Capabilities) -> Vec<Requirement> {
        // Each field is a sorted collection, so walking them in variant order sorts the whole.
        let kinds = self
            .kinds
            .iter()
            .filter(|k| !worker.kinds.contains(*k))
            .map(|k| Requirement::Kind(k.clone()));
        let labels = self
            .labels
            .iter()
            .filter(|&(k, v)| worker.labels.get(k) != Some(v))
            .map(|(k, v)| Requirement::Label {
                key: k.clone(),
                value: v.clone(),
            });
        let context = self
            .context
            .iter()
            .filter(|c| !worker.context.contains(*c))
            .map(|c| Requirement::Context(c.clone()));
        kinds.chain(labels).chain(context).collect()
    }

    /// Whether `worker` meets every requirement.
    pub fn met_by(&self, worker: &Capabilities) -> bool {
        self.kinds.is_subset(&worker.kinds)
            && self.context.is_subset(&worker.context)
            && self
                .labels
                .iter()
                .all(|(k, v)| worker.labels.get(k) == Some(v))
    }
}

impl Capabilities {
    /// Whether this worker claims runs of `queue`.
    pub fn serves(&self, queue: &str) -> bool {
        self.queues.as_ref().is_none_or(|q| q.contains(queue))
    }
}

/// What a limit belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// An automation's, from its spec.
    Automation,
    /// A queue's, across tenants.
    Queue,
}

impl fmt::Display for LimitScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Automation => "automation",
            Self::Queue => "queue",
        })
    }
}

/// Why a queued run waits: no live worker could claim it, or a limit holds it back.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitReason {
    /// No live worker serves the run's queue.
    NoWorkerForQueue {
        /// The run's queue.
        queue: String,
    },
    /// Workers serve the queue, but each lacks something; this is what the closest one lacks.
    Missing {
        /// Sorted as [`Requirements::unmet_by`] sorts them; never empty when [`wait_reason`]
        /// gives it.
        missing: Vec<Requirement>,
    },
    /// Its automation or queue holds as many runs as its `max_running` allows.
    AtMaxRunning {
        /// Whose limit.
        scope: LimitScope,
        /// The automation or queue.
        name: String,
        /// The limit.
        max_running: u32,
    },
    /// Its automation's or queue's rate has no start left until its bucket refills.
    RateLimited {
        /// Whose limit.
        scope: LimitScope,
        /// The automation or queue.
        name: String,
        /// The rate.
        per_second: f64,
    },
}

impl WaitReason {
    /// A stable name for the reason, for machines: `no_worker_for_queue`,
    /// `startup_runtime_context_missing` when the closest worker lacks only context (a worker
    /// started without a secret, say), and `no_capable_worker` otherwise.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoWorkerForQueue { .. } => "no_worker_for_queue",
            Self::Missing { missing }
                if !missing.is_empty()
                    && missing.iter().all(|r| matches!(r, Requirement::Context(_))) =>
            {
                "startup_runtime_context_missing"
            }
            Self::Missing { .. } => "no_capable_worker",
            Self::AtMaxRunning { .. } => "concurrency_limit",
            Self::RateLimited { .. } => "rate_limit",
        }
    }
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoWorkerForQueue { queue } => {
                write!(f, "waiting for a worker serving queue {queue}")
            }
            Self::Missing { missing } => {
                f.write_str("waiting for a worker with: ")?;
                for (i, requirement) in missing.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    requirement.fmt(f)?;
                }
                Ok(())
            }
            Self::AtMaxRunning {
                scope,
                name,
                max_running,
            } => write!(
                f,
                "waiting: {scope} {name} has {max_running} runs held, its max_running"
            ),
            Self::RateLimited {
                scope,
                name,
                per_second,
            } => write!(
                f,
                "waiting: {scope} {name} started as many runs as its rate of {per_second}/s allows"
            ),
        }
    }
}

/// Whether a limit holds a queued run back now: its scope holds `held` runs with a slot, and
/// its bucket has `tokens` (refilled to now). The concurrency limit is named first: a rate has
/// nothing to grant while no slot is free.
pub fn limit_reason(
    scope: LimitScope,
    name: &str,
    limits: &Limits,
    held: u64,
    tokens: f64,
) -> Option<WaitReason> {
    if let Some(max_running) = limits.max_running
        && held >= u64::from(max_running)
    {
        return Some(WaitReason::AtMaxRunning {
            scope,
            name: name.to_owned(),
            max_running,
        });
    }
    match limits.max_starts_per_second {
        Some(per_second) if tokens < 1.0 => Some(WaitReason::RateLimited {
            scope,
            name: name.to_owned(),
            per_second,
        }),
        _ => None,
    }
}

/// Why a run of `queue` with `requirements` waits, given the live `workers`; `None` when one of
/// them serves the queue and meets every requirement.
///
/// `workers` are the live ones only: a worker that stopped heartbeating claims nothing, so what
/// it advertised says nothing about why a run waits. The answer is a pure function of the
/// arguments; the caller reads the workers and decides what "live" means.
///
/// When workers serve the queue but none meets every requirement, the reason lists what the
/// closest one lacks: the one with the fewest unmet requirements, the first in `workers` on a tie,
/// so that the same workers always give the same reason.
pub fn wait_reason(
    queue: &str,
    requirements: &Requirements,
    workers: &[Capabilities],
) -> Option<WaitReason> {
    let mut closest: Option<Vec<Requirement>> = None;
    for worker in workers.iter().filter(|w| w.serves(queue)) {
        let unmet = requirements.unmet_by(worker);
        if unmet.is_empty() {
            return None;
        }
        if closest.as_ref().is_none_or(|c| unmet.len() < c.len()) {
            closest = Some(unmet);
        }
    }
    Some(match closest {
        Some(missing) => WaitReason::Missing { missing },
        None => WaitReason::NoWorkerForQueue {
            queue: queue.to_owned(),
        },
    })
}

/// The most runs a limit may let be held at once.
pub const MAX_RUNNING_LIMIT: u32 = 100_000;
/// The fastest start rate a limit may set, per second.
pub const MAX_STARTS_PER_SECOND: f64 = 100_000.0;
/// The largest burst a rate limit may allow.
pub const MAX_BURST: u32 = 100_000;

/// Limits on an automation's or a queue's runs, enforced by the claim across every worker.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Runs held at once.
    pub max_running: Option<u32>,
    /// Runs started (claimed) per second, as a token bucket.
    pub max_starts_per_second: Option<f64>,
    /// Starts the bucket allows at once after a quiet spell; unless set, one second's worth
    /// ([`Limits::bucket_size`]).
    pub burst: Option<u32>,
}

impl Limits {
    /// The burst, or one second's worth of the rate (rounded up, at least 1) when none is set:
    /// workers claim when they poll, so a bucket smaller than what accrues between two polls
    /// would throw tokens away and start fewer runs than the rate allows. `None` without a rate.
    pub fn bucket_size(&self) -> Option<u32> {
        let rate = self.max_starts_per_second?;
        Some(self.burst.unwrap_or_else(|| {
            // Saturates: a rate above the bound is refused by `violations` anyway.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let second = rate.ceil().clamp(1.0, f64::from(MAX_BURST)) as u32;
            second
        }))
    }

    /// Whether it limits anything.
    pub fn any(&self) -> bool {
        self.max_running.is_some() || self.max_starts_per_second.is_some()
    }

    /// Each field that breaks its rule, with what is wrong: `max_running` 1 to
    /// [`MAX_RUNNING_LIMIT`], `max_starts_per_second` above 0 and at most
    /// [`MAX_STARTS_PER_SECOND`], `burst` 1 to [`MAX_BURST`] and only with a rate.
    pub fn violations(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(n) = self.max_running
            && !(1..=MAX_RUNNING_LIMIT).contains(&n)
        {
            out.push((
                "max_running",
                format!("is {n}; must be 1 to {MAX_RUNNING_LIMIT}"),
            ));
        }
        if let Some(rate) = self.max_starts_per_second
            && !(rate.is_finite() && rate > 0.0 && rate <= MAX_STARTS_PER_SECOND)
        {
            out.push((
                "max_starts_per_second",
                format!("is {rate}; must be above 0 and at most {MAX_STARTS_PER_SECOND}"),
            ));
        }
        match self.burst {
            Some(burst) if self.max_starts_per_second.is_none() => out.push((
                "burst",
                format!("is {burst}, but only a rate (max_starts_per_second) has a burst"),
            )),
            Some(burst) if !(1..=MAX_BURST).contains(&burst) => {
                out.push(("burst", format!("is {burst}; must be 1 to {MAX_BURST}")));
            }
            _ => {}
        }
        out
    }
}

/// What one level of priority is worth in waiting, in the claim order: a run of priority p+1 is
/// claimed before a run of priority p that was queued less than this before it, and after one
/// queued earlier than that. So priority orders the runs queued close together, and a low
/// priority run waits at most (the priority gap × this) behind runs that keep coming: it is
/// never starved.
pub const AGEING_PER_PRIORITY_LEVEL_MICROS: i64 = 60_000_000;

/// A queued run's place in the claim order, lowest first (the claim statement and
/// `runs_claimable_by_queue_idx` compute the same expression): when it was first queued, in
/// microseconds since the epoch, less [`AGEING_PER_PRIORITY_LEVEL_MICROS`] per level of
/// priority. `first_queued_micros` is kept through retries, hand-backs and resumes, so a run
/// requeued keeps its place instead of going behind the runs queued since.
pub fn claim_order(first_queued_micros: i64, priority: i16) -> i64 {
    first_queued_micros - i64::from(priority) * AGEING_PER_PRIORITY_LEVEL_MICROS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|&s| s.to_owned()).collect()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Expects `rule` to accept every name in `accepted`, and to refuse each of `refused` with a
    /// message that starts with the paired text.
    fn check(rule: fn(&str) -> Result<(), String>, accepted: &[&str], refused: &[(&str, &str)]) {
        for &name in accepted {
            assert_eq!(rule(name), Ok(()), "{name:?} should be accepted");
        }
        for &(name, says) in refused {
            let message = rule(name).expect_err(name);
            assert!(
                message.starts_with(says),
                "{name:?}: {message:?} should start with {says:?}"
            );
        }
    }

    #[test]
    fn queue_names() {
        let longest = "q".repeat(MAX_QUEUE_CHARS);
        let too_long = "q".repeat(MAX_QUEUE_CHARS + 1);
        check(
            check_queue_name,
            &["default", "a", "0", "gpu-a100", "eu.west_1", "9z", &longest],
            &[
                ("", "is empty; must be 1 to 64 characters"),
                (&too_long, "is 65 characters long;"),
                ("-gpu", "starts with '-';"),
                (".gpu", "starts with '.';"),
                ("_gpu", "starts with '_';"),
                ("Gpu", "starts with 'G';"),
                ("gPu", "contains 'P';"),
                ("gpu/a", "contains '/';"),
                ("gpu a", "contains ' ';"),
                ("gpü", "contains 'ü';"),
            ],
        );
        assert_eq!(
            check_queue_name("GPU"),
            Err(
                "starts with 'G'; must be 1 to 64 characters: lowercase letters, digits, '-', \
                 '_' and '.', starting with a letter or digit"
                    .to_owned()
            )
        );
    }

    #[test]
    fn label_keys_and_values() {
        let longest = "k".repeat(MAX_LABEL_CHARS);
        let too_long = "k".repeat(MAX_LABEL_CHARS + 1);
        check(
            check_label_key,
            &["gpu", "GPU", "0", "example.com/gpu", "a-b_c.d", &longest],
            &[
                ("", "is empty; must be 1 to 63 characters"),
                (&too_long, "is 64 characters long;"),
                ("/gpu", "starts with '/';"),
                ("-gpu", "starts with '-';"),
                ("gpu=a", "contains '=';"),
                ("g pu", "contains ' ';"),
            ],
        );
        check(
            check_label_value,
            &["a100", "A100", "-", ".x", "_", "1.2-rc_3", &longest],
            &[
                ("", "is empty; must be 1 to 63 characters"),
                (&too_long, "is 64 characters long;"),
                ("a/b", "contains '/';"),
                ("a=b", "contains '=';"),
                ("/a", "starts with '/';"),
            ],
        );
    }

    #[test]
    fn context_names_are_environment_variable_names() {
        let longest = "C".repeat(MAX_CONTEXT_NAME_CHARS);
        let too_long = "C".repeat(MAX_CONTEXT_NAME_CHARS + 1);
        check(
            check_context_name,
            &["OPENAI_API_KEY", "_", "_1", "a", "lower_ok", &longest],
            &[
                ("", "is empty; must be 1 to 128 characters"),
                (&too_long, "is 129 characters long;"),
                ("1KEY", "starts with '1';"),
                ("API-KEY", "contains '-';"),
                ("API.KEY", "contains '.';"),
                ("KEY\0", "contains '\\0';"),
            ],
        );
    }

    #[test]
    fn labels_are_parsed_at_the_first_equals_sign() {
        assert_eq!(
            parse_label("gpu=a100"),
            Ok(("gpu".to_owned(), "a100".to_owned()))
        );
        assert_eq!(
            parse_label("example.com/zone=eu-west.1"),
            Ok(("example.com/zone".to_owned(), "eu-west.1".to_owned()))
        );
        let refused = [
            ("gpu", "\"gpu\" has no '='; a label is written key=value"),
            ("", "\"\" has no '='"),
            ("=a100", "key \"\" is empty"),
            ("gpu=", "value \"\" is empty"),
            ("gpu=a=b", "value \"a=b\" contains '='"),
            ("-gpu=a100", "key \"-gpu\" starts with '-'"),
        ];
        for (text, says) in refused {
            let message = parse_label(text).expect_err(text);
            assert!(message.starts_with(says), "{text:?}: {message:?}");
        }
    }

    fn needs() -> Requirements {
        Requirements {
            kinds: strings(&["echo", "shout"]),
            labels: labels(&[("gpu", "a100"), ("zone", "eu")]),
            context: strings(&["OPENAI_API_KEY"]),
        }
    }

    fn worker(queues: Option<&[&str]>, kinds: &[&str], labels_: &[(&str, &str)]) -> Capabilities {
        Capabilities {
            queues: queues.map(strings),
            kinds: strings(kinds),
            labels: labels(labels_),
            context: BTreeSet::new(),
        }
    }

    fn kind(k: &str) -> Requirement {
        Requirement::Kind(k.to_owned())
    }

    fn label(key: &str, value: &str) -> Requirement {
        Requirement::Label {
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }

    fn context(name: &str) -> Requirement {
        Requirement::Context(name.to_owned())
    }

    #[test]
    fn unmet_requirements_are_sorted_kinds_labels_context() {
        let bare = Capabilities::default();
        let unmet = needs().unmet_by(&bare);
        assert_eq!(
            unmet,
            [
                kind("echo"),
                kind("shout"),
                label("gpu", "a100"),
                label("zone", "eu"),
                context("OPENAI_API_KEY"),
            ]
        );
        let mut sorted = unmet.clone();
        sorted.sort();
        assert_eq!(unmet, sorted);
        assert!(!needs().met_by(&bare));
    }

    #[test]
    fn a_label_is_met_only_by_the_same_value() {
        let mut w = worker(None, &["echo", "shout"], &[("gpu", "h100"), ("zone", "eu")]);
        w.context = strings(&["OPENAI_API_KEY", "OTHER"]);
        assert_eq!(needs().unmet_by(&w), [label("gpu", "a100")]);
        assert!(!needs().met_by(&w));

        w.labels.insert("gpu".to_owned(), "a100".to_owned());
        w.labels.insert("extra".to_owned(), "x".to_owned());
        assert_eq!(needs().unmet_by(&w), []);
        assert!(needs().met_by(&w));
        // Nothing required is met by anyone.
        assert!(Requirements::default().met_by(&Capabilities::default()));
    }

    #[test]
    fn requirements_display() {
        assert_eq!(kind("shout").to_string(), "kind shout");
        assert_eq!(label("gpu", "a100").to_string(), "label gpu=a100");
        assert_eq!(
            context("OPENAI_API_KEY").to_string(),
            "context OPENAI_API_KEY"
        );
    }

    #[test]
    fn a_worker_without_queues_serves_every_queue() {
        let old = worker(None, &[], &[]);
        assert!(old.serves(DEFAULT_QUEUE));
        assert!(old.serves("gpu"));
        let gpu = worker(Some(&["gpu", "batch"]), &[], &[]);
        assert!(gpu.serves("gpu"));
        assert!(!gpu.serves(DEFAULT_QUEUE));
        // A worker that serves no queue at all claims nothing.
        assert!(!worker(Some(&[]), &[], &[]).serves(DEFAULT_QUEUE));
    }

    #[test]
    fn wait_reasons_and_their_codes() {
        let reason = WaitReason::NoWorkerForQueue {
            queue: "gpu".to_owned(),
        };
        assert_eq!(reason.code(), "no_worker_for_queue");
        assert_eq!(reason.to_string(), "waiting for a worker serving queue gpu");

        let reason = WaitReason::Missing {
            missing: vec![
                kind("shout"),
                label("gpu", "a100"),
                context("OPENAI_API_KEY"),
            ],
        };
        assert_eq!(reason.code(), "no_capable_worker");
        assert_eq!(
            reason.to_string(),
            "waiting for a worker with: kind shout, label gpu=a100, context OPENAI_API_KEY"
        );

        let reason = WaitReason::Missing {
            missing: vec![context("A"), context("B")],
        };
        assert_eq!(reason.code(), "startup_runtime_context_missing");
        assert_eq!(
            reason.to_string(),
            "waiting for a worker with: context A, context B"
        );

        let reason = WaitReason::Missing {
            missing: vec![label("gpu", "a100")],
        };
        assert_eq!(reason.code(), "no_capable_worker");
    }

    #[test]
    fn no_reason_when_a_serving_worker_meets_everything() {
        let mut able = worker(Some(&["gpu"]), &["echo", "shout"], &[("gpu", "a100")]);
        able.labels.insert("zone".to_owned(), "eu".to_owned());
        able.context = strings(&["OPENAI_API_KEY"]);
        let lacking = worker(Some(&["gpu"]), &[], &[]);
        assert_eq!(
            wait_reason("gpu", &needs(), &[lacking.clone(), able.clone()]),
            None
        );
        // The able worker serves another queue only: it does not count.
        able.queues = Some(strings(&["cpu"]));
        assert_eq!(
            wait_reason("gpu", &needs(), &[lacking, able]),
            Some(WaitReason::Missing {
                missing: needs().unmet_by(&Capabilities::default()),
            })
        );
    }

    #[test]
    fn no_worker_for_the_queue() {
        let want = Some(WaitReason::NoWorkerForQueue {
            queue: "gpu".to_owned(),
        });
        assert_eq!(wait_reason("gpu", &needs(), &[]), want);
        let elsewhere = worker(Some(&[DEFAULT_QUEUE]), &["echo", "shout"], &[]);
        assert_eq!(
            wait_reason("gpu", &Requirements::default(), &[elsewhere]),
            want
        );
    }

    #[test]
    fn a_worker_without_queues_is_judged_by_its_capabilities() {
        let old = worker(None, &["echo"], &[]);
        let simple = Requirements {
            kinds: strings(&["echo"]),
            ..Requirements::default()
        };
        assert_eq!(
            wait_reason("gpu", &simple, std::slice::from_ref(&old)),
            None
        );
        assert_eq!(
            wait_reason("gpu", &needs(), &[old]),
            Some(WaitReason::Missing {
                missing: vec![
                    kind("shout"),
                    label("gpu", "a100"),
                    label("zone", "eu"),
                    context("OPENAI_API_KEY"),
                ],
            })
        );
    }

    #[test]
    fn the_closest_worker_names_what_is_missing() {
        // Lacks 4: shout, both labels, the context.
        let far = worker(Some(&["gpu"]), &["echo"], &[]);
        // Lacks 2: the zone label and the context.
        let near = worker(Some(&["gpu"]), &["echo", "shout"], &[("gpu", "a100")]);
        let mut only_context = near.clone();
        only_context
            .labels
            .insert("zone".to_owned(), "eu".to_owned());

        let reason = wait_reason("gpu", &needs(), &[far.clone(), near.clone()]);
        assert_eq!(
            reason,
            Some(WaitReason::Missing {
                missing: vec![label("zone", "eu"), context("OPENAI_API_KEY")],
            })
        );

        let reason = wait_reason("gpu", &needs(), &[far, near, only_context]).expect("waits");
        assert_eq!(reason.code(), "startup_runtime_context_missing");
        assert_eq!(
            reason.to_string(),
            "waiting for a worker with: context OPENAI_API_KEY"
        );
    }

    #[test]
    fn on_a_tie_the_first_worker_names_what_is_missing() {
        let no_shout = worker(
            Some(&["gpu"]),
            &["echo"],
            &[("gpu", "a100"), ("zone", "eu")],
        );
        let wrong_gpu = worker(
            Some(&["gpu"]),
            &["echo", "shout"],
            &[("gpu", "h100"), ("zone", "eu")],
        );
        let missing = |first: &Capabilities, second: &Capabilities| match wait_reason(
            "gpu",
            &needs(),
            &[first.clone(), second.clone()],
        ) {
            Some(WaitReason::Missing { missing }) => missing,
            other => panic!("want Missing, got {other:?}"),
        };
        assert_eq!(
            missing(&no_shout, &wrong_gpu),
            [kind("shout"), context("OPENAI_API_KEY")]
        );
        assert_eq!(
            missing(&wrong_gpu, &no_shout),
            [label("gpu", "a100"), context("OPENAI_API_KEY")]
        );
    }

    #[test]
    fn limits_name_each_field_out_of_bounds() {
        let fine = Limits {
            max_running: Some(MAX_RUNNING_LIMIT),
            max_starts_per_second: Some(0.5),
            burst: Some(1),
        };
        assert!(fine.violations().is_empty());
        assert!(fine.any());
        assert!(!Limits::default().any());
        let bad = Limits {
            max_running: Some(0),
            max_starts_per_second: Some(f64::NAN),
            burst: Some(0),
        };
        let fields: Vec<&str> = bad.violations().iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["max_running", "max_starts_per_second", "burst"]);
        let burst_alone = Limits {
            burst: Some(5),
            ..Limits::default()
        };
        assert_eq!(
            burst_alone.violations(),
            [(
                "burst",
                "is 5, but only a rate (max_starts_per_second) has a burst".to_owned()
            )]
        );
        let paced = Limits {
            max_starts_per_second: Some(2.5),
            ..Limits::default()
        };
        assert_eq!(
            paced.bucket_size(),
            Some(3),
            "one second's worth, rounded up"
        );
        let slow = Limits {
            max_starts_per_second: Some(0.1),
            ..Limits::default()
        };
        assert_eq!(slow.bucket_size(), Some(1));
        let set = Limits {
            burst: Some(7),
            ..paced
        };
        assert_eq!(set.bucket_size(), Some(7));
        assert_eq!(Limits::default().bucket_size(), None);
        let too_fast = Limits {
            max_starts_per_second: Some(MAX_STARTS_PER_SECOND * 2.0),
            ..Limits::default()
        };
        assert_eq!(too_fast.violations()[0].0, "max_starts_per_second");
    }

    #[test]
    fn a_limit_names_what_holds_a_run_back() {
        let capped = Limits {
            max_running: Some(3),
            max_starts_per_second: Some(5.0),
            burst: None,
        };
        let at =
            limit_reason(LimitScope::Automation, "capped", &capped, 3, 0.0).expect("at its limit");
        assert_eq!(at.code(), "concurrency_limit");
        assert_eq!(
            at.to_string(),
            "waiting: automation capped has 3 runs held, its max_running"
        );
        let paced = limit_reason(LimitScope::Queue, "paced", &capped, 2, 0.4).expect("no token");
        assert_eq!(paced.code(), "rate_limit");
        assert_eq!(
            paced.to_string(),
            "waiting: queue paced started as many runs as its rate of 5/s allows"
        );
        assert_eq!(
            limit_reason(LimitScope::Queue, "paced", &capped, 2, 1.0),
            None
        );
        assert_eq!(
            limit_reason(LimitScope::Queue, "free", &Limits::default(), 1000, 0.0),
            None
        );
    }

    #[test]
    fn priority_orders_runs_queued_close_together_and_waiting_outranks_it_in_time() {
        let minute = AGEING_PER_PRIORITY_LEVEL_MICROS;
        let t0 = 1_000_000 * minute;
        // Same priority: the older first.
        assert!(claim_order(t0, 0) < claim_order(t0 + 1, 0));
        // One level up is worth a minute: it goes first over a run queued less than a minute
        // before it...
        assert!(claim_order(t0 + minute - 1, 1) < claim_order(t0, 0));
        // ...and after one queued more than a minute before it.
        assert!(claim_order(t0 + minute + 1, 1) > claim_order(t0, 0));
        // A run of the lowest priority is not starved: runs of the highest priority queued more
        // than 2,000 minutes after it come after it.
        let late = t0 + 2_000 * minute + 1;
        assert!(claim_order(t0, -1000) < claim_order(late, 1000));
    }
}
