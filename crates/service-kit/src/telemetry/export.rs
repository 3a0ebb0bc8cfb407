//! Span export: the SDK tracer provider for the chosen exporter, the
//! Datadog agent's `/v0.5/traces` or an OTLP/HTTP collector's `/v1/traces`.
//! Spans are exported in batches from the batch processor's own thread
//! (bounded queue: when full, spans are dropped, never waited for), over
//! reqwest's blocking client with a short timeout: a dead, slow or stalled
//! agent costs spans, never a request.

// opentelemetry-datadog is deprecated; its successor (datadog-opentelemetry)
// is a preview pinned to opentelemetry 0.33.
#![allow(deprecated)]

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracerProvider, SpanExporter};

use super::args::{ExporterKind, TelemetryArgs};
use super::sampling::Sampled;

/// Time one export call may take (connect, send, answer).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(2);

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

fn sampled(exporter: impl SpanExporter + 'static) -> Sampled {
    Sampled::new(BatchSpanProcessor::builder(exporter).build())
}

/// The tracer provider of the chosen exporter (none for `none`), and the
/// problems met loading CA certificates (to log once logging is set up).
pub(super) fn provider(
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
