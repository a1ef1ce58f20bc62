//! The door checks, walked from the descriptors: every string field of every request message of
//! every RPC, set to text with a NUL in it, and every number (a `double`, a `float`, a `Value` or
//! `Struct` number), set to NaN or an infinity, is INVALID_ARGUMENT naming exactly that field,
//! and stores nothing. The requests are built from `FILE_DESCRIPTOR_SET` and sent as raw bytes
//! over real gRPC, so a field added to the .proto is covered without new test code.

use std::collections::HashMap;

use leasehold_core::ids::NodeId;
use leasehold_core::store::Role;
use leasehold_proto::bearer::AuthedChannel;
use leasehold_proto::v1;
use leasehold_proto::v1::gates_client::GatesClient;
use leasehold_proto::v1::runs_client::RunsClient;
use leasehold_testkit::fixtures::{self, Bundle, worker_info};
use prost::Message as _;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{WireType, encode_key, encode_varint};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::value::Kind;
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::api::{channel_as, serve_with_tokens};

/// The text every string case sends: a NUL between ordinary characters.
const NUL_TEXT: &str = "a\0b";

/// What a case puts into its one field.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// A string with a NUL in it, or a map or `Struct` key with one.
    Nul,
    /// A number that is not finite.
    Number(f64),
}

/// One request with one bad field.
struct Case {
    /// `/leasehold.v1.Runs/ResumeRun`.
    path: String,
    server_streaming: bool,
    /// The encoded request.
    body: Vec<u8>,
    /// The field the answer must name.
    field: String,
}

/// A bad value somewhere in a message: the message's encoded body and the value's path in it
/// (empty when the message itself is what the answer names, as for a `Struct` with a bad key).
struct Found {
    body: Vec<u8>,
    path: String,
}

/// The messages of the descriptor set by full name (`.leasehold.v1.Run`).
struct Messages(HashMap<String, DescriptorProto>);

impl Messages {
    fn new(set: &FileDescriptorSet) -> Self {
        fn add(map: &mut HashMap<String, DescriptorProto>, scope: &str, m: &DescriptorProto) {
            let name = format!("{scope}.{}", m.name());
            for nested in &m.nested_type {
                add(map, &name, nested);
            }
            map.insert(name, m.clone());
        }
        let mut map = HashMap::new();
        for file in &set.file {
            for m in &file.message_type {
                add(&mut map, &format!(".{}", file.package()), m);
            }
        }
        Self(map)
    }

    /// Every way to put `fault` into a message of type `type_name`; `stack` holds the types
    /// being walked, so that a recursive message is walked once.
    fn found(&self, type_name: &str, fault: Fault, stack: &mut Vec<String>) -> Vec<Found> {
        if let Some(found) = well_known(type_name, fault) {
            return found;
        }
        if stack.iter().any(|t| t == type_name) {
            return Vec::new();
        }
        let message = &self.0[type_name];
        stack.push(type_name.to_owned());
        let mut all = Vec::new();
        for field in &message.field {
            all.extend(self.field_found(field, fault, stack));
        }
        stack.pop();
        all
    }

    fn field_found(
        &self,
        field: &FieldDescriptorProto,
        fault: Fault,
        stack: &mut Vec<String>,
    ) -> Vec<Found> {
        let tag = u32::try_from(field.number()).expect("field numbers are positive");
        let name = field.name();
        let repeated = field.label() == Label::Repeated;
        // One element stands for a repeated field; the answer names it by its index.
        let at = if repeated {
            format!("{name}[0]")
        } else {
            name.to_owned()
        };
        let mut body = Vec::new();
        match (field.r#type(), fault) {
            (Type::String, Fault::Nul) => {
                prost::encoding::string::encode(tag, &NUL_TEXT.to_owned(), &mut body);
            }
            (Type::Double, Fault::Number(n)) => prost::encoding::double::encode(tag, &n, &mut body),
            #[allow(clippy::cast_possible_truncation)] // NaN and the infinities stay what they are.
            (Type::Float, Fault::Number(n)) => {
                prost::encoding::float::encode(tag, &(n as f32), &mut body);
            }
            (Type::Message, _) => {
                if let Some(entry) = self.map_entry(field) {
                    return self.map_found(tag, name, entry, fault, stack);
                }
                return self
                    .found(field.type_name(), fault, stack)
                    .into_iter()
                    .map(|inner| Found {
                        body: wrap(tag, &inner.body),
                        path: join(&at, &inner.path),
                    })
                    .collect();
            }
            _ => return Vec::new(),
        }
        vec![Found { body, path: at }]
    }

