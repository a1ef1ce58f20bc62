//! Checking a node's input against its kind's [`Schema`], reporting every violation.

use std::cmp::Ordering;
use std::fmt;

use serde_json::{Map, Value};

use super::schema::{Schema, compare, key_path, shown};

/// Most violations one input reports; the rest are counted in a last one. An author fixes the
/// first hundred before reading further, and the error stays a readable size.
pub const MAX_VIOLATIONS: usize = 100;

/// One way an input breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputViolation {
    /// Where, from the input: `input`, `input.ms`, `input.headers.Accept`, `input.argv[1]`.
    pub path: String,
    /// What is wrong, for people: `must be an integer, not "100"`.
    pub message: String,
}

impl fmt::Display for InputViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl Schema {
    /// Checks `input` and returns every violation, in the order of the schema's required
    /// properties, then of the input's keys and items; empty when the input is accepted.
    pub fn validate(&self, input: &Value) -> Vec<InputViolation> {
        let mut out = Out::default();
        check(self.as_value(), input, "input", &mut out);
        if out.omitted > 0 {
            out.found.push(InputViolation {
                path: "input".to_owned(),
                message: format!("and {} more problems not listed", out.omitted),
            });
        }
        out.found
    }
}

#[derive(Default)]
struct Out {
    found: Vec<InputViolation>,
    omitted: usize,
}

impl Out {
    fn push(&mut self, path: String, message: String) {
        if self.found.len() < MAX_VIOLATIONS {
            self.found.push(InputViolation { path, message });
        } else {
            self.omitted += 1;
        }
    }
}

