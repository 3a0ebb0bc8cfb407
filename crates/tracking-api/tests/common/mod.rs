//! Shared test support: an application over the real memory store with a
//! manual clock, sequential ids, and sinks that keep what they get so tests
//! can look at it.

#![allow(dead_code)]

pub mod browser;
pub mod mmdb;
pub mod process;
pub mod sdk;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tracking_api::client_ip::ClientIp;
use tracking_api::config::SameSite;
use tracking_api::cookie::VisitorCookie;
use tracking_api::cors::Cors;
use tracking_api::metrics::Metrics;
use tracking_api::store::memory::MemorySessionStore;
use tracking_api::{App, AppState, Limits, Parts, app};
use tracking_core::{
    Admission, BoxFuture, Budget, DeadLetter, DeadLetterSink, EnrichedEvent, EventSink,
    ManualClock, Receipt, SequentialIds, SessionPolicy, SessionStore, SinkError, Timestamp, Ttls,
};

pub const START: Timestamp = Timestamp::from_millis(1_763_000_000_000);

/// An event sink that keeps every event as JSON.
#[derive(Debug)]
pub struct CollectingSink {
    pub events: Mutex<Vec<serde_json::Value>>,
    pub budget: Arc<Budget>,
    /// When set, admitted events are held (not released) to fill the queue.
    pub hold: Mutex<Vec<Admission>>,
    pub holding: bool,
}

impl CollectingSink {
    pub fn new(capacity: usize, holding: bool) -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            budget: Budget::new(capacity, usize::MAX),
            hold: Mutex::new(Vec::new()),
            holding,
        }
    }

    pub fn take(&self) -> Vec<serde_json::Value> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

impl EventSink for CollectingSink {
    fn try_admit(&self, n: usize, bytes: usize) -> Result<Admission, SinkError> {
        self.budget.try_acquire(n, bytes).ok_or(SinkError::Full {
            limit: self.budget.limit(),
            limit_bytes: self.budget.limit_bytes(),
        })
    }