    fn map_entry(&self, field: &FieldDescriptorProto) -> Option<&DescriptorProto> {
        let entry = self.0.get(field.type_name())?;
        entry
            .options
            .as_ref()
            .is_some_and(prost_types::MessageOptions::map_entry)
            .then_some(entry)
    }

    /// A map: a key with a NUL (the answer names the map), and each bad value under key `k`.
    fn map_found(
        &self,
        tag: u32,
        name: &str,
        entry: &DescriptorProto,
        fault: Fault,
        stack: &mut Vec<String>,
    ) -> Vec<Found> {
        let (key, value) = (&entry.field[0], &entry.field[1]);
        let mut all = Vec::new();
        if key.r#type() == Type::String && matches!(fault, Fault::Nul) {
            let mut e = Vec::new();
            prost::encoding::string::encode(1, &NUL_TEXT.to_owned(), &mut e);
            all.push(Found {
                body: wrap(tag, &e),
                path: name.to_owned(),
            });
        }
        for inner in self.field_found(value, fault, stack) {
            let mut e = Vec::new();
            // A text key that reads as a field name; any other key is left out, so that it is
            // its type's default, which the path quotes.
            let shown = match key.r#type() {
                Type::String => {
                    prost::encoding::string::encode(1, &"k".to_owned(), &mut e);
                    "k"
                }
                Type::Bool => "[\"false\"]",
                _ => "[\"0\"]",
            };
            e.extend_from_slice(&inner.body);
            let rest = inner.path.strip_prefix(value.name()).unwrap_or(&inner.path);
            let rest = rest.strip_prefix('.').unwrap_or(rest);
            all.push(Found {
                body: wrap(tag, &e),
                path: join(&join(name, shown), rest),
            });
        }
        all
    }
}

/// The bad values of `Struct`, `Value` and `ListValue`, built with prost-types' own messages;
/// `Some(vec![])` for the well-known types that hold neither text nor doubles; `None` for the
/// package's own messages.
fn well_known(type_name: &str, fault: Fault) -> Option<Vec<Found>> {
    let value = |kind| prost_types::Value { kind: Some(kind) };
    let bad = match fault {
        Fault::Nul => value(Kind::StringValue(NUL_TEXT.into())),
        Fault::Number(n) => value(Kind::NumberValue(n)),
    };
    let list = |v: prost_types::Value| prost_types::ListValue { values: vec![v] };
    let object = |k: &str, v: prost_types::Value| prost_types::Struct {
        fields: [(k.to_owned(), v)].into(),
    };
    let nul_key = object(NUL_TEXT, value(Kind::NullValue(0)));
    fn found(message: &impl prost::Message, path: &str) -> Found {
        Found {
            body: message.encode_to_vec(),
            path: path.to_owned(),
        }
    }
    let nul = matches!(fault, Fault::Nul);
    let mut all = Vec::new();
    match type_name {
        ".google.protobuf.Value" => {
            all.push(found(&bad, ""));
            all.push(found(&value(Kind::ListValue(list(bad.clone()))), "[0]"));
            if nul {
                all.push(found(&value(Kind::StructValue(nul_key)), ""));
            }
        }
        ".google.protobuf.Struct" => {
            all.push(found(&object("k", bad.clone()), "k"));
            let nested = object("k", value(Kind::ListValue(list(bad))));
            all.push(found(&nested, "k[0]"));
            if nul {
                all.push(found(&nul_key, ""));
            }
        }
        ".google.protobuf.ListValue" => all.push(found(&list(bad), "[0]")),
        other if other.starts_with(".google.protobuf.") => {}
        _ => return None,
    }
    Some(all)
}

/// `body` as the message field `tag`.
fn wrap(tag: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 6);
    encode_key(tag, WireType::LengthDelimited, &mut out);
    encode_varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

/// A path below `parent`, written as the door check writes it.
fn join(parent: &str, rest: &str) -> String {
    if rest.is_empty() || rest.starts_with('[') {
        format!("{parent}{rest}")
    } else {
        format!("{parent}.{rest}")
    }
}