fn check(schema: &Value, value: &Value, path: &str, out: &mut Out) {
    // A checked schema is an object; `true` (from additionalProperties) accepts anything.
    let Some(schema) = schema.as_object() else {
        return;
    };
    // A value of the wrong type or outside the enum makes its other checks noise.
    if let Some(types) = schema.get("type")
        && !type_matches(types, value)
    {
        let message = format!("must be {}, not {}", described(types), shown(value));
        out.push(path.to_owned(), message);
        return;
    }
    if let Some(Value::Array(allowed)) = schema.get("enum")
        && !allowed.iter().any(|a| same(a, value))
    {
        let listed: Vec<String> = allowed.iter().map(shown).collect();
        let message = format!("must be one of {}, not {}", listed.join(", "), shown(value));
        out.push(path.to_owned(), message);
        return;
    }
    match value {
        Value::Number(n) => {
            if let Some(Value::Number(min)) = schema.get("minimum")
                && compare(n, min) == Some(Ordering::Less)
            {
                out.push(path.to_owned(), format!("must be at least {min}, not {n}"));
            }
            if let Some(Value::Number(max)) = schema.get("maximum")
                && compare(n, max) == Some(Ordering::Greater)
            {
                out.push(path.to_owned(), format!("must be at most {max}, not {n}"));
            }
        }
        Value::String(s) => {
            let chars = s.chars().count() as u64;
            let bound = |key| schema.get(key).and_then(Value::as_u64);
            if let Some(min) = bound("minLength")
                && chars < min
            {
                let message = format!(
                    "must be at least {} long, not {chars}",
                    count(min, "character")
                );
                out.push(path.to_owned(), message);
            }
            if let Some(max) = bound("maxLength")
                && chars > max
            {
                let message = format!(
                    "must be at most {} long, not {chars}",
                    count(max, "character")
                );
                out.push(path.to_owned(), message);
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            let bound = |key| schema.get(key).and_then(Value::as_u64);
            if let Some(min) = bound("minItems")
                && len < min
            {
                out.push(
                    path.to_owned(),
                    format!("must have at least {}, not {len}", count(min, "item")),
                );
            }
            if let Some(max) = bound("maxItems")
                && len > max
            {
                out.push(
                    path.to_owned(),
                    format!("must have at most {}, not {len}", count(max, "item")),
                );
            }
            if let Some(item) = schema.get("items") {
                for (i, value) in items.iter().enumerate() {
                    check(item, value, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Object(fields) => check_object(schema, fields, path, out),
        Value::Null | Value::Bool(_) => {}
    }
}

fn check_object(
    schema: &Map<String, Value>,
    fields: &Map<String, Value>,
    path: &str,
    out: &mut Out,
) {
    if let Some(Value::Array(required)) = schema.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !fields.contains_key(name) {
                out.push(key_path(path, name), "required".to_owned());
            }
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    for (name, value) in fields {
        let at = key_path(path, name);
        match (properties.and_then(|p| p.get(name)), additional) {
            (Some(sub), _) => check(sub, value, &at, out),
            (None, Some(Value::Bool(false))) => {
                let expected: Vec<&str> = properties
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let message = if expected.is_empty() {
                    "unknown field; this kind takes no fields".to_owned()
                } else {
                    format!("unknown field; expected one of {}", expected.join(", "))
                };
                out.push(at, message);
            }
            (None, Some(sub)) => check(sub, value, &at, out),
            (None, None) => {}
        }
    }
}

fn type_matches(types: &Value, value: &Value) -> bool {
    let one = |name: &str| match name {
        "object" => value.is_object(),
        "string" => value.is_string(),
        // As handlers read whole numbers: `100`, not `100.0`.
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "null" => value.is_null(),
        _ => false,
    };
    match types {
        Value::String(name) => one(name),
        Value::Array(names) => names.iter().filter_map(Value::as_str).any(one),
        _ => true,
    }
}

/// `an integer`, `an object or null`, `a string, an integer or null`.
fn described(types: &Value) -> String {
    let article = |name: &str| match name {
        "null" => "null".to_owned(),
        "object" | "integer" | "array" => format!("an {name}"),
        other => format!("a {other}"),
    };
    let names: Vec<String> = match types {
        Value::Array(names) => names
            .iter()
            .filter_map(Value::as_str)
            .map(article)
            .collect(),
        Value::String(name) => vec![article(name)],
        _ => Vec::new(),
    };
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => "valid".to_owned(),
    }
}

fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// JSON equality, with numbers compared by value (`1` equals `1.0`), as JSON Schema's `enum` does.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => compare(a, b) == Some(Ordering::Equal),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same(v, w)))
        }
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// `input` against `schema`: every violation as `path: message`.
    fn violations(schema: &Value, input: impl Into<Value>) -> Vec<String> {
        let input: Value = input.into();
        let schema = Schema::new(schema.clone()).expect("a valid schema");
        schema
            .validate(&input)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn sleep_like() -> Value {
        json!({
            "type": ["object", "null"],
            "properties": {"ms": {"type": "integer", "minimum": 0, "maximum": 86_400_000}},
            "additionalProperties": false
        })
    }

    #[test]
    fn types_are_named_with_the_value_found() {
        let schema = sleep_like();
        assert_eq!(
            violations(&schema, json!({"ms": "100"})),
            [r#"input.ms: must be an integer, not "100""#]
        );
        assert_eq!(
            violations(&schema, json!({"ms": 1.5})),
            ["input.ms: must be an integer, not 1.5"]
        );
        assert_eq!(
            violations(&schema, json!({"ms": 100.0})),
            ["input.ms: must be an integer, not 100.0"]
        );
        assert_eq!(
            violations(&schema, json!(5)),
            ["input: must be an object or null, not 5"]
        );
        let three = json!({"type": ["string", "integer", "null"]});
        assert_eq!(
            violations(&three, json!(true)),
            ["input: must be a string, an integer or null, not true"]
        );
        assert!(violations(&schema, json!({"ms": 100})).is_empty());
        assert!(violations(&schema, Value::Null).is_empty());
        assert!(violations(&json!({"type": "number"}), json!(1)).is_empty());
    }

    #[test]
    fn bounds_hold_on_both_sides() {
        let schema = sleep_like();
        assert_eq!(
            violations(&schema, json!({"ms": -5})),
            ["input.ms: must be at least 0, not -5"]
        );
        assert!(violations(&schema, json!({"ms": 0})).is_empty());
        assert!(violations(&schema, json!({"ms": 86_400_000})).is_empty());
        assert_eq!(
            violations(&schema, json!({"ms": 86_400_001})),
            ["input.ms: must be at most 86400000, not 86400001"]
        );
        assert_eq!(
            violations(&json!({"minimum": 0.5}), json!(0.25)),
            ["input: must be at least 0.5, not 0.25"]
        );
        assert!(
            violations(
                &json!({"maximum": 18446744073709551615_u64}),
                json!(u64::MAX)
            )
            .is_empty()
        );
        assert_eq!(
            violations(&json!({"maximum": -1}), json!(u64::MAX)),
            ["input: must be at most -1, not 18446744073709551615"]
        );
    }

    #[test]
    fn lengths_count_characters_and_items() {
        let s = json!({"type": "string", "minLength": 1, "maxLength": 2});
        assert_eq!(
            violations(&s, json!("")),
            ["input: must be at least 1 character long, not 0"]
        );
        assert!(
            violations(&s, json!("éé")).is_empty(),
            "two characters, four bytes"
        );
        assert_eq!(
            violations(&s, json!("abc")),
            ["input: must be at most 2 characters long, not 3"]
        );
        let a = json!({"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "string"}});
        assert_eq!(
            violations(&a, json!([])),
            ["input: must have at least 1 item, not 0"]
        );
        assert_eq!(
            violations(&a, json!(["a", "b", "c"])),
            ["input: must have at most 2 items, not 3"]
        );
        assert_eq!(
            violations(&a, json!([1, null])),
            [
                "input[0]: must be a string, not 1",
                "input[1]: must be a string, not null"
            ]
        );
    }

    #[test]
    fn objects_report_missing_unknown_and_nested_fields() {
        let schema = json!({
            "type": "object",
            "required": ["url"],
            "properties": {
                "url": {"type": "string"},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}}
            },
            "additionalProperties": false
        });
        assert_eq!(
            violations(
                &schema,
                json!({"urll": "x", "headers": {"Accept": 1, "a b": "ok", "X": [] }})
            ),
            [
                "input.url: required",
                r#"input.headers.Accept: must be a string, not 1"#,
                r#"input.headers.X: must be a string, not []"#,
                "input.urll: unknown field; expected one of headers, url",
            ]
        );
        let closed = json!({"type": "object", "additionalProperties": false});
        assert_eq!(
            violations(&closed, json!({"x": 1})),
            ["input.x: unknown field; this kind takes no fields"]
        );
        let open = json!({"properties": {"a": {"type": "integer"}}});
        assert!(violations(&open, json!({"b": "anything"})).is_empty());
    }

    #[test]
    fn enums_compare_numbers_by_value() {
        let methods = json!({"type": "string", "enum": ["GET", "POST"]});
        assert_eq!(
            violations(&methods, json!("FETCH")),
            [r#"input: must be one of "GET", "POST", not "FETCH""#]
        );
        assert!(violations(&methods, json!("GET")).is_empty());
        let numbers = json!({"enum": [1, [2.0], {"a": 3}]});
        assert!(violations(&numbers, json!(1.0)).is_empty());
        assert!(violations(&numbers, json!([2])).is_empty());
        assert!(violations(&numbers, json!({"a": 3.0})).is_empty());
        assert_eq!(violations(&numbers, json!(2)).len(), 1);
    }

    #[test]
    fn the_empty_schema_accepts_anything() {
        for input in [
            Value::Null,
            json!(1),
            json!("x"),
            json!([1]),
            json!({"a": {}}),
        ] {
            assert!(violations(&json!({"description": "any"}), input).is_empty());
        }
    }

    #[test]
    fn long_values_are_cut_and_many_violations_counted() {
        let long = "x".repeat(200);
        let found = violations(&json!({"type": "integer"}), json!(long));
        assert!(found[0].ends_with("xxx…"), "{found:?}");
        assert!(found[0].len() < 120, "{found:?}");

        let many: Vec<Value> = (0..150).map(|_| json!("a")).collect();
        let found = violations(&json!({"items": {"type": "integer"}}), json!(many));
        assert_eq!(found.len(), MAX_VIOLATIONS + 1);
        assert_eq!(
            found[MAX_VIOLATIONS],
            "input: and 50 more problems not listed"
        );
    }
}
