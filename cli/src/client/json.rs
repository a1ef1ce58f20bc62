//! The API's messages as JSON for `--json`: the proto's field names, times as RFC 3339 strings
//! in UTC, and `null` for what is unset (an empty reason, a missing lease).

use leasehold_core::run::RunStatus;
use leasehold_proto::v1;
use prost_types::value::Kind;
use serde_json::{Map, Value, json};

use super::{names, render};

fn time(ts: Option<&prost_types::Timestamp>) -> Value {
    render::time(ts).map_or(Value::Null, |t| Value::String(render::rfc3339(t)))
}

/// An enum's name, or `null` for its UNSPECIFIED zero (a run that is not queued has no queue
/// reason).
fn unless_unspecified(value: i32, name: fn(i32) -> String) -> Value {
    if value == 0 {
        Value::Null
    } else {
        Value::String(name(value))
    }
}

fn text(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_owned())
    }
}

/// A `google.protobuf.Value` as the JSON it stands for.
pub fn value(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => number(*n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(list)) => Value::Array(list.values.iter().map(value).collect()),
        Some(Kind::StructValue(s)) => object(s),
    }
}

/// Whole numbers print as integers: protobuf carries every number as a double.
fn number(n: f64) -> Value {
    // 2^53: above it a double no longer holds every integer.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if n.fract() == 0.0 && n.abs() <= EXACT {
        #[allow(clippy::cast_possible_truncation)] // Whole and within ±2^53: exact.
        return Value::from(n as i64);
    }
    serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
}

/// A `google.protobuf.Struct` as a JSON object.
pub fn object(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect(),
    )
}

fn opt_object(s: Option<&prost_types::Struct>) -> Value {
    s.map_or_else(|| Value::Object(Map::new()), object)
}

/// JSON as a `google.protobuf.Value`.
pub fn to_value(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A JSON object as a `google.protobuf.Struct`.
pub fn to_struct(map: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
    }
}

/// An automation; `version` is the version whose spec is shown.
pub fn automation(a: &v1::Automation, version: i32) -> Value {
    let spec = a.spec.clone().unwrap_or_default();
    json!({
        "id": a.id,
        "version": version,
        "current_version": a.current_version,
        "status": names::automation_status(a.status),
        "version_created": a.version_created,
        "created_at": time(a.created_at.as_ref()),
        "updated_at": time(a.updated_at.as_ref()),
        "spec": {
            "id": spec.id,
            "description": text(&spec.description),
            "nodes": spec.nodes.iter().map(node_spec).collect::<Vec<_>>(),
        },
    })
}

fn node_spec(n: &v1::NodeSpec) -> Value {
    json!({
        "id": n.id,
        "kind": n.kind,
        "input": n.input.as_ref().map_or(Value::Null, value),
        "depends_on": n.depends_on,
        "max_attempts": n.max_attempts,
        "backoff": n.backoff.as_ref().map(|b| json!({
            "base_ms": b.base_ms,
            "factor": b.factor,
            "cap_ms": b.cap_ms,
            "jitter": b.jitter,
        })),
        "timeout_ms": n.timeout_ms,
        "approval": n.approval.as_ref().map(|a| json!({ "prompt": a.prompt })),
    })
}

/// A run; with `detail`, its nodes and gates too (listings do not carry them).
pub fn run(r: &v1::Run, detail: bool) -> Value {
    let mut out = json!({
        "run_id": r.run_id,
        "automation_id": r.automation_id,
        "automation_version": r.automation_version,
        "status": names::run_status(r.status),
        "priority": r.priority,
        "inputs": opt_object(r.inputs.as_ref()),
        "concurrency_key": text(&r.concurrency_key),
        "queue": text(&r.queue),
        "queue_reason": unless_unspecified(r.queue_reason, names::queue_reason),
        "waiting": r.waiting.as_ref().map(|w| json!({
            "code": w.code,
            "message": w.message,
            "missing": w.missing,
        })),
        "waiting_retry": r.waiting_retry.as_ref().map(|w| json!({
            "node_id": w.node_id,
            "next_attempt": w.next_attempt,
            "error": w.error,
            "due_at": time(w.due_at.as_ref()),
        })),
        "lease": r.lease.as_ref().map(|l| json!({
            "claimant_id": l.claimant_id,
            "expires_at": time(l.expires_at.as_ref()),
        })),
        "start_deadline": time(r.start_deadline.as_ref()),
        "run_deadline": time(r.run_deadline.as_ref()),
        "compacted_at": time(r.compacted_at.as_ref()),
        "trigger": r.trigger,
        "schedule_id": (!r.schedule_id.is_empty()).then(|| r.schedule_id.clone()),
        "scheduled_for": time(r.scheduled_for.as_ref()),
        "lease_epoch": r.lease_epoch,
        "stop_kind": unless_unspecified(r.stop_kind, names::stop_kind),
        "stop_reason": text(&r.stop_reason),
        "last_failure": r.last_failure.as_ref().map(|f| json!({
            "node_id": f.node_id,
            "attempt": f.attempt,
            "reason": f.reason,
        })),
        "event_seq": r.event_seq,
        "created_at": time(r.created_at.as_ref()),
        "finished_at": time(r.finished_at.as_ref()),
        "trace_id": text(&r.trace_id),
    });
    if detail {
        out["nodes"] = r.nodes.iter().map(node_state).collect();
        out["gates"] = r.gates.iter().map(gate).collect();
    }
    out
}

