//! The application state: the adapters and settings it is built from
//! ([`Parts`]), and the request-time state around them.

use super::*;

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_decompressed_bytes: usize,
    pub max_batch_events: usize,
    pub max_inflight: usize,
    /// Bytes of request bodies held at once, as sent and inflated.
    pub body_memory: usize,
    pub session_timeout: Duration,
}

/// Everything a request needs, built once at start-up: the adapters and
/// settings it was built from, and the request-time state around them.
#[derive(Debug)]
pub struct AppState {
    pub parts: Parts,
    pub ua: UaParser,
    pub(super) inflight: Arc<Semaphore>,
    pub(super) body_memory: Arc<BodyMemory>,
    pub(super) tracker: TaskTracker,
    /// `GET /v1/tracker.js`, with this API's limits.
    pub(super) script: crate::tracker::Script,
    pub(super) ready: AtomicBool,
    pub(super) store_warned: OncePerSecond,
}

/// The adapters and settings an [`AppState`] is built from.
#[derive(Debug)]
pub struct Parts {
    pub limits: Limits,
    pub store: Arc<dyn SessionStore>,
    pub sink: Arc<dyn EventSink>,
    pub deadletters: Arc<dyn DeadLetterSink>,
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn IdSource>,
    pub cors: Cors,
    pub cookie: VisitorCookie,
    pub client_ip: ClientIp,
    pub geo: Option<GeoLookup>,
    /// The API's own (HTTP-level) metrics.
    pub metrics: Arc<Metrics>,
    /// The adapters' metrics, each registered by the adapter's builder;
    /// `/metrics` renders them after the API's own.
    pub registry: Arc<Registry>,
    /// Sustained-overload readiness (ticked once a second by the server).
    pub overload: Arc<crate::overload::OverloadGuard>,
    /// Request headers passed on to migration-proxy (empty in `cloud` mode).
    pub forward_headers: Vec<http::HeaderName>,
    /// Attributes of the `session` spans.
    pub span_labels: SpanLabels,
    /// The Segment API's write keys, limits and public address.
    pub segment: crate::segment::SegmentSettings,
    /// Deduplication of client-given event ids.
    pub dedup: Dedup,
    /// The live event inspector (`TRACKING_INSPECT`), when on.
    pub inspect: Option<Arc<crate::inspect::Inspector>>,
}

/// Deduplication of client-given event ids (`TRACKING_DEDUP_WINDOW`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Dedup {
    /// `None`: off (also in the `legacy` migration mode, whose store keeps
    /// no ids).
    pub window: Option<Duration>,
    /// The `disk` acknowledgement mode: an event's id is recorded once it
    /// is on disk (a failed `fdatasync` answers `503`, and the retry must
    /// not be taken for a duplicate); otherwise once handed to the sink.
    pub after_receipt: bool,
}

impl Dedup {
    /// What the store does with `event`'s client-given id.
    pub fn check(self, event: &Event) -> IdCheck<'_> {
        match (self.window, event.event_id()) {
            (Some(_), Some(id)) => IdCheck::Check(id),
            _ => IdCheck::Skip,
        }
    }
}

/// Constant attributes of the `session` spans: which store answers, in which
/// migration mode.
#[derive(Debug, Clone, Copy)]
pub struct SpanLabels {
    /// `memory`, `bigtable` or `migration-proxy` (legacy mode).
    pub store: &'static str,
    /// `cloud`, `parallel` or `legacy`.
    pub mode: &'static str,
}

impl Default for SpanLabels {
    fn default() -> Self {
        Self {
            store: "memory",
            mode: "cloud",
        }
    }
}

impl AppState {
    pub fn new(parts: Parts) -> Arc<Self> {
        Arc::new(Self {
            inflight: Arc::new(Semaphore::new(parts.limits.max_inflight)),
            body_memory: BodyMemory::new(parts.limits.body_memory),
            ua: UaParser::new(4096),
            tracker: TaskTracker::new(),
            script: crate::tracker::Script::new(
                parts.limits.max_batch_events,
                parts.limits.max_body_bytes,
            ),
            ready: AtomicBool::new(false),
            store_warned: OncePerSecond::default(),
            parts,
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Ready to take traffic: started, not draining, not in sustained
    /// overload (see [`crate::overload`]), and the event output works.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
            && !self.parts.overload.unready()
            && self.parts.sink.healthy()
    }

    /// Event-processing tasks, for the drain.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    pub(super) fn gauges(&self) -> Gauges {
        Gauges {
            inflight: self.parts.limits.max_inflight - self.inflight.available_permits(),
            body_memory: self.body_memory.used(),
            body_memory_limit: self.body_memory.limit(),
            store_ops: self.parts.store.counters(),
            ready: self.is_ready(),
            overloaded: self.parts.overload.unready(),
            overload_flips: self.parts.overload.flips(),
            dedup_window: self.parts.dedup.window.unwrap_or_default(),
        }
    }

    /// The request's context for an event that names its own user agent
    /// or address (a Segment call's `context.userAgent`, a server-side
    /// key's `context.ip`): those replace the request's, and the geo-IP
    /// follows the address.
    pub(super) fn context_for(
        &self,
        request: &RequestContext,
        ua: Option<&str>,
        ip: Option<IpAddr>,
    ) -> RequestContext {
        RequestContext {
            received_at: request.received_at,
            ip: ip.map(anonymize_ip).or(request.ip),
            ua: ua
                .map(|ua| self.ua.parse(ua))
                .or_else(|| request.ua.clone()),
            geo: match ip {
                Some(ip) => self.parts.geo.as_ref().and_then(|g| g.lookup(ip)),
                None => request.geo.clone(),
            },
        }
    }

    /// Logs a session-store failure at most once a second.
    pub(super) fn warn_store(&self, error: &StoreError) {
        if self.store_warned.allow(self.parts.clock.now()) {
            tracing::warn!(%error, "Session store failed; events are accepted without sessions.");
        }
    }
}
