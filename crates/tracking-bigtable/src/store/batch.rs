//! Renewal writes, batched: plain renewals queue here and go out as
//! `MutateRows` calls.
//!
//! The first renewal to arrive opens a batch; the renewals that arrive in
//! the next [`LINGER`] join it (up to [`MAX_ENTRIES`]), and the batch goes
//! out as one call while the next one fills. So at a few events a second
//! each renewal goes alone, [`LINGER`] later than it would have, and under
//! load the write RPCs per event fall as the rate rises, and with them the
//! CPU the client and Bigtable spend per event. The event never waits for
//! any of it: its response does not depend on the renewal.
//!
//! Each renewal keeps its own deadline, the write timeout counted from its
//! event's arrival (so a plain renewal cannot land after the session it
//! renews has ended, which is what decides between a plain and a
//! conditional renewal). At most [`MAX_CALLS`] calls are in flight; a
//! call's deadline is its earliest entry's, and the entries Bigtable
//! refused with a transient
//! status are sent again, alone of the rest, while their deadline and the
//! retry budget allow. Setting cells at explicit timestamps is idempotent,
//! so an entry sent twice does no harm.
//!
//! Renewals queued or being written are bounded
//! ([`crate::MAX_QUEUED_RENEWALS`] by default); past the bound a
//! renewal is given up at once and counted as a failed write (the session
//! may end early), as it would be after its deadline: that only happens
//! when Bigtable has been slower than the write timeout for a while.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bigtable_rs::google::bigtable::v2::{MutateRowsRequest, Mutation, mutate_rows_request};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::{Inner, transient_code};
use crate::locks::Landing;

/// How long a batch waits for more renewals after its first.
pub const LINGER: Duration = Duration::from_millis(1);
/// `MutateRows` calls in flight at most. A call that Bigtable is slow to
/// answer holds its connection's buffers and a task; beyond this the
/// renewals wait in the queue (small) and go out in fuller calls. 64 calls
/// of 100 renewals answered in 0.5 s carry 12,800 renewals a second.
pub const MAX_CALLS: usize = 64;
/// Entries in one `MutateRows` call at most (Bigtable allows 100,000
/// mutations per call; a renewal has at most six).
pub const MAX_ENTRIES: usize = 100;

/// One plain renewal waiting to be written.
pub(super) struct Renewal {
    pub key: Vec<u8>,
    pub mutations: Vec<Mutation>,
    pub deadline: Instant,
    /// The visitor's renewal in flight, visible to its next events until
    /// this is dropped (landed or given up).
    pub landing: Landing,
    /// Counts in the store's `flush`/`close` until dropped.
    pub token: TaskTrackerToken,
    /// The renewal's `bigtable.write` span.
    pub span: tracing::Span,
}

/// A renewal with its place in the queue's capacity.
struct Queued {
    renewal: Renewal,
    _room: OwnedSemaphorePermit,
}

/// The queue's sending side; the task taking from it ends when this is
/// dropped (with the store).
pub(super) struct Queue {
    tx: mpsc::Sender<Queued>,
    room: Arc<Semaphore>,
}

impl Queue {
    /// Starts the task that sends what is queued, at most `capacity`
    /// renewals queued or being written. It holds the store weakly:
    /// dropping the store ends it.
    pub(super) fn start(inner: Weak<Inner>, capacity: usize) -> Self {
        let (queue, rx) = Self::new(capacity);
        tokio::spawn(drive(inner, rx));
        queue
    }

    fn new(capacity: usize) -> (Self, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let room = Arc::new(Semaphore::new(capacity));
        (Self { tx, room }, rx)
    }

    /// Queues a renewal; gives it back when the queue is full (or its task
    /// gone, as the runtime shuts down).
    pub(super) fn push(&self, renewal: Renewal) -> Option<Renewal> {
        let Ok(room) = Arc::clone(&self.room).try_acquire_owned() else {
            return Some(renewal);
        };
        self.tx
            .try_send(Queued {
                renewal,
                _room: room,
            })
            .err()
            .map(|e| e.into_inner().renewal)
    }
}

async fn drive(inner: Weak<Inner>, mut rx: mpsc::Receiver<Queued>) {
    let calls = Arc::new(Semaphore::new(MAX_CALLS));
    while let Some(first) = rx.recv().await {
        let closes = Instant::now() + LINGER;
        let mut batch = vec![first];
        while batch.len() < MAX_ENTRIES {
            match tokio::time::timeout_at(closes, rx.recv()).await {
                Ok(Some(next)) => batch.push(next),
                Ok(None) | Err(_) => break,
            }
        }
        // Every call slot busy (Bigtable slow): wait for one, and take what
        // queued meanwhile into this call.
        let Ok(slot) = Arc::clone(&calls).acquire_owned().await else {
            return;
        };
        while batch.len() < MAX_ENTRIES {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            inner.write_batch(batch).await;
            drop(slot);
        });
    }
}