fn node_state(n: &v1::NodeState) -> Value {
    let started = render::time(n.started_at.as_ref());
    let finished = render::time(n.finished_at.as_ref());
    let duration_ms = match (started, finished) {
        (Some(s), Some(f)) => f
            .duration_since(s)
            .ok()
            .and_then(|d| u64::try_from(d.as_millis()).ok())
            .map_or(Value::Null, Value::from),
        _ => Value::Null,
    };
    json!({
        "node_id": n.node_id,
        "status": names::node_status(n.status),
        "attempts": n.attempts,
        "output": n.output.as_ref().map_or(Value::Null, value),
        // A null output of a completed node may be one the answer left out for its size.
        "output_omitted": n.output_omitted,
        "last_error": text(&n.last_error),
        "started_at": time(n.started_at.as_ref()),
        "finished_at": time(n.finished_at.as_ref()),
        "duration_ms": duration_ms,
    })
}

pub fn gate(g: &v1::Gate) -> Value {
    json!({
        "gate_id": g.gate_id,
        "run_id": g.run_id,
        "node_id": g.node_id,
        "prompt": g.prompt,
        "status": names::gate_status(g.status),
        "requested_at": time(g.requested_at.as_ref()),
        "decided_at": time(g.decided_at.as_ref()),
        "decided_by": text(&g.decided_by),
        "reason": text(&g.reason),
        "stale": g.stale,
        "rework_nodes": g.rework_nodes,
    })
}

pub fn worker(w: &v1::Worker) -> Value {
    json!({
        "claimant_id": w.claimant_id,
        "host": w.host,
        "pid": w.pid,
        "version": w.version,
        "capacity": w.capacity,
        "handlers": w.handlers,
        "started_at": time(w.started_at.as_ref()),
        "last_heartbeat": time(w.last_heartbeat.as_ref()),
        "draining": w.draining,
        "alive": w.alive,
        "held_runs": w.held_runs,
        "queues": w.queues,
        "labels": w.labels,
        "context": w.context,
    })
}

pub fn node_kind(k: &v1::NodeKind) -> Value {
    json!({
        "kind": k.kind,
        "builtin": k.builtin,
        "input_schema": k.input_schema.as_ref().map_or(Value::Null, object),
        "last_advertised_at": time(k.last_advertised_at.as_ref()),
    })
}

/// The stats, with every known status counted (zero when the coordinator left it out).
pub fn stats(s: &v1::GetStatsResponse) -> Value {
    let mut by_status = Map::new();
    for status in RunStatus::ALL {
        by_status.insert(status.as_str().to_owned(), 0.into());
    }
    for count in &s.run_counts {
        by_status.insert(names::run_status(count.status), count.runs.into());
    }
    json!({
        "runs_by_status": by_status,
        "oldest_queued_age_seconds": s.oldest_queued_age_seconds,
        "claimable_now": s.claimable_now,
        "held_leases": s.held_leases,
        "waiting": s.waiting.iter().map(|count| json!({
            "code": count.waiting.as_ref().map(|w| w.code.clone()),
            "message": count.waiting.as_ref().map(|w| w.message.clone()),
            "runs": count.runs,
        })).collect::<Vec<_>>(),
    })
}

pub fn event(e: &v1::RunEvent) -> Value {
    json!({
        "run_id": e.run_id,
        "seq": e.seq,
        "event": e.event,
        "occurred_at": time(e.occurred_at.as_ref()),
        "lease_epoch": e.lease_epoch,
        "run_status": unless_unspecified(e.run_status, names::run_status),
        "node_status": unless_unspecified(e.node_status, names::node_status),
        "node_id": text(&e.node_id),
        "attempt": if e.attempt == 0 { Value::Null } else { e.attempt.into() },
        "reason": text(&e.reason),
        "stop_kind": unless_unspecified(e.stop_kind, names::stop_kind),
        "metadata": opt_object(e.metadata.as_ref()),
        "terminal": e.terminal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_survives_a_trip_through_protobuf_values() {
        let original = json!({
            "n": 3, "x": 1.5, "neg": -2, "s": "hi", "b": true, "z": null,
            "list": [1, "two", {"three": [3]}],
        });
        let Value::Object(map) = &original else {
            unreachable!()
        };
        assert_eq!(object(&to_struct(map)), original);
    }
}