/// One case per bad value reachable from each RPC's request.
fn cases(fault: Fault) -> Vec<Case> {
    let set = FileDescriptorSet::decode(leasehold_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let messages = Messages::new(&set);
    let mut cases = Vec::new();
    for file in set
        .file
        .iter()
        .filter(|f| f.package().starts_with("leasehold."))
    {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                for found in messages.found(method.input_type(), fault, &mut Vec::new()) {
                    cases.push(Case {
                        path: path.clone(),
                        server_streaming: method.server_streaming(),
                        body: found.body,
                        field: found.path,
                    });
                }
            }
        }
    }
    cases
}

/// Request and response bytes as they are: the request is built by hand.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Sends a case's request; a streaming RPC's refusal arrives as the call's status.
async fn call(channel: &AuthedChannel, case: &Case) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("not ready: {e}")))?;
    let path = http::uri::PathAndQuery::try_from(case.path.as_str()).expect("a method path");
    let request = tonic::Request::new(case.body.clone());
    if case.server_streaming {
        grpc.server_streaming(request, path, Raw).await.map(drop)
    } else {
        grpc.unary(request, path, Raw).await.map(drop)
    }
}

/// A digest of every row of every table: what a refused request must leave as it was.
async fn snapshot(sql: &tokio_postgres::Client) -> Vec<(String, String)> {
    let tables = sql
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .expect("tables");
    let mut digests = Vec::new();
    for table in tables {
        let name: String = table.get(0);
        let digest = sql
            .query_one(
                &format!(
                    "SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '')
                     FROM \"{name}\" t"
                ),
                &[],
            )
            .await
            .expect("digest");
        digests.push((name, digest.get(0)));
    }
    digests
}

