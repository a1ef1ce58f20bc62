//! A run's W3C trace context ([`TraceContext`]) as OpenTelemetry sees it.

use std::time::SystemTime;

use leasehold_domain::trace::{TraceContext, TraceParent, TraceState};
use opentelemetry::KeyValue;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId,
    TraceState as OtelTraceState, Tracer as _,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (and gRPC metadata key) that carries a trace's parent.
pub const TRACEPARENT: &str = "traceparent";
/// The header that carries the vendors' trace state.
pub const TRACESTATE: &str = "tracestate";

/// An OpenTelemetry context whose remote parent is `trace`'s span: spans made under it join
/// the run's trace.
pub fn remote_context(trace: &TraceContext) -> opentelemetry::Context {
    opentelemetry::Context::new().with_remote_span_context(span_context(trace))
}

/// The span context `trace` names, remote.
pub fn span_context(trace: &TraceContext) -> SpanContext {
    let parent = &trace.parent;
    let state = trace
        .state
        .as_ref()
        .and_then(|s| s.as_str().parse::<OtelTraceState>().ok())
        .unwrap_or_default();
    SpanContext::new(
        TraceId::from_hex(parent.trace_id()).unwrap_or(TraceId::INVALID),
        SpanId::from_hex(parent.span_id()).unwrap_or(SpanId::INVALID),
        TraceFlags::new(parent.flags()),
        true,
        state,
    )
}

/// The trace context of `span`, if it is a valid one.
pub fn trace_of(span: &SpanContext) -> Option<TraceContext> {
    if !span.is_valid() {
        return None;
    }
    let parent = TraceParent::new(
        span.trace_id().to_bytes(),
        span.span_id().to_bytes(),
        span.is_sampled(),
    )?;
    let state = TraceState::parse(&span.trace_state().header());
    Some(TraceContext { parent, state })
}

/// Records a span that already ended, from `started` to `ended`, as the root of a trace of its
/// own, and returns its context for others to link to: for work whose span is worth keeping only
/// once its result is known (a claim that claimed nothing is not). Nothing when traces are off.
pub fn ended_root_span(
    name: &'static str,
    started: SystemTime,
    ended: SystemTime,
    attributes: Vec<KeyValue>,
) -> Option<SpanContext> {
    if !crate::enabled() {
        return None;
    }
    let tracer = opentelemetry::global::tracer(crate::setup::TRACER_NAME);
    let mut span = tracer
        .span_builder(name)
        .with_start_time(started)
        .with_attributes(attributes)
        .start_with_context(&tracer, &opentelemetry::Context::new());
    let context = span.span_context().clone();
    span.end_with_timestamp(ended);
    Some(context)
}

/// The context of the current `tracing` span as OpenTelemetry knows it; `None` when traces are
/// off or the span is not exported.
pub fn current_trace() -> Option<TraceContext> {
    if !crate::enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    trace_of(cx.span().span_context())
}

/// The trace context a request's headers carry: a `traceparent` that breaks the specification
/// is ignored (no context), as is a `tracestate` without a valid `traceparent`.
pub fn from_headers(headers: &http::HeaderMap) -> Option<TraceContext> {
    let value = |name| headers.get(name).and_then(|v| v.to_str().ok());
    from_values(value(TRACEPARENT), value(TRACESTATE))
}

/// The trace context of a `traceparent` and a `tracestate` value, each read as
/// [`TraceParent::parse`] and [`TraceState::parse`] read it.
pub fn from_values(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<TraceContext> {
    let parent = TraceParent::parse(traceparent?)?;
    Some(TraceContext {
        parent,
        state: tracestate.and_then(TraceState::parse),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_stored_context_and_a_span_context_say_the_same() {
        let trace = from_values(Some(PARENT), Some("congo=t61rcWkgMzE")).expect("valid");
        let span = span_context(&trace);
        assert!(span.is_valid() && span.is_remote() && span.is_sampled());
        assert_eq!(
            span.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(span.trace_state().get("congo"), Some("t61rcWkgMzE"));
        assert_eq!(trace_of(&span), Some(trace));
        assert_eq!(trace_of(&SpanContext::empty_context()), None);
    }

    #[test]
    fn headers_give_a_context_only_with_a_valid_traceparent() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(from_headers(&headers), None);
        headers.insert(TRACESTATE, http::HeaderValue::from_static("a=b"));
        assert_eq!(from_headers(&headers), None, "a state alone is no context");
        headers.insert(TRACEPARENT, http::HeaderValue::from_static("00-junk"));
        assert_eq!(
            from_headers(&headers),
            None,
            "a malformed parent is ignored"
        );
        headers.insert(TRACEPARENT, http::HeaderValue::from_static(PARENT));
        let trace = from_headers(&headers).expect("valid");
        assert_eq!(trace.parent.as_str(), PARENT);
        assert_eq!(trace.state.expect("state").as_str(), "a=b");
        headers.insert(TRACESTATE, http::HeaderValue::from_static("Bad State"));
        assert_eq!(from_headers(&headers).expect("valid").state, None);
    }
}
