//! Google Cloud Pub/Sub for the tracking API (the only crate that knows
//! Pub/Sub): the event sink with its disk spool, the dead-letter topic, and
//! bootstrap of the topics. Built on Google's official `google-cloud-pubsub`
//! crate.
//!
//! That crate ignores `PUBSUB_EMULATOR_HOST`; this one honours it (plaintext
//! endpoint, anonymous credentials). Without it, Application Default
//! Credentials (Workload Identity on GKE) are used.

pub mod deadletter;
pub mod metrics;
pub mod sink;
pub mod spool;
pub mod stats;

use std::time::Duration;

use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_pubsub::client::{BasePublisher, Publisher, TopicAdmin};
use google_cloud_pubsub::retry_policy::RetryableErrors;

pub use deadletter::PubsubDeadLetters;
pub use sink::{FailureClass, PubsubSink, SinkOptions};
pub use stats::{DELIVERY_BUCKETS, PublisherStats};

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct PubsubConfig {
    pub project: String,
    pub topic: String,
    /// Topic for rejected events; `None` keeps them local.
    pub deadletter_topic: Option<String>,
    /// `host:port` of the emulator (plaintext, no auth).
    pub emulator_host: Option<String>,
    /// Batching: a batch is sent at this many messages, …
    pub batch_messages: u32,
    /// … or this many bytes, …
    pub batch_bytes: u32,
    /// … or after this delay, whichever comes first.
    pub batch_delay: Duration,
    /// The client's retry budget for one publish (its default is 600 s).
    pub publish_timeout: Duration,
}

impl PubsubConfig {
    pub fn topic_path(&self) -> String {
        format!("projects/{}/topics/{}", self.project, self.topic)
    }

    pub fn deadletter_topic_path(&self) -> Option<String> {
        self.deadletter_topic
            .as_ref()
            .map(|t| format!("projects/{}/topics/{t}", self.project))
    }

    fn endpoint(&self) -> Option<String> {
        self.emulator_host.as_ref().map(|h| format!("http://{h}"))
    }
}

fn anonymous() -> google_cloud_auth::credentials::Credentials {
    google_cloud_auth::credentials::anonymous::Builder::new().build()
}

/// TLS for production endpoints uses rustls with `ring`, as the Bigtable
/// client does; installing it twice is harmless.
fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The process's publishers: one client (shared channels), one publisher per
/// topic on it.
#[derive(Debug)]
pub struct Publishers {
    pub events: Publisher,
    pub deadletters: Option<Publisher>,
}

/// Builds the client and the publishers. Does not contact Pub/Sub (the
/// client connects lazily); a missing topic shows up as permanent publish
/// failures, and the events wait in the backlog.
pub async fn connect(cfg: &PubsubConfig) -> anyhow::Result<Publishers> {
    install_crypto();
    let mut builder = BasePublisher::builder()
        .with_retry_policy(RetryableErrors.with_time_limit(cfg.publish_timeout));
    if let Some(endpoint) = cfg.endpoint() {
        builder = builder
            .with_endpoint(endpoint)
            .with_credentials(anonymous());
    }
    let base = builder
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("cannot build the Pub/Sub client: {e}"))?;
    let publisher = |topic: String| {
        base.publisher(topic)
            .set_message_count_threshold(cfg.batch_messages)
            .set_byte_threshold(cfg.batch_bytes)
            .set_delay_threshold(cfg.batch_delay)
            .build()
    };
    Ok(Publishers {
        events: publisher(cfg.topic_path()),
        deadletters: cfg.deadletter_topic_path().map(publisher),
    })
}

/// What bootstrap did to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created(String),
    AlreadyExists(String),
}

/// Creates the event topic (and the dead-letter topic) when missing; never
/// changes an existing one.
pub async fn bootstrap(cfg: &PubsubConfig) -> anyhow::Result<Vec<TopicOutcome>> {
    install_crypto();
    let mut builder = TopicAdmin::builder();
    if let Some(endpoint) = cfg.endpoint() {
        builder = builder
            .with_endpoint(endpoint)
            .with_credentials(anonymous());
    }
    let admin = builder
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("cannot build the Pub/Sub admin client: {e}"))?;
    let mut out = Vec::new();
    for topic in std::iter::once(cfg.topic_path()).chain(cfg.deadletter_topic_path()) {
        match admin.create_topic().set_name(&topic).send().await {
            Ok(_) => out.push(TopicOutcome::Created(topic)),
            Err(e)
                if e.status().map(|s| s.code)
                    == Some(google_cloud_gax::error::rpc::Code::AlreadyExists) =>
            {
                out.push(TopicOutcome::AlreadyExists(topic));
            }
            Err(e) => anyhow::bail!("cannot create Pub/Sub topic {topic}: {e}"),
        }
    }
    Ok(out)
}
