//! The input schemas of the built-in kinds, and the bounds their handlers share with them.
//!
//! They live here, not beside the handlers in the worker, because the coordinator checks inputs
//! against them before any worker has registered, and the coordinator does not depend on the
//! worker. The handlers return these same schemas, and the worker's tests run each handler's
//! input parsing against its schema so that the two cannot drift apart.

use serde_json::{Value, json};

use super::Schema;

/// The built-in kinds, sorted.
pub const BUILTIN_KINDS: [&str; 6] = ["approval", "echo", "exec", "http", "noop", "sleep"];

/// The longest `sleep`, in milliseconds: a day.
pub const SLEEP_MS_MAX: u64 = 86_400_000;

/// The methods `http` sends, written in upper or lower case.
pub const HTTP_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// The default, and the largest allowed, `max_response_bytes` of `http`: node outputs are stored
/// in Postgres with the run, so they stay small.
pub const HTTP_MAX_RESPONSE_BYTES: u64 = 1024 * 1024;

/// Whether `kind` is built into every worker (`exec` may still be disabled on one).
pub fn is_builtin(kind: &str) -> bool {
    BUILTIN_KINDS.contains(&kind)
}

/// The input schema of a built-in kind; `None` for any other kind.
pub fn builtin_input_schema(kind: &str) -> Option<Schema> {
    let schema = match kind {
        "noop" => json!({"description": "Any input; it is ignored. The output is null."}),
        "echo" => json!({"description": "Any input; it is the node's output."}),
        "approval" => json!({
            "description": "Any input; it is ignored. Runs once its gate is approved."
        }),
        "sleep" => sleep(),
        "http" => http(),
        "exec" => exec(),
        _ => return None,
    };
    Some(Schema::new(schema).expect("the built-in schemas are checked by their tests"))
}

fn sleep() -> Value {
    json!({
        "description": "Waits, then outputs {\"slept_ms\": ms}. No input waits 0 ms.",
        "type": ["object", "null"],
        "properties": {
            "ms": {
                "description": "How long to wait, in milliseconds (default 0).",
                "type": "integer",
                "minimum": 0,
                "maximum": SLEEP_MS_MAX
            }
        },
        "additionalProperties": false
    })
}

fn http() -> Value {
    let methods: Vec<String> = HTTP_METHODS
        .iter()
        .flat_map(|m| [(*m).to_owned(), m.to_ascii_lowercase()])
        .collect();
    json!({
        "description": "One HTTP request per attempt, with an Idempotency-Key header.",
        "type": "object",
        "properties": {
            "method": {
                "description": "Defaults to GET.",
                "type": "string",
                "enum": methods
            },
            "url": {
                "description": "An absolute http:// or https:// URL; its syntax is checked when the node runs.",
                "type": "string",
                "minLength": 1
            },
            "headers": {
                "description": "Header name to value; header syntax is checked when the node runs.",
                "type": "object",
                "additionalProperties": {"type": "string"}
            },
            "body": {
                "description": "Any JSON, sent as the body with content-type: application/json."
            },
            "timeout_ms": {
                "description": "Bounds the request; without it only the node's timeout does.",
                "type": "integer",
                "minimum": 1
            },
            "max_response_bytes": {
                "description": "A larger response fails the attempt (default and most 1 MiB).",
                "type": "integer",
                "minimum": 0,
                "maximum": HTTP_MAX_RESPONSE_BYTES
            }
        },
        "required": ["url"],
        "additionalProperties": false
    })
}

fn exec() -> Value {
    json!({
        "description": "Runs an allow-listed program: JSON on stdin, JSON on stdout.",
        "type": "object",
        "properties": {
            "argv": {
                "description": "The program, which the worker's --exec-allow must list, and its arguments.",
                "type": "array",
                "minItems": 1,
                "items": {"type": "string"}
            },
            "terminal_exit_codes": {
                "description": "Exit codes that fail the run at once instead of being retried.",
                "type": "array",
                "items": {"type": "integer", "minimum": i32::MIN, "maximum": i32::MAX}
            },
            "timeout_ms": {
                "description": "Bounds the program; without it only the node's timeout does.",
                "type": "integer",
                "minimum": 1
            }
        },
        "required": ["argv"],
        "additionalProperties": false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_kind_has_a_valid_schema_and_no_other_kind_has_one() {
        for kind in BUILTIN_KINDS {
            assert!(builtin_input_schema(kind).is_some(), "{kind}");
            assert!(is_builtin(kind));
        }
        assert!(builtin_input_schema("shout").is_none());
        assert!(!is_builtin("Sleep"));
        let mut sorted = BUILTIN_KINDS;
        sorted.sort_unstable();
        assert_eq!(sorted, BUILTIN_KINDS);
    }

    #[test]
    fn sleep_refuses_what_its_handler_refuses() {
        let schema = builtin_input_schema("sleep").expect("built in");
        let fails = |input: Value| !schema.validate(&input).is_empty();
        assert!(fails(json!({"ms": "100"})));
        assert!(fails(json!({"ms": -5})));
        assert!(fails(json!({"msec": 5})));
        assert!(!fails(json!({"ms": 5})));
        assert!(!fails(Value::Null));
    }
}
