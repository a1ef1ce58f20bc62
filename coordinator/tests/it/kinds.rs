//! Node inputs checked at the door against their kinds' schemas, the warnings for kinds nobody
//! advertised, `ListNodeKinds`, and the lease a worker states.

use std::path::Path;
use std::time::Duration;

use leasehold_core::kinds::{BUILTIN_KINDS, Schema, builtin_input_schema};
use leasehold_core::store::{AdvertisedKind, WorkerInfo};
use leasehold_proto::bearer::AuthedChannel;
use leasehold_proto::v1;
use leasehold_proto::v1::workers_client::WorkersClient;
use leasehold_testkit::fixtures::worker_info;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

use super::api::{Bundle, setup, text};

impl Bundle {
    fn workers(&self) -> WorkersClient<AuthedChannel> {
        WorkersClient::new(self.channel.clone())
    }

    async fn create(&self, yaml: &str) -> Result<v1::Automation, tonic::Status> {
        self.automations()
            .create_automation(v1::CreateAutomationRequest {
                spec: Some(text(yaml)),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Whether the automation was stored.
    async fn stored(&self, id: &str) -> bool {
        match self
            .automations()
            .get_automation(v1::GetAutomationRequest {
                id: id.into(),
                version: 0,
            })
            .await
        {
            Ok(_) => true,
            Err(status) if status.code() == Code::NotFound => false,
            Err(status) => panic!("get {id}: {status:?}"),
        }
    }

    /// Registers a worker that runs `kinds`, each with its schema.
    async fn register(&self, claimant: &str, kinds: &[(&str, Option<Value>)]) {
        let info = WorkerInfo {
            kinds: kinds
                .iter()
                .map(|(kind, schema)| AdvertisedKind {
                    kind: (*kind).to_owned(),
                    input_schema: schema.clone().map(|s| Schema::new(s).expect("valid")),
                })
                .collect(),
            ..worker_info(claimant, "box", "test")
        };
        self.store.register_worker(&info).await.expect("register");
    }
}

/// Every field violation of a refusal, as `(field, description)`.
fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

/// The one violation of a refused spec text: `spec.text`, with the place in the spec, the node
/// and what is wrong in its description.
async fn refused(b: &Bundle, yaml: &str, id: &str, place: &str, node: &str, says: &str) {
    let status = b.create(yaml).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let found = violations(&status);
    assert_eq!(found.len(), 1, "{found:?}");
    let (field, description) = &found[0];
    assert_eq!(field, "spec.text");
    assert!(
        description.starts_with(&format!("{place} (node {node:?}): "))
            && description.contains(says),
        "{description}"
    );
    assert!(status.message().contains(says), "{}", status.message());
    assert!(!b.stored(id).await, "{id} was stored");
}

#[tokio::test]
async fn builtin_inputs_are_checked_on_a_fresh_system_and_nothing_bad_is_stored() {
    let b = setup().await;
    refused(
        &b,
        "id: s1\nnodes:\n  - {id: wait, kind: sleep, input: {ms: \"100\"}}\n",
        "s1",
        "nodes[0].input.ms",
        "wait",
        r#"must be an integer, not "100""#,
    )
    .await;
    refused(
        &b,
        "id: s2\nnodes:\n  - {id: first, kind: noop}\n  - {id: wait, kind: sleep, input: {ms: -5}}\n",
        "s2",
        "nodes[1].input.ms",
        "wait",
        "must be at least 0, not -5",
    )
    .await;
    refused(
        &b,
        "id: h1\nnodes:\n  - {id: fetch, kind: http, input: {method: GET}}\n",
        "h1",
        "nodes[0].input.url",
        "fetch",
        "required",
    )
    .await;

    // Every problem of every node is reported at once.
    let status = b
        .create("id: many\nnodes:\n  - {id: a, kind: sleep, input: {ms: 1.5, msec: 3}}\n  - {id: b, kind: exec, input: {argv: []}}\n")
        .await
        .expect_err("refused");
    let places: Vec<String> = violations(&status)
        .into_iter()
        .map(|(_, d)| d.split(' ').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        places,
        [
            "nodes[0].input.ms",
            "nodes[0].input.msec",
            "nodes[1].input.argv"
        ]
    );

    let ok = b
        .create("id: fine\nnodes:\n  - {id: wait, kind: sleep, input: {ms: 100}}\n  - {id: fetch, kind: http, input: {url: \"http://example.com/\"}}\n")
        .await
        .expect("valid inputs are stored");
    assert!(ok.warnings.is_empty(), "{:?}", ok.warnings);
}

#[tokio::test]
async fn structured_specs_updates_and_applies_are_checked_too() {
    let b = setup().await;
    let structured = |ms: prost_types::Value| v1::SpecSource {
        source: Some(v1::spec_source::Source::Structured(v1::AutomationSpec {
            id: "st".into(),
            nodes: vec![v1::NodeSpec {
                id: "wait".into(),
                kind: "sleep".into(),
                input: Some(prost_types::Value {
                    kind: Some(prost_types::value::Kind::StructValue(prost_types::Struct {
                        fields: [("ms".to_owned(), ms)].into_iter().collect(),
                    })),
                }),
                ..Default::default()
            }],
            ..Default::default()
        })),
    };
    let number = |n: f64| prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(n)),
    };
    let string = prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue("100".into())),
    };
    let bad = b
        .automations()
        .create_automation(v1::CreateAutomationRequest {
            spec: Some(structured(string.clone())),
        })
        .await
        .expect_err("a string ms");
    assert_eq!(violations(&bad)[0].0, "spec.structured.nodes[0].input.ms");
    assert!(!b.stored("st").await);

    // A whole double arrives as an integer.
    b.automations()
        .create_automation(v1::CreateAutomationRequest {
            spec: Some(structured(number(100.0))),
        })
        .await
        .expect("a whole number");
    let update = b
        .automations()
        .update_automation(v1::UpdateAutomationRequest {
            spec: Some(structured(number(-1.0))),
        })
        .await
        .expect_err("negative");
    assert_eq!(
        violations(&update)[0].0,
        "spec.structured.nodes[0].input.ms"
    );
    let apply = b
        .automations()
        .apply_automation(v1::ApplyAutomationRequest {
            spec: Some(text(
                "id: st\nnodes:\n  - {id: wait, kind: sleep, input: {ms: 1e3}}\n",
            )),
        })
        .await
        .expect_err("not written as a whole number");
    let (field, description) = &violations(&apply)[0];
    assert_eq!(field, "spec.text");
    assert!(
        description.starts_with("nodes[0].input.ms (node \"wait\"): must be an integer"),
        "{description}"
    );
    let current = b
        .automations()
        .get_automation(v1::GetAutomationRequest {
            id: "st".into(),
            version: 0,
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(current.current_version, 1, "no refused version was stored");

    let unknown = b
        .automations()
        .create_automation(v1::CreateAutomationRequest {
            spec: Some(v1::SpecSource {
                source: Some(v1::spec_source::Source::Structured(v1::AutomationSpec {
                    id: "odd".into(),
                    nodes: vec![v1::NodeSpec {
                        id: "x".into(),
                        kind: "mystery".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })),
            }),
        })
        .await
        .expect("stored")
        .into_inner();
    let fields: Vec<&str> = unknown.warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(fields, ["spec.structured.nodes[0].kind"]);
}

#[tokio::test]
async fn a_kind_nobody_advertised_is_stored_with_a_warning() {
    let b = setup().await;
    let created = b
        .create("id: mystery\nnodes:\n  - {id: a, kind: noop}\n  - {id: b, kind: shout, input: {anything: 1}}\n")
        .await
        .expect("stored");
    assert_eq!(created.warnings.len(), 1, "{:?}", created.warnings);
    assert_eq!(created.warnings[0].field, "spec.text");
    assert!(
        created.warnings[0]
            .message
            .starts_with("nodes[1].kind (node \"b\"): no worker has advertised kind \"shout\""),
        "{}",
        created.warnings[0].message
    );
    assert!(b.stored("mystery").await);

    // Once a worker advertises it without a schema, any input goes, without a warning.
    b.register("w-1", &[("shout", None)]).await;
    let applied = b
        .automations()
        .apply_automation(v1::ApplyAutomationRequest {
            spec: Some(text(
                "id: mystery\nnodes:\n  - {id: a, kind: noop}\n  - {id: b, kind: shout, input: {other: 2}}\n",
            )),
        })
        .await
        .expect("applied")
        .into_inner();
    assert!(applied.warnings.is_empty(), "{:?}", applied.warnings);
}

#[tokio::test]
async fn a_schema_a_registered_worker_advertised_is_enforced() {
    let b = setup().await;
    let schema = json!({
        "type": "object",
        "required": ["from"],
        "properties": {"from": {"type": "string", "minLength": 1}}
    });
    b.register("w-1", &[("shout", Some(schema))]).await;
    refused(
        &b,
        "id: loud\nnodes:\n  - {id: greet, kind: echo}\n  - {id: yell, kind: shout, input: {}}\n",
        "loud",
        "nodes[1].input.from",
        "yell",
        "required",
    )
    .await;
    let created = b
        .create("id: loud\nnodes:\n  - {id: greet, kind: echo}\n  - {id: yell, kind: shout, input: {from: greet}}\n")
        .await
        .expect("valid");
    assert!(created.warnings.is_empty(), "{:?}", created.warnings);

    // The worker is gone, and its kind's schema still holds.
    b.store
        .deregister_worker(&"w-1".into())
        .await
        .expect("deregister");
    refused(
        &b,
        "id: again\nnodes:\n  - {id: yell, kind: shout, input: {from: \"\"}}\n",
        "again",
        "nodes[0].input.from",
        "yell",
        "at least 1 character",
    )
    .await;
}

#[tokio::test]
async fn node_kinds_list_the_builtins_and_every_advertised_kind() {
    let b = setup().await;
    let fresh = b
        .workers()
        .list_node_kinds(v1::ListNodeKindsRequest {})
        .await
        .expect("list")
        .into_inner();
    let names: Vec<&str> = fresh.kinds.iter().map(|k| k.kind.as_str()).collect();
    assert_eq!(names, BUILTIN_KINDS, "the built-ins, before any worker");
    let sleep = &fresh.kinds[5];
    assert!(sleep.builtin && sleep.last_advertised_at.is_none());
    let declared = sleep.input_schema.as_ref().expect("a schema");
    let expected = builtin_input_schema("sleep").expect("built in");
    assert_eq!(
        declared.fields["properties"],
        api_value(&expected.as_value()["properties"])
    );

    let shout = json!({"type": "object", "required": ["from"]});
    b.register(
        "w-1",
        &[
            (
                "sleep",
                builtin_input_schema("sleep").map(Schema::into_value),
            ),
            ("shout", Some(shout)),
            ("whisper", None),
        ],
    )
    .await;
    let listed = b
        .workers()
        .list_node_kinds(v1::ListNodeKindsRequest {})
        .await
        .expect("list")
        .into_inner();
    let view: Vec<(&str, bool, bool, bool)> = listed
        .kinds
        .iter()
        .map(|k| {
            (
                k.kind.as_str(),
                k.builtin,
                k.input_schema.is_some(),
                k.last_advertised_at.is_some(),
            )
        })
        .collect();
    assert_eq!(
        view,
        [
            ("approval", true, true, false),
            ("echo", true, true, false),
            ("exec", true, true, false),
            ("http", true, true, false),
            ("noop", true, true, false),
            ("shout", false, true, true),
            ("sleep", true, true, true),
            ("whisper", false, false, true),
        ]
    );
    let shout = &listed.kinds[5];
    let required = &shout.input_schema.as_ref().expect("schema").fields["required"];
    assert_eq!(required, &api_value(&json!(["from"])));
}

#[tokio::test]
async fn workers_show_their_lease_and_are_alive_within_it() {
    let b = setup().await;
    let info = WorkerInfo {
        lease: Duration::from_secs(7),
        ..worker_info("w-1", "box", "test")
    };
    b.store.register_worker(&info).await.expect("register");
    let listed = b
        .workers()
        .list_workers(v1::ListWorkersRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.workers[0].lease_ms, 7_000);
    assert!(listed.workers[0].alive);
}

#[tokio::test]
async fn every_example_automation_passes_the_input_checks() {
    let b = setup().await;
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .expect("examples")
        .map(|e| e.expect("entry").path())
        .chain([examples.join("custom-worker/shouting.yaml")])
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    // The custom worker's kind, as the custom worker advertises it.
    b.register(
        "custom",
        &[(
            "shout",
            Some(json!({"type": "object", "required": ["from"]})),
        )],
    )
    .await;
    for file in files {
        let yaml = std::fs::read_to_string(&file).expect("read");
        let created = b
            .create(&yaml)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", file.display()));
        assert!(
            created.warnings.is_empty(),
            "{}: {:?}",
            file.display(),
            created.warnings
        );
    }
}

/// A JSON value as the API carries it.
fn api_value(json: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match json {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().expect("finite")),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(api_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map.iter().map(|(k, v)| (k.clone(), api_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}
