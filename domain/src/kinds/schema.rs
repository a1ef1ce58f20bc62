//! A node kind's input schema: a small, documented subset of JSON Schema, held as JSON.
//!
//! # Why a subset of our own
//! Inputs are checked when an automation is stored, in the coordinator, and node kinds declare
//! their schemas in code or as JSON. The `jsonschema` crate does all of JSON Schema, but pulls a
//! regular-expression engine, URL and format parsers and much more into every build, on 2-core
//! machines where build time is the budget; the other validators checked pull `regex` too. The
//! keywords below cover what the built-in kinds need and what a custom kind can reasonably
//! declare, and the messages are ours: `input.ms: must be an integer, not "100"`.
//!
//! # The subset
//! - `type`: `object`, `string`, `integer`, `number`, `boolean`, `array` or `null`, or a list of
//!   them. An `integer` is a number written without a fraction or exponent (`100`, not `100.0`
//!   or `1e2`): that is how handlers read whole numbers.
//! - `properties`, `required`, `additionalProperties` (`false`, `true`, or a schema every other
//!   property must match): objects.
//! - `minimum`, `maximum` (inclusive): numbers.
//! - `minLength`, `maxLength` (in characters): strings.
//! - `minItems`, `maxItems`, `items` (one schema for every item): arrays.
//! - `enum`: the value is one of these (numbers compare by value: `1` equals `1.0`).
//! - `description`, `title`: for people; they check nothing.
//!
//! Any other keyword is refused with its path, so that a schema never seems to check something
//! it does not (`pattern`, `format`, `$ref`, `oneOf`, … are not supported). A missing keyword
//! checks nothing: `{}` accepts any input.

use std::cmp::Ordering;
use std::fmt;

use serde_json::{Map, Number, Value};

/// The keywords a schema may use.
pub const KEYWORDS: [&str; 14] = [
    "type",
    "properties",
    "required",
    "additionalProperties",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "items",
    "enum",
    "description",
    "title",
];

/// The names `type` may use.
pub const TYPES: [&str; 7] = [
    "object", "string", "integer", "number", "boolean", "array", "null",
];

/// A checked input schema: it uses only the supported keywords, each well formed.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema(Value);

/// A schema that uses something outside the subset, with every problem found.
///
/// Never empty: an error always carries at least one problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Joined(.problems))]
pub struct SchemaError {
    /// The problems, in the order of the schema's keys.
    pub problems: Vec<Problem>,
}

/// One problem with a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the schema: `input_schema.properties.ms.type`.
    pub path: String,
    /// What is wrong, for people.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

struct Joined<'a>(&'a [Problem]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            problem.fmt(f)?;
        }
        Ok(())
    }
}

impl Schema {
    /// Checks that `value` is a schema of the subset.
    pub fn new(value: Value) -> Result<Self, SchemaError> {
        let mut problems = Vec::new();
        check(&value, "input_schema", &mut problems);
        if problems.is_empty() {
            Ok(Self(value))
        } else {
            Err(SchemaError { problems })
        }
    }

    /// The schema as JSON.
    pub fn as_value(&self) -> &Value {
        &self.0
    }

    /// The schema as JSON.
    pub fn into_value(self) -> Value {
        self.0
    }
}

