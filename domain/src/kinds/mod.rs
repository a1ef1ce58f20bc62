//! Node kinds: the input schema a kind declares, the built-in kinds' schemas, and the check of a
//! spec's node inputs against them before the spec is stored.
//!
//! - [`Schema`]: a subset of JSON Schema (see [`schema`] for the keywords and why a subset),
//!   checked when it is declared; [`Schema::validate`] reports every violation of an input.
//! - [`builtin_input_schema`]: the schemas of `noop`, `echo`, `sleep`, `approval`, `http` and
//!   `exec`, known to every process without any worker having registered.
//! - [`check_inputs`]: each node's input against its kind's schema: the built-in one, else the
//!   latest one a worker advertised; a kind neither built in nor advertised gets a warning.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::spec::{Spec, Violation};

mod builtin;
pub mod schema;
mod validate;

pub use builtin::{
    BUILTIN_KINDS, HTTP_MAX_RESPONSE_BYTES, HTTP_METHODS, SLEEP_MS_MAX, builtin_input_schema,
    is_builtin,
};
pub use schema::{Problem, Schema, SchemaError};
pub use validate::{InputViolation, MAX_VIOLATIONS};

/// Something a spec may not do as written, though it was accepted: placed and shown as a
/// [`Violation`] is (`nodes[2].kind (node "b"): no worker has advertised …`), but not refused.
pub type Warning = Violation;

/// What [`check_inputs`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    /// Inputs that break their kind's schema, one per problem, at `nodes[i].input…`. A spec
    /// with any is refused.
    pub violations: Vec<Violation>,
    /// Nodes whose input could not be checked, at `nodes[i].kind`.
    pub warnings: Vec<Warning>,
}

/// Checks each node's input against its kind's schema: the built-in schema, else the one in
/// `advertised` (kind to the schema the latest worker to advertise the kind declared, `None`
/// when it declared none and any input goes). A kind in neither is accepted with a warning, as is
/// an advertised schema this build cannot read (a newer worker's, say).
pub fn check_inputs(spec: &Spec, advertised: &BTreeMap<String, Option<Value>>) -> Checked {
    let mut checked = Checked::default();
    // Each kind's schema is read once, however many nodes use it.
    let mut schemas: HashMap<&str, Lookup> = HashMap::new();
    for (i, node) in spec.nodes.iter().enumerate() {
        let kind = node.kind.as_str();
        let lookup = schemas
            .entry(kind)
            .or_insert_with(|| lookup(kind, advertised));
        // An empty id names nothing; the field still places the node.
        let node_ref = (!node.id.as_str().is_empty()).then(|| node.id.clone());
        let warn = |message: String| Warning {
            field: format!("nodes[{i}].kind"),
            node: node_ref.clone(),
            message,
        };
        match lookup {
            Lookup::Schema(schema) => {
                checked
                    .violations
                    .extend(schema.validate(&node.input).into_iter().map(|v| Violation {
                        field: format!("nodes[{i}].{}", v.path),
                        node: node_ref.clone(),
                        message: v.message,
                    }));
            }
            Lookup::Any => {}
            Lookup::Unreadable(e) => checked.warnings.push(warn(format!(
                "the input schema a worker advertised for kind {kind:?} cannot be read by this build ({e}); its input is not checked"
            ))),
            Lookup::Unknown => checked.warnings.push(warn(format!(
                "no worker has advertised kind {kind:?}, so its input is not checked; a worker without it fails the node"
            ))),
        }
    }
    checked
}

/// A kind's schema, as far as it is known.
enum Lookup {
    Schema(Schema),
    Any,
    Unreadable(SchemaError),
    Unknown,
}

fn lookup(kind: &str, advertised: &BTreeMap<String, Option<Value>>) -> Lookup {
    if let Some(schema) = builtin_input_schema(kind) {
        return Lookup::Schema(schema);
    }
    match advertised.get(kind) {
        None => Lookup::Unknown,
        Some(None) => Lookup::Any,
        Some(Some(value)) => match Schema::new(value.clone()) {
            Ok(schema) => Lookup::Schema(schema),
            Err(e) => Lookup::Unreadable(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(nodes: &str) -> Spec {
        crate::spec::parse_yaml(&format!("id: a\nnodes:\n{nodes}")).expect("a valid spec")
    }

    fn advertised(kinds: &[(&str, Option<Value>)]) -> BTreeMap<String, Option<Value>> {
        kinds
            .iter()
            .map(|(k, s)| ((*k).to_owned(), s.clone()))
            .collect()
    }

    #[test]
    fn builtin_inputs_are_checked_without_any_worker() {
        let spec = spec(
            "  - {id: ok, kind: sleep, input: {ms: 5}}\n  - {id: wait, kind: sleep, input: {ms: \"100\"}}\n  - {id: fetch, kind: http, input: {}}\n",
        );
        let checked = check_inputs(&spec, &BTreeMap::new());
        let found: Vec<String> = checked.violations.iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                r#"nodes[1].input.ms (node "wait"): must be an integer, not "100""#,
                r#"nodes[2].input.url (node "fetch"): required"#,
            ]
        );
        assert!(checked.warnings.is_empty());
    }

    #[test]
    fn a_builtin_schema_wins_over_an_advertised_one() {
        let spec = spec("  - {id: wait, kind: sleep, input: {ms: -5}}\n");
        let ads = advertised(&[("sleep", Some(json!({})))]);
        assert_eq!(check_inputs(&spec, &ads).violations.len(), 1);
    }

    #[test]
    fn advertised_schemas_are_enforced_and_unknown_kinds_warned_about() {
        let spec = spec(
            "  - {id: loud, kind: shout, input: {}}\n  - {id: free, kind: open, input: 3}\n  - {id: new, kind: mystery}\n  - {id: odd, kind: newer, input: {}}\n",
        );
        let ads = advertised(&[
            (
                "shout",
                Some(json!({"type": "object", "required": ["from"]})),
            ),
            ("open", None),
            ("newer", Some(json!({"if": {}}))),
        ]);
        let checked = check_inputs(&spec, &ads);
        let found: Vec<String> = checked.violations.iter().map(ToString::to_string).collect();
        assert_eq!(found, [r#"nodes[0].input.from (node "loud"): required"#]);
        let fields: Vec<&str> = checked.warnings.iter().map(|w| w.field.as_str()).collect();
        assert_eq!(fields, ["nodes[2].kind", "nodes[3].kind"]);
        assert!(
            checked.warnings[0].to_string().starts_with(
                "nodes[2].kind (node \"new\"): no worker has advertised kind \"mystery\""
            ),
            "{:?}",
            checked.warnings
        );
        assert!(
            checked.warnings[1].message.contains("cannot be read"),
            "{:?}",
            checked.warnings
        );
    }
}
