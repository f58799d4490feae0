//! Spans and the W3C context messages carry ([`TraceParent`]).
//!
//! When the process exports spans (a `tracing-opentelemetry` layer is installed), a span that
//! continues a trace gets the sender's context as its OpenTelemetry parent, and the context it
//! hands on (in the messages it causes, in an HTTP response) is its own exported one, so that
//! every parent a span names is a span that was exported. Without export, the same calls give a
//! fresh span id in the sender's trace, so the logs still carry one trace id per order.

use crate::envelope::{Envelope, TraceParent};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Makes `span` a child of the remote span `parent` (a new trace without one) and returns the
/// context that the work done in `span` hands on. Call it before `span` is first entered.
pub fn continue_trace(span: &tracing::Span, parent: Option<TraceParent>) -> TraceParent {
    if let Some(parent) = parent {
        set_parent(span, parent);
    }
    exported_context(span).unwrap_or_else(|| parent.map_or_else(TraceParent::new_root, |parent| parent.child()))
}

/// Makes `span` a child of the remote span `parent` and returns `span`'s exported context, or
/// `None` when spans are not exported. Call it before `span` is first entered.
pub fn follow(span: &tracing::Span, parent: TraceParent) -> Option<TraceParent> {
    set_parent(span, parent);
    exported_context(span)
}

/// The producer's span of a message leaving its writer, exported as `<action> <type>`
/// (`publish` by the relay, `hand off` in-process), a child of the span that wrote it. When
/// spans are exported, the message names this span as its parent from here on, so that the
/// consumer's span follows it.
pub fn producer_span(action: &'static str, service: &'static str, envelope: &mut Envelope) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "produce",
        action,
        otel.name = format!("{action} {}", envelope.message_type),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        service,
        message_type = %envelope.message_type,
        message_id = %envelope.message_id,
        correlation_id = %envelope.correlation_id,
    );
    if let Some(exported) = envelope.trace_context().and_then(|writer| follow(&span, writer)) {
        envelope.traceparent = Some(exported.to_string());
    }
    span
}

/// Records that `span` also works for the remote span `other` (e.g. one of a batch of messages).
pub fn link(span: &tracing::Span, other: TraceParent) {
    span.add_link(remote(other));
}

fn set_parent(span: &tracing::Span, parent: TraceParent) {
    // Fails only when spans are not exported (or `span` is disabled): nothing to link then.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote(parent)));
}

fn remote(context: TraceParent) -> SpanContext {
    // Every trace is recorded: a TraceParent does not carry the sampled flag.
    let flags = TraceFlags::SAMPLED;
    SpanContext::new(TraceId::from(context.trace_id), SpanId::from(context.span_id), flags, true, TraceState::default())
}

/// The context of `span` as it is exported; `None` when spans are not exported.
pub fn exported_context(span: &tracing::Span) -> Option<TraceParent> {
    let context = span.context();
    let exported = context.span().span_context().clone();
    exported.is_valid().then(|| TraceParent {
        trace_id: u128::from_be_bytes(exported.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(exported.span_id().to_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_export_the_context_continues_the_parents_trace_under_a_new_span_id() {
        let parent = TraceParent::new_root();
        let continued = continue_trace(&tracing::info_span!("consume"), Some(parent));
        assert_eq!(continued.trace_id, parent.trace_id);
        assert_ne!(continued.span_id, parent.span_id);
        assert!(exported_context(&tracing::info_span!("request")).is_none());
        assert!(follow(&tracing::info_span!("publish"), parent).is_none());
        assert_ne!(continue_trace(&tracing::Span::none(), None).trace_id, parent.trace_id);
    }
}
