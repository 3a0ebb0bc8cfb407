//! Serving HTTP/1.1 through service-kit's server loop (public and admin
//! listeners), and the shutdown sequence:
//! readiness 503 → (shutdown delay, still serving) → stop accepting → drain
//! in-flight requests and event tasks → close the sinks → return.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use service_kit::server::ServerOptions;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::app::{App, Limits};
use crate::config::{ConfigError, bytes, duration, positive};

#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_delay: Duration,
    pub drain_timeout: Duration,
    /// Time the sinks get to flush after the drain (at least this, even
    /// when the drain overran).
    pub flush_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 8192,
            shutdown_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(25),
            flush_timeout: Duration::from_secs(5),
        }
    }
}

/// What the drain achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections still open when the drain deadline passed.
    pub connections_cut: bool,
    /// Event tasks still running when the drain deadline passed.
    pub tasks_cut: bool,
    /// Whether the sinks flushed cleanly.
    pub sinks_flushed: bool,
}

impl DrainReport {
    pub fn clean(&self) -> bool {
        !self.connections_cut && !self.tasks_cut && self.sinks_flushed
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()>,
    opts: ServeOptions,
) -> DrainReport {
    let state = Arc::clone(app.state());
    state.set_ready(true);
    // Readiness under sustained overload is judged once a second.
    let overload = Arc::clone(&state.parts.overload);
    let ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            overload.tick();
        }
    });
    let stop = {
        let state = Arc::clone(&state);
        async move {
            shutdown.await;
            state.set_ready(false);
            tracing::info!(delay = ?opts.shutdown_delay, "Shutdown requested; readiness is now 503.");
            tokio::time::sleep(opts.shutdown_delay).await;
        }
    };
    let server = ServerOptions {
        max_connections: opts.max_connections,
        header_timeout: opts.header_timeout,
        body_timeout: opts.body_timeout,
    };
    let handler = move |req, peer| {
        let app = app.clone();
        async move { app.handle(req, peer).await }
    };
    let open = service_kit::server::serve(listener, server, handler, stop).await;
    ticker.abort();
    tracing::info!("Listener closed; draining in-flight requests.");

    let deadline = Instant::now() + opts.drain_timeout;
    let connections_cut = !open.drain(deadline).await;
    if connections_cut {
        tracing::warn!("Connections were still open at the drain deadline.");
    }
    let tracker = state.tracker();
    tracker.close();
    let tasks_cut = tokio::time::timeout_at(deadline, tracker.wait())
        .await
        .is_err();
    if tasks_cut {
        tracing::error!(
            tasks = tracker.len(),
            "Event tasks were still running at the drain deadline."
        );
    }
    // Sinks get their flush even when the drain overran: what they hold is accepted.
    let flush_deadline = deadline.max(Instant::now() + opts.flush_timeout);
    // The sinks and the session renewals still in flight (Bigtable writes,
    // migration-proxy PUTs) flush side by side, each until the deadline: a
    // slow session store must not take the events' time.
    let (store, events, deadletters) = tokio::join!(
        tokio::time::timeout_at(flush_deadline, state.parts.store.close()),
        tokio::time::timeout_at(flush_deadline, state.parts.sink.close()),
        tokio::time::timeout_at(flush_deadline, state.parts.deadletters.close()),
    );
    if store.is_err() {
        tracing::error!("Session store writes were still running at the flush deadline.");
    }
    let mut sinks_flushed = true;
    for (name, result) in [("events", events), ("dead letters", deadletters)] {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                sinks_flushed = false;
                tracing::error!(%error, sink = name, "Sink did not flush.");
            }
            Err(_) => {
                sinks_flushed = false;
                tracing::error!(sink = name, "Sink flush timed out.");
            }
        }
    }
    let report = DrainReport {
        connections_cut,
        tasks_cut,
        sinks_flushed,
    };
    tracing::info!(?report, "Drained.");
    report
}

/// Serves the operator endpoints (`/metrics`, `/healthz`, `/readyz`, see
/// [`App::handle_admin`]) on `listener` until `stop` resolves.
pub async fn serve_admin(listener: TcpListener, app: App, stop: impl Future<Output = ()>) {
    let handler = move |req, _peer| {
        let app = app.clone();
        async move { app.handle_admin(req).await }
    };
    service_kit::server::serve_admin(listener, handler, stop).await;
}

