//! The rules a spec must follow before it is stored, and the error that lists every broken one.
//!
//! Validation collects all violations instead of stopping at the first, so that an author fixes a
//! spec in one round trip.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;

use crate::ids::NodeId;
use crate::routing;
use crate::schedule::{MAX_CATCH_UP, MAX_SCHEDULES, ScheduleSpec, Timetable, TimetableError};

use super::{NodeSpec, Spec};

/// Most nodes one automation may have.
pub const MAX_NODES: usize = 1_000;
/// Longest automation or node id, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// Longest node kind, in characters.
pub const MAX_KIND_CHARS: usize = 64;
/// Largest input of one node, in bytes of compact JSON.
pub const MAX_INPUT_BYTES: usize = 256 * 1024;
/// Most attempts a node may ask for.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Longest timeout of one attempt, in milliseconds: 24 hours.
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;
/// Longest backoff cap, in milliseconds: 24 hours.
pub const MAX_BACKOFF_CAP_MS: u64 = 86_400_000;
/// Smallest backoff growth factor; below 1 the delays would shrink.
pub const MIN_BACKOFF_FACTOR: f64 = 1.0;
/// Largest backoff growth factor.
pub const MAX_BACKOFF_FACTOR: f64 = 10.0;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 4_096;
/// Longest approval prompt, in characters.
pub const MAX_PROMPT_CHARS: usize = 4_096;
/// Longest deadline of a run (`schedule_to_start_timeout_ms`, `run_timeout_ms`), in
/// milliseconds: 30 days.
pub const MAX_RUN_DEADLINE_MS: u64 = 30 * 86_400_000;
/// Shortest deadline of a run, in milliseconds: the deadline sweep looks once a second, so a
/// shorter one could not be kept.
pub const MIN_RUN_DEADLINE_MS: u64 = 1_000;
/// Most context names an automation may require.
pub const MAX_CONTEXT_NAMES: usize = 32;
/// Most labels one node may require.
pub const MAX_LABELS_PER_NODE: usize = 16;

/// A spec that cannot be used, with every reason why.
///
/// Never empty: an error always carries at least one violation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Joined(.violations))]
pub struct SpecError {
    /// The broken rules, in the order of the spec's fields.
    pub violations: Vec<Violation>,
}

impl SpecError {
    /// An error with a single violation that belongs to no node.
    pub fn one(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            violations: vec![Violation {
                field: field.into(),
                node: None,
                message: message.into(),
            }],
        }
    }
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Where in the spec, as a path such as `nodes[3].depends_on[0]`, `id`, or `spec` for the whole.
    pub field: String,
    /// The node the field belongs to, when it belongs to one with a non-empty id.
    pub node: Option<NodeId>,
    /// What is wrong, for people.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            Some(node) => write!(
                f,
                "{} (node {:?}): {}",
                self.field,
                node.as_str(),
                self.message
            ),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

/// Displays violations joined by `; `.
struct Joined<'a>(&'a [Violation]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, violation) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            violation.fmt(f)?;
        }
        Ok(())
    }
}

/// Checks every rule on `spec` and reports all violations together.
///
/// # Cycles
///
/// Cycles are searched among the dependencies that name a known node other than the node itself.
/// Unknown dependencies and self-loops are reported as such and left out of the graph, so that
/// a reported cycle is always one the author must break. When node ids repeat, a dependency on a
/// repeated id means its first node; the repeats are reported as duplicates.
pub fn validate(spec: &Spec) -> Result<(), SpecError> {
    let mut out = Vec::new();

    if let Some(message) = check_name(spec.id.as_str(), MAX_ID_CHARS) {
        out.push(violation("id".to_owned(), None, message));
    }
    if let Some(description) = &spec.description
        && let Some(message) = check_max_chars(description, MAX_DESCRIPTION_CHARS)
    {
        out.push(violation("description".to_owned(), None, message));
    }
    if let Some(queue) = &spec.queue
        && let Err(message) = routing::check_queue_name(queue)
    {
        out.push(violation("queue".to_owned(), None, message));
    }
    check_requires_context(&spec.requires_context, &mut out);
    check_schedules(&spec.schedules, &mut out);
    for (field, message) in spec.limits().violations() {
        out.push(violation(field.to_owned(), None, message));
    }
    for (field, ms) in [
        (
            "schedule_to_start_timeout_ms",
            spec.schedule_to_start_timeout_ms,
        ),
        ("run_timeout_ms", spec.run_timeout_ms),
    ] {
        if let Some(ms) = ms
            && !(MIN_RUN_DEADLINE_MS..=MAX_RUN_DEADLINE_MS).contains(&ms)
        {
            out.push(violation(
                field.to_owned(),
                None,
                format!("is {ms}; must be {MIN_RUN_DEADLINE_MS} to {MAX_RUN_DEADLINE_MS} ms"),
            ));
        }
    }
    if spec.nodes.is_empty() {
        out.push(violation(
            "nodes".to_owned(),
            None,
            "an automation needs at least one node".to_owned(),
        ));
    } else if spec.nodes.len() > MAX_NODES {
        out.push(violation(
            "nodes".to_owned(),
            None,
            format!(
                "has {} nodes; at most {MAX_NODES} are allowed",
                spec.nodes.len()
            ),
        ));
    }

    // The first node with each id is the one that dependencies resolve to.
    let mut first_index: HashMap<&str, usize> = HashMap::with_capacity(spec.nodes.len());
    for (i, node) in spec.nodes.iter().enumerate() {
        if let Some(&first) = first_index.get(node.id.as_str()) {
            out.push(violation(
                format!("nodes[{i}].id"),
                node_ref(node),
                format!(
                    "duplicate node id {:?}, first used by nodes[{first}]",
                    node.id.as_str()
                ),
            ));
        } else {
            first_index.insert(node.id.as_str(), i);
        }
    }

    let mut deps = Vec::with_capacity(spec.nodes.len());
    let mut labels = LabelsSoFar::default();
    for (i, node) in spec.nodes.iter().enumerate() {
        check_node(i, node, &mut out);
        deps.push(check_depends_on(i, node, &first_index, &mut out));
        labels.check_requires(i, node, &mut out);
    }
    out.extend(super::storable::nul_violations(spec));

    for cycle in find_cycles(&deps) {
        let first = cycle[0];
        let path = cycle
            .iter()
            .chain(std::iter::once(&first))
            .map(|&i| spec.nodes[i].id.as_str())
            .collect::<Vec<_>>()
            .join(" -> ");
        out.push(violation(
            format!("nodes[{first}].depends_on"),
            node_ref(&spec.nodes[first]),
            format!("dependency cycle (each node depends on the next): {path}"),
        ));
    }

    if out.is_empty() {
        Ok(())
    } else {
        Err(SpecError { violations: out })
    }
}

