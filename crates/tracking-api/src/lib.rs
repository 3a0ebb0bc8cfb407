//! `tracking-api`: the HTTP face of the tracking domain, and the adapters of
//! the embedded default (memory session store, NDJSON sinks).
//!
//! This crate turns requests into domain calls and domain results into
//! responses; it decides nothing about events or sessions itself — that is
//! `tracking-core`. `main.rs` only reads the configuration and calls
//! [`build_state`], [`app`] and [`serve`]; tests drive [`App::handle`]
//! without a socket.

pub mod app;
pub mod body;
pub mod client_ip;
pub mod config;
pub mod cookie;
pub mod cors;
pub mod geo;
pub mod inspect;
pub mod metrics;
pub mod migration;
pub mod overload;
pub mod segment;
pub mod server;
pub mod sink;
pub mod store;
pub mod tracker;
pub mod ua;

use std::sync::Arc;

use service_kit::prom::{Collect, Registry};

pub use app::{App, AppState, Limits, Parts, SpanLabels, app};
pub use server::{DrainReport, ServeOptions, serve, serve_admin};
use tracking_core::{
    DeadLetterSink, EventSink, RandomIds, SessionPolicy, SessionStore, SystemClock,
};

use crate::client_ip::ClientIp;
use crate::config::{Config, MigrationMode, SinkKind, StoreKind};
use crate::cookie::VisitorCookie;
use crate::cors::Cors;
use crate::geo::GeoLookup;
use crate::metrics::Metrics;
use crate::migration::{LegacySessionStore, MigrationClient};
use crate::sink::metrics::{AckMetrics, DeadLetterMetrics, EventSinkMetrics};
use crate::sink::ndjson::{Counters, DiscardDeadLetters, NdjsonSink};
use crate::store::memory::MemorySessionStore;

/// `tracking-api bootstrap`: creates what the configured backends need when
/// missing, never altering what exists. Returns what it did, a line per
/// resource.
pub async fn bootstrap(config: &Config) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    if config.session_store == StoreKind::Bigtable {
        let bt = config.bigtable.config();
        let window = config.dedup().window;
        done.push(
            match tracking_bigtable::bootstrap(&bt, config.ttls(), window).await? {
                tracking_bigtable::BootstrapOutcome::Created => format!(
                    "Created Bigtable table {} with families {}.",
                    bt.table,
                    if window.is_some() {
                        "s, l, v, e"
                    } else {
                        "s, l, v"
                    }
                ),
                tracking_bigtable::BootstrapOutcome::AlreadyExists => {
                    format!("Bigtable table {} already exists; left as it is.", bt.table)
                }
                tracking_bigtable::BootstrapOutcome::Updated(what) => {
                    format!("Bigtable table {} already exists; {what}.", bt.table)
                }
            },
        );
    }
    if config.sink.sink == SinkKind::Pubsub {
        for outcome in tracking_pubsub::bootstrap(&config.pubsub.config()).await? {
            done.push(match outcome {
                tracking_pubsub::TopicOutcome::Created(t) => format!("Created Pub/Sub topic {t}."),
                tracking_pubsub::TopicOutcome::AlreadyExists(t) => {
                    format!("Pub/Sub topic {t} already exists; left as it is.")
                }
            });
        }
    }
    if done.is_empty() {
        done.push("Nothing to create: the memory store and the stdout/file sinks need no backend resources.".into());
    }
    Ok(done)
}

/// Refuses to start with deduplication on when the Bigtable table answers
/// that it has no family `e`: every renewal would fail. A table that cannot
/// be asked (no permission to read its schema, Bigtable unreachable at
/// start) is warned about and used.
async fn check_events_family(config: &Config) -> anyhow::Result<()> {
    let bt = config.bigtable.config();
    match tracking_bigtable::admin::has_events_family(&bt).await {
        Ok(true) => Ok(()),
        Ok(false) => anyhow::bail!(
            "the Bigtable table {} has no column family `e` for TRACKING_DEDUP_WINDOW: run `tracking-api bootstrap` (it adds the family and leaves the rest as it is), or set TRACKING_DEDUP_WINDOW=0",
            bt.table
        ),
        Err(e) => {
            tracing::warn!(error = %e, table = bt.table, "Could not check that the Bigtable table has the dedup family `e`; if it has none, session renewals will fail (run `tracking-api bootstrap`).");
            Ok(())
        }
    }
}

