//! Head sampling: which traces are recorded, decided once, at the root
//! span. A caller's decision is followed (a Datadog context without a
//! priority is drawn on its trace id, so every service keeps or drops the
//! same traces); a new trace is sampled with the configured share. Inside
//! an unsampled trace only the root span is created ([`HeadSampling`]),
//! and it reaches the export queue only when it ended in an error
//! ([`Sampled`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::trace::{SpanContext, Status, TraceFlags};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanData, SpanProcessor};

/// Target of the root span of a sampled trace (see [`root_span!`](crate::root_span)).
pub const SAMPLED_ROOT: &str = "trace.sampled";
/// Target of the root span of a trace that is not sampled: the only span it
/// records, exported only when it ends with an error.
pub const ROOT_ONLY: &str = "trace.root_only";
/// The attribute that marks such a root.
const ROOT_ONLY_ATTRIBUTE: &str = "trace.root_only";

/// Whether spans are exported (set once by [`start`]).
static EXPORTING: AtomicBool = AtomicBool::new(false);
/// Roots whose 64-bit draw (or trace id's low 64 bits) is below this are
/// sampled; `u64::MAX` samples all.
static THRESHOLD: AtomicU64 = AtomicU64::new(u64::MAX);

/// A root span: `target` [`SAMPLED_ROOT`] when `$sampled`, else
/// [`ROOT_ONLY`] with the attribute `trace.root_only = true`. Its children
/// are recorded only in the first case. DEBUG level, like every request-path
/// span: without an exporter it is never created.
#[macro_export]
macro_rules! root_span {
    ($sampled:expr, $name:literal $(, $($fields:tt)*)?) => {
        if $sampled {
            ::tracing::debug_span!(target: "trace.sampled", $name $(, $($fields)*)?)
        } else {
            ::tracing::debug_span!(target: "trace.root_only", $name, trace.root_only = true $(, $($fields)*)?)
        }
    };
}

/// Turns sampling on, keeping the share `ratio` of new traces (once spans
/// are exported).
pub(super) fn start(ratio: f64) {
    THRESHOLD.store(threshold(ratio), Ordering::Relaxed);
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether spans are exported.
pub(super) fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

pub(super) fn is_root(m: &tracing::Metadata<'_>) -> bool {
    m.target() == SAMPLED_ROOT || m.target() == ROOT_ONLY
}

/// Head sampling, as a global filter: inside an unsampled trace (the
/// current span is an unsampled root), no DEBUG or TRACE span is created at
/// all, for any layer. (Per-layer filters would not do: a span they all
/// reject is still created, and would become the current span.)
pub(super) struct HeadSampling;

impl<S> tracing_subscriber::Layer<S> for HeadSampling
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn register_callsite(
        &self,
        m: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if m.is_span() && *m.level() >= tracing::Level::DEBUG && !is_root(m) {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::always()
        }
    }

    fn enabled(
        &self,
        m: &tracing::Metadata<'_>,
        cx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        !(m.is_span()
            && *m.level() >= tracing::Level::DEBUG
            && !is_root(m)
            && cx
                .lookup_current()
                .is_some_and(|current| current.metadata().target() == ROOT_ONLY))
    }
}

fn threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else {
        (ratio * u64::MAX as f64) as u64
    }
}

/// Whether a new trace with no caller is sampled (the configured share).
/// `false` when nothing is exported.
pub fn sample_new_trace() -> bool {
    EXPORTING.load(Ordering::Relaxed) && {
        let t = THRESHOLD.load(Ordering::Relaxed);
        t == u64::MAX || rand::random::<u64>() < t
    }
}

/// Whether a trace that a caller started is sampled here.
pub(super) fn follow_caller(sc: &SpanContext) -> bool {
    caller_decision(sc, THRESHOLD.load(Ordering::Relaxed))
}

/// A caller's sampling decision: sampled, not sampled, or (Datadog without a
/// priority: "deferred") left to us, drawn on the trace id.
fn caller_decision(sc: &SpanContext, threshold: u64) -> bool {
    const DEFERRED: TraceFlags = TraceFlags::new(0x02);
    if sc.is_sampled() {
        return true;
    }
    if sc.trace_flags() & DEFERRED != DEFERRED {
        return false;
    }
    let low = u128::from_be_bytes(sc.trace_id().to_bytes()) as u64;
    threshold == u64::MAX || low < threshold
}

/// The batch processor, given only what is exported: the root span of an
/// unsampled trace is dropped here unless it ended in an error, so that the
/// 2,048-span queue holds sampled traces and errors, not every request.
#[derive(Debug)]
pub(super) struct Sampled {
    inner: BatchSpanProcessor,
}

impl Sampled {
    pub(super) fn new(inner: BatchSpanProcessor) -> Self {
        Self { inner }
    }

    fn keep(span: &SpanData) -> bool {
        matches!(span.status, Status::Error { .. })
            || !span
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == ROOT_ONLY_ATTRIBUTE)
    }
}

impl SpanProcessor for Sampled {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if Self::keep(&span) {
            self.inner.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceId, TraceState};

    use super::*;

    fn context(trace: u128, flags: u8) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(7),
            TraceFlags::new(flags),
            true,
            TraceState::default(),
        )
    }

    #[test]
    fn a_callers_decision_is_followed_and_a_deferred_one_drawn_on_the_trace_id() {
        let half = threshold(0.5);
        // Sampled or not, whatever the share.
        assert!(caller_decision(&context(u128::from(u64::MAX), 0x01), 0));
        assert!(!caller_decision(&context(1, 0x00), u64::MAX));
        // Datadog without a priority: the low 64 bits against the share.
        assert!(caller_decision(&context((9 << 64) | 1, 0x02), half));
        assert!(!caller_decision(
            &context(u128::from(u64::MAX - 1), 0x02),
            half
        ));
        assert!(caller_decision(
            &context(u128::from(u64::MAX - 1), 0x02),
            u64::MAX
        ));
        assert!(!caller_decision(&context(1, 0x02), threshold(0.0)));
    }
}