/// One row for [`Inner::write_rows`].
pub(super) struct Row<'a> {
    pub key: &'a [u8],
    pub mutations: &'a [Mutation],
    pub deadline: Instant,
}

/// What became of a row: written, or given up with the reason; each with
/// the attempts it took.
pub(super) type Written = Result<u32, (u32, String)>;

impl Inner {
    /// Writes `batch` (oldest first) and ends each renewal: landed, or
    /// given up and counted; its span records its attempts and outcome.
    /// The writes of one row in a batch (a visitor's renewal and the ids
    /// its request recorded, or two events' renewals) go as one entry,
    /// their mutations in order — what applying them one after the other
    /// does — given up at the earliest of their deadlines.
    async fn write_batch(&self, mut batch: Vec<Queued>) {
        let mut group_of = Vec::with_capacity(batch.len());
        let mut firsts: Vec<usize> = Vec::new();
        for (i, q) in batch.iter().enumerate() {
            match firsts
                .iter()
                .position(|&f| batch[f].renewal.key == q.renewal.key)
            {
                Some(g) => group_of.push(g),
                None => {
                    group_of.push(firsts.len());
                    firsts.push(i);
                }
            }
        }
        // The later writes of a row move their mutations to its first.
        for i in 0..batch.len() {
            let first = firsts[group_of[i]];
            if first != i {
                let later = std::mem::take(&mut batch[i].renewal.mutations);
                let deadline = batch[i].renewal.deadline;
                let head = &mut batch[first].renewal;
                head.mutations.extend(later);
                head.deadline = head.deadline.min(deadline);
            }
        }
        let rows: Vec<Row<'_>> = firsts
            .iter()
            .map(|&f| {
                let first = &batch[f].renewal;
                Row {
                    key: &first.key,
                    mutations: &first.mutations,
                    deadline: first.deadline,
                }
            })
            .collect();
        let by_row = self.write_rows(&rows).await;
        drop(rows);
        let written = group_of.iter().map(|&g| by_row[g].clone());
        for (Queued { renewal, _room }, written) in batch.into_iter().zip(written) {
            match written {
                Ok(attempts) => finish(renewal, attempts, "ok"),
                Err((attempts, error)) => {
                    finish(renewal, attempts, "error");
                    self.write_failed(&error);
                }
            }
        }
    }

    /// Writes `rows` as `MutateRows` calls, retrying the rows refused with
    /// a transient status, each until its own deadline (a row already past
    /// it is not sent), while the retry budget allows: one retry of a call,
    /// whatever its size, spends one unit, as a retried single write did.
    /// Counts writes (rows sent, retries included), calls and retried calls.
    pub(super) async fn write_rows(&self, rows: &[Row<'_>]) -> Vec<Written> {
        let mut written: Vec<Option<Written>> = vec![None; rows.len()];
        let mut attempts = vec![0u32; rows.len()];
        let mut pending: Vec<usize> = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            if Instant::now() >= row.deadline {
                written[i] = Some(Err((0, "write deadline passed".to_owned())));
            } else {
                self.retry_budget.earn();
                pending.push(i);
            }
        }
        let mut backoff = Duration::from_millis(5);
        while !pending.is_empty() {
            let deadline = pending
                .iter()
                .map(|&i| rows[i].deadline)
                .min()
                .unwrap_or_else(Instant::now);
            let request = MutateRowsRequest {
                table_name: self.table_name.clone(),
                entries: pending
                    .iter()
                    .map(|&i| mutate_rows_request::Entry {
                        row_key: rows[i].key.to_vec(),
                        mutations: rows[i].mutations.to_vec(),
                        ..mutate_rows_request::Entry::default()
                    })
                    .collect(),
                ..MutateRowsRequest::default()
            };
            for &i in &pending {
                attempts[i] += 1;
            }
            self.counters
                .writes
                .fetch_add(pending.len() as u64, Ordering::Relaxed);
            self.counters.write_calls.fetch_add(1, Ordering::Relaxed);
            let statuses =
                tokio::time::timeout_at(deadline, self.send_batch(request, pending.len()))
                    .await
                    .unwrap_or_else(|_| {
                        vec![Status::Transient("write deadline passed".to_owned()); pending.len()]
                    });
            let mut retry = None;
            let mut again = Vec::new();
            for (i, status) in pending.into_iter().zip(statuses) {
                let error = match status {
                    Status::Ok => {
                        written[i] = Some(Ok(attempts[i]));
                        continue;
                    }
                    Status::Failed(error) => error,
                    Status::Transient(error)
                        if Instant::now() + backoff < rows[i].deadline
                            && *retry.get_or_insert_with(|| self.may_retry()) =>
                    {
                        tracing::debug!(%error, attempt = attempts[i], "Bigtable write failed; retrying.");
                        again.push(i);
                        continue;
                    }
                    Status::Transient(error) => error,
                };
                written[i] = Some(Err((attempts[i], error)));
            }
            if !again.is_empty() {
                self.counters.write_retries.fetch_add(1, Ordering::Relaxed);
            }
            pending = again;
            if !pending.is_empty() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
        }
        written
            .into_iter()
            .map(|w| w.unwrap_or_else(|| Err((0, "not written".to_owned()))))
            .collect()
    }

