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

use crate::app::App;

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
    // Session renewals still in flight (Bigtable writes) finish first.
    if tokio::time::timeout_at(flush_deadline, state.parts.store.close())
        .await
        .is_err()
    {
        tracing::error!("Session store writes were still running at the flush deadline.");
    }
    let mut sinks_flushed = true;
    for (name, result) in [
        (
            "events",
            tokio::time::timeout_at(flush_deadline, state.parts.sink.close()).await,
        ),
        (
            "dead letters",
            tokio::time::timeout_at(flush_deadline, state.parts.deadletters.close()).await,
        ),
    ] {
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
