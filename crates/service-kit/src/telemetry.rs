//! Traces and logs for both services, one concept per module:
//!
//! * `args`: [`TelemetryArgs`] (flags with environment twins).
//!   `OTEL_TRACES_EXPORTER` picks the exporter: `none` (default), `datadog`
//!   (the agent at `DD_TRACE_AGENT_URL`, `/v0.5/traces`; `DD_SERVICE`,
//!   `DD_ENV`, `DD_VERSION`) or `otlp` (OTLP/HTTP protobuf to
//!   `OTEL_EXPORTER_OTLP_ENDPOINT`).
//! * `export`: spans are exported in batches from a thread of their own
//!   (the SDK's batch processor, bounded queue: when full, spans are
//!   dropped, never waited for); the exporter's HTTP calls are made on that
//!   thread by reqwest's blocking client (HTTP/1.1, `http://` or `https://`
//!   with rustls, trusting the system's CA certificates or `SSL_CERT_FILE`)
//!   with a short timeout. A dead or slow agent costs dropped spans, never a
//!   request.
//! * `sampling`: `OTEL_TRACES_SAMPLER_ARG` is the share of traces kept
//!   (0..=1, default 1), decided at the root span ([`root_span!`](crate::root_span));
//!   a span with an error status is kept whatever the share. The decision
//!   hangs on the trace id alone, so every service keeps or drops the same
//!   traces.
//! * `propagation`: both `traceparent` and `x-datadog-*` headers are read
//!   ([`Incoming`], [`continue_trace`]) and written ([`inject`]).
//! * `request`: the root span of a traced request to either service
//!   ([`request_span!`](crate::request_span)), from the two above.
//! * `outcome`: a span's status ([`record_status`], [`set_error`]).
//! * `logs`: JSON lines on stderr (text on a terminal), filtered by
//!   `RUST_LOG`; spans carry `trace_id`/`span_id` fields so each line names
//!   its trace.
//!
//! [`init`] puts them together, before the async runtime starts.

mod args;
mod export;
mod logs;
mod outcome;
mod propagation;
mod request;
mod sampling;

pub use args::{ExporterKind, TelemetryArgs};
pub use outcome::{record_status, set_error};
pub use propagation::{Incoming, continue_trace, handoff, inject};
pub use sampling::{ROOT_ONLY, SAMPLED_ROOT, sample_new_trace};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps what the telemetry needs alive; [`Telemetry::shutdown`] flushes.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued (bounded by the export timeout).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(error) = p.shutdown()
        {
            tracing::warn!(%error, "Spans could not all be exported at shutdown.");
        }
    }
}

/// Sets up logging and, when configured, trace export. Call before the
/// async runtime starts (the exporters must not be built inside it).
pub fn init(cfg: &TelemetryArgs, default_service: &str) -> Result<Telemetry, String> {
    let service = cfg
        .dd_service
        .clone()
        .unwrap_or_else(|| default_service.to_owned());
    let (provider, problems) = export::provider(cfg, &service)?;
    propagation::install();
    // The request-path spans are DEBUG spans. Without an exporter they stay
    // disabled (RUST_LOG=info), so they cost nothing. With one, root spans
    // are always created, and other spans only inside a sampled trace
    // (`HeadSampling`); the log layers see only the roots, whose `trace_id`
    // and `span_id` fields every line inside the request then carries,
    // whatever RUST_LOG says about events.
    let env_filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let roots = || filter_fn(|m| m.is_span() && sampling::is_root(m));
    let spans = || filter_fn(|m| m.is_span() && *m.level() <= tracing::Level::DEBUG);
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let exporting = provider.is_some();
    let otel = provider.as_ref().map(|p| {
        // No thread, source-location or target attributes (allocations per
        // span; span names say where they come from) and no busy/idle clocks
        // (two clock reads per poll).
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service.clone()))
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(spans())
    });
    let result = if exporting {
        tracing_subscriber::registry()
            .with(sampling::HeadSampling)
            .with(logs::text_layer(terminal).with_filter(env_filter().or(roots())))
            .with(logs::json_layer(terminal).with_filter(env_filter().or(roots())))
            .with(otel)
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(logs::text_layer(terminal).with_filter(env_filter()))
            .with(logs::json_layer(terminal).with_filter(env_filter()))
            .try_init()
    };
    result.map_err(|e| e.to_string())?;
    if let Some(p) = &provider {
        sampling::start(cfg.traces_sample_ratio);
        opentelemetry::global::set_tracer_provider(p.clone());
        for problem in problems {
            tracing::warn!(%problem, "A CA certificate for trace export could not be loaded.");
        }
        tracing::info!(
            exporter = ?cfg.traces_exporter,
            %service,
            sample_ratio = cfg.traces_sample_ratio,
            "Exporting traces."
        );
    }
    Ok(Telemetry { provider })
}
