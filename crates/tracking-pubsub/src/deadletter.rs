//! `PubsubDeadLetters`: rejected events to the dead-letter topic. Best
//! effort and bounded, like every dead-letter output: a letter that cannot be
//! published goes to the local fallback output instead; when too many are
//! outstanding, new ones go straight to the fallback.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use google_cloud_pubsub::client::Publisher;
use tokio_util::task::TaskTracker;
use tracking_core::{BoxFuture, Budget, DeadLetter, DeadLetterSink, SinkError};

use crate::sink::{EVENT_OVERHEAD, letter_message};

#[derive(Debug)]
pub struct PubsubDeadLetters {
    publisher: Publisher,
    outstanding: Arc<Budget>,
    fallback: Arc<dyn DeadLetterSink>,
    tracker: TaskTracker,
    published: Arc<AtomicU64>,
    fell_back: Arc<AtomicU64>,
}

impl PubsubDeadLetters {
    /// At most `max_outstanding` letters, of `max_bytes` bytes in all,
    /// wait for Pub/Sub at once.
    pub fn new(
        publisher: Publisher,
        max_outstanding: usize,
        max_bytes: usize,
        fallback: Arc<dyn DeadLetterSink>,
    ) -> Self {
        Self {
            publisher,
            outstanding: Budget::new(max_outstanding, max_bytes),
            fallback,
            tracker: TaskTracker::new(),
            published: Arc::default(),
            fell_back: Arc::default(),
        }
    }

    /// Letters acknowledged by Pub/Sub.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Letters sent to the local fallback instead.
    pub fn fell_back(&self) -> u64 {
        self.fell_back.load(Ordering::Relaxed)
    }
}

impl DeadLetterSink for PubsubDeadLetters {
    fn reject(&self, letter: DeadLetter) -> bool {
        let data = serde_json::to_vec(&letter).unwrap_or_default();
        // The letter (kept for the fallback) and its serialized copy.
        let bytes = letter.raw.len() + letter.error.len() + data.capacity() + EVENT_OVERHEAD;
        let Some(permit) = self.outstanding.try_acquire(1, bytes) else {
            self.fell_back.fetch_add(1, Ordering::Relaxed);
            return self.fallback.reject(letter);
        };
        let future = self
            .publisher
            .publish(letter_message(letter.reason, data.into()));
        let fallback = Arc::clone(&self.fallback);
        let (published, fell_back) = (Arc::clone(&self.published), Arc::clone(&self.fell_back));
        self.tracker.spawn(async move {
            let _permit = permit;
            match future.await {
                Ok(_) => {
                    published.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    if fell_back.fetch_add(1, Ordering::Relaxed).is_power_of_two() {
                        tracing::warn!(%error, "Dead letter not published; written to the local output.");
                    }
                    fallback.reject(letter);
                }
            }
        });
        true
    }

    fn close(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            self.tracker.close();
            self.tracker.wait().await;
            self.fallback.close().await
        })
    }

    fn reopen(&self) {
        self.fallback.reopen();
    }
}