fn violation(field: String, node: Option<NodeId>, message: String) -> Violation {
    Violation {
        field,
        node,
        message,
    }
}

/// The node a violation names; none when the id is empty, since `node ""` tells nobody anything.
fn node_ref(node: &NodeSpec) -> Option<NodeId> {
    (!node.id.as_str().is_empty()).then(|| node.id.clone())
}

/// The first problem with an id or kind, if any.
///
/// Names stay within `[A-Za-z0-9_.-]` and start with a letter or digit, so that they are safe in
/// URLs, file names, log lines and metric labels without quoting.
fn check_name(name: &str, max_chars: usize) -> Option<String> {
    let Some(first) = name.chars().next() else {
        return Some("must not be empty".to_owned());
    };
    if let Some(message) = check_max_chars(name, max_chars) {
        return Some(message);
    }
    if !first.is_ascii_alphanumeric() {
        return Some(format!("must start with a letter or digit, not {first:?}"));
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Some(format!(
            "contains {bad:?}; only A-Z, a-z, 0-9, '_', '.' and '-' are allowed"
        ));
    }
    None
}

fn check_max_chars(text: &str, max_chars: usize) -> Option<String> {
    let chars = text.chars().count();
    (chars > max_chars)
        .then(|| format!("is {chars} characters long; at most {max_chars} are allowed"))
}

/// Checks the fields of one node that do not involve other nodes.
fn check_node(i: usize, node: &NodeSpec, out: &mut Vec<Violation>) {
    let mut push = |field: &str, message: String| {
        out.push(violation(
            format!("nodes[{i}].{field}"),
            node_ref(node),
            message,
        ));
    };

    if let Some(message) = check_name(node.id.as_str(), MAX_ID_CHARS) {
        push("id", message);
    }
    if let Some(message) = check_name(&node.kind, MAX_KIND_CHARS) {
        push("kind", message);
    }
    if !fits_in_json(&node.input, MAX_INPUT_BYTES) {
        push(
            "input",
            format!("is larger than {MAX_INPUT_BYTES} bytes as JSON"),
        );
    }
    if !(1..=MAX_ATTEMPTS_LIMIT).contains(&node.max_attempts) {
        push(
            "max_attempts",
            format!(
                "is {}; must be between 1 and {MAX_ATTEMPTS_LIMIT}",
                node.max_attempts
            ),
        );
    }
    if !(1..=MAX_TIMEOUT_MS).contains(&node.timeout_ms) {
        push(
            "timeout_ms",
            format!(
                "is {}; must be between 1 and {MAX_TIMEOUT_MS}",
                node.timeout_ms
            ),
        );
    }

    let backoff = &node.backoff;
    if backoff.base_ms == 0 {
        push("backoff.base_ms", "must be at least 1".to_owned());
    }
    if backoff.cap_ms < backoff.base_ms {
        push(
            "backoff.cap_ms",
            format!(
                "is {}; must be at least base_ms ({})",
                backoff.cap_ms, backoff.base_ms
            ),
        );
    } else if backoff.cap_ms > MAX_BACKOFF_CAP_MS {
        push(
            "backoff.cap_ms",
            format!(
                "is {}; must be at most {MAX_BACKOFF_CAP_MS}",
                backoff.cap_ms
            ),
        );
    }
    if let Some(message) = check_float_range(backoff.factor, MIN_BACKOFF_FACTOR, MAX_BACKOFF_FACTOR)
    {
        push("backoff.factor", message);
    }
    if let Some(message) = check_float_range(backoff.jitter, 0.0, 1.0) {
        push("backoff.jitter", message);
    }

    if let Some(approval) = &node.approval {
        // A blank prompt leaves the approver guessing what they approve.
        if approval.prompt.trim().is_empty() {
            push("approval.prompt", "must not be empty".to_owned());
        } else if let Some(message) = check_max_chars(&approval.prompt, MAX_PROMPT_CHARS) {
            push("approval.prompt", message);
        }
    }
}

