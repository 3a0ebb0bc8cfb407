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
pub mod metrics;
pub mod migration;
pub mod overload;
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
    DeadLetterSink, EventSink, RandomIds, SessionPolicy, SessionStore, SystemClock, Ttls,
};

use crate::client_ip::ClientIp;
use crate::config::{Config, DeadLetterKind, MigrationMode, SinkKind, StoreKind};
use crate::cookie::VisitorCookie;
use crate::cors::Cors;
use crate::geo::GeoLookup;
use crate::metrics::Metrics;
use crate::migration::{LegacySessionStore, MigrationClient, MigrationConfig};
use crate::sink::metrics::{DeadLetterMetrics, EventSinkMetrics};
use crate::sink::ndjson::{Bounds, Counters, DiscardDeadLetters, NdjsonSink, Target};
use crate::store::memory::MemorySessionStore;

/// Dead letters held before they are dropped (and counted).
const DEADLETTER_QUEUE: usize = 10_000;

impl Config {
    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_decompressed_bytes: self.max_decompressed_bytes,
            max_batch_events: self.max_batch_events,
            max_inflight: self.max_inflight,
            body_memory: usize::try_from(self.max_body_memory).unwrap_or(usize::MAX),
            session_timeout: self.session_timeout,
        }
    }

    pub fn ttls(&self) -> Ttls {
        Ttls {
            short: self.short_ttl,
            long: self.long_ttl,
            via: self.via_ttl,
        }
    }

    pub fn serve_options(&self) -> ServeOptions {
        ServeOptions {
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            max_connections: self.max_connections,
            shutdown_delay: self.shutdown_delay,
            drain_timeout: self.drain_timeout,
            // The Pub/Sub sink's own flush deadline, plus time to spool what
            // is left.
            flush_timeout: self.pubsub_flush_timeout + std::time::Duration::from_secs(5),
        }
    }

    pub fn overload_policy(&self) -> overload::OverloadPolicy {
        overload::OverloadPolicy {
            unready_after: self.overload_unready_after,
            ready_after: self.overload_ready_after,
            max_unready: self.overload_max_unready,
        }
    }

    pub fn pubsub(&self) -> tracking_pubsub::PubsubConfig {
        tracking_pubsub::PubsubConfig {
            project: self.pubsub_project.clone().unwrap_or_default(),
            topic: self.pubsub_topic.clone().unwrap_or_default(),
            deadletter_topic: self.pubsub_deadletter_topic.clone(),
            emulator_host: self.pubsub_emulator_host.clone(),
            batch_messages: self.pubsub_batch_messages,
            batch_bytes: self.pubsub_batch_bytes,
            batch_delay: self.pubsub_batch_delay,
            publish_timeout: self.pubsub_publish_timeout,
        }
    }

    pub fn sink_options(&self) -> tracking_pubsub::SinkOptions {
        tracking_pubsub::SinkOptions {
            max_queue: self.sink_queue,
            max_queue_bytes: usize::try_from(self.sink_queue_bytes).unwrap_or(usize::MAX),
            spool_dir: self.spool_dir.clone(),
            spool_max_bytes: self.spool_max_bytes,
            spool_segment_bytes: (self.spool_max_bytes / 16).clamp(1 << 20, 64 << 20),
            stall_timeout: self.pubsub_stall_timeout,
            flush_timeout: self.pubsub_flush_timeout,
        }
    }

    pub fn migration(&self) -> MigrationConfig {
        MigrationConfig {
            base_url: self.migration_url.clone().unwrap_or_default(),
            timeout: self.migration_timeout,
            write_timeout: self.migration_write_timeout,
            token: self.migration_token.clone(),
            queue: self.migration_queue,
            breaker_failures: self.migration_breaker_failures,
            breaker_cooldown: self.migration_breaker_cooldown,
            ttls: self.ttls(),
        }
    }

    pub fn bigtable(&self) -> tracking_bigtable::BigtableConfig {
        tracking_bigtable::BigtableConfig {
            project: self.bigtable_project.clone().unwrap_or_default(),
            instance: self.bigtable_instance.clone().unwrap_or_default(),
            table: self.bigtable_table.clone(),
            emulator_host: self.bigtable_emulator_host.clone(),
            channels: self.bigtable_channels,
            attempt_timeout: self.bigtable_attempt_timeout,
            write_timeout: self.bigtable_write_timeout,
        }
    }
}

