//! Trace context across edges: from a request's headers ([`Incoming`],
//! [`continue_trace`]), into an outgoing call's headers ([`inject`]), and
//! into work handed to a task or a queue ([`handoff`]). Both `traceparent`
//! (W3C) and `x-datadog-*` headers are read and written.

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::sampling::{self, ROOT_ONLY};

/// Installs the propagator both services read and write headers with.
#[allow(deprecated)] // opentelemetry-datadog is deprecated: see `export`
pub(super) fn install() {
    // Both formats are written; on reading, the last that finds a trace wins:
    // W3C after Datadog, so a 128-bit trace id is not cut to Datadog's 64.
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(opentelemetry_datadog::DatadogPropagator::new()),
        Box::new(TraceContextPropagator::new()),
    ]));
}

/// The caller's trace context from a request's headers, and whether the
/// trace this request starts or continues is sampled.
#[derive(Debug, Default)]
pub struct Incoming {
    parent: Option<opentelemetry::Context>,
    sampled: bool,
}

impl Incoming {
    /// Reads `traceparent` or `x-datadog-*` (nothing when not exporting) and
    /// decides: the caller's decision when it made one; else the configured
    /// share, drawn on the caller's trace id if any.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        if !sampling::exporting() {
            return Self::default();
        }
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&opentelemetry_http::HeaderExtractor(headers))
        });
        let sc = parent.span().span_context().clone();
        if !sc.is_valid() {
            return Self {
                parent: None,
                sampled: sampling::sample_new_trace(),
            };
        }
        Self {
            parent: Some(parent),
            sampled: sampling::follow_caller(&sc),
        }
    }

    /// Whether the trace is recorded in full.
    pub fn sampled(&self) -> bool {
        self.sampled
    }
}

/// Makes `span` (made with [`root_span!`](crate::root_span) from `incoming.sampled()`)
/// continue the caller's trace, if any, and records its ids as its
/// `trace_id` and `span_id` fields (declared empty by the caller) for the
/// logs. Nothing is done when the span is disabled (no exporter).
pub fn continue_trace(span: &tracing::Span, incoming: Incoming) {
    if span.is_disabled() {
        return;
    }
    if let Some(parent) = incoming.parent {
        let _ = span.set_parent(parent);
    }
    record_ids(span);
}

/// The span for work that `parent` hands off (to a task or a queue): the
/// `child` made inside `parent` when it is recorded, else `parent` itself,
/// so that calls made from the work still carry the trace (and its "not
/// sampled" flag).
pub fn handoff(parent: &tracing::Span, child: impl FnOnce() -> tracing::Span) -> tracing::Span {
    let span = parent.in_scope(child);
    if span.is_disabled() {
        parent.clone()
    } else {
        span
    }
}

/// Records the span's trace and span ids as its `trace_id`/`span_id` fields.
fn record_ids(span: &tracing::Span) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
        span.record("span_id", tracing::field::display(sc.span_id()));
    }
}

/// Writes `span`'s context into `headers` (`traceparent`, `tracestate`,
/// `x-datadog-*`), replacing what was there. From an unsampled root the
/// context goes out marked "not sampled", so the callee records no more.
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let mut cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return;
    }
    if span.metadata().is_some_and(|m| m.target() == ROOT_ONLY) {
        cx = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            sc.trace_id(),
            sc.span_id(),
            TraceFlags::default(),
            true,
            sc.trace_state().clone(),
        ));
    }
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut opentelemetry_http::HeaderInjector(headers));
    });
}
