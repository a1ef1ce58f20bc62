//! Reading specs from YAML, JSON, or a stored JSON value.
//!
//! Every entry point validates what it read, so a [`Spec`] that comes out of here is always valid.

use super::validate::{SpecError, validate};
use super::{Spec, storable};

/// Largest spec text accepted, in bytes: 64 MiB.
///
/// Checked before parsing, so that an oversized upload costs nothing but the check.
pub const MAX_TEXT_BYTES: usize = 64 * 1024 * 1024;

/// Parses a spec from JSON if its text starts with `{`, and from YAML otherwise.
///
/// Leading whitespace and a byte order mark are skipped when looking for the `{`.
pub fn parse(text: &str) -> Result<Spec, SpecError> {
    check_size(text)?;
    let body = text.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    if body.starts_with('{') {
        // The JSON reader refuses a byte order mark, and the leading whitespace means nothing.
        parse_json(body)
    } else {
        parse_yaml(text)
    }
}

/// Parses and validates a spec written in YAML.
pub fn parse_yaml(text: &str) -> Result<Spec, SpecError> {
    check_size(text)?;
    if let Some((field, number)) = storable::first_non_finite_yaml(text) {
        return Err(SpecError::one(
            field,
            format!("must be a finite number, not {number}"),
        ));
    }
    finish(serde_path_to_error::deserialize(
        serde_yaml_ng::Deserializer::from_str(text),
    ))
}

/// Parses and validates a spec written in JSON. Anything after the object is an error.
pub fn parse_json(text: &str) -> Result<Spec, SpecError> {
    check_size(text)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let spec = finish(serde_path_to_error::deserialize(&mut de))?;
    de.end().map_err(|e| SpecError::one(ROOT, e.to_string()))?;
    Ok(spec)
}

/// Reads back a spec that the store saved as JSON, and validates it again.
///
/// A stored spec that no longer reads, or that breaks a rule added since it was saved, is an
/// error naming the field, never a panic, so the caller can block the one run that uses it.
pub fn from_stored(value: serde_json::Value) -> Result<Spec, SpecError> {
    finish(serde_path_to_error::deserialize(value))
}

/// The field of violations that concern the spec as a whole.
const ROOT: &str = "spec";

fn check_size(text: &str) -> Result<(), SpecError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(SpecError::one(
            ROOT,
            format!(
                "text is {} bytes; at most {MAX_TEXT_BYTES} ({} MiB) are allowed",
                text.len(),
                MAX_TEXT_BYTES >> 20
            ),
        ));
    }
    Ok(())
}

/// Turns a deserialization result into a valid spec or a one-violation error at the failing path.
fn finish<E: std::fmt::Display>(
    read: Result<Spec, serde_path_to_error::Error<E>>,
) -> Result<Spec, SpecError> {
    let spec = read.map_err(|e| {
        let field = field_of(e.path());
        let message = strip_path_prefix(&e.inner().to_string(), &field).to_owned();
        SpecError::one(field, message)
    })?;
    validate(&spec)?;
    Ok(spec)
}

/// The message without the YAML reader's own path prefix (`nodes[1]: unknown field ..`), which
/// names the field or an object holding it, and so repeats what the field already says.
fn strip_path_prefix<'m>(message: &'m str, field: &str) -> &'m str {
    match message.split_once(": ") {
        Some((head, rest))
            if field == head
                || field
                    .strip_prefix(head)
                    .is_some_and(|tail| tail.starts_with(['.', '['])) =>
        {
            rest
        }
        _ => message,
    }
}

