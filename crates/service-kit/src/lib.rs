//! What both services (tracking-api, migration-proxy) share: the HTTP/1.1
//! server loop and bounded body reading, the Prometheus text format and
//! process metrics, telemetry (logs and traces) and the shutdown signal.

pub mod prom;
pub mod server;
pub mod telemetry;

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot listen for SIGTERM; only SIGINT stops the server.");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Calls `on_hangup` for every SIGHUP, from a task of the current runtime.
/// Installing the handler also stops SIGHUP from killing the process (its
/// default action): log-rotation setups and process managers send it.
pub fn on_hangup(on_hangup: impl Fn() + Send + 'static) {
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hangup) => {
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::info!("SIGHUP received.");
                    on_hangup();
                }
            });
        }
        Err(error) => tracing::warn!(%error, "Cannot listen for SIGHUP."),
    }
    #[cfg(not(unix))]
    drop(on_hangup);
}

/// Why a request body could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Larger than the limit (bytes).
    TooLarge(usize),
    /// The connection failed while reading.
    Io(String),
}

/// Reads a whole body, refusing it as soon as it passes `limit` bytes.
pub async fn read_limited<B>(body: B, limit: usize) -> Result<bytes::Bytes, ReadError>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    #[allow(clippy::disallowed_methods)] // bounded by `Limited`
    let collected = http_body_util::Limited::new(body, limit).collect().await;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ReadError::TooLarge(limit))
        }
        Err(e) => Err(ReadError::Io(e.to_string())),
    }
}
