//! The root span of one traced request to either service.

/// The root span of a traced server request, continuing the caller's trace
/// (`traceparent` or `x-datadog-*` in `$headers`) and following its sampling
/// decision (see [`root_span!`](crate::root_span)). Span `request` with
/// `otel.name = $name` (e.g. `"POST /v1/events"`), `otel.kind = "server"`,
/// `http.request.method`, `http.response.status_code` (recorded by
/// [`record_status`](crate::telemetry::record_status)), the fields listed
/// after the name (declared empty, recorded by the handler), then
/// `trace_id` and `span_id`. A macro, because a span's fields are fixed
/// where it is created.
///
/// ```text
/// let span = service_kit::request_span!(req.headers(), req.method(), "POST /v1/events", events);
/// ```
#[macro_export]
macro_rules! request_span {
    ($headers:expr, $method:expr, $name:expr $(, $($field:ident).+)* $(,)?) => {{
        let incoming = $crate::telemetry::Incoming::from_headers($headers);
        let span = $crate::root_span!(
            incoming.sampled(),
            "request",
            otel.name = $name,
            otel.kind = "server",
            http.request.method = %$method,
            http.response.status_code = ::tracing::field::Empty,
            $($($field).+ = ::tracing::field::Empty,)*
            trace_id = ::tracing::field::Empty,
            span_id = ::tracing::field::Empty,
        );
        $crate::telemetry::continue_trace(&span, incoming);
        span
    }};
}