struct Served {
    b: Bundle,
    channel: AuthedChannel,
    cancel: CancellationToken,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The API in-process over a database holding an automation, a running run, a run waiting at a
/// gate and a worker: stored state a request with a bad field must leave alone.
async fn setup() -> (Served, v1::Run, String) {
    let b = fixtures::setup().await;
    let automation = b
        .automation("id: gated\nnodes:\n  - {id: ship, kind: noop, approval: {prompt: Ship?}}\n")
        .await;
    b.start(&automation).await;
    let waiting = b.claim_one("w").await.claim;
    let gate_id = b
        .store
        .await_approval(&waiting, &NodeId::from("ship"), "Ship?")
        .await
        .expect("gate");
    let running = b.start(&automation).await;
    b.claim_one("w").await;
    b.store
        .register_worker(&worker_info("w", "box", "test"))
        .await
        .expect("worker");
    let (addr, cancel) = serve_with_tokens(&b.store).await;
    let channel = channel_as(&b.store, addr, "default", Role::Admin, "contract-test").await;
    let run = RunsClient::new(channel.clone())
        .get_run(v1::GetRunRequest {
            run_id: running.to_string(),
        })
        .await
        .expect("the running run")
        .into_inner();
    (Served { b, channel, cancel }, run, gate_id.to_string())
}

fn violations(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Sends every case of `faults` and collects every answer that is not INVALID_ARGUMENT naming
/// exactly the case's field with `message`, and every case that changed a row; asserts once at
/// the end, so that one run shows every field that is not covered.
async fn every_case_is_refused_at_the_door(faults: &[Fault], message: &str) {
    let (s, _, _) = setup().await;
    let mut failures = Vec::new();
    let mut sent = 0;
    for &fault in faults {
        for case in cases(fault) {
            let before = snapshot(&s.b.sql).await;
            let answer = call(&s.channel, &case).await;
            sent += 1;
            let what = format!("{} {} ({fault:?})", case.path, case.field);
            match answer {
                Ok(()) => failures.push(format!("{what}: accepted")),
                Err(status)
                    if status.code() == Code::InvalidArgument
                        && violations(&status) == [case.field.clone()]
                        && status.message().contains(message) => {}
                Err(status) => failures.push(format!(
                    "{what}: {:?} {:?} naming {:?}",
                    status.code(),
                    status.message(),
                    violations(&status)
                )),
            }
            if snapshot(&s.b.sql).await != before {
                failures.push(format!("{what}: changed stored rows"));
            }
        }
    }
    assert!(sent > 10, "the descriptors yield cases ({sent})");
    assert!(
        failures.is_empty(),
        "{} of {sent} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn every_request_string_with_a_nul_is_invalid_argument_naming_it_and_stores_nothing() {
    every_case_is_refused_at_the_door(&[Fault::Nul], "NUL character (U+0000)").await;
}

#[tokio::test]
async fn every_request_number_not_finite_is_invalid_argument_naming_it_and_stores_nothing() {
    let faults = [
        Fault::Number(f64::NAN),
        Fault::Number(f64::INFINITY),
        Fault::Number(f64::NEG_INFINITY),
    ];
    every_case_is_refused_at_the_door(&faults, "must be a finite number").await;
}

#[test]
fn the_walk_reaches_nested_repeated_oneof_and_struct_fields() {
    let fields = |fault| -> Vec<String> {
        cases(fault)
            .into_iter()
            .map(|c| format!("{} {}", c.path, c.field))
            .collect()
    };
    let nul = fields(Fault::Nul);
    for expected in [
        "/leasehold.v1.Runs/StartRuns requests[0].request_id",
        "/leasehold.v1.Runs/StartRuns requests[0].inputs.k",
        "/leasehold.v1.Runs/StartRun inputs",
        "/leasehold.v1.Automations/CreateAutomation spec.text",
        "/leasehold.v1.Automations/ApplyAutomation spec.structured.nodes[0].input[0]",
        "/leasehold.v1.Automations/UpdateAutomation spec.structured.nodes[0].depends_on[0]",
        "/leasehold.v1.Gates/DecideGate decided_by",
        "/leasehold.v1.Runs/WatchRun run_id",
    ] {
        assert!(nul.iter().any(|f| f == expected), "{expected} in {nul:#?}");
    }
    let nan = fields(Fault::Number(f64::NAN));
    for expected in [
        "/leasehold.v1.Automations/CreateAutomation spec.structured.nodes[0].backoff.factor",
        "/leasehold.v1.Runs/StartRun inputs.k[0]",
    ] {
        assert!(nan.iter().any(|f| f == expected), "{expected} in {nan:#?}");
    }
}

/// Issue 13: a NUL reason on a running run was INTERNAL, standing in for FAILED_PRECONDITION.
#[tokio::test]
async fn resume_of_a_running_run_with_a_nul_reason_is_invalid_argument() {
    let (s, run, _) = setup().await;
    let mut runs = RunsClient::new(s.channel.clone());
    let resume = |reason: &str| v1::ResumeRunRequest {
        run_id: run.run_id.clone(),
        reason: reason.into(),
        ..Default::default()
    };
    let clean = runs.resume_run(resume("go")).await.expect_err("running");
    assert_eq!(clean.code(), Code::FailedPrecondition, "{clean:?}");
    let before = snapshot(&s.b.sql).await;
    let nul = runs.resume_run(resume("go\0")).await.expect_err("NUL");
    assert_eq!(nul.code(), Code::InvalidArgument, "{nul:?}");
    assert_eq!(violations(&nul), ["reason"]);
    assert_eq!(snapshot(&s.b.sql).await, before);
}

/// Issue 13: a NUL decided_by on an unknown gate was INTERNAL, standing in for NOT_FOUND.
#[tokio::test]
async fn decision_on_an_unknown_gate_with_a_nul_decided_by_is_invalid_argument() {
    let (s, _, gate_id) = setup().await;
    let mut gates = GatesClient::new(s.channel.clone());
    let decide = |gate_id: String, by: &str| v1::DecideGateRequest {
        gate_id,
        decision: v1::Decision::Approve.into(),
        decided_by: by.into(),
        ..Default::default()
    };
    let unknown = uuid::Uuid::new_v4().to_string();
    let clean = gates
        .decide_gate(decide(unknown.clone(), "me"))
        .await
        .expect_err("unknown");
    assert_eq!(clean.code(), Code::NotFound, "{clean:?}");
    let before = snapshot(&s.b.sql).await;
    for gate in [unknown, gate_id] {
        let nul = gates
            .decide_gate(decide(gate, "me\0"))
            .await
            .expect_err("NUL");
        assert_eq!(nul.code(), Code::InvalidArgument, "{nul:?}");
        assert_eq!(violations(&nul), ["decided_by"]);
    }
    assert_eq!(
        snapshot(&s.b.sql).await,
        before,
        "the pending gate is still pending"
    );
}
