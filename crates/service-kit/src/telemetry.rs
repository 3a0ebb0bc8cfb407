//! Traces and logs for both services.
//!
//! [`TelemetryArgs`] (flags with environment twins): `OTEL_TRACES_EXPORTER` picks the exporter: `none` (default), `datadog`
//! (the agent at `DD_TRACE_AGENT_URL`, `/v0.5/traces`; `DD_SERVICE`,
//! `DD_ENV`, `DD_VERSION`) or `otlp` (OTLP/HTTP protobuf to
//! `OTEL_EXPORTER_OTLP_ENDPOINT`). `OTEL_TRACES_SAMPLER_ARG` is the share of
//! traces kept (0..=1, default 1); a span with an error status is kept
//! whatever the share. The decision hangs on the trace id alone, so every
//! service keeps or drops the same traces.
//!
//! Spans are exported in batches from a thread of their own (the SDK's batch
//! processor, bounded queue: when full, spans are dropped, never waited for);
//! the exporter's HTTP calls are made on that thread by reqwest's blocking
//! client (HTTP/1.1, `http://` or `https://` with rustls, trusting the
//! system's CA certificates or `SSL_CERT_FILE`) with a short timeout. A dead
//! or slow agent costs dropped spans, never a request. Both `traceparent`
//! and `x-datadog-*` headers are read and written.
//!
//! Logs are JSON lines on stderr (text on a terminal), filtered by `RUST_LOG`;
//! spans carry `trace_id`/`span_id` fields so each line names its trace.

#![allow(deprecated)] // opentelemetry-datadog is deprecated, see DEPENDENCIES.md

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{SpanContext, Status, TraceContextExt, TraceFlags, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Time one export call may take (connect, send, answer).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// Target of the root span of a sampled trace (see [`root_span!`]).
pub const SAMPLED_ROOT: &str = "trace.sampled";
/// Target of the root span of a trace that is not sampled: the only span it
/// records, exported only when it ends with an error.
pub const ROOT_ONLY: &str = "trace.root_only";
/// The attribute that marks such a root.
const ROOT_ONLY_ATTRIBUTE: &str = "trace.root_only";

/// Whether spans are exported (set once by [`init`]).
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

/// Which exporter (`OTEL_TRACES_EXPORTER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExporterKind {
    None,
    Datadog,
    Otlp,
}

