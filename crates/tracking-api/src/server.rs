//! Serving HTTP/1.1 with hyper, and the shutdown sequence:
//! readiness 503 → (shutdown delay, still serving) → stop accepting → drain
//! in-flight requests and event tasks → close the sinks → return.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::app::App;

#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    pub header_timeout: Duration,
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
            max_connections: 16_384,
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
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(opts.max_connections));
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
    tokio::pin!(shutdown);

    let mut stop_at: Option<Instant> = None;
    loop {
        let until_stop = async {
            match stop_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown, if stop_at.is_none() => {
                state.set_ready(false);
                tracing::info!(delay = ?opts.shutdown_delay, "Shutdown requested; readiness is now 503.");
                stop_at = Some(Instant::now() + opts.shutdown_delay);
            }
            () = until_stop => break,
            accepted = accept(&listener, &connections) => {
                let Some((stream, peer, permit)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let service = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(app.handle(req, peer).await) }
                });
                // half_close: a client that shuts down its write side right after
                // sending (EOF while its request is in flight) still gets its
                // request read and processed; without it hyper drops the request.
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .half_close(true)
                    .header_read_timeout(opts.header_timeout)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(error) = conn.await {
                        tracing::debug!(%error, %peer, "Connection ended with an error.");
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    ticker.abort();
    tracing::info!("Listener closed; draining in-flight requests.");

    let deadline = Instant::now() + opts.drain_timeout;
    let connections_cut = tokio::time::timeout_at(deadline, graceful.shutdown())
        .await
        .is_err();
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

async fn accept(
    listener: &TcpListener,
    connections: &Arc<Semaphore>,
) -> Option<(
    tokio::net::TcpStream,
    std::net::SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
)> {
    let permit = Arc::clone(connections).acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, peer)) => Some((stream, peer, permit)),
        Err(error) => {
            // Out of file descriptors and the like: back off instead of spinning.
            tracing::warn!(%error, "Accept failed.");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}
