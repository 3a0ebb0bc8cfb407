//! Direct mode: the checker task that awaits the publishes of one hand-over
//! and hands them to the backlog when they fail, stall or are taken over.

use std::sync::Arc;

use google_cloud_pubsub::error::PublishError;
use tokio::sync::watch;
use tracking_core::{Clock, SystemClock};

use super::{Inner, Pending, classify};
use crate::stats::{add, sub};

/// Counts one direct publish acknowledged by Pub/Sub, and its delivery
/// latency.
fn acknowledged(inner: &Inner, pending: &Pending) {
    sub(&inner.stats.in_flight, 1);
    add(&inner.stats.published, 1);
    inner
        .stats
        .observe_delivery(pending.record.accepted_at_ms, SystemClock.now().as_millis());
}

/// What woke a checker task.
enum Wake {
    Answer(Result<String, PublishError>),
    /// Its own publish is not acknowledged within the stall timeout.
    Stall,
    /// Another task switched to backlog mode.
    Takeover,
    /// Shutdown stopped waiting.
    GiveUp,
}

/// Awaits the publishes of one hand-over. Until they are answered it hands
/// them to the backlog when they stall, when any publish fails or stalls
/// (takeover), or at shutdown.
pub(super) async fn check(
    inner: Arc<Inner>,
    mut sent: Vec<(google_cloud_pubsub::publisher::PublishFuture, Pending)>,
    stall_at: tokio::time::Instant,
    mut takeover: watch::Receiver<u64>,
) {
    let total = sent.len();
    let (mut published, mut failed) = (0, 0);
    let mut handed_over = false;
    let mut i = 0;
    while i < sent.len() {
        let wake = {
            let future = &mut sent[i].0;
            tokio::select! {
                r = future => Wake::Answer(r),
                () = tokio::time::sleep_until(stall_at), if !handed_over => Wake::Stall,
                r = takeover.changed(), if !handed_over => match r {
                    Ok(()) => Wake::Takeover,
                    Err(_) => Wake::GiveUp,
                },
                () = inner.give_up.cancelled() => Wake::GiveUp,
            }
        };
        let hand_over = match wake {
            Wake::Answer(Ok(_)) => {
                if !handed_over {
                    sub(&inner.unspooled_bytes, sent[i].1.record.spooled_len());
                }
                published += 1;
                acknowledged(&inner, &sent[i].1);
                i += 1;
                continue;
            }
            Wake::Answer(Err(e)) => {
                sub(&inner.stats.in_flight, 1);
                failed += 1;
                inner.stats.count_failure(classify(&e));
                let why = e.to_string();
                i += 1;
                (!handed_over).then(|| (i - 1, Some(why)))
            }
            Wake::Stall => Some((
                i,
                Some("no acknowledgement within the stall timeout".into()),
            )),
            Wake::Takeover => Some((i, None)),
            Wake::GiveUp => {
                // The messages may still be delivered; they are kept in the
                // backlog too (at-least-once).
                sub(&inner.stats.in_flight, (sent.len() - i) as u64);
                if !handed_over {
                    inner.to_backlog(sent[i..].iter().map(|(_, p)| p.clone()).collect());
                }
                failed += sent.len() - i;
                break;
            }
        };
        if let Some((from, why)) = hand_over {
            handed_over = true;
            // First the copies, then the mode: the pump returns to direct
            // mode only once no hand-over is on its way.
            inner.to_backlog(sent[from..].iter().map(|(_, p)| p.clone()).collect());
            if let Some(why) = why {
                inner.enter_backlog_mode(&why);
            }
        }
    }
    let span = tracing::Span::current();
    span.record("published", published);
    span.record("failed", failed);
    if handed_over && !span.is_disabled() {
        // An error span (kept whatever the sampling share once recorded);
        // the events themselves are not lost: they are in the backlog.
        span.record(
            "otel.status_description",
            format!(
                "{} of {total} not acknowledged in time; kept in the backlog",
                total - published
            ),
        );
    }
}

/// The disk acknowledgement mode's checker: awaits the publishes of one
/// hand-over that is already in the write-ahead log. A failure or a stall
/// switches to backlog mode (the replay then starts at the oldest event not
/// acknowledged, so nothing is handed over); once every publish is
/// acknowledged, tells the pump, which trims the log.
pub(super) async fn check_logged(
    inner: Arc<Inner>,
    mut sent: Vec<(google_cloud_pubsub::publisher::PublishFuture, Pending)>,
    stall_at: tokio::time::Instant,
    generation: u64,
    seq: u64,
) {
    let mut all_acked = true;
    let mut i = 0;
    while i < sent.len() {
        let wake = {
            let future = &mut sent[i].0;
            tokio::select! {
                r = future => Wake::Answer(r),
                () = tokio::time::sleep_until(stall_at), if all_acked => Wake::Stall,
                () = inner.give_up.cancelled() => Wake::GiveUp,
            }
        };
        match wake {
            Wake::Answer(Ok(_)) => {
                acknowledged(&inner, &sent[i].1);
                i += 1;
            }
            Wake::Answer(Err(e)) => {
                sub(&inner.stats.in_flight, 1);
                inner.stats.count_failure(classify(&e));
                if all_acked {
                    inner.enter_backlog_mode(&e.to_string());
                }
                all_acked = false;
                i += 1;
            }
            // Keeps waiting for the answer (the client holds the data).
            Wake::Stall => {
                all_acked = false;
                inner.enter_backlog_mode("no acknowledgement within the stall timeout");
            }
            Wake::Takeover => {}
            Wake::GiveUp => {
                // In the log: the next start publishes them again.
                sub(&inner.stats.in_flight, (sent.len() - i) as u64);
                return;
            }
        }
    }
    if all_acked {
        let _ = inner
            .tx
            .send(super::backlog::PumpMsg::Acked { generation, seq })
            .await;
    }
}