fn ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{s}`: expected a share between 0 and 1")),
    }
}

/// Trace export settings, shared by both binaries' command lines.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Trace exporter: none, datadog (the agent's /v0.5/traces) or otlp
    /// (OTLP/HTTP protobuf).
    #[arg(
        long,
        env = "OTEL_TRACES_EXPORTER",
        value_enum,
        default_value = "none",
        global = true
    )]
    pub traces_exporter: ExporterKind,
    /// Datadog agent for `datadog`.
    #[arg(
        long,
        env = "DD_TRACE_AGENT_URL",
        default_value = "http://localhost:8126",
        global = true
    )]
    pub dd_trace_agent_url: String,
    /// Service name on the traces (default: the binary's name).
    #[arg(long, env = "DD_SERVICE", global = true)]
    pub dd_service: Option<String>,
    /// Environment tag on the traces.
    #[arg(long, env = "DD_ENV", global = true)]
    pub dd_env: Option<String>,
    /// Version tag on the traces.
    #[arg(long, env = "DD_VERSION", global = true)]
    pub dd_version: Option<String>,
    /// OTLP/HTTP endpoint for `otlp` (spans go to its /v1/traces).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        default_value = "http://localhost:4318",
        global = true
    )]
    pub otlp_endpoint: String,
    /// Share of new traces recorded in full, 0 to 1, decided at the root span
    /// (a caller's sampling decision is followed); a request that fails is
    /// exported whatever the share.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", default_value = "1", value_parser = ratio, global = true)]
    pub traces_sample_ratio: f64,
}

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

/// The exporters' HTTP client: reqwest's blocking client (HTTP/1.1; TLS by
/// rustls with ring), called from the batch processor's own thread, outside
/// any async runtime, and built before one starts. It trusts the system's
/// CA certificates, or those of `SSL_CERT_FILE` / `SSL_CERT_DIR` when set
/// (rustls-native-certs, as OpenSSL reads them). One call (connect,
/// handshake, request, answer) may take [`EXPORT_TIMEOUT`]. No proxy: the
/// agent or collector is reached directly. Returns the client and what
/// could not be loaded (to log once logging is set up).
fn http_client(endpoint: &str) -> Result<(reqwest::blocking::Client, Vec<String>), String> {
    let native = rustls_native_certs::load_native_certs();
    let mut problems: Vec<String> = native.errors.iter().map(ToString::to_string).collect();
    let mut roots = rustls::RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        problems.push(format!("{ignored} CA certificates could not be parsed"));
    }
    if roots.is_empty() && endpoint.starts_with("https://") {
        let mut message = format!("no CA certificate to check {endpoint} with");
        for problem in &problems {
            message.push_str("; ");
            message.push_str(problem);
        }
        return Err(format!(
            "{message} (set SSL_CERT_FILE to the file of the collector's CA)"
        ));
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let client = reqwest::blocking::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(EXPORT_TIMEOUT)
        .timeout(EXPORT_TIMEOUT)
        .no_proxy()
        .build()
        .map_err(|e| format!("cannot build the exporter's HTTP client: {e}"))?;
    Ok((client, problems))
}

/// The batch processor, given only what is exported: the root span of an
/// unsampled trace is dropped here unless it ended in an error, so that the
/// 2,048-span queue holds sampled traces and errors, not every request.
#[derive(Debug)]
struct Sampled {
    inner: BatchSpanProcessor,
}

impl Sampled {
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

fn sampled(exporter: impl SpanExporter + 'static) -> Sampled {
    Sampled {
        inner: BatchSpanProcessor::builder(exporter).build(),
    }
}

/// The tracer provider of the chosen exporter (none for `none`), and the
/// problems met loading CA certificates (to log once logging is set up).
fn provider(
    cfg: &TelemetryArgs,
    service: &str,
) -> Result<(Option<SdkTracerProvider>, Vec<String>), String> {
    let resource = {
        let mut r = opentelemetry_sdk::Resource::builder().with_service_name(service.to_owned());
        if let Some(env) = &cfg.dd_env {
            r = r.with_attribute(opentelemetry::KeyValue::new(
                "deployment.environment",
                env.clone(),
            ));
        }
        if let Some(v) = &cfg.dd_version {
            r = r.with_attribute(opentelemetry::KeyValue::new("service.version", v.clone()));
        }
        r.build()
    };
    // Sampling is decided before the SDK sees a span (`root_span!`); what it
    // is given, it records (its default would drop children of a remote
    // parent that is not sampled, errors included).
    let builder = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(Sampler::AlwaysOn);
    let (processor, problems) = match cfg.traces_exporter {
        ExporterKind::None => return Ok((None, Vec::new())),
        ExporterKind::Datadog => {
            let endpoint = cfg.dd_trace_agent_url.trim_end_matches('/');
            let (client, problems) = http_client(endpoint)?;
            let mut p = opentelemetry_datadog::new_pipeline()
                .with_service_name(service.to_owned())
                .with_agent_endpoint(endpoint)
                .with_api_version(opentelemetry_datadog::ApiVersion::Version05)
                .with_http_client(client);
            if let Some(env) = &cfg.dd_env {
                p = p.with_env(env.clone());
            }
            if let Some(v) = &cfg.dd_version {
                p = p.with_version(v.clone());
            }
            let exporter = p.build_exporter().map_err(|e| e.to_string())?;
            (sampled(exporter), problems)
        }
        ExporterKind::Otlp => {
            use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
            let endpoint = format!("{}/v1/traces", cfg.otlp_endpoint.trim_end_matches('/'));
            let (client, problems) = http_client(&endpoint)?;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(|e| e.to_string())?;
            (sampled(exporter), problems)
        }
    };
    Ok((
        Some(builder.with_span_processor(processor).build()),
        problems,
    ))
}

/// Log lines as text, on a terminal.
fn text_layer<S>(terminal: bool) -> Option<impl tracing_subscriber::Layer<S>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    terminal.then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
}

/// The span fields the JSON log lines carry: `trace_id` and `span_id` only
/// (the rest is for traces). The stock JSON field formatter re-parses a
/// span's fields on every `record`; this one ignores every other field.
#[derive(Debug, Default)]
struct TraceIds;

#[derive(Default)]
struct IdsVisitor {
    ids: Vec<(&'static str, String)>,
}

impl tracing::field::Visit for IdsVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "trace_id" | "span_id") {
            self.ids.push((field.name(), format!("{value:?}")));
        }
    }
}

impl IdsVisitor {
    /// Appends `"name":"value"` pairs to a JSON object's text (`{}` if empty).
    fn merge_into(self, object: &mut String) {
        if self.ids.is_empty() {
            return;
        }
        if object == "{}" {
            object.clear();
        }
        if object.ends_with('}') {
            object.pop();
        }
        for (name, value) in self.ids {
            object.push(if object.is_empty() { '{' } else { ',' });
            object.push_str(&serde_json::json!({ name: value }).to_string()[1..]);
            object.pop();
        }
        object.push('}');
    }
}

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for TraceIds {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut ids = IdsVisitor::default();
        fields.record(&mut ids);
        let mut object = String::new();
        ids.merge_into(&mut object);
        writer.write_str(if object.is_empty() { "{}" } else { &object })
    }

    fn add_fields(
        &self,
        current: &'w mut tracing_subscriber::fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let mut ids = IdsVisitor::default();
        fields.record(&mut ids);
        ids.merge_into(&mut current.fields);
        Ok(())
    }
}

/// Log lines as JSON, with the current span's trace ids.
fn json_layer<S>(terminal: bool) -> Option<impl tracing_subscriber::Layer<S>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    (!terminal).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(TraceIds)
            .with_writer(std::io::stderr)
    })
}

/// Sets up logging and, when configured, trace export. Call before the
/// async runtime starts (the exporters must not be built inside it).
pub fn init(cfg: &TelemetryArgs, default_service: &str) -> Result<Telemetry, String> {
    let service = cfg
        .dd_service
        .clone()
        .unwrap_or_else(|| default_service.to_owned());
    let (provider, problems) = provider(cfg, &service)?;
    // Both formats are written; on reading, the last that finds a trace wins:
    // W3C after Datadog, so a 128-bit trace id is not cut to Datadog's 64.
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(opentelemetry_datadog::DatadogPropagator::new()),
        Box::new(TraceContextPropagator::new()),
    ]));
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
    let roots = || filter_fn(|m| m.is_span() && is_root(m));
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
            .with(HeadSampling)
            .with(text_layer(terminal).with_filter(env_filter().or(roots())))
            .with(json_layer(terminal).with_filter(env_filter().or(roots())))
            .with(otel)
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(text_layer(terminal).with_filter(env_filter()))
            .with(json_layer(terminal).with_filter(env_filter()))
            .try_init()
    };
    result.map_err(|e| e.to_string())?;
    if let Some(p) = &provider {
        THRESHOLD.store(threshold(cfg.traces_sample_ratio), Ordering::Relaxed);
        EXPORTING.store(true, Ordering::Relaxed);
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

fn is_root(m: &tracing::Metadata<'_>) -> bool {
    m.target() == SAMPLED_ROOT || m.target() == ROOT_ONLY
}

/// Head sampling, as a global filter: inside an unsampled trace (the
/// current span is an unsampled root), no DEBUG or TRACE span is created at
/// all, for any layer. (Per-layer filters would not do: a span they all
/// reject is still created, and would become the current span.)
struct HeadSampling;

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
        if !EXPORTING.load(Ordering::Relaxed) {
            return Self::default();
        }
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&opentelemetry_http::HeaderExtractor(headers))
        });
        let sc = parent.span().span_context().clone();
        if !sc.is_valid() {
            return Self {
                parent: None,
                sampled: sample_new_trace(),
            };
        }
        Self {
            parent: Some(parent),
            sampled: caller_decision(&sc, THRESHOLD.load(Ordering::Relaxed)),
        }
    }

    /// Whether the trace is recorded in full.
    pub fn sampled(&self) -> bool {
        self.sampled
    }
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

/// Makes `span` (made with [`root_span!`] from `incoming.sampled()`)
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
    fn log_lines_get_the_trace_ids_as_a_json_object() {
        let mut object = String::new();
        let ids = |pairs: &[(&'static str, &str)]| IdsVisitor {
            ids: pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        };
        ids(&[]).merge_into(&mut object);
        assert_eq!(object, "");
        object.push_str("{}");
        ids(&[]).merge_into(&mut object);
        assert_eq!(object, "{}");
        ids(&[("trace_id", "ab")]).merge_into(&mut object);
        assert_eq!(object, r#"{"trace_id":"ab"}"#);
        ids(&[("span_id", "c\"\"")]).merge_into(&mut object);
        assert_eq!(object, r#"{"trace_id":"ab","span_id":"c\"\""}"#);
        let parsed: serde_json::Value = serde_json::from_str(&object).expect("JSON");
        assert_eq!(parsed["span_id"], "c\"\"");
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
