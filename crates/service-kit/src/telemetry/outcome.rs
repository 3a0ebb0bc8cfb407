//! How a span's work ended: the answer's status, and errors. A span
//! marked as an error is exported whatever the sampling share.

use opentelemetry::trace::Status;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Records a server span's answer (`http.response.status_code`, declared
/// empty by the caller) and marks a 5xx as an error.
pub fn record_status(span: &tracing::Span, status: u16) {
    if span.is_disabled() {
        return;
    }
    span.record("http.response.status_code", status);
    if status >= 500 {
        set_error(span, format!("status {status}"));
    }
}

/// Marks `span` as failed (kept whatever the sampling share).
pub fn set_error(span: &tracing::Span, message: impl Into<String>) {
    span.set_status(Status::error(message.into()));
}
