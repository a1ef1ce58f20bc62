//! Conversions between the API's messages and the domain's types.

use chrono::{DateTime, Utc};
use leasehold_core::ids::{AutomationId, NodeId, RunId};
use leasehold_core::retry;
use leasehold_core::routing;
use leasehold_core::schedule::{self, CatchUp, Overlap, ScheduleSpec};
use leasehold_core::spec::{self, Approval, NodeSpec, Spec};
use leasehold_proto::v1;
use prost_types::value::Kind;
use serde_json::Value;

use super::error::{ApiError, ApiResult, SpecSource};

/// Longest id, name or reason accepted in a request, in characters.
pub const MAX_TEXT_CHARS: usize = 4_096;

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn opt_timestamp(t: Option<DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    t.map(timestamp)
}

pub fn from_timestamp(field: &str, t: &prost_types::Timestamp) -> ApiResult<DateTime<Utc>> {
    let nanos = u32::try_from(t.nanos).map_err(|_| ApiError::field(field, "nanos out of range"))?;
    DateTime::from_timestamp(t.seconds, nanos).ok_or_else(|| ApiError::field(field, "out of range"))
}

pub fn to_value(json: &Value) -> prost_types::Value {
    let kind = match json {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(to_struct_map(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn to_struct_map(map: &serde_json::Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
    }
}

/// A JSON object as a `Struct`; anything else (never stored for inputs) as an empty one.
pub fn to_struct(json: &Value) -> prost_types::Struct {
    match json {
        Value::Object(map) => to_struct_map(map),
        _ => prost_types::Struct::default(),
    }
}

pub fn from_value(value: &prost_types::Value) -> Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => number(*n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(list)) => Value::Array(list.values.iter().map(from_value).collect()),
        Some(Kind::StructValue(s)) => from_struct(s),
    }
}

/// JSON numbers travel as doubles in a `Value`; whole ones come back as integers, as a user who
/// wrote `3` expects. Non-finite doubles have no JSON form, and no request carrying one gets
/// here: the door check (`leasehold_proto::checks`) refuses it naming the field, so the null
/// below is never reached.
fn number(n: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: every whole double below is exact.
    if n.fract() == 0.0 && n.abs() < EXACT {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

pub fn from_struct(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), from_value(v)))
            .collect(),
    )
}

/// The spec of a request: parsed from text or built from the message, then validated.
pub fn spec_from_source(source: Option<&v1::SpecSource>) -> ApiResult<Spec> {
    let source = source.and_then(|s| s.source.as_ref()).ok_or_else(|| {
        ApiError::field("spec", "required: a structured spec or its YAML/JSON text")
    })?;
    match source {
        v1::spec_source::Source::Text(text) => {
            spec::parse(text).map_err(|e| ApiError::spec(SpecSource::Text, e))
        }
        v1::spec_source::Source::Structured(message) => {
            let spec = spec_from_message(message);
            spec::validate(&spec).map_err(|e| ApiError::spec(SpecSource::Structured, e))?;
            Ok(spec)
        }
    }
}

fn spec_from_message(message: &v1::AutomationSpec) -> Spec {
    let limits = super::queues::limits_from(
        message.max_running,
        message.max_starts_per_second,
        message.burst,
    );
    Spec {
        id: AutomationId(message.id.clone()),
        description: (!message.description.is_empty()).then(|| message.description.clone()),
        queue: (!message.queue.is_empty()).then(|| message.queue.clone()),
        requires_context: message.requires_context.clone(),
        nodes: message
            .nodes
            .iter()
            .map(|n| NodeSpec {
                id: NodeId(n.id.clone()),
                kind: n.kind.clone(),
                input: n.input.as_ref().map_or(Value::Null, from_value),
                depends_on: n.depends_on.iter().cloned().map(NodeId).collect(),
                max_attempts: if n.max_attempts == 0 {
                    spec::MAX_ATTEMPTS_DEFAULT
                } else {
                    n.max_attempts
                },
                backoff: n.backoff.as_ref().map_or_else(retry::Policy::default, |b| {
                    retry::Policy {
                        base_ms: b.base_ms,
                        factor: b.factor,
                        cap_ms: b.cap_ms,
                        jitter: b.jitter,
                    }
                }),
                timeout_ms: if n.timeout_ms == 0 {
                    spec::TIMEOUT_MS_DEFAULT
                } else {
                    n.timeout_ms
                },
                approval: n.approval.as_ref().map(|a| Approval {
                    prompt: a.prompt.clone(),
                }),
                requires: n
                    .requires
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect(),
            })
            .collect(),
        max_running: limits.max_running,
        max_starts_per_second: limits.max_starts_per_second,
        burst: limits.burst,
        schedule_to_start_timeout_ms: (message.schedule_to_start_timeout_ms != 0)
            .then_some(message.schedule_to_start_timeout_ms),
        run_timeout_ms: (message.run_timeout_ms != 0).then_some(message.run_timeout_ms),
        schedules: message
            .schedules
            .iter()
            .map(schedule_from_message)
            .collect(),
    }
}