/// `tracking-api bootstrap`: creates what the configured backends need when
/// missing, never altering what exists. Returns what it did, a line per
/// resource.
pub async fn bootstrap(config: &Config) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    if config.session_store == StoreKind::Bigtable {
        let bt = config.bigtable();
        done.push(
            match tracking_bigtable::bootstrap(&bt, config.ttls()).await? {
                tracking_bigtable::BootstrapOutcome::Created => {
                    format!("Created Bigtable table {} with families s, l, v.", bt.table)
                }
                tracking_bigtable::BootstrapOutcome::AlreadyExists => {
                    format!("Bigtable table {} already exists; left as it is.", bt.table)
                }
            },
        );
    }
    if config.sink == SinkKind::Pubsub {
        for outcome in tracking_pubsub::bootstrap(&config.pubsub()).await? {
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

/// Builds the adapters the configuration names (opening files, starting
/// writer threads, connecting lazily to Bigtable) and the application state
/// over them.
pub async fn build_state(config: &Config) -> anyhow::Result<Arc<AppState>> {
    let metrics = Arc::new(Metrics::default());
    let registry = Arc::new(Registry::default());
    let policy = SessionPolicy::new(config.ttls(), Arc::new(RandomIds));
    let migration = (config.migration_mode != MigrationMode::Cloud)
        .then(|| MigrationClient::start(config.migration()));
    if let Some(client) = &migration {
        registry.register(Arc::clone(client) as Arc<dyn Collect>);
    }
    let store: Arc<dyn SessionStore> =
        match (config.migration_mode, config.session_store, &migration) {
            (MigrationMode::Legacy, _, Some(client)) => {
                Arc::new(LegacySessionStore::new(Arc::clone(client), policy))
            }
            (_, StoreKind::Memory, _) => {
                let m = Arc::new(MemorySessionStore::new(policy, config.memory_max_visitors));
                registry.register(Arc::clone(&m) as Arc<dyn Collect>);
                m.spawn_sweeper(Arc::new(SystemClock));
                m
            }
            (_, StoreKind::Bigtable, _) => {
                let mut bt =
                    tracking_bigtable::BigtableSessionStore::connect(config.bigtable(), policy)
                        .await?;
                if let (MigrationMode::Parallel, Some(client)) = (config.migration_mode, &migration)
                {
                    bt = bt
                        .with_legacy(Arc::clone(client) as Arc<dyn tracking_core::LegacySessions>);
                }
                Arc::new(bt)
            }
        };
    let forward_headers = if migration.is_some() {
        config
            .migration_forward_headers
            .iter()
            .filter_map(|h| {
                http::HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes()).ok()
            })
            .collect()
    } else {
        Vec::new()
    };
    let deadletter_bounds = Bounds {
        events: DEADLETTER_QUEUE,
        bytes: usize::try_from(config.deadletter_queue_bytes).unwrap_or(usize::MAX),
    };
    let local_deadletters: Arc<dyn DeadLetterSink> = match config.deadletter {
        DeadLetterKind::Stderr | DeadLetterKind::File => {
            let target = match config.deadletter {
                DeadLetterKind::File => {
                    Target::File(config.deadletter_path.clone().unwrap_or_default())
                }
                _ => Target::Stderr,
            };
            let counters = Counters::default();
            let sink = NdjsonSink::start(target, deadletter_bounds, counters.clone())?;
            registry.register(Arc::new(DeadLetterMetrics(counters)));
            Arc::new(sink)
        }
        DeadLetterKind::Discard => {
            let discard = Arc::new(DiscardDeadLetters::default());
            registry.register(Arc::clone(&discard) as Arc<dyn Collect>);
            discard
        }
    };
    let (sink, deadletters): (Arc<dyn EventSink>, Arc<dyn DeadLetterSink>) = match config.sink {
        SinkKind::Stdout | SinkKind::File => {
            let target = match config.sink {
                SinkKind::File => Target::File(config.sink_path.clone().unwrap_or_default()),
                _ => Target::Stdout,
            };
            let counters = Counters::default();
            let sink = Arc::new(NdjsonSink::start(
                target,
                Bounds {
                    events: config.sink_queue,
                    bytes: usize::try_from(config.sink_queue_bytes).unwrap_or(usize::MAX),
                },
                counters.clone(),
            )?);
            registry.register(Arc::new(EventSinkMetrics::new(
                Arc::clone(sink.budget()),
                counters,
            )));
            (sink, local_deadletters)
        }
        SinkKind::Pubsub => {
            let publishers = tracking_pubsub::connect(&config.pubsub()).await?;
            let sink = Arc::new(tracking_pubsub::PubsubSink::start(
                publishers.events,
                config.sink_options(),
            )?);
            let deadletters: Arc<dyn DeadLetterSink> = match publishers.deadletters {
                Some(p) => {
                    let topic = Arc::new(tracking_pubsub::PubsubDeadLetters::new(
                        p,
                        DEADLETTER_QUEUE,
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
            (sink, deadletters)
        }
    };
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
            config.overload_policy(),
            rand::random::<f64>(),
        )),
        forward_headers,
        span_labels: SpanLabels {
            store: match (config.migration_mode, config.session_store) {
                (MigrationMode::Legacy, _) => "migration-proxy",
                (_, StoreKind::Memory) => "memory",
                (_, StoreKind::Bigtable) => "bigtable",
            },
            mode: match config.migration_mode {
                MigrationMode::Cloud => "cloud",
                MigrationMode::Parallel => "parallel",
                MigrationMode::Legacy => "legacy",
            },
        },
    }))
}