    /// One `MutateRows` call: the status of each of its `n` entries, in
    /// order. An entry the answer does not mention (the stream broke)
    /// gets the call's error.
    async fn send_batch(&self, request: MutateRowsRequest, n: usize) -> Vec<Status> {
        let mut client = self.client.clone();
        let mut statuses: Vec<Option<Status>> = vec![None; n];
        let broken = match client.mutate_rows(request).await {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(answer)) => {
                        for e in answer.entries {
                            let Some(slot) = usize::try_from(e.index)
                                .ok()
                                .and_then(|i| statuses.get_mut(i))
                            else {
                                continue;
                            };
                            *slot = Some(match e.status {
                                None => Status::Ok,
                                Some(s) if s.code == 0 => Status::Ok,
                                Some(s) if transient_code(tonic::Code::from(s.code)) => {
                                    Status::Transient(s.message)
                                }
                                Some(s) => Status::Failed(format!(
                                    "{:?}: {}",
                                    tonic::Code::from(s.code),
                                    s.message
                                )),
                            });
                        }
                    }
                    Ok(None) => break None,
                    Err(e) if transient_code(e.code()) => {
                        break Some(Status::Transient(e.to_string()));
                    }
                    Err(e) => break Some(Status::Failed(e.to_string())),
                }
            },
            Err(e) if super::transient(&e) => Some(Status::Transient(e.to_string())),
            Err(e) => Some(Status::Failed(e.to_string())),
        };
        let missing =
            broken.unwrap_or_else(|| Status::Transient("no status for the entry".to_owned()));
        statuses
            .into_iter()
            .map(|s| s.unwrap_or_else(|| missing.clone()))
            .collect()
    }
}

/// Ends a renewal: its span records the attempts and the outcome, and
/// dropping it takes it out of the visitor's renewals in flight and of
/// what `flush` waits for.
pub(super) fn finish(renewal: Renewal, attempts: u32, outcome: &str) {
    let Renewal {
        span,
        landing,
        token,
        ..
    } = renewal;
    span.record("attempts", attempts);
    span.record("outcome", outcome);
    drop((landing, token));
}

/// What became of one entry of a call.
#[derive(Clone, Debug)]
enum Status {
    Ok,
    Transient(String),
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InFlight;
    use tracking_core::{ClientId, VisitorState};

    fn renewal(in_flight: &Arc<InFlight>, tracker: &tokio_util::task::TaskTracker) -> Renewal {
        let id = ClientId::parse("v-1").unwrap();
        Renewal {
            key: b"k".to_vec(),
            mutations: Vec::new(),
            deadline: Instant::now() + Duration::from_secs(1),
            landing: in_flight.begin(1, &id, &VisitorState::default()),
            token: tracker.token(),
            span: tracing::Span::none(),
        }
    }

    /// Past its capacity the queue gives renewals back at once, and room
    /// comes back as renewals end, not when they leave the queue.
    #[tokio::test]
    async fn the_queue_is_bounded_by_the_renewals_not_yet_ended() {
        let (queue, mut rx) = Queue::new(3);
        let in_flight = Arc::new(InFlight::default());
        let tracker = tokio_util::task::TaskTracker::new();
        for _ in 0..3 {
            assert!(queue.push(renewal(&in_flight, &tracker)).is_none());
        }
        assert!(
            queue.push(renewal(&in_flight, &tracker)).is_some(),
            "the fourth is refused"
        );
        let taken = rx.recv().await.unwrap();
        assert!(
            queue.push(renewal(&in_flight, &tracker)).is_some(),
            "taken from the queue but still being written: no room yet"
        );
        drop(taken);
        assert!(
            queue.push(renewal(&in_flight, &tracker)).is_none(),
            "ended: room again"
        );
    }
}
