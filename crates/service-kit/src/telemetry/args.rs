//! The telemetry flags both binaries' command lines flatten in, each with
//! its environment twin.

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
