//! The checks every request passes before anything else looks at it: text PostgreSQL can store
//! and numbers JSON can hold.
//!
//! PostgreSQL refuses U+0000 in `text` and `jsonb` (in valid UTF-8 it is the only character it
//! refuses), and JSON has no NaN or infinity. A request that carries either is refused at the
//! door with the field named, before any other rule could answer in its place and before
//! anything is stored.
//!
//! [`CheckInput`] is implemented here by hand for the well-known `Struct`, `Value` and
//! `ListValue`, and for every message of `leasehold.v1` by code that `build.rs` writes from the
//! descriptors: every string (singular, repeated, map key and value, oneof member), every
//! `double` and `float`, every nested message. A new field is checked without new code.

use std::fmt;

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

/// A field a request may not carry as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field, as a path in the proto's field names: `requests[3].request_id`,
    /// `spec.structured.nodes[1].input.url`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for Violation {}

/// The door check of a message: its text can be stored and its numbers are finite.
pub trait CheckInput {
    /// The first field, in declaration order, that breaks the rules.
    fn check_input(&self) -> Result<(), Violation> {
        self.check_at(&Path::Root)
    }

    /// [`check_input`](Self::check_input) for the message found at `at` in a request.
    fn check_at(&self, at: &Path<'_>) -> Result<(), Violation>;
}

/// Where a value sits in a request. Built on the stack while the checks walk down and rendered
/// only for a violation, so a request that passes costs no allocation.
#[derive(Debug, Clone, Copy)]
pub enum Path<'a> {
    /// The request itself.
    Root,
    /// A field of the message at the parent.
    Field(&'a Path<'a>, &'static str),
    /// An element of the list at the parent.
    Index(&'a Path<'a>, usize),
    /// An entry of the map or `Struct` at the parent.
    Key(&'a Path<'a>, &'a str),
}

impl<'a> Path<'a> {
    /// The field `name` of the message here.
    pub fn field(&'a self, name: &'static str) -> Path<'a> {
        Path::Field(self, name)
    }

    /// Element `index` of the list here.
    pub fn index(&'a self, index: usize) -> Path<'a> {
        Path::Index(self, index)
    }

    /// The entry `key` of the map here.
    pub fn key(&'a self, key: &'a str) -> Path<'a> {
        Path::Key(self, key)
    }

    /// A violation of the value here.
    pub fn violation(&self, message: impl Into<String>) -> Violation {
        Violation {
            field: self.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Field(Path::Root, name) => f.write_str(name),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Index(parent, index) => write!(f, "{parent}[{index}]"),
            // A key that reads as a field name is written as one (`inputs.payload`), as a JSON
            // path would; any other is quoted, so that the path stays unambiguous.
            Path::Key(parent, key) if is_plain(key) => match parent {
                Path::Root => f.write_str(key),
                _ => write!(f, "{parent}.{key}"),
            },
            Path::Key(parent, key) => write!(f, "{parent}[{key:?}]"),
        }
    }
}

fn is_plain(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What PostgreSQL refuses to store in a `text` or `jsonb`: in valid UTF-8, U+0000 only.
const NUL: char = '\0';
/// The message of a string with a NUL in it.
pub const NUL_MESSAGE: &str = "contains a NUL character (U+0000), which cannot be stored";
/// The message of a map or `Struct` key with a NUL in it; the path names the map, since the key
/// cannot be written.
pub const NUL_KEY_MESSAGE: &str =
    "has a key that contains a NUL character (U+0000), which cannot be stored";

/// A string field: it must not contain NUL.
pub fn text(value: &str, at: &Path<'_>) -> Result<(), Violation> {
    if value.contains(NUL) {
        return Err(at.violation(NUL_MESSAGE));
    }
    Ok(())
}

/// A key of the map or `Struct` at `at`: it must not contain NUL.
pub fn key(key: &str, at: &Path<'_>) -> Result<(), Violation> {
    if key.contains(NUL) {
        return Err(at.violation(NUL_KEY_MESSAGE));
    }
    Ok(())
}

/// A number (a `double`, a `float` widened, or a `Value`'s number): it must be finite.
pub fn number(value: f64, at: &Path<'_>) -> Result<(), Violation> {
    let what = if value.is_nan() {
        "NaN"
    } else if value == f64::INFINITY {
        "infinity"
    } else if value == f64::NEG_INFINITY {
        "-infinity"
    } else {
        return Ok(());
    };
    Err(at.violation(format!("must be a finite number, not {what}")))
}

impl CheckInput for Value {
    fn check_at(&self, at: &Path<'_>) -> Result<(), Violation> {
        match &self.kind {
            None | Some(Kind::NullValue(_) | Kind::BoolValue(_)) => Ok(()),
            Some(Kind::NumberValue(n)) => number(*n, at),
            Some(Kind::StringValue(s)) => text(s, at),
            Some(Kind::StructValue(s)) => s.check_at(at),
            Some(Kind::ListValue(list)) => list.check_at(at),
        }
    }
}

impl CheckInput for Struct {
    fn check_at(&self, at: &Path<'_>) -> Result<(), Violation> {
        for (k, v) in &self.fields {
            key(k, at)?;
            v.check_at(&at.key(k))?;
        }
        Ok(())
    }
}

impl CheckInput for ListValue {
    fn check_at(&self, at: &Path<'_>) -> Result<(), Violation> {
        for (i, v) in self.values.iter().enumerate() {
            v.check_at(&at.index(i))?;
        }
        Ok(())
    }
}

// The impls for every message of `leasehold.v1`, written by `build.rs`.
include!(concat!(env!("OUT_DIR"), "/checks.rs"));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    fn string(s: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.into())),
        }
    }

    fn num(n: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(n)),
        }
    }

    fn object(entries: &[(&str, Value)]) -> Struct {
        Struct {
            fields: entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        }
    }

    fn list(values: Vec<Value>) -> Value {
        Value {
            kind: Some(Kind::ListValue(ListValue { values })),
        }
    }

    fn failure(message: &impl CheckInput) -> (String, String) {
        let v = message.check_input().expect_err("refused");
        (v.field, v.message)
    }

    #[test]
    fn clean_values_pass() {
        let inputs = object(&[
            ("a", string("text with é and \u{1}")),
            ("b", num(1.5)),
            ("c", list(vec![num(-0.0), string("")])),
        ]);
        assert_eq!(inputs.check_input(), Ok(()));
    }

    #[test]
    fn struct_paths_name_keys_and_indexes() {
        let payload = Value {
            kind: Some(Kind::StructValue(object(&[(
                "payload",
                list(vec![num(1.0), num(2.0), string("a\0b")]),
            )]))),
        };
        let request = v1::StartRunRequest {
            inputs: Some(object(&[("outer", payload)])),
            ..Default::default()
        };
        assert_eq!(
            failure(&request),
            ("inputs.outer.payload[2]".into(), NUL_MESSAGE.into())
        );
        let odd_key = object(&[("a key", string("\0"))]);
        assert_eq!(failure(&odd_key).0, r#"["a key"]"#);
    }

    #[test]
    fn a_nul_key_names_its_struct() {
        let request = v1::StartRunRequest {
            inputs: Some(object(&[("a\0", num(1.0))])),
            ..Default::default()
        };
        assert_eq!(failure(&request), ("inputs".into(), NUL_KEY_MESSAGE.into()));
    }

    #[test]
    fn non_finite_numbers_are_named() {
        for (n, what) in [
            (f64::NAN, "NaN"),
            (f64::INFINITY, "infinity"),
            (f64::NEG_INFINITY, "-infinity"),
        ] {
            let v = num(n).check_input().expect_err("refused");
            assert_eq!(v.message, format!("must be a finite number, not {what}"));
        }
    }

    #[test]
    fn generated_checks_walk_repeated_nested_and_oneof_fields() {
        let node = |backoff: Option<v1::Backoff>, prompt: &str| v1::NodeSpec {
            id: "n".into(),
            backoff,
            approval: Some(v1::Approval {
                prompt: prompt.into(),
            }),
            ..Default::default()
        };
        let request = |nodes| v1::CreateAutomationRequest {
            spec: Some(v1::SpecSource {
                source: Some(v1::spec_source::Source::Structured(v1::AutomationSpec {
                    id: "a".into(),
                    nodes,
                    ..Default::default()
                })),
            }),
        };
        assert_eq!(request(vec![node(None, "ok")]).check_input(), Ok(()));
        let nan = v1::Backoff {
            jitter: f64::NAN,
            ..Default::default()
        };
        assert_eq!(
            failure(&request(vec![node(None, "ok"), node(Some(nan), "ok")])).0,
            "spec.structured.nodes[1].backoff.jitter"
        );
        assert_eq!(
            failure(&request(vec![node(None, "ok"), node(None, "\0")])).0,
            "spec.structured.nodes[1].approval.prompt"
        );
        let text = v1::CreateAutomationRequest {
            spec: Some(v1::SpecSource {
                source: Some(v1::spec_source::Source::Text("id: \0".into())),
            }),
        };
        assert_eq!(failure(&text).0, "spec.text");
        let batch = v1::StartRunsRequest {
            requests: vec![
                v1::StartRunRequest::default(),
                v1::StartRunRequest {
                    request_id: "r\0".into(),
                    ..Default::default()
                },
            ],
        };
        assert_eq!(failure(&batch).0, "requests[1].request_id");
        let both = v1::StartRunRequest {
            automation_id: "\0".into(),
            request_id: "\0".into(),
            ..Default::default()
        };
        assert_eq!(
            failure(&both).0,
            "automation_id",
            "the first field declared"
        );
    }
}