impl serde::Serialize for Schema {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// `path` with an object key appended: `.key` for plain names, `["a key"]` for others, so that a
/// path reads the same way whatever the key holds.
pub(crate) fn key_path(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if plain {
        format!("{path}.{key}")
    } else {
        format!("{path}[{}]", Value::from(key))
    }
}

/// A value for a message: compact JSON, cut short when long.
pub(crate) fn shown(value: &Value) -> String {
    const MAX_CHARS: usize = 80;
    let text = value.to_string();
    if text.chars().count() <= MAX_CHARS {
        text
    } else {
        let cut: String = text.chars().take(MAX_CHARS).collect();
        format!("{cut}…")
    }
}

/// Compares two numbers by value, exactly when both are whole.
pub(crate) fn compare(a: &Number, b: &Number) -> Option<Ordering> {
    let whole = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (whole(a), whole(b)) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

fn check(schema: &Value, path: &str, out: &mut Vec<Problem>) {
    let mut problem = |at: String, message: String| out.push(Problem { path: at, message });
    let Some(map) = schema.as_object() else {
        problem(
            path.to_owned(),
            format!("must be a schema (a JSON object), not {}", shown(schema)),
        );
        return;
    };
    let mut nested = Vec::new();
    for (key, value) in map {
        let at = key_path(path, key);
        match key.as_str() {
            "type" => {
                if let Some(message) = check_type(value) {
                    problem(at, message);
                }
            }
            "properties" => match value.as_object() {
                Some(properties) => {
                    for (name, sub) in properties {
                        nested.push((key_path(&at, name), sub));
                    }
                }
                None => problem(
                    at,
                    format!(
                        "must be an object of property name to schema, not {}",
                        shown(value)
                    ),
                ),
            },
            "required" => {
                if let Some(message) = check_names(value) {
                    problem(at, message);
                }
            }
            "additionalProperties" => {
                if !value.is_boolean() {
                    nested.push((at, value));
                }
            }
            "minimum" | "maximum" => {
                if !value.is_number() {
                    problem(at, format!("must be a number, not {}", shown(value)));
                }
            }
            "minLength" | "maxLength" | "minItems" | "maxItems" => {
                if value.as_u64().is_none() {
                    problem(
                        at,
                        format!("must be a whole number, at least 0, not {}", shown(value)),
                    );
                }
            }
            "items" => nested.push((at, value)),
            "enum" => {
                if value.as_array().is_none_or(Vec::is_empty) {
                    problem(
                        at,
                        format!("must be a non-empty array of values, not {}", shown(value)),
                    );
                }
            }
            "description" | "title" => {
                if !value.is_string() {
                    problem(at, format!("must be a string, not {}", shown(value)));
                }
            }
            _ => problem(
                at,
                format!(
                    "unknown keyword; the supported ones are {}",
                    KEYWORDS.join(", ")
                ),
            ),
        }
    }
    check_bounds(map, path, "minimum", "maximum", out);
    check_bounds(map, path, "minLength", "maxLength", out);
    check_bounds(map, path, "minItems", "maxItems", out);
    check_required_allowed(map, path, out);
    for (at, sub) in nested {
        check(sub, &at, out);
    }
}

fn check_type(value: &Value) -> Option<String> {
    let known = |name: &str| TYPES.contains(&name);
    let expected = || format!("expected one of {}", TYPES.join(", "));
    match value {
        Value::String(name) if known(name) => None,
        Value::String(name) => Some(format!("unknown type {name:?}; {}", expected())),
        Value::Array(names) if !names.is_empty() => {
            for (i, name) in names.iter().enumerate() {
                match name.as_str() {
                    Some(n) if !known(n) => {
                        return Some(format!("unknown type {n:?}; {}", expected()));
                    }
                    Some(_) if names[..i].contains(name) => {
                        return Some(format!("lists {name} twice"));
                    }
                    Some(_) => {}
                    None => return Some(format!("must list type names, not {}", shown(name))),
                }
            }
            None
        }
        other => Some(format!(
            "must be a type name or a non-empty list of them, not {}",
            shown(other)
        )),
    }
}

fn check_names(value: &Value) -> Option<String> {
    let names = value.as_array().filter(|a| a.iter().all(Value::is_string));
    let Some(names) = names else {
        return Some(format!(
            "must be an array of property names, not {}",
            shown(value)
        ));
    };
    names
        .iter()
        .enumerate()
        .find(|(i, name)| names[..*i].contains(name))
        .map(|(_, name)| format!("lists {name} twice"))
}

/// A lower bound above the upper one accepts nothing: surely a mistake.
fn check_bounds(
    map: &Map<String, Value>,
    path: &str,
    low: &str,
    high: &str,
    out: &mut Vec<Problem>,
) {
    let (Some(Value::Number(l)), Some(Value::Number(h))) = (map.get(low), map.get(high)) else {
        return;
    };
    if compare(l, h) == Some(Ordering::Greater) {
        out.push(Problem {
            path: key_path(path, low),
            message: format!("{l} is above {high} {h}: nothing would be accepted"),
        });
    }
}

/// A required property that `additionalProperties: false` forbids accepts nothing either.
fn check_required_allowed(map: &Map<String, Value>, path: &str, out: &mut Vec<Problem>) {
    if map.get("additionalProperties") != Some(&Value::Bool(false)) {
        return;
    }
    let Some(required) = map.get("required").and_then(Value::as_array) else {
        return;
    };
    let properties = map.get("properties").and_then(Value::as_object);
    for name in required.iter().filter_map(Value::as_str) {
        if !properties.is_some_and(|p| p.contains_key(name)) {
            out.push(Problem {
                path: key_path(path, "required"),
                message: format!(
                    "{name:?} is required but not in properties, and additionalProperties is false: nothing would be accepted"
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn problems(schema: Value) -> Vec<String> {
        match Schema::new(schema) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(ToString::to_string).collect(),
        }
    }

    /// `schema` is refused with exactly one problem, at `path`, saying `says`.
    fn check(schema: Value, path: &str, says: &str) {
        let text = schema.to_string();
        let found = problems(schema);
        assert_eq!(found.len(), 1, "{text}: {found:?}");
        assert!(
            found[0].starts_with(&format!("{path}: ")) && found[0].contains(says),
            "{text}: {found:?}, expected {path}: …{says}…"
        );
    }

    #[test]
    fn every_supported_keyword_is_accepted() {
        let schema = json!({
            "title": "t", "description": "d",
            "type": ["object", "null"],
            "properties": {
                "n": {"type": "integer", "minimum": 0, "maximum": 10},
                "x": {"type": "number", "minimum": -1.5},
                "s": {"type": "string", "minLength": 1, "maxLength": 3, "enum": ["a", "bb"]},
                "a": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "boolean"}},
                "m": {"type": "object", "additionalProperties": {"type": "string"}},
                "any": {}
            },
            "required": ["n"],
            "additionalProperties": false
        });
        assert_eq!(problems(schema), Vec::<String>::new());
        assert_eq!(problems(json!({})), Vec::<String>::new());
    }

    #[test]
    fn unknown_keywords_are_refused_with_their_path() {
        check(
            json!({"pattern": "^a"}),
            "input_schema.pattern",
            "unknown keyword",
        );
        check(
            json!({"properties": {"url": {"type": "string", "format": "uri"}}}),
            "input_schema.properties.url.format",
            "unknown keyword",
        );
        check(
            json!({"items": {"oneOf": []}}),
            "input_schema.items.oneOf",
            "unknown keyword",
        );
        check(
            json!({"additionalProperties": {"$ref": "#"}}),
            "input_schema.additionalProperties[\"$ref\"]",
            "unknown keyword",
        );
    }

    #[test]
    fn malformed_keywords_are_refused() {
        check(json!("string"), "input_schema", "must be a schema");
        check(
            json!({"type": "text"}),
            "input_schema.type",
            "unknown type \"text\"",
        );
        check(json!({"type": []}), "input_schema.type", "non-empty list");
        check(
            json!({"type": ["null", "null"]}),
            "input_schema.type",
            "twice",
        );
        check(
            json!({"properties": []}),
            "input_schema.properties",
            "must be an object",
        );
        check(
            json!({"properties": {"a": true}}),
            "input_schema.properties.a",
            "must be a schema",
        );
        check(
            json!({"required": "a"}),
            "input_schema.required",
            "array of property names",
        );
        check(
            json!({"required": ["a", "a"]}),
            "input_schema.required",
            "twice",
        );
        check(
            json!({"minimum": "0"}),
            "input_schema.minimum",
            "must be a number",
        );
        check(
            json!({"maxLength": -1}),
            "input_schema.maxLength",
            "whole number",
        );
        check(
            json!({"minItems": 1.5}),
            "input_schema.minItems",
            "whole number",
        );
        check(json!({"enum": []}), "input_schema.enum", "non-empty array");
        check(
            json!({"items": [{}]}),
            "input_schema.items",
            "must be a schema",
        );
        check(
            json!({"description": 1}),
            "input_schema.description",
            "must be a string",
        );
    }

    #[test]
    fn schemas_that_accept_nothing_are_refused() {
        check(
            json!({"minimum": 5, "maximum": 4}),
            "input_schema.minimum",
            "above maximum",
        );
        assert_eq!(
            problems(json!({"minimum": 4, "maximum": 4})),
            Vec::<String>::new()
        );
        check(
            json!({"minLength": 2, "maxLength": 1}),
            "input_schema.minLength",
            "above maxLength",
        );
        check(
            json!({"required": ["url"], "properties": {"uri": {}}, "additionalProperties": false}),
            "input_schema.required",
            "\"url\" is required but not in properties",
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let found = problems(json!({
            "type": "text",
            "properties": {"a": {"format": "x"}, "b": {"minimum": "1"}},
            "pattern": "x"
        }));
        assert_eq!(found.len(), 4, "{found:?}");
    }

    #[test]
    fn odd_keys_are_quoted_in_paths() {
        assert_eq!(key_path("input", "ms"), "input.ms");
        assert_eq!(key_path("input", "X-Trace_1"), "input.X-Trace_1");
        assert_eq!(key_path("input", "a.b"), "input[\"a.b\"]");
        assert_eq!(key_path("input", ""), "input[\"\"]");
    }
}