/// Builds the adapters the configuration names (opening files, starting
/// writer threads, connecting lazily to Bigtable) and the application state
/// over them.
pub async fn build_state(config: &Config) -> anyhow::Result<Arc<AppState>> {
    let metrics = Arc::new(Metrics::default());
    let registry = Arc::new(Registry::default());
    let policy = SessionPolicy::new(config.ttls(), Arc::new(RandomIds));
    let migration = config
        .migration
        .config(config.ttls())
        .map(MigrationClient::start);
    if let Some(client) = &migration {
        registry.register(Arc::clone(client) as Arc<dyn Collect>);
    }
    let dedup = config.dedup();
    let store: Arc<dyn SessionStore> = match (
        config.migration.migration_mode,
        config.session_store,
        &migration,
    ) {
        (MigrationMode::Legacy, _, Some(client)) => {
            Arc::new(LegacySessionStore::new(Arc::clone(client), policy))
        }
        (_, StoreKind::Memory, _) => {
            let m = Arc::new(
                MemorySessionStore::new(policy, config.memory.memory_max_visitors)
                    .with_dedup(dedup.window.unwrap_or_default()),
            );
            registry.register(Arc::clone(&m) as Arc<dyn Collect>);
            m.spawn_sweeper(Arc::new(SystemClock));
            m
        }
        (_, StoreKind::Bigtable, _) => {
            let mut bt =
                tracking_bigtable::BigtableSessionStore::connect(config.bigtable.config(), policy)
                    .await?;
            if let Some(window) = dedup.window {
                check_events_family(config).await?;
                bt = bt.with_dedup(window);
            }
            if let (MigrationMode::Parallel, Some(client)) =
                (config.migration.migration_mode, &migration)
            {
                bt = bt.with_legacy(Arc::clone(client) as Arc<dyn tracking_core::LegacySessions>);
            }
            Arc::new(bt)
        }
    };
    let forward_headers = if migration.is_some() {
        config.migration.forward_headers()
    } else {
        Vec::new()
    };
    let deadletter_bounds = config.deadletter.bounds();
    let local_deadletters: Arc<dyn DeadLetterSink> = match config.deadletter.target() {
        Some(target) => {
            let counters = Counters::default();
            let sink = NdjsonSink::start(
                target,
                deadletter_bounds,
                counters.clone(),
                tracking_core::AckMode::Memory,
            )?;
            registry.register(Arc::new(DeadLetterMetrics(counters)));
            Arc::new(sink)
        }
        // `--deadletter discard`
        None => {
            let discard = Arc::new(DiscardDeadLetters::default());
            registry.register(Arc::clone(&discard) as Arc<dyn Collect>);
            discard
        }
    };
    let (sink, deadletters): (Arc<dyn EventSink>, Arc<dyn DeadLetterSink>) =
        match config.sink.target() {
            Some(target) => {
                let counters = Counters::default();
                let sink = Arc::new(NdjsonSink::start(
                    target,
                    config.sink.bounds(),
                    counters.clone(),
                    config.sink.ack(),
                )?);
                registry.register(Arc::new(AckMetrics {
                    mode: config.sink.ack(),
                    fsyncs: Arc::clone(&counters.fsyncs),
                }));
                registry.register(Arc::new(EventSinkMetrics::new(
                    Arc::clone(sink.budget()),
                    counters,
                )));
                (sink, local_deadletters)
            }
            // `--sink pubsub`
            None => {
                let publishers = tracking_pubsub::connect(&config.pubsub.config()).await?;
                let sink = Arc::new(tracking_pubsub::PubsubSink::start(
                    publishers.events,
                    config
                        .pubsub
                        .sink_options(config.sink.bounds(), config.sink.ack()),
                )?);
                let deadletters: Arc<dyn DeadLetterSink> = match publishers.deadletters {
                    Some(p) => {
                        let topic = Arc::new(tracking_pubsub::PubsubDeadLetters::new(
                            p,
                            deadletter_bounds.events,
                            deadletter_bounds.bytes,
                            local_deadletters,
                        ));
                        registry.register(Arc::clone(&topic) as Arc<dyn Collect>);
                        topic
                    }
                    None => local_deadletters,
                };
                let acknowledged = Arc::clone(&sink);
                registry.register(Arc::new(EventSinkMetrics::counted_by(
                    Arc::clone(sink.budget()),
                    Box::new(move || {
                        let s = acknowledged.stats();
                        s.published + s.replayed
                    }),
                )));
                registry.register(Arc::clone(&sink) as Arc<dyn Collect>);
                registry.register(Arc::new(AckMetrics {
                    mode: config.sink.ack(),
                    fsyncs: Arc::clone(sink.fsyncs()),
                }));
                (sink, deadletters)
            }
        };
    // Rejected inputs are shown only when some output writes them.
    let deadletters_written = config.deadletter.deadletter != config::DeadLetterKind::Discard
        || (config.sink.sink == SinkKind::Pubsub
            && config.pubsub.pubsub_deadletter_topic.is_some());
    let inspect = config.inspect().map(|(events, bytes)| {
        let i = Arc::new(inspect::Inspector::new(events, bytes).with_raw(deadletters_written));
        registry.register(Arc::clone(&i) as Arc<dyn Collect>);
        i
    });
    let geo = config
        .geoip_db
        .as_deref()
        .map(GeoLookup::open)
        .transpose()?;
    Ok(AppState::new(Parts {
        limits: config.limits(),
        store,
        sink,
        deadletters,
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
        cors: Cors::new(&config.cors_origins),
        cookie: VisitorCookie::from_config(config),
        client_ip: ClientIp::new(config.trusted_proxies.clone()),
        geo,
        metrics,
        registry,
        overload: Arc::new(overload::OverloadGuard::new(
            config.overload.policy(),
            rand::random::<f64>(),
        )),
        forward_headers,
        span_labels: SpanLabels {
            store: match (config.migration.migration_mode, config.session_store) {
                (MigrationMode::Legacy, _) => "migration-proxy",
                (_, StoreKind::Memory) => "memory",
                (_, StoreKind::Bigtable) => "bigtable",
            },
            mode: match config.migration.migration_mode {
                MigrationMode::Cloud => "cloud",
                MigrationMode::Parallel => "parallel",
                MigrationMode::Legacy => "legacy",
            },
        },
        segment: config.segment.settings(
            config.http.max_body_bytes,
            config.http.max_decompressed_bytes,
        )?,
        dedup,
        inspect,
    }))
}