fn schedule_from_message(message: &v1::ScheduleSpec) -> ScheduleSpec {
    ScheduleSpec {
        id: if message.id.is_empty() {
            schedule::DEFAULT_SCHEDULE_ID.to_owned()
        } else {
            message.id.clone()
        },
        cron: message.cron.clone(),
        timezone: if message.timezone.is_empty() {
            schedule::UTC.to_owned()
        } else {
            message.timezone.clone()
        },
        inputs: message
            .inputs
            .as_ref()
            .map_or_else(|| serde_json::json!({}), from_struct),
        overlap: match v1::Overlap::try_from(message.overlap) {
            Ok(v1::Overlap::QueueOne) => Overlap::QueueOne,
            Ok(v1::Overlap::Allow) => Overlap::Allow,
            // UNSPECIFIED is the default; a number this build does not know is read as it too.
            _ => Overlap::Skip,
        },
        catch_up: message
            .catch_up
            .map_or_else(CatchUp::default, CatchUp::from_latest),
    }
}

pub fn schedule_message(s: &ScheduleSpec) -> v1::ScheduleSpec {
    v1::ScheduleSpec {
        id: s.id.clone(),
        cron: s.cron.clone(),
        timezone: s.timezone.clone(),
        inputs: Some(to_struct(&s.inputs)),
        overlap: match s.overlap {
            Overlap::Skip => v1::Overlap::Skip,
            Overlap::QueueOne => v1::Overlap::QueueOne,
            Overlap::Allow => v1::Overlap::Allow,
        } as i32,
        catch_up: Some(s.catch_up.latest()),
    }
}

pub fn spec_message(spec: &Spec) -> v1::AutomationSpec {
    v1::AutomationSpec {
        id: spec.id.0.clone(),
        description: spec.description.clone().unwrap_or_default(),
        nodes: spec
            .nodes
            .iter()
            .map(|n| v1::NodeSpec {
                id: n.id.0.clone(),
                kind: n.kind.clone(),
                input: Some(to_value(&n.input)),
                depends_on: n.depends_on.iter().map(|d| d.0.clone()).collect(),
                max_attempts: n.max_attempts,
                backoff: Some(v1::Backoff {
                    base_ms: n.backoff.base_ms,
                    factor: n.backoff.factor,
                    cap_ms: n.backoff.cap_ms,
                    jitter: n.backoff.jitter,
                }),
                timeout_ms: n.timeout_ms,
                approval: n.approval.as_ref().map(|a| v1::Approval {
                    prompt: a.prompt.clone(),
                }),
                requires: n
                    .requires
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect(),
            })
            .collect(),
        queue: spec.queue.clone().unwrap_or_default(),
        requires_context: spec.requires_context.clone(),
        max_running: spec.max_running.unwrap_or(0),
        max_starts_per_second: spec.max_starts_per_second.unwrap_or(0.0),
        burst: spec.burst.unwrap_or(0),
        schedule_to_start_timeout_ms: spec.schedule_to_start_timeout_ms.unwrap_or(0),
        run_timeout_ms: spec.run_timeout_ms.unwrap_or(0),
        schedules: spec.schedules.iter().map(schedule_message).collect(),
    }
}

pub fn run_id(field: &str, text: &str) -> ApiResult<RunId> {
    if text.is_empty() {
        return Err(ApiError::field(field, "required"));
    }
    uuid::Uuid::parse_str(text)
        .map(RunId)
        .map_err(|e| ApiError::field(field, format!("not a run id: {e}")))
}

pub fn gate_id(field: &str, text: &str) -> ApiResult<uuid::Uuid> {
    if text.is_empty() {
        return Err(ApiError::field(field, "required"));
    }
    uuid::Uuid::parse_str(text).map_err(|e| ApiError::field(field, format!("not a gate id: {e}")))
}

/// A name-like id: required, at most 128 characters of `[A-Za-z0-9_.-]`, starting with a letter
/// or digit, as the spec's names (a name that no spec can hold cannot name anything).
pub fn name(field: &str, text: &str) -> ApiResult<String> {
    let Some(first) = text.chars().next() else {
        return Err(ApiError::field(field, "required"));
    };
    if !first.is_ascii_alphanumeric() {
        return Err(ApiError::field(
            field,
            format!("must start with a letter or digit, not {first:?}"),
        ));
    }
    if text.chars().count() > 128 {
        return Err(ApiError::field(field, "longer than 128 characters"));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(ApiError::field(
            field,
            format!("contains {bad:?}; only A-Z, a-z, 0-9, '_', '.' and '-' are allowed"),
        ));
    }
    Ok(text.to_owned())
}

/// Longest request id or concurrency key, in characters.
pub const MAX_KEY_CHARS: usize = 256;

/// A key that may be left empty (a request id, a concurrency key): at most [`MAX_KEY_CHARS`].
/// A queue name where one may be given: empty is none, anything else must be a queue's name.
pub fn optional_queue(field: &str, text: &str) -> ApiResult<Option<String>> {
    if text.is_empty() {
        return Ok(None);
    }
    routing::check_queue_name(text).map_err(|e| ApiError::field(field, e))?;
    Ok(Some(text.to_owned()))
}

pub fn optional_key(field: &str, text: &str) -> ApiResult<Option<String>> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.chars().count() > MAX_KEY_CHARS {
        return Err(ApiError::field(
            field,
            format!("longer than {MAX_KEY_CHARS} characters"),
        ));
    }
    Ok(Some(text.to_owned()))
}

/// Free text: at most [`MAX_TEXT_CHARS`] characters.
pub fn text<'a>(field: &str, text: &'a str) -> ApiResult<&'a str> {
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::field(
            field,
            format!("longer than {MAX_TEXT_CHARS} characters"),
        ));
    }
    Ok(text)
}
