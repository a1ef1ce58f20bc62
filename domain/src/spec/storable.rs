//! What PostgreSQL can store: text without NUL (U+0000), and finite numbers.
//!
//! A spec sent as a message is checked at the API's door; a spec sent as YAML or JSON text
//! passes that door as one string, and its escapes (`"\u0000"` in JSON, `"\0"` and `.nan` in
//! YAML) only appear once it is parsed. So parsing checks what it read: a NUL would fail the
//! insert (INTERNAL instead of a precise answer), and serde_json turns a NaN or an infinity
//! into `null` without a word.

use serde_json::Value;

use super::validate::Violation;
use super::{NodeSpec, Spec};
use crate::ids::NodeId;

const NUL_MESSAGE: &str = "contains a NUL character (U+0000), which cannot be stored";

/// Every free-text place of `spec` that holds a NUL: the description, prompts, and the inputs'
/// strings and keys. Names (ids, kinds) have rules of their own that refuse NUL already.
pub(super) fn nul_violations(spec: &Spec) -> Vec<Violation> {
    let mut out = Vec::new();
    if spec.description.as_deref().is_some_and(has_nul) {
        out.push(at("description".to_owned(), None));
    }
    for (i, node) in spec.nodes.iter().enumerate() {
        let node_id = node_ref(node);
        if node.approval.as_ref().is_some_and(|a| has_nul(&a.prompt)) {
            out.push(at(format!("nodes[{i}].approval.prompt"), node_id.clone()));
        }
        if let Some(field) = first_nul(&node.input, &format!("nodes[{i}].input")) {
            out.push(at(field, node_id));
        }
    }
    out
}

fn at(field: String, node: Option<NodeId>) -> Violation {
    Violation {
        field,
        node,
        message: NUL_MESSAGE.to_owned(),
    }
}

fn node_ref(node: &NodeSpec) -> Option<NodeId> {
    (!node.id.as_str().is_empty()).then(|| node.id.clone())
}

fn has_nul(text: &str) -> bool {
    text.contains('\0')
}

/// The path of the first string or key in `value` that holds a NUL. A bad key names the object
/// that holds it: the key itself cannot be printed as a path.
fn first_nul(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::String(s) => has_nul(s).then(|| path.to_owned()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| first_nul(v, &format!("{path}[{i}]"))),
        Value::Object(map) => {
            if map.keys().any(|k| has_nul(k)) {
                return Some(path.to_owned());
            }
            map.iter()
                .find_map(|(k, v)| first_nul(v, &format!("{path}.{k}")))
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

/// The path of the first number in YAML `text` that is NaN or infinite, if the text reads as
/// YAML at all (if it does not, the spec's own parse says why).
pub(super) fn first_non_finite_yaml(text: &str) -> Option<(String, f64)> {
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
    first_non_finite(&value, "")
}

fn first_non_finite(value: &serde_yaml_ng::Value, path: &str) -> Option<(String, f64)> {
    use serde_yaml_ng::Value as Y;
    let child = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Y::Number(n) => n
            .as_f64()
            .filter(|f| !f.is_finite())
            .map(|f| (path.to_owned(), f)),
        Y::Sequence(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| first_non_finite(v, &format!("{path}[{i}]"))),
        Y::Mapping(map) => map.iter().find_map(|(k, v)| {
            let key = match k {
                Y::String(s) => s.clone(),
                other => serde_yaml_ng::to_string(other)
                    .map(|s| s.trim_end().to_owned())
                    .unwrap_or_default(),
            };
            first_non_finite(v, &child(&key))
        }),
        Y::Tagged(tagged) => first_non_finite(&tagged.value, path),
        Y::Null | Y::Bool(_) | Y::String(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse;

    #[test]
    fn nul_in_a_description_prompt_input_string_or_key_is_named() {
        let cases = [
            (
                "id: a\ndescription: \"x\\0y\"\nnodes: [{id: n, kind: noop}]\n",
                "description",
            ),
            (
                "id: a\nnodes: [{id: n, kind: noop, approval: {prompt: \"ok\\0?\"}}]\n",
                "nodes[0].approval.prompt",
            ),
            (
                "{\"id\": \"a\", \"nodes\": [{\"id\": \"n\", \"kind\": \"echo\", \"input\": {\"list\": [1, \"x\\u0000\"]}}]}",
                "nodes[0].input.list[1]",
            ),
            (
                "{\"id\": \"a\", \"nodes\": [{\"id\": \"n\", \"kind\": \"echo\", \"input\": {\"k\\u0000\": 1}}]}",
                "nodes[0].input",
            ),
        ];
        for (text, field) in cases {
            let error = parse(text).expect_err(text);
            assert_eq!(error.violations.len(), 1, "{error}");
            assert_eq!(error.violations[0].field, field);
            assert_eq!(error.violations[0].message, NUL_MESSAGE);
        }
    }

    #[test]
    fn nan_and_infinities_in_yaml_are_refused_with_their_path_not_stored_as_null() {
        for (literal, shown) in [(".nan", "NaN"), (".inf", "inf"), ("-.inf", "-inf")] {
            let text = format!(
                "id: a\nnodes:\n  - {{id: n, kind: echo, input: {{deep: [1, {literal}]}}}}\n"
            );
            let error = parse(&text).expect_err(&text);
            assert_eq!(error.violations[0].field, "nodes[0].input.deep[1]");
            assert!(
                error.violations[0].message.contains(shown),
                "{}",
                error.violations[0].message
            );
        }
    }

    #[test]
    fn clean_text_passes() {
        let spec = parse("id: a\nnodes: [{id: n, kind: echo, input: {x: 1.5, s: \"ok\"}}]\n")
            .expect("a clean spec");
        assert!(nul_violations(&spec).is_empty());
    }
}