/// The HTTP limits and timeouts (`TRACKING_MAX_*`, the header, body,
/// shutdown and drain timeouts).
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Largest request body, in bytes, as sent.
    #[arg(long, env = "TRACKING_MAX_BODY_BYTES", default_value = "1048576", value_parser = positive, global = true)]
    pub max_body_bytes: usize,

    /// Largest request body after gzip decompression, in bytes.
    #[arg(long, env = "TRACKING_MAX_DECOMPRESSED_BYTES", default_value = "1048576", value_parser = positive, global = true)]
    pub max_decompressed_bytes: usize,

    /// Memory for request bodies being read or processed, all requests
    /// together (as sent and inflated); beyond it 503 with Retry-After. Bodies
    /// still arriving and bodies above 64 KiB share three quarters of it; the
    /// rest is for small bodies that have arrived whole. Units B, KiB, MiB,
    /// GiB.
    #[arg(long, env = "TRACKING_MAX_BODY_MEMORY", default_value = "128MiB", value_parser = bytes, global = true)]
    pub max_body_memory: u64,

    /// Most events in one batch.
    #[arg(long, env = "TRACKING_MAX_BATCH_EVENTS", default_value = "500", value_parser = positive, global = true)]
    pub max_batch_events: usize,

    /// Most event requests processed at once, counted from when their body
    /// has arrived; beyond it 503 with Retry-After.
    #[arg(long, env = "TRACKING_MAX_INFLIGHT", default_value = "4096", value_parser = positive, global = true)]
    pub max_inflight: usize,

    /// Most open client connections; further ones wait in the listen backlog.
    #[arg(long, env = "TRACKING_MAX_CONNECTIONS", default_value = "8192", value_parser = positive, global = true)]
    pub max_connections: usize,

    /// Time allowed to receive a request's headers; also the longest a
    /// keep-alive connection stays idle.
    #[arg(long, env = "TRACKING_HEADER_TIMEOUT", default_value = "10s", value_parser = duration, global = true)]
    pub header_timeout: Duration,

    /// Time allowed to receive a request's body (408 past it).
    #[arg(long, env = "TRACKING_BODY_TIMEOUT", default_value = "10s", value_parser = duration, global = true)]
    pub body_timeout: Duration,

    /// On SIGTERM, how long /readyz reports 503 before the listener closes
    /// (lets load balancers stop routing here first).
    #[arg(long, env = "TRACKING_SHUTDOWN_DELAY", default_value = "0s", value_parser = duration, global = true)]
    pub shutdown_delay: Duration,

    /// On SIGTERM, the most time given to in-flight requests and sinks to finish.
    #[arg(long, env = "TRACKING_DRAIN_TIMEOUT", default_value = "25s", value_parser = duration, global = true)]
    pub drain_timeout: Duration,
}

impl HttpArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let largest_body = self.max_body_bytes as u64 + self.max_decompressed_bytes as u64;
        if self.max_body_memory - self.max_body_memory / 4 < largest_body {
            return Err(ConfigError::new(format!(
                "TRACKING_MAX_BODY_MEMORY ({} bytes) must hold one largest body, as sent and inflated \
                 (TRACKING_MAX_BODY_BYTES + TRACKING_MAX_DECOMPRESSED_BYTES = {largest_body} bytes), in three quarters of it",
                self.max_body_memory
            )));
        }
        if self.body_timeout.is_zero() || self.header_timeout.is_zero() {
            return Err(ConfigError::new("timeouts must be greater than zero"));
        }
        Ok(())
    }

    /// The request limits; `session_timeout` is the deadline of one
    /// session-store call (`TRACKING_SESSION_TIMEOUT`).
    pub fn limits(&self, session_timeout: Duration) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_decompressed_bytes: self.max_decompressed_bytes,
            max_batch_events: self.max_batch_events,
            max_inflight: self.max_inflight,
            body_memory: usize::try_from(self.max_body_memory).unwrap_or(usize::MAX),
            session_timeout,
        }
    }

    /// The server's options; `flush_timeout` is the time the sinks get after
    /// the drain.
    pub fn serve_options(&self, flush_timeout: Duration) -> ServeOptions {
        ServeOptions {
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            max_connections: self.max_connections,
            shutdown_delay: self.shutdown_delay,
            drain_timeout: self.drain_timeout,
            flush_timeout,
        }
    }
}