/// Spells a deserialization path the way [`validate`] spells fields: `nodes[2].max_attempts`.
///
/// The path stops before the first key that could not be read (`?` in the path's own display),
/// since the violation then belongs to the object holding that key. The empty path is the spec.
fn field_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;

    let mut field = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => field.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(key);
            }
            Segment::Unknown => break,
        }
    }
    if field.is_empty() {
        ROOT.to_owned()
    } else {
        field
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::retry;
    use crate::spec::{MAX_ATTEMPTS_DEFAULT, NodeSpec, TIMEOUT_MS_DEFAULT};

    const YAML: &str = r#"
id: nightly-report
description: Builds and mails the nightly report.
nodes:
  - id: fetch
    kind: http
    input:
      url: https://example.com/data
      headers: { accept: application/json }
  - id: build
    kind: exec
    depends_on: [fetch]
    max_attempts: 5
    timeout_ms: 60000
    backoff: { base_ms: 500, factor: 3.0, cap_ms: 10000, jitter: 0.1 }
  - id: mail
    kind: echo
    depends_on: [build]
    approval:
      prompt: Send the report?
"#;

    const JSON: &str = r#"{
  "id": "nightly-report",
  "description": "Builds and mails the nightly report.",
  "nodes": [
    {"id": "fetch", "kind": "http",
     "input": {"url": "https://example.com/data", "headers": {"accept": "application/json"}}},
    {"id": "build", "kind": "exec", "depends_on": ["fetch"], "max_attempts": 5,
     "timeout_ms": 60000, "backoff": {"base_ms": 500, "factor": 3.0, "cap_ms": 10000, "jitter": 0.1}},
    {"id": "mail", "kind": "echo", "depends_on": ["build"],
     "approval": {"prompt": "Send the report?"}}
  ]
}"#;

    /// Expects `text` to be refused with exactly one violation at `field` mentioning `says`.
    fn check(text: &str, field: &str, says: &str) {
        let err = parse(text).expect_err(text);
        assert_eq!(err.violations.len(), 1, "{err:#?}");
        let v = &err.violations[0];
        assert_eq!(v.field, field, "{v}");
        assert!(v.message.contains(says), "{v:?} should mention {says:?}");
    }

    #[test]
    fn yaml_and_json_read_the_same_spec() {
        let from_yaml = parse_yaml(YAML).unwrap();
        assert_eq!(parse_json(JSON).unwrap(), from_yaml);
        assert_eq!(parse(YAML).unwrap(), from_yaml);
        assert_eq!(parse(&format!("\u{feff}\n  {JSON}")).unwrap(), from_yaml);
        // JSON is YAML too, so the YAML reader agrees.
        assert_eq!(parse_yaml(JSON).unwrap(), from_yaml);
        assert_eq!(from_yaml.nodes[1].backoff.factor, 3.0);
        assert_eq!(from_yaml.nodes[1].depends_on, ["fetch".into()]);
    }

    #[test]
    fn defaults_fill_what_the_author_left_out() {
        let spec = parse("id: x\nnodes:\n  - id: a\n    kind: echo\n").unwrap();
        let want = NodeSpec {
            id: "a".into(),
            kind: "echo".to_owned(),
            input: serde_json::Value::Null,
            depends_on: Vec::new(),
            max_attempts: MAX_ATTEMPTS_DEFAULT,
            backoff: retry::Policy::default(),
            timeout_ms: TIMEOUT_MS_DEFAULT,
            approval: None,
            requires: BTreeMap::new(),
        };
        assert_eq!(spec.nodes, [want]);
        assert_eq!(spec.description, None);
        assert_eq!((MAX_ATTEMPTS_DEFAULT, TIMEOUT_MS_DEFAULT), (3, 300_000));
        // A partial backoff keeps the defaults of the fields it leaves out.
        let spec =
            parse(r#"{"id":"x","nodes":[{"id":"a","kind":"echo","backoff":{"base_ms":7}}]}"#)
                .unwrap();
        let want = retry::Policy {
            base_ms: 7,
            ..retry::Policy::default()
        };
        assert_eq!(spec.nodes[0].backoff, want);
    }

    #[test]
    fn errors_name_the_field_path() {
        let bad_attempts = YAML.replace("max_attempts: 5", "max_attempts: lots");
        check(&bad_attempts, "nodes[1].max_attempts", "invalid type");
        check(&bad_attempts, "nodes[1].max_attempts", "line 13 column");
        let bad_attempts = JSON.replace(r#""max_attempts": 5"#, r#""max_attempts": -1"#);
        check(&bad_attempts, "nodes[1].max_attempts", "line 7 column");
        check(
            "id: x\nnodes:\n  - kind: echo\n",
            "nodes[0]",
            "missing field `id`",
        );
        check(r#"{"nodes": []}"#, "spec", "missing field `id`");
        check("", "spec", "");
        check("id: [x]\nnodes: []\n", "id", "invalid type");
    }

    #[test]
    fn the_yaml_path_prefix_is_not_repeated() {
        let strip = |message, field| strip_path_prefix(message, field);
        assert_eq!(
            strip("nodes[1]: unknown field `x`", "nodes[1].x"),
            "unknown field `x`"
        );
        assert_eq!(strip("nodes: bad", "nodes"), "bad");
        assert_eq!(strip("node: bad", "nodes"), "node: bad");
        assert_eq!(strip("invalid type: map", "id"), "invalid type: map");
        let err = parse(&YAML.replace("max_attempts:", "retries:")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("nodes[1].retries: unknown field `retries`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        check(
            &YAML.replace("max_attempts:", "retries:"),
            "nodes[1].retries",
            "unknown field `retries`",
        );
        check(
            &JSON.replace(r#""jitter""#, r#""jiter""#),
            "nodes[1].backoff.jiter",
            "unknown field `jiter`",
        );
        check(
            &YAML.replace("description:", "owner:"),
            "owner",
            "unknown field `owner`",
        );
        check(
            &YAML.replace("prompt:", "question:"),
            "nodes[2].approval.question",
            "unknown field",
        );
    }

    #[test]
    fn syntax_errors_and_trailing_text() {
        check("{\"id\": \"x\",", "spec", "EOF");
        check(&format!("{JSON} {{}}"), "spec", "trailing characters");
        check("id: x\nnodes: [\n", "nodes", "line 3 column 1");
        check(
            "id: x\nnodes: []\n---\nid: y\nnodes: []\n",
            "spec",
            "more than one document",
        );
    }

    #[test]
    fn parsing_also_validates() {
        let err =
            parse(&YAML.replace("depends_on: [build]", "depends_on: [build, nope]")).unwrap_err();
        assert_eq!(err.violations.len(), 1, "{err}");
        assert_eq!(err.violations[0].field, "nodes[2].depends_on[1]");
        assert_eq!(err.violations[0].node, Some("mail".into()));
        let err = parse(&YAML.replace("factor: 3.0", "factor: .nan")).unwrap_err();
        assert_eq!(err.violations[0].field, "nodes[1].backoff.factor");
        assert!(err.violations[0].message.contains("finite"), "{err}");
    }

    #[test]
    fn oversized_text_is_refused_before_parsing() {
        // Not a spec at all: the size check comes first, so the content never matters.
        let huge = " ".repeat(MAX_TEXT_BYTES + 1);
        for read in [parse, parse_yaml, parse_json] {
            let err = read(&huge).unwrap_err();
            assert_eq!(err.violations.len(), 1, "{err}");
            assert!(err.to_string().contains("67108865 bytes"), "{err}");
        }
        let huge_json = format!("{{{}", " ".repeat(MAX_TEXT_BYTES));
        check(&huge_json, "spec", "64 MiB");
    }

    #[test]
    fn a_thousand_node_chain_parses() {
        let mut text = String::from("id: chain\nnodes:\n  - {id: n0, kind: echo}\n");
        for i in 1..1_000 {
            text.push_str(&format!(
                "  - {{id: n{i}, kind: echo, depends_on: [n{}]}}\n",
                i - 1
            ));
        }
        assert_eq!(parse(&text).unwrap().nodes.len(), 1_000);
        text.push_str("  - {id: n1000, kind: echo}\n");
        check(&text, "nodes", "1001 nodes");
    }

    const ROUTED_YAML: &str = r#"
id: train
queue: gpu
requires_context: [OPENAI_API_KEY, HF_TOKEN]
nodes:
  - id: fetch
    kind: http
    input: {url: https://example.com/data}
  - id: fit
    kind: exec
    depends_on: [fetch]
    requires: {gpu: a100, example.com/zone: eu-west}
"#;

    const ROUTED_JSON: &str = r#"{
  "id": "train",
  "queue": "gpu",
  "requires_context": ["OPENAI_API_KEY", "HF_TOKEN"],
  "nodes": [
    {"id": "fetch", "kind": "http", "input": {"url": "https://example.com/data"}},
    {"id": "fit", "kind": "exec", "depends_on": ["fetch"],
     "requires": {"gpu": "a100", "example.com/zone": "eu-west"}}
  ]
}"#;

    #[test]
    fn routing_fields_read_from_yaml_and_json_and_round_trip() {
        let spec = parse(ROUTED_YAML).unwrap();
        assert_eq!(parse(ROUTED_JSON).unwrap(), spec);
        assert_eq!(spec.queue.as_deref(), Some("gpu"));
        assert_eq!(spec.requires_context, ["OPENAI_API_KEY", "HF_TOKEN"]);
        assert!(spec.nodes[0].requires.is_empty());
        assert_eq!(
            spec.nodes[1].requires,
            BTreeMap::from([
                ("example.com/zone".to_owned(), "eu-west".to_owned()),
                ("gpu".to_owned(), "a100".to_owned()),
            ])
        );

        let stored = serde_json::to_value(&spec).unwrap();
        assert_eq!(stored["queue"], "gpu");
        assert_eq!(stored["nodes"][1]["requires"]["gpu"], "a100");
        assert_eq!(from_stored(stored), Ok(spec.clone()));
        let yaml = serde_yaml_ng::to_string(&spec).unwrap();
        assert_eq!(parse_yaml(&yaml), Ok(spec.clone()));
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(parse_json(&json), Ok(spec));
    }

    #[test]
    fn a_spec_without_routing_fields_serializes_as_before_them() {
        let spec = parse(
            "id: x
description: d
nodes:
  - {id: a, kind: echo}
  - {id: b, kind: http, depends_on: [a], input: {url: u}, approval: {prompt: p}}
",
        )
        .unwrap();
        assert_eq!((spec.queue.as_deref(), spec.queue()), (None, "default"));
        // The form stored before the routing fields existed, byte for byte: a spec that names
        // no queue, context or labels keeps it, so stored specs and their versions stay equal.
        let before = concat!(
            r#"{"id":"x","description":"d","nodes":["#,
            r#"{"id":"a","kind":"echo","input":null,"max_attempts":3,"#,
            r#""backoff":{"base_ms":1000,"factor":2.0,"cap_ms":300000,"jitter":0.2},"#,
            r#""timeout_ms":300000},"#,
            r#"{"id":"b","kind":"http","input":{"url":"u"},"depends_on":["a"],"max_attempts":3,"#,
            r#""backoff":{"base_ms":1000,"factor":2.0,"cap_ms":300000,"jitter":0.2},"#,
            r#""timeout_ms":300000,"approval":{"prompt":"p"}}]}"#,
        );
        assert_eq!(serde_json::to_string(&spec).unwrap(), before);
        // Empty routing fields written out are read as absent, and dropped again.
        let explicit = parse(
            r#"{"id":"x","description":"d","queue":null,"requires_context":[],
            "nodes":[{"id":"a","kind":"echo","requires":{}},
            {"id":"b","kind":"http","depends_on":["a"],"input":{"url":"u"},"approval":{"prompt":"p"}}]}"#,
        )
        .unwrap();
        assert_eq!(explicit, spec);
        assert_eq!(serde_json::to_string(&explicit).unwrap(), before);
    }

    #[test]
    fn routing_fields_are_validated_when_parsed() {
        check(
            &ROUTED_YAML.replace("queue: gpu", "queue: GPU"),
            "queue",
            "starts with 'G'",
        );
        check(
            &ROUTED_YAML.replace("HF_TOKEN", "HF-TOKEN"),
            "requires_context[1]",
            "contains '-'",
        );
        check(
            &ROUTED_YAML.replace("requires: {", "requires: {gpu2: [a],"),
            "nodes[1].requires.gpu2",
            "invalid type",
        );
        check(
            &ROUTED_YAML.replace("queue: gpu", "queue: [gpu]"),
            "queue",
            "invalid type",
        );
    }

    #[test]
    fn stored_specs_round_trip_and_bad_ones_are_errors() {
        let spec = parse(YAML).unwrap();
        let stored = serde_json::to_value(&spec).unwrap();
        assert_eq!(from_stored(stored), Ok(spec));

        let err = from_stored(serde_json::json!({"id": "x", "nodes": 3})).unwrap_err();
        assert_eq!(err.violations[0].field, "nodes");
        let err = from_stored(serde_json::json!("not a spec")).unwrap_err();
        assert_eq!(err.violations[0].field, "spec");
        let err = from_stored(serde_json::json!({"id": "x", "nodes": []})).unwrap_err();
        assert_eq!(err.violations[0].field, "nodes");
        assert!(
            err.violations[0].message.contains("at least one node"),
            "{err}"
        );
    }
}