/// Checks the context names an automation requires: each name, repeats, and their number.
fn check_schedules(schedules: &[ScheduleSpec], out: &mut Vec<Violation>) {
    if schedules.len() > MAX_SCHEDULES {
        out.push(violation(
            "schedules".to_owned(),
            None,
            format!(
                "has {} schedules; at most {MAX_SCHEDULES} are allowed",
                schedules.len()
            ),
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(schedules.len());
    for (i, s) in schedules.iter().enumerate() {
        let mut field = |name: &str, message: String| {
            out.push(violation(format!("schedules[{i}].{name}"), None, message));
        };
        if let Some(&earlier) = seen.get(s.id.as_str()) {
            field(
                "id",
                format!(
                    "duplicate schedule id {:?}, also schedules[{earlier}]",
                    s.id
                ),
            );
        } else if let Some(message) = check_name(&s.id, MAX_ID_CHARS) {
            field("id", message);
        } else {
            seen.insert(&s.id, i);
        }
        match Timetable::parse(&s.cron, &s.timezone) {
            Err(e @ TimetableError::Cron(_)) => field("cron", e.to_string()),
            Err(e @ TimetableError::TimeZone(_)) => field("timezone", e.to_string()),
            Ok(_) => {}
        }
        if !s.inputs.is_object() {
            field("inputs", "must be an object".to_owned());
        } else if !fits_in_json(&s.inputs, MAX_INPUT_BYTES) {
            field(
                "inputs",
                format!("is larger than {MAX_INPUT_BYTES} bytes as JSON"),
            );
        }
        if s.catch_up.latest() > MAX_CATCH_UP {
            field(
                "catch_up",
                format!(
                    "is {}; at most {MAX_CATCH_UP} missed fires may be caught up",
                    s.catch_up.latest()
                ),
            );
        }
    }
}

fn check_requires_context(names: &[String], out: &mut Vec<Violation>) {
    if names.len() > MAX_CONTEXT_NAMES {
        out.push(violation(
            "requires_context".to_owned(),
            None,
            format!(
                "has {} names; at most {MAX_CONTEXT_NAMES} are allowed",
                names.len()
            ),
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(names.len());
    for (j, name) in names.iter().enumerate() {
        let message = if let Some(&earlier) = seen.get(name.as_str()) {
            format!("duplicate context name {name:?}, also requires_context[{earlier}]")
        } else if let Err(message) = routing::check_context_name(name) {
            message
        } else {
            seen.insert(name, j);
            continue;
        };
        out.push(violation(format!("requires_context[{j}]"), None, message));
    }
}

/// The label values required by the nodes checked so far, each with the first node that
/// required it, so that a later node requiring another value is refused: one worker runs a
/// whole run, and no worker carries two values of one label.
#[derive(Default)]
struct LabelsSoFar<'s> {
    /// Label key to its value, the first node that required it, and that node's index.
    first: HashMap<&'s str, (&'s str, &'s NodeSpec, usize)>,
}

impl<'s> LabelsSoFar<'s> {
    /// Checks the labels node `i` requires, then remembers them for the nodes after it.
    fn check_requires(&mut self, i: usize, node: &'s NodeSpec, out: &mut Vec<Violation>) {
        let mut push = |field: String, message: String| {
            out.push(violation(field, node_ref(node), message));
        };
        if node.requires.len() > MAX_LABELS_PER_NODE {
            push(
                format!("nodes[{i}].requires"),
                format!(
                    "has {} labels; at most {MAX_LABELS_PER_NODE} are allowed",
                    node.requires.len()
                ),
            );
        }
        for (key, value) in &node.requires {
            // A bad key is placed on the map that holds it: it may not read well in a path.
            if let Err(message) = routing::check_label_key(key) {
                push(
                    format!("nodes[{i}].requires"),
                    format!("key {key:?} {message}"),
                );
                continue;
            }
            let field = format!("nodes[{i}].requires.{key}");
            if let Err(message) = routing::check_label_value(value) {
                push(field, message);
                continue;
            }
            match self.first.get(key.as_str()) {
                Some(&(first_value, ..)) if first_value == value => {}
                Some(&(first_value, first_node, first)) => push(
                    field,
                    format!(
                        "requires {key}={value}, but {} requires {key}={first_value}: a run runs on one worker",
                        node_name(first_node, first)
                    ),
                ),
                None => {
                    self.first.insert(key, (value, node, i));
                }
            }
        }
    }
}

/// A node as a message names it: by its id, or by its place when its id is empty.
fn node_name(node: &NodeSpec, i: usize) -> String {
    if node.id.as_str().is_empty() {
        format!("nodes[{i}]")
    } else {
        format!("node `{}`", node.id.as_str())
    }
}

/// The problem with a float outside `min..=max`, NaN and infinities included (YAML can spell them).
fn check_float_range(value: f64, min: f64, max: f64) -> Option<String> {
    if !value.is_finite() {
        Some(format!("is {value}; must be a finite number"))
    } else if !(min..=max).contains(&value) {
        Some(format!("is {value}; must be between {min:?} and {max:?}"))
    } else {
        None
    }
}

/// Whether `value` serializes to at most `max_bytes` of compact JSON.
///
/// Counts instead of allocating, and stops as soon as the limit is passed, so an oversized input
/// costs no more than the limit.
fn fits_in_json(value: &serde_json::Value, max_bytes: usize) -> bool {
    struct Counter {
        left: usize,
    }
    impl io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.left = self
                .left
                .checked_sub(buf.len())
                .ok_or_else(|| io::Error::other("limit passed"))?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(&mut Counter { left: max_bytes }, value).is_ok()
}

/// Checks `depends_on` of node `i` and returns the indices of the nodes it really depends on:
/// known, not itself, each once.
fn check_depends_on(
    i: usize,
    node: &NodeSpec,
    first_index: &HashMap<&str, usize>,
    out: &mut Vec<Violation>,
) -> Vec<usize> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(node.depends_on.len());
    let mut resolved = Vec::with_capacity(node.depends_on.len());
    for (j, dep) in node.depends_on.iter().enumerate() {
        let message = if let Some(&earlier) = seen.get(dep.as_str()) {
            format!(
                "duplicate dependency {:?}, also depends_on[{earlier}]",
                dep.as_str()
            )
        } else {
            seen.insert(dep.as_str(), j);
            if dep == &node.id {
                "a node cannot depend on itself".to_owned()
            } else if let Some(&target) = first_index.get(dep.as_str()) {
                resolved.push(target);
                continue;
            } else {
                format!("unknown node {:?}", dep.as_str())
            }
        };
        out.push(violation(
            format!("nodes[{i}].depends_on[{j}]"),
            node_ref(node),
            message,
        ));
    }
    resolved
}

/// Cycles in the graph where node `i` depends on each node in `deps[i]`, each as node indices in
/// dependency order, starting at its lowest index.
///
/// Kahn's algorithm peels off every node that can run; what remains lies on or behind a cycle.
/// Every remaining node still depends on a remaining node, so following such dependencies from any
/// of them must come back to a node already on the walk. Both steps are loops, not recursion, so
/// long chains cannot overflow the stack. Each node is walked at most once, so this is linear.
fn find_cycles(deps: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = deps.len();
    let mut waiting_on: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents = vec![Vec::new(); n];
    for (i, node_deps) in deps.iter().enumerate() {
        for &d in node_deps {
            dependents[d].push(i);
        }
    }
    let mut ready: VecDeque<usize> = (0..n).filter(|&i| waiting_on[i] == 0).collect();
    while let Some(done) = ready.pop_front() {
        for &i in &dependents[done] {
            waiting_on[i] -= 1;
            if waiting_on[i] == 0 {
                ready.push_back(i);
            }
        }
    }

    let stuck = |i: usize| waiting_on[i] > 0;
    // The walk that first reached each node, so a walk can tell its own trail from an older one.
    let mut walked_by: Vec<Option<usize>> = vec![None; n];
    let mut cycles = Vec::new();
    for start in (0..n).filter(|&i| stuck(i)) {
        if walked_by[start].is_some() {
            continue;
        }
        let mut trail = Vec::new();
        let mut at = start;
        loop {
            match walked_by[at] {
                Some(walk) if walk == start => {
                    let from = trail.iter().position(|&t| t == at).unwrap_or(0);
                    let mut cycle = trail.split_off(from);
                    let lowest = cycle
                        .iter()
                        .enumerate()
                        .min_by_key(|&(_, &node)| node)
                        .map_or(0, |(pos, _)| pos);
                    cycle.rotate_left(lowest);
                    cycles.push(cycle);
                    break;
                }
                // This walk joined an earlier one, whose cycle is already reported.
                Some(_) => break,
                None => {
                    walked_by[at] = Some(start);
                    trail.push(at);
                    match deps[at].iter().copied().find(|&d| stuck(d)) {
                        Some(next) => at = next,
                        // Unreachable for a stuck node, but a missing cycle beats a panic.
                        None => break,
                    }
                }
            }
        }
    }
    cycles
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::retry;
    use crate::spec::Approval;

    fn node(id: &str, deps: &[&str]) -> NodeSpec {
        NodeSpec {
            id: id.into(),
            kind: "echo".to_owned(),
            input: serde_json::json!({"message": id}),
            depends_on: deps.iter().map(|&d| d.into()).collect(),
            max_attempts: 3,
            backoff: retry::Policy::default(),
            timeout_ms: 1_000,
            approval: None,
            requires: BTreeMap::new(),
        }
    }

    /// A valid diamond: `a` first, `b` and `c` after it, `d` after both.
    fn diamond() -> Spec {
        Spec {
            id: "diamond".into(),
            description: Some("A diamond.".to_owned()),
            queue: None,
            requires_context: Vec::new(),
            nodes: vec![
                node("a", &[]),
                node("b", &["a"]),
                node("c", &["a"]),
                node("d", &["b", "c"]),
            ],
            max_running: None,
            max_starts_per_second: None,
            burst: None,
            schedule_to_start_timeout_ms: None,
            run_timeout_ms: None,
            schedules: Vec::new(),
        }
    }

    fn chain(len: usize) -> Spec {
        let ids: Vec<String> = (0..len).map(|i| format!("n{i}")).collect();
        let nodes = (0..len)
            .map(|i| match i {
                0 => node(&ids[0], &[]),
                _ => node(&ids[i], &[&ids[i - 1]]),
            })
            .collect();
        Spec {
            id: "chain".into(),
            description: None,
            queue: None,
            requires_context: Vec::new(),
            nodes,
            max_running: None,
            max_starts_per_second: None,
            burst: None,
            schedule_to_start_timeout_ms: None,
            run_timeout_ms: None,
            schedules: Vec::new(),
        }
    }

    fn violations(spec: &Spec) -> Vec<Violation> {
        validate(spec)
            .err()
            .map(|e| e.violations)
            .unwrap_or_default()
    }

    /// Breaks the diamond with `edit` and expects exactly one violation, at `field` of `node`,
    /// whose message mentions `says`.
    fn check(edit: impl FnOnce(&mut Spec), field: &str, node: Option<&str>, says: &str) {
        let mut spec = diamond();
        edit(&mut spec);
        let got = violations(&spec);
        assert_eq!(got.len(), 1, "want one violation at {field}, got {got:#?}");
        let v = &got[0];
        assert_eq!(v.field, field, "{v}");
        assert_eq!(v.node.as_ref().map(NodeId::as_str), node, "{v}");
        assert!(v.message.contains(says), "{v:?} should mention {says:?}");
    }

    #[test]
    fn the_diamond_is_valid() {
        assert_eq!(validate(&diamond()), Ok(()));
    }

    #[test]
    fn automation_id_and_description() {
        check(|s| s.id = "".into(), "id", None, "empty");
        check(
            |s| s.id = "-x".into(),
            "id",
            None,
            "start with a letter or digit",
        );
        check(|s| s.id = "a b".into(), "id", None, "' '");
        check(|s| s.id = "naïve".into(), "id", None, "'ï'");
        check(
            |s| s.id = "x".repeat(MAX_ID_CHARS + 1).as_str().into(),
            "id",
            None,
            "129 characters",
        );
        check(
            |s| s.description = Some("d".repeat(MAX_DESCRIPTION_CHARS + 1)),
            "description",
            None,
            "4097 characters",
        );
    }

    #[test]
    fn boundaries_that_are_still_valid() {
        let mut spec = diamond();
        spec.id = "A".repeat(MAX_ID_CHARS).as_str().into();
        spec.description = Some("d".repeat(MAX_DESCRIPTION_CHARS));
        let n = &mut spec.nodes[0];
        n.id = "0_.-a".into();
        n.kind = "k".repeat(MAX_KIND_CHARS);
        n.max_attempts = MAX_ATTEMPTS_LIMIT;
        n.timeout_ms = MAX_TIMEOUT_MS;
        n.backoff = retry::Policy {
            base_ms: 1,
            factor: MAX_BACKOFF_FACTOR,
            cap_ms: MAX_BACKOFF_CAP_MS,
            jitter: 1.0,
        };
        n.approval = Some(Approval {
            prompt: "p".repeat(MAX_PROMPT_CHARS),
        });
        // The string's quotes count, so this input is exactly at the limit.
        n.input = serde_json::Value::String("i".repeat(MAX_INPUT_BYTES - 2));
        spec.nodes[1].depends_on = vec!["0_.-a".into()];
        spec.nodes[2].depends_on = vec!["0_.-a".into()];
        spec.nodes[1].backoff = retry::Policy {
            base_ms: 5,
            factor: MIN_BACKOFF_FACTOR,
            cap_ms: 5,
            jitter: 0.0,
        };
        spec.nodes[2].max_attempts = 1;
        spec.nodes[2].timeout_ms = 1;
        assert_eq!(validate(&spec), Ok(()));
    }

    #[test]
    fn node_fields() {
        check(
            |s| s.nodes[3].id = "d/1".into(),
            "nodes[3].id",
            Some("d/1"),
            "'/'",
        );
        check(
            |s| s.nodes[3].kind = "".into(),
            "nodes[3].kind",
            Some("d"),
            "empty",
        );
        check(
            |s| s.nodes[3].kind = "k".repeat(MAX_KIND_CHARS + 1),
            "nodes[3].kind",
            Some("d"),
            "65 characters",
        );
        check(
            |s| s.nodes[3].kind = "_http".into(),
            "nodes[3].kind",
            Some("d"),
            "start with",
        );
        check(
            |s| s.nodes[2].input = serde_json::Value::String("i".repeat(MAX_INPUT_BYTES - 1)),
            "nodes[2].input",
            Some("c"),
            "larger than 262144 bytes",
        );
        check(
            |s| s.nodes[0].max_attempts = 0,
            "nodes[0].max_attempts",
            Some("a"),
            "between 1 and 100",
        );
        check(
            |s| s.nodes[0].max_attempts = 101,
            "nodes[0].max_attempts",
            Some("a"),
            "is 101",
        );
        check(
            |s| s.nodes[0].timeout_ms = 0,
            "nodes[0].timeout_ms",
            Some("a"),
            "between 1 and 86400000",
        );
        check(
            |s| s.nodes[0].timeout_ms = MAX_TIMEOUT_MS + 1,
            "nodes[0].timeout_ms",
            Some("a"),
            "86400001",
        );
        check(
            |s| s.nodes[0].approval = Some(Approval { prompt: " ".into() }),
            "nodes[0].approval.prompt",
            Some("a"),
            "empty",
        );
        check(
            |s| {
                s.nodes[0].approval = Some(Approval {
                    prompt: "p".repeat(MAX_PROMPT_CHARS + 1),
                });
            },
            "nodes[0].approval.prompt",
            Some("a"),
            "4097 characters",
        );
    }

    #[test]
    fn backoff() {
        check(
            |s| s.nodes[1].backoff.base_ms = 0,
            "nodes[1].backoff.base_ms",
            Some("b"),
            "at least 1",
        );
        check(
            |s| s.nodes[1].backoff.cap_ms = 999,
            "nodes[1].backoff.cap_ms",
            Some("b"),
            "at least base_ms (1000)",
        );
        check(
            |s| s.nodes[1].backoff.cap_ms = MAX_BACKOFF_CAP_MS + 1,
            "nodes[1].backoff.cap_ms",
            Some("b"),
            "at most",
        );
        check(
            |s| s.nodes[1].backoff.factor = 0.5,
            "nodes[1].backoff.factor",
            Some("b"),
            "between 1.0 and 10.0",
        );
        check(
            |s| s.nodes[1].backoff.factor = 10.5,
            "nodes[1].backoff.factor",
            Some("b"),
            "10.5",
        );
        check(
            |s| s.nodes[1].backoff.factor = f64::NAN,
            "nodes[1].backoff.factor",
            Some("b"),
            "finite",
        );
        check(
            |s| s.nodes[1].backoff.factor = f64::INFINITY,
            "nodes[1].backoff.factor",
            Some("b"),
            "finite",
        );
        check(
            |s| s.nodes[1].backoff.jitter = -0.1,
            "nodes[1].backoff.jitter",
            Some("b"),
            "between 0.0 and 1.0",
        );
        check(
            |s| s.nodes[1].backoff.jitter = 1.5,
            "nodes[1].backoff.jitter",
            Some("b"),
            "1.5",
        );
        check(
            |s| s.nodes[1].backoff.jitter = f64::NEG_INFINITY,
            "nodes[1].backoff.jitter",
            Some("b"),
            "finite",
        );
    }

    #[test]
    fn node_count() {
        check(|s| s.nodes.clear(), "nodes", None, "at least one node");
        assert_eq!(validate(&chain(MAX_NODES)), Ok(()));
        let got = violations(&chain(MAX_NODES + 1));
        assert_eq!(got.len(), 1, "{got:#?}");
        assert_eq!(got[0].field, "nodes");
        assert!(got[0].message.contains("1001 nodes"), "{}", got[0]);
    }

    #[test]
    fn dependencies() {
        check(
            |s| s.nodes[3].id = "a".into(),
            "nodes[3].id",
            Some("a"),
            "duplicate node id \"a\", first used by nodes[0]",
        );
        check(
            |s| s.nodes[3].depends_on[1] = "zz".into(),
            "nodes[3].depends_on[1]",
            Some("d"),
            "unknown node \"zz\"",
        );
        check(
            |s| s.nodes[3].depends_on.push("d".into()),
            "nodes[3].depends_on[2]",
            Some("d"),
            "itself",
        );
        check(
            |s| s.nodes[3].depends_on.push("b".into()),
            "nodes[3].depends_on[2]",
            Some("d"),
            "duplicate dependency \"b\", also depends_on[0]",
        );
        check(
            |s| s.nodes[0].depends_on.push("d".into()),
            "nodes[0].depends_on",
            Some("a"),
            "a -> d -> b -> a",
        );
    }

    #[test]
    fn cycles_are_searched_among_known_edges_only() {
        // `b` depends on itself and on an unknown node: those are reported, but no cycle is.
        let mut spec = diamond();
        spec.nodes[1].depends_on = vec!["b".into(), "zz".into(), "a".into()];
        let fields: Vec<_> = violations(&spec).into_iter().map(|v| v.field).collect();
        assert_eq!(fields, ["nodes[1].depends_on[0]", "nodes[1].depends_on[1]"]);

        // A real cycle next to a self-loop is still found.
        spec.nodes[0].depends_on = vec!["c".into()];
        let got = violations(&spec);
        assert_eq!(got.len(), 3, "{got:#?}");
        assert_eq!(
            got[2].message,
            "dependency cycle (each node depends on the next): a -> c -> a"
        );
    }

    #[test]
    fn each_disjoint_cycle_is_reported_once() {
        let spec = Spec {
            id: "two".into(),
            description: None,
            queue: None,
            requires_context: Vec::new(),
            nodes: vec![
                node("tail", &["x"]),
                node("x", &["y"]),
                node("y", &["x"]),
                node("p", &["q"]),
                node("q", &["r"]),
                node("r", &["p"]),
                node("free", &[]),
            ],
            max_running: None,
            max_starts_per_second: None,
            burst: None,
            schedule_to_start_timeout_ms: None,
            run_timeout_ms: None,
            schedules: Vec::new(),
        };
        let got: Vec<_> = violations(&spec)
            .into_iter()
            .map(|v| (v.field, v.message))
            .collect();
        let cycle =
            |path: &str| format!("dependency cycle (each node depends on the next): {path}");
        assert_eq!(
            got,
            [
                ("nodes[1].depends_on".to_owned(), cycle("x -> y -> x")),
                ("nodes[3].depends_on".to_owned(), cycle("p -> q -> r -> p")),
            ]
        );
    }

    #[test]
    fn a_thousand_node_cycle_is_refused_without_recursion() {
        let mut spec = chain(MAX_NODES);
        let last = spec.nodes[MAX_NODES - 1].id.clone();
        spec.nodes[0].depends_on.push(last);
        let got = violations(&spec);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].field, "nodes[0].depends_on");
        assert_eq!(got[0].node, Some("n0".into()));
        let path = got[0]
            .message
            .split_once(": ")
            .map(|(_, p)| p)
            .unwrap_or_default();
        let want: Vec<String> = std::iter::once(0)
            .chain((1..MAX_NODES).rev())
            .chain(std::iter::once(0))
            .map(|i| format!("n{i}"))
            .collect();
        assert_eq!(path, want.join(" -> "));
    }

    #[test]
    fn all_violations_are_reported_and_displayed() {
        let mut spec = diamond();
        spec.id = "".into();
        spec.nodes[1].max_attempts = 0;
        spec.nodes[2].depends_on = vec!["zz".into()];
        spec.nodes[3].backoff.jitter = 2.0;
        let err = validate(&spec).unwrap_err();
        assert_eq!(err.violations.len(), 4, "{err:#?}");
        assert_eq!(
            err.to_string(),
            "id: must not be empty; \
             nodes[1].max_attempts (node \"b\"): is 0; must be between 1 and 100; \
             nodes[2].depends_on[0] (node \"c\"): unknown node \"zz\"; \
             nodes[3].backoff.jitter (node \"d\"): is 2; must be between 0.0 and 1.0"
        );
    }

    fn requires(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    #[test]
    fn routing_fields_at_their_limits_are_valid() {
        let mut spec = diamond();
        spec.queue = Some("q".repeat(routing::MAX_QUEUE_CHARS));
        spec.requires_context = names("KEY_", MAX_CONTEXT_NAMES);
        spec.requires_context[0] = "K".repeat(routing::MAX_CONTEXT_NAME_CHARS);
        let longest = "l".repeat(routing::MAX_LABEL_CHARS);
        spec.nodes[0].requires = names("key", MAX_LABELS_PER_NODE)
            .into_iter()
            .map(|k| (k, "v".to_owned()))
            .collect();
        spec.nodes[0].requires.remove("key0");
        spec.nodes[0]
            .requires
            .insert(longest.clone(), longest.clone());
        // Several nodes may require one label, with one value.
        spec.nodes[3].requires = requires(&[("key1", "v"), ("example.com/gpu", "a100")]);
        assert_eq!(validate(&spec), Ok(()));
    }

    #[test]
    fn deadlines_within_their_bounds() {
        let mut spec = diamond();
        spec.schedule_to_start_timeout_ms = Some(MIN_RUN_DEADLINE_MS);
        spec.run_timeout_ms = Some(MAX_RUN_DEADLINE_MS);
        assert_eq!(validate(&spec), Ok(()));
        check(
            |s| s.schedule_to_start_timeout_ms = Some(MIN_RUN_DEADLINE_MS - 1),
            "schedule_to_start_timeout_ms",
            None,
            "is 999; must be 1000 to 2592000000 ms",
        );
        check(
            |s| s.run_timeout_ms = Some(MAX_RUN_DEADLINE_MS + 1),
            "run_timeout_ms",
            None,
            "is 2592000001; must be 1000",
        );
    }

    #[test]
    fn schedules_are_checked_field_by_field() {
        let schedule =
            |yaml: &str| -> ScheduleSpec { serde_yaml_ng::from_str(yaml).expect("yaml") };
        let mut spec = diamond();
        spec.schedules = vec![
            schedule("cron: '*/5 * * * *'"),
            schedule(
                "{id: fast, cron: '* * * * * *', timezone: Europe/Berlin, inputs: {n: 1}, \
                 overlap: queue_one, catch_up: skip_missed}",
            ),
        ];
        assert_eq!(validate(&spec), Ok(()));
        assert_eq!(spec.schedules[0].id, "default");
        let with = |yaml: &'static str| {
            move |s: &mut Spec| {
                s.schedules = vec![schedule("{id: a, cron: '* * * * *'}"), schedule(yaml)];
            }
        };
        check(
            with("{id: a, cron: '* * * * *'}"),
            "schedules[1].id",
            None,
            "duplicate schedule id",
        );
        check(
            with("{id: b, cron: '61 * * * *'}"),
            "schedules[1].cron",
            None,
            "not a cron pattern",
        );
        check(
            with("{id: b, cron: '* * * * *', timezone: Mars/Olympus}"),
            "schedules[1].timezone",
            None,
            "not an IANA time zone",
        );
        check(
            with("{id: b, cron: '* * * * *', inputs: [1]}"),
            "schedules[1].inputs",
            None,
            "object",
        );
        check(
            with("{id: b, cron: '* * * * *', catch_up: 1001}"),
            "schedules[1].catch_up",
            None,
            "at most 1000",
        );
        check(
            with("{id: 'b c', cron: '* * * * *'}"),
            "schedules[1].id",
            None,
            "",
        );
        check(
            |s| {
                s.schedules = (0..21)
                    .map(|i| schedule(&format!("{{id: s{i}, cron: '* * * * *'}}")))
                    .collect();
            },
            "schedules",
            None,
            "at most 20",
        );
        let unknown: Result<ScheduleSpec, _> =
            serde_yaml_ng::from_str("{cron: '* * * * *', overlap: sometimes}");
        assert!(unknown.is_err());
    }

    #[test]
    fn queue() {
        check(
            |s| s.queue = Some("GPU".to_owned()),
            "queue",
            None,
            "starts with 'G'; must be 1 to 64 characters: lowercase letters",
        );
        check(|s| s.queue = Some(String::new()), "queue", None, "is empty");
        check(
            |s| s.queue = Some("q".repeat(routing::MAX_QUEUE_CHARS + 1)),
            "queue",
            None,
            "is 65 characters long",
        );
    }

    #[test]
    fn requires_context() {
        check(
            |s| s.requires_context = vec!["A".into(), "B".into(), "API-KEY".into()],
            "requires_context[2]",
            None,
            "contains '-'",
        );
        check(
            |s| s.requires_context = vec!["A".into(), "1A".into()],
            "requires_context[1]",
            None,
            "starts with '1'",
        );
        check(
            |s| s.requires_context = vec!["A".into(), "B".into(), "A".into()],
            "requires_context[2]",
            None,
            "duplicate context name \"A\", also requires_context[0]",
        );
        check(
            |s| s.requires_context = names("KEY_", MAX_CONTEXT_NAMES + 1),
            "requires_context",
            None,
            "has 33 names; at most 32 are allowed",
        );
    }

    #[test]
    fn node_requires() {
        check(
            |s| s.nodes[3].requires = requires(&[("gpu", "a/100")]),
            "nodes[3].requires.gpu",
            Some("d"),
            "contains '/'",
        );
        check(
            |s| s.nodes[3].requires = requires(&[("gpu", "")]),
            "nodes[3].requires.gpu",
            Some("d"),
            "is empty",
        );
        // A bad key does not read well in a path, so the map that holds it is named.
        check(
            |s| s.nodes[3].requires = requires(&[("-gpu", "a100")]),
            "nodes[3].requires",
            Some("d"),
            "key \"-gpu\" starts with '-'",
        );
        check(
            |s| s.nodes[3].requires = requires(&[(&"k".repeat(64), "v")]),
            "nodes[3].requires",
            Some("d"),
            "is 64 characters long",
        );
        check(
            |s| {
                s.nodes[3].requires = names("key", MAX_LABELS_PER_NODE + 1)
                    .into_iter()
                    .map(|k| (k, "v".to_owned()))
                    .collect();
            },
            "nodes[3].requires",
            Some("d"),
            "has 17 labels; at most 16 are allowed",
        );
    }

    #[test]
    fn two_nodes_requiring_different_values_of_one_label() {
        let message = "requires gpu=h100, but node `b` requires gpu=a100: a run runs on one worker";
        check(
            |s| {
                s.nodes[1].requires = requires(&[("gpu", "a100")]);
                s.nodes[2].requires = requires(&[("gpu", "a100"), ("zone", "eu")]);
                s.nodes[3].requires = requires(&[("gpu", "h100"), ("zone", "eu")]);
            },
            "nodes[3].requires.gpu",
            Some("d"),
            message,
        );
        // The earlier node is named by its place when its id is empty (reported on its own).
        let mut spec = diamond();
        spec.nodes[0].id = "".into();
        spec.nodes[0].requires = requires(&[("gpu", "a100")]);
        spec.nodes[3].requires = requires(&[("gpu", "h100")]);
        let got: Vec<_> = violations(&spec)
            .into_iter()
            .map(|v| (v.field, v.message))
            .collect();
        assert!(
            got.contains(&(
                "nodes[3].requires.gpu".to_owned(),
                "requires gpu=h100, but nodes[0] requires gpu=a100: a run runs on one worker"
                    .to_owned()
            )),
            "{got:#?}"
        );
        // A value refused by its own rule is reported once, not also as a conflict.
        check(
            |s| {
                s.nodes[1].requires = requires(&[("gpu", "a100")]);
                s.nodes[3].requires = requires(&[("gpu", "a 100")]);
            },
            "nodes[3].requires.gpu",
            Some("d"),
            "contains ' '",
        );
    }

    #[test]
    fn a_node_with_an_empty_id_is_named_by_its_field_only() {
        check(|s| s.nodes[3].id = "".into(), "nodes[3].id", None, "empty");
    }

    #[test]
    fn input_size_counting_stops_at_the_limit() {
        let big = serde_json::json!({"k": "v".repeat(100)});
        assert!(fits_in_json(&big, 108));
        assert!(!fits_in_json(&big, 107));
    }
}