    fn send(&self, events: Vec<EnrichedEvent>, admission: Admission) -> Receipt {
        let mut out = self.events.lock().unwrap();
        out.extend(events.iter().map(|e| serde_json::to_value(e).unwrap()));
        if self.holding {
            self.hold.lock().unwrap().push(admission);
        }
        Receipt::held()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A dead-letter output that keeps every letter as JSON.
#[derive(Debug, Default)]
pub struct CollectingDeadLetters(pub Mutex<Vec<serde_json::Value>>);

impl DeadLetterSink for CollectingDeadLetters {
    fn reject(&self, letter: DeadLetter) -> bool {
        self.0
            .lock()
            .unwrap()
            .push(serde_json::to_value(&letter).unwrap());
        true
    }

    fn close(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

pub struct Options {
    pub cors: Vec<String>,
    pub queue: usize,
    pub hold_queue: bool,
    pub max_inflight: usize,
    pub max_batch: usize,
    pub max_body: usize,
    pub max_decompressed: usize,
    pub trusted_proxies: Vec<&'static str>,
    pub store: Option<Arc<dyn SessionStore>>,
    pub session_timeout: Duration,
    pub geo: Option<tracking_api::geo::GeoLookup>,
    pub body_memory: usize,
    /// Segment API flags (e.g. `--write-keys`, `wk1=web`), over the
    /// defaults of the binary.
    pub segment_args: Vec<&'static str>,
    /// The dedup window (`None`: off).
    pub dedup: Option<Duration>,
    /// The event inspector's bounds, entries and bytes (`None`: off).
    pub inspect: Option<(usize, usize)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cors: vec!["https://shop.example".into()],
            queue: 10_000,
            hold_queue: false,
            max_inflight: 64,
            max_batch: 500,
            max_body: 1 << 20,
            max_decompressed: 1 << 20,
            trusted_proxies: vec![],
            store: None,
            session_timeout: Duration::from_millis(100),
            geo: None,
            body_memory: 64 << 20,
            segment_args: vec![],
            dedup: None,
            inspect: None,
        }
    }
}

pub fn ttls() -> Ttls {
    Ttls {
        short: Duration::from_secs(30 * 60),
        long: Duration::from_secs(90 * 86_400),
        via: Duration::from_secs(30 * 86_400),
    }
}

pub struct TestApp {
    pub app: App,
    pub clock: Arc<ManualClock>,
    pub sink: Arc<CollectingSink>,
    pub deadletters: Arc<CollectingDeadLetters>,
    pub memory: Arc<MemorySessionStore>,
}

impl TestApp {
    pub fn new(o: Options) -> Self {
        let clock = Arc::new(ManualClock::new(START));
        let ids = Arc::new(SequentialIds::default());
        let memory = Arc::new(
            MemorySessionStore::new(SessionPolicy::new(ttls(), ids.clone()), 10_000)
                .with_dedup(o.dedup.unwrap_or_default()),
        );
        let sink = Arc::new(CollectingSink::new(o.queue, o.hold_queue));
        let deadletters = Arc::new(CollectingDeadLetters::default());
        let registry = Arc::new(service_kit::prom::Registry::default());
        registry.register(memory.clone());
        let inspect = o.inspect.map(|(events, bytes)| {
            let i = Arc::new(tracking_api::inspect::Inspector::new(events, bytes));
            registry.register(i.clone());
            i
        });
        registry.register(Arc::new(
            tracking_api::sink::metrics::EventSinkMetrics::new(
                sink.budget.clone(),
                Default::default(),
            ),
        ));
        let state = AppState::new(Parts {
            limits: Limits {
                max_body_bytes: o.max_body,
                max_decompressed_bytes: o.max_decompressed,
                max_batch_events: o.max_batch,
                max_inflight: o.max_inflight,
                body_memory: o.body_memory,
                session_timeout: o.session_timeout,
            },
            store: o.store.unwrap_or_else(|| memory.clone()),
            sink: sink.clone(),
            deadletters: deadletters.clone(),
            clock: clock.clone(),
            ids,
            cors: Cors::new(&o.cors),
            cookie: VisitorCookie::new(
                "_tid",
                None,
                true,
                SameSite::Lax,
                Duration::from_secs(86_400 * 365),
            ),
            client_ip: ClientIp::new(
                o.trusted_proxies
                    .iter()
                    .map(|n| n.parse().unwrap())
                    .collect(),
            ),
            geo: o.geo,
            metrics: Arc::new(Metrics::default()),
            registry,
            overload: Arc::new(tracking_api::overload::OverloadGuard::new(
                tracking_api::overload::OverloadPolicy {
                    unready_after: Duration::from_secs(10),
                    ready_after: Duration::from_secs(5),
                    max_unready: Duration::from_secs(30),
                },
                0.0,
            )),
            forward_headers: Vec::new(),
            span_labels: Default::default(),
            dedup: tracking_api::app::Dedup {
                window: o.dedup,
                after_receipt: false,
            },
            inspect,
            segment: {
                use clap::Parser;
                let mut argv = vec!["tracking-api"];
                argv.extend(&o.segment_args);
                tracking_api::config::Cli::try_parse_from(argv)
                    .unwrap()
                    .config
                    .segment
                    .settings(o.max_body, o.max_decompressed)
                    .unwrap()
            },
        });
        state.set_ready(true);
        Self {
            app: app(state),
            clock,
            sink,
            deadletters,
            memory,
        }
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> (Response<()>, Bytes) {
        let peer: SocketAddr = "203.0.113.77:5555".parse().unwrap();
        let resp = self.app.handle(req, peer).await;
        let (parts, body) = resp.into_parts();
        #[allow(clippy::disallowed_methods)] // the app's own bounded answer
        let bytes = body.collect().await.unwrap().to_bytes();
        (Response::from_parts(parts, ()), bytes)
    }

    /// `GET /metrics` on the admin listener.
    pub async fn metrics(&self) -> (Response<()>, Bytes) {
        let req = Request::get("/metrics")
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.admin(req).await
    }

    /// A request on the admin listener.
    pub async fn admin(&self, req: Request<Full<Bytes>>) -> (Response<()>, Bytes) {
        let resp = self.app.handle_admin(req).await;
        let (parts, body) = resp.into_parts();
        #[allow(clippy::disallowed_methods)] // the app's own bounded answer
        let bytes = body.collect().await.unwrap().to_bytes();
        (Response::from_parts(parts, ()), bytes)
    }

    pub async fn post(&self, body: &str) -> (Response<()>, Bytes) {
        self.send(
            post(body)
                .body(Full::new(Bytes::from(body.to_owned())))
                .unwrap(),
        )
        .await
    }
}

/// An in-process Aerospike stand-in (namespace `tracking`) on a free
/// port; its `host:port`.
pub async fn standin() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(aerospike_standin::serve(
        listener,
        aerospike_standin::Store::new(vec!["tracking".into()]),
    ));
    addr.to_string()
}

/// A POST /v1/events builder with `text/plain` (what sendBeacon sends).
pub fn post(_body: &str) -> http::request::Builder {
    Request::post("/v1/events").header("content-type", "text/plain;charset=UTF-8")
}

pub fn json(bytes: &Bytes) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// A session store that waits before answering (or never answers within the
/// test's deadline), then delegates to the memory store.
#[derive(Debug)]
pub struct SlowStore {
    pub delay: Duration,
    pub inner: Arc<MemorySessionStore>,
}

impl SessionStore for SlowStore {
    fn touch<'a>(
        &'a self,
        client_id: &'a tracking_core::ClientId,
        now: Timestamp,
        via: Option<&'a tracking_core::Via>,
        ctx: &'a tracking_core::CallContext,
    ) -> BoxFuture<'a, Result<tracking_core::Sessions, tracking_core::StoreError>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.inner.touch(client_id, now, via, ctx).await
        })
    }
}

/// A store that always fails.
#[derive(Debug)]
pub struct BrokenStore;

impl SessionStore for BrokenStore {
    fn touch<'a>(
        &'a self,
        _client_id: &'a tracking_core::ClientId,
        _now: Timestamp,
        _via: Option<&'a tracking_core::Via>,
        _ctx: &'a tracking_core::CallContext,
    ) -> BoxFuture<'a, Result<tracking_core::Sessions, tracking_core::StoreError>> {
        Box::pin(std::future::ready(Err(
            tracking_core::StoreError::Unavailable("backend down".into()),
        )))
    }
}

pub fn slow_memory_store(delay: Duration) -> Arc<SlowStore> {
    let memory = Arc::new(MemorySessionStore::new(
        SessionPolicy::new(ttls(), Arc::new(SequentialIds::default())),
        10_000,
    ));
    Arc::new(SlowStore {
        delay,
        inner: memory,
    })
}
