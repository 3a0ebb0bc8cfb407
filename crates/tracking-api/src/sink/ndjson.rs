//! `NdjsonSink`: newline-delimited JSON to standard output, standard error or
//! an append-only file, written by one dedicated thread.
//!
//! Requests serialize their events on their own task and hand the bytes over
//! a channel bounded by a [`Budget`] (events and bytes); the writer thread
//! writes what is queued straight to the file descriptor (several requests'
//! lines in one `writev`) and gives each request's admission back once all
//! its bytes are written. The writer polls the channel (sleeping 1–10 ms when
//! it is empty) rather than blocking on it, so senders never have to wake it.
//!
//! **Write errors lose nothing.** A failed write (a full disk, EIO) keeps
//! what was not written, in order, and retries it with backoff (10 ms to
//! 1 s); meanwhile the sink is *failing*: `try_admit` refuses (503) and
//! [`EventSink::healthy`] is false (`/readyz` 503). Both recover by
//! themselves with the first write that works. A partial write resumes where
//! it stopped, so a line is never torn or repeated. A broken pipe (the reader
//! of stdout went away, `EPIPE`, or `poll` reports the pipe's reader gone
//! while idle) is for good: the sink says so, refuses everything, counts what
//! it holds as lost and resolves [`EventSink::gone`], so that the process
//! drains and exits non-zero.
//!
//! `close` writes out everything handed over before it (retrying failed
//! writes for up to [`CLOSE_RETRY`]), and for files `fsync`s. Between
//! closes the file sink does not fsync in the `memory` acknowledgement mode:
//! a machine crash (not a process crash) can lose what the OS had not
//! written yet.
//!
//! **The `disk` acknowledgement mode** (files only) answers a request once
//! its lines are written *and* `fdatasync`ed: group commit, one
//! `fdatasync` after each round of writes covers every hand-over that came
//! while the previous one ran; the writer blocks on the channel when idle
//! instead of polling, so an idle sink answers at once. Data is never
//! retried in this mode: a failed write or `fdatasync` cuts the file back to
//! its last synced length (the page cache may have dropped what the failed
//! sync covered), answers every request waiting for it `503` (their clients
//! send again) and makes the sink *failing* until a probe (`fallocate` of
//! room past the end, then `fdatasync`) works again. A file whose last line
//! was torn by a crash has that partial line cut off when it is opened.
//! [`EventSink::reopen`] (SIGHUP) makes the writer finish the line in
//! progress, fsync, and continue in a newly opened file at the same path.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracking_core::{
    AckMode, Admission, BoxFuture, Budget, DeadLetter, DeadLetterSink, EnrichedEvent, EventSink,
    FsyncStats, Receipt, SinkError,
};

/// How long `close` keeps retrying failed writes before it gives up on what
/// is left (and says so).
pub const CLOSE_RETRY: Duration = Duration::from_secs(3);

/// Linux's `PIPE_BUF`: a write of at most this many bytes to a pipe is
/// atomic.
const PIPE_BUF: usize = 4096;
/// Bytes a queued hand-over costs besides its lines (its queue entry).
const CHUNK_OVERHEAD: usize = 128;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Hand-overs written with one `writev`.
const MAX_SLICES: usize = 256;

/// Where the lines go.
#[derive(Debug, Clone)]
pub enum Target {
    Stdout,
    Stderr,
    File(PathBuf),
}

/// The sink's bounds: what it holds before it refuses.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub events: usize,
    pub bytes: usize,
}

/// Counters the caller exports.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Events whose line was written completely.
    pub written: Arc<AtomicU64>,
    /// Failed writes (each retried).
    pub write_errors: Arc<AtomicU64>,
    /// Events given up: the output gone for good, or still unwritable when
    /// `close` gave up.
    pub lost: Arc<AtomicU64>,
    /// The `disk` acknowledgement mode's group commits.
    pub fsyncs: Arc<FsyncStats>,
}

/// Told once a hand-over's lines are `fdatasync`ed, or why not.
type Done = oneshot::Sender<Result<(), SinkError>>;

enum Msg {
    Lines(Chunk),
    Close(oneshot::Sender<Result<(), String>>),
}

/// One hand-over: whole lines, and the room they hold.
struct Chunk {
    bytes: Vec<u8>,
    events: u64,
    _admission: Admission,
    /// The `disk` acknowledgement mode: whom to tell once it is synced.
    done: Option<Done>,
}

/// What the writer thread tells the sink.
#[derive(Debug, Default)]
struct Shared {
    /// The last write failed; set to the error while it lasts.
    failing: Mutex<Option<String>>,
    failing_flag: AtomicBool,
    /// The output is gone for good.
    gone: CancellationToken,
    /// A reopen (SIGHUP) was asked for.
    reopen: AtomicBool,
    /// Whole lines of the partly written chunk at the front of the queue
    /// (its events are counted written only with the whole chunk).
    front_lines: AtomicU64,
}

impl Shared {
    fn set_failing(&self, error: Option<String>) {
        self.failing_flag.store(error.is_some(), Ordering::Release);
        if let Ok(mut f) = self.failing.lock() {
            *f = error;
        }
    }

    fn failing(&self) -> Option<String> {
        if !self.failing_flag.load(Ordering::Acquire) {
            return None;
        }
        self.failing.lock().ok().and_then(|f| f.clone())
    }
}

#[derive(Debug)]
pub struct NdjsonSink {
    tx: Mutex<Option<Sender<Msg>>>,
    ack: AckMode,
    budget: Arc<Budget>,
    counters: Counters,
    shared: Arc<Shared>,
    dropped: AtomicU64,
    target: String,
}

impl NdjsonSink {
    /// Opens the target and starts the writer thread. `AckMode::Disk` needs
    /// a regular file.
    pub fn start(
        target: Target,
        bounds: Bounds,
        counters: Counters,
        ack: AckMode,
    ) -> io::Result<Self> {
        let (name, out, path, coalesce) = match &target {
            Target::Stdout => (
                "stdout".to_owned(),
                File::from(io::stdout().as_fd().try_clone_to_owned()?),
                None,
                true,
            ),
            // One hand-over per write, so that lines do not interleave with
            // log lines.
            Target::Stderr => (
                "stderr".to_owned(),
                File::from(io::stderr().as_fd().try_clone_to_owned()?),
                None,
                false,
            ),
            Target::File(p) => (
                p.display().to_string(),
                open_append(p)?,
                Some(p.clone()),
                true,
            ),
        };
        if ack == AckMode::Disk && !is_regular(&out) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "TRACKING_ACK=disk needs a regular file to fdatasync, and {name} is not one"
                ),
            ));
        }
        let file_len = if ack == AckMode::Disk {
            out.metadata()?.len()
        } else {
            0
        };
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        // A pipe: writes of at most PIPE_BUF bytes are all or nothing, so a
        // writer blocked by a stuck reader has handed over exactly what the
        // queue says (and the loss at a flush deadline is counted exactly).
        let fifo = out
            .metadata()
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()));
        let writer = Writer {
            max_write: if fifo { PIPE_BUF } else { usize::MAX },
            out,
            path,
            pipe: matches!(target, Target::Stdout | Target::Stderr),
            coalesce,
            queue: VecDeque::new(),
            offset: 0,
            counters: counters.clone(),
            shared: Arc::clone(&shared),
            target: name.clone(),
            failures: 0,
            backoff: BACKOFF_MIN,
            retry_at: None,
            durable: ack == AckMode::Disk,
            unsynced: Vec::new(),
            unsynced_events: 0,
            file_len,
            synced_len: file_len,
        };
        std::thread::Builder::new()
            .name(format!(
                "ndjson-{}",
                if matches!(target, Target::File(_)) {
                    "file"
                } else {
                    &name
                }
            ))
            .spawn(move || writer.run(rx))?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            ack,
            budget: Budget::new(bounds.events, bounds.bytes),
            counters,
            shared,
            dropped: AtomicU64::new(0),
            target: name,
        })
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    pub fn written(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }

    /// Dead letters dropped because the queue was full or the output failing.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn push(&self, chunk: Chunk) -> bool {
        let events = chunk.events;
        let sent = match self.tx.lock() {
            Ok(tx) => tx
                .as_ref()
                .is_some_and(|tx| tx.send(Msg::Lines(chunk)).is_ok()),
            Err(_) => false,
        };
        if !sent {
            self.counters.lost.fetch_add(events, Ordering::Relaxed);
            tracing::error!(target = %self.target, events, "Sink is closed; events handed to it are lost.");
        }
        sent
    }

    /// Why nothing can be admitted now, if so.
    fn refusal(&self) -> Option<SinkError> {
        if self.shared.gone.is_cancelled() {
            return Some(SinkError::Unavailable(format!("{} is closed", self.target)));
        }
        if self.tx.lock().map_or(true, |tx| tx.is_none()) {
            return Some(SinkError::Closed);
        }
        self.shared
            .failing()
            .map(|e| SinkError::Unavailable(format!("writing to {}: {e}", self.target)))
    }

    fn close_inner(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        let tx = self.tx.lock().ok().and_then(|mut tx| tx.take());
        Box::pin(async move {
            let Some(tx) = tx else { return Ok(()) };
            let (done, wait) = oneshot::channel();
            if tx.send(Msg::Close(done)).is_err() {
                return Err(SinkError::Failed("the writer thread has stopped".into()));
            }
            // Cut off by the flush deadline (a stuck reader, a disk that
            // stays full): what is still held is lost, and counted so.
            let cut = LostIfCut(self);
            let result = match wait.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(SinkError::Failed(e)),
                Err(_) => Err(SinkError::Failed("the writer thread has stopped".into())),
            };
            std::mem::forget(cut);
            result
        })
    }

    fn reopen_inner(&self) {
        self.shared.reopen.store(true, Ordering::Release);
    }
}

/// Armed while `close` waits for the writer: dropped before the writer
/// answered (the flush deadline passed), it counts the events not yet
/// written in `lost`.
struct LostIfCut<'a>(&'a NdjsonSink);

impl Drop for LostIfCut<'_> {
    fn drop(&mut self) {
        let sink = self.0;
        // An output gone for good has counted its losses already.
        if sink.shared.gone.is_cancelled() {
            return;
        }
        let out = sink.shared.front_lines.load(Ordering::Acquire);
        let events = (sink.budget.used() as u64).saturating_sub(out);
        if events > 0 {
            sink.counters.lost.fetch_add(events, Ordering::Relaxed);
            tracing::error!(
                target = %sink.target,
                events,
                "The flush deadline passed before these events were written: lost."
            );
        }
    }
}

/// Opens `path` for appending (creating it), and cuts off a last line that
/// a crash left without its newline, so that the lines appended after it
/// stay whole.
fn open_append(path: &Path) -> io::Result<File> {
    let context = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot open {} for appending: {e}", path.display()),
        )
    };
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(context)?;
    let len = file.metadata().map_err(context)?.len();
    let keep = whole_lines_len(&file, len).map_err(context)?;
    if keep < len {
        file.set_len(keep).map_err(context)?;
        tracing::warn!(
            path = %path.display(),
            bytes = len - keep,
            "The file ended in a partial line (a crash mid-write); cut it off."
        );
    }
    Ok(file)
}

/// A regular file (not a FIFO or a device, which cannot be fsynced).
fn is_regular(file: &File) -> bool {
    file.metadata().is_ok_and(|m| m.is_file())
}

/// The length of `file` up to and including its last newline.
fn whole_lines_len(file: &File, len: u64) -> io::Result<u64> {
    let mut end = len;
    let mut block = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let buf = &mut block[..(end - start) as usize];
        file.read_exact_at(buf, start)?;
        if end == len && buf.last() == Some(&b'\n') {
            return Ok(len);
        }
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

fn serialize_lines<T: Serialize>(items: &[T]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(items.len() * 512);
    for item in items {
        // Serializing our own types into memory cannot fail.
        if serde_json::to_writer(&mut buf, item).is_ok() {
            buf.push(b'\n');
        }
    }
    buf
}

/// The writer thread's state.
struct Writer {
    out: File,
    /// The file's path (for reopening), `None` for stdout and stderr.
    path: Option<PathBuf>,
    /// stdout / stderr: a pipe whose reader can go away.
    pipe: bool,
    coalesce: bool,
    /// The most bytes handed over per write.
    max_write: usize,
    queue: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    offset: usize,
    counters: Counters,
    shared: Arc<Shared>,
    target: String,
    failures: u64,
    backoff: Duration,
    retry_at: Option<Instant>,
    /// The `disk` acknowledgement mode.
    durable: bool,
    /// Hand-overs written completely and not yet synced.
    unsynced: Vec<Done>,
    unsynced_events: u64,
    /// Bytes of the file: all of it, and what the last `fdatasync` covered.
    file_len: u64,
    synced_len: u64,
}

/// Hand-overs written before a group commit is forced even though more
/// keep coming.
const MAX_UNSYNCED: usize = 4096;

/// What one write attempt did.
enum Attempt {
    Progress,
    Retry,
    Gone,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        // The writer never blocks on the channel: when it runs dry it sleeps,
        // backing off from 1 ms to 10 ms while idle. Blocking in `recv`
        // would make nearly every hand-off wake this thread through the
        // channel's waker (a mutex and a futex): measured at ~28% of the
        // server's CPU at 15k events/s. The cost is up to 10 ms before an
        // idle sink writes.
        //
        // In the disk acknowledgement mode every request waits for this
        // thread, so an idle writer blocks on the channel instead: the
        // `fdatasync` it then runs costs far more than the wake-up.
        let mut idle = Duration::from_millis(1);
        let mut close = None;
        let mut woken: Option<Msg> = None;
        loop {
            let mut disconnected = false;
            while close.is_none() {
                match woken.take().map_or_else(|| rx.try_recv(), Ok) {
                    Ok(Msg::Lines(chunk)) => self.queue.push_back(chunk),
                    Ok(Msg::Close(done)) => close = Some((done, Instant::now() + CLOSE_RETRY)),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            if self.offset == 0 && self.shared.reopen.swap(false, Ordering::AcqRel) {
                self.reopen();
            }
            if self.shared.gone.is_cancelled() {
                self.give_up("the output is closed");
            } else if !self.queue.is_empty() {
                if self.retry_at.is_none_or(|t| Instant::now() >= t) {
                    match self.write_some() {
                        Attempt::Progress => {
                            idle = Duration::from_millis(1);
                            if self.queue.is_empty() || self.unsynced.len() >= MAX_UNSYNCED {
                                self.commit();
                            }
                            continue;
                        }
                        Attempt::Gone => continue,
                        Attempt::Retry => {}
                    }
                }
            } else if self.pipe && self.reader_gone() {
                self.output_gone("its reader went away");
                continue;
            } else if self.durable
                && self.failures > 0
                && self.retry_at.is_none_or(|t| Instant::now() >= t)
            {
                self.probe();
            }
            if let Some((done, deadline)) = close.take() {
                if self.queue.is_empty() || Instant::now() >= deadline {
                    let _ = done.send(self.finish());
                    return;
                }
                close = Some((done, deadline));
            }
            if disconnected && self.queue.is_empty() {
                return;
            }
            let sleep = match self.retry_at {
                Some(t) if !self.queue.is_empty() => t
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(10)),
                _ => {
                    let s = idle;
                    idle = (idle * 2).min(Duration::from_millis(10));
                    s
                }
            };
            let sleep = sleep.max(Duration::from_millis(1));
            if self.durable && self.queue.is_empty() && close.is_none() && self.failures == 0 {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(msg) => woken = Some(msg),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        if disconnected {
                            return;
                        }
                    }
                }
            } else {
                std::thread::sleep(sleep);
            }
        }
    }

    /// The group commit: one `fdatasync` for every hand-over written since
    /// the last one; each is answered.
    fn commit(&mut self) {
        if !self.durable || self.unsynced.is_empty() {
            return;
        }
        let started = Instant::now();
        match self.out.sync_data() {
            Ok(()) => {
                self.counters
                    .fsyncs
                    .observe(self.unsynced_events, started.elapsed());
                self.counters
                    .written
                    .fetch_add(self.unsynced_events, Ordering::Relaxed);
                // The file's own length, not our count of it: something else
                // may have truncated it (copytruncate) since.
                if let Ok(m) = self.out.metadata() {
                    self.file_len = m.len();
                }
                self.synced_len = self.file_len;
                self.unsynced_events = 0;
                for done in self.unsynced.drain(..) {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) => self.unwind(&io::Error::new(e.kind(), format!("fdatasync: {e}"))),
        }
    }

    /// The disk acknowledgement mode after a failed write or `fdatasync`:
    /// nothing past the last synced length can be trusted, so the file is
    /// cut back to it and every request not yet answered is answered 503.
    fn unwind(&mut self, error: &io::Error) {
        self.counters.fsyncs.fail();
        self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        // Cut back only what this writer added since its last sync, and never
        // grow the file (someone else may have truncated it meanwhile).
        let real = self.out.metadata().map_or(self.file_len, |m| m.len());
        if real > self.synced_len && real <= self.file_len {
            if let Err(cut) = self.out.set_len(self.synced_len) {
                tracing::error!(
                    error = %cut,
                    target = %self.target,
                    "Cannot cut unsynced lines off the output file; they may be there twice after the clients send them again."
                );
            }
        } else if real != self.synced_len {
            tracing::warn!(
                target = %self.target,
                "The output file changed under the writer (truncated?); unsynced lines are left in it and may be there twice after the clients send them again."
            );
        }
        self.file_len = self.out.metadata().map_or(self.synced_len, |m| m.len());
        self.synced_len = self.synced_len.min(self.file_len);
        self.offset = 0;
        self.shared.front_lines.store(0, Ordering::Release);
        let refused = SinkError::Unavailable(format!("writing to {}: {error}", self.target));
        let mut events = self.unsynced_events;
        self.unsynced_events = 0;
        let waiting = self
            .unsynced
            .drain(..)
            .chain(self.queue.drain(..).filter_map(|c| {
                events += c.events;
                c.done
            }))
            .collect::<Vec<_>>();
        for done in waiting {
            let _ = done.send(Err(SinkError::Unavailable(refused.to_string())));
        }
        self.failures += 1;
        if self.failures.is_power_of_two() {
            tracing::error!(
                %error,
                target = %self.target,
                failures = self.failures,
                events,
                "Sink write or fdatasync failed; the requests waiting for it are answered 503 and new ones refused until the disk works again."
            );
        }
        self.back_off(error);
    }

    /// The disk acknowledgement mode while failing, with nothing to write:
    /// is there room (and a disk that syncs) again?
    fn probe(&mut self) {
        const ROOM: u64 = 64 * 1024;
        let tried = match rustix::fs::fallocate(
            &self.out,
            rustix::fs::FallocateFlags::KEEP_SIZE,
            self.file_len,
            ROOM,
        ) {
            // A filesystem without fallocate: the next write is the probe.
            Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
            Err(e) => Err(io::Error::from(e)),
        }
        .and_then(|()| self.out.sync_data());
        match tried {
            Ok(()) => {
                tracing::info!(
                    target = %self.target,
                    failures = self.failures,
                    "The output file takes writes again; taking events again."
                );
                self.failures = 0;
                self.backoff = BACKOFF_MIN;
                self.retry_at = None;
                self.shared.set_failing(None);
            }
            Err(e) => self.back_off(&e),
        }
    }

    /// The output is failing with `error`: refuse (503, `/readyz`) and try
    /// again after the backoff, which doubles up to [`BACKOFF_MAX`].
    fn back_off(&mut self, error: &io::Error) {
        self.shared.set_failing(Some(error.to_string()));
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Writes from the front of the queue (one `writev`), giving back the
    /// room of every chunk written completely.
    fn write_some(&mut self) -> Attempt {
        let n = if self.coalesce { MAX_SLICES } else { 1 };
        let mut slices = Vec::with_capacity(n.min(self.queue.len()));
        let mut room = self.max_write;
        for (i, chunk) in self.queue.iter().take(n).enumerate() {
            let from = if i == 0 { self.offset } else { 0 };
            let to = chunk.bytes.len().min(from.saturating_add(room));
            slices.push(IoSlice::new(&chunk.bytes[from..to]));
            room -= to - from;
            if room == 0 {
                break;
            }
        }
        let result = match slices.len() {
            1 => self.out.write(&slices[0]),
            _ => self.out.write_vectored(&slices),
        };
        match result {
            Ok(0) => self.failed(&io::Error::new(
                io::ErrorKind::WriteZero,
                "the output took no bytes",
            )),
            Ok(mut written) => {
                self.file_len += written as u64;
                // Whole lines of the front chunk so far, counted once each.
                let mut counted_from = self.offset;
                let mut front_lines = self.shared.front_lines.load(Ordering::Relaxed);
                while written > 0 {
                    let Some(front) = self.queue.front() else {
                        break;
                    };
                    let left = front.bytes.len() - self.offset;
                    if written < left {
                        self.offset += written;
                        break;
                    }
                    written -= left;
                    self.offset = 0;
                    counted_from = 0;
                    front_lines = 0;
                    if let Some(chunk) = self.queue.pop_front() {
                        match chunk.done {
                            // Written once synced.
                            Some(done) if self.durable => {
                                self.unsynced.push(done);
                                self.unsynced_events += chunk.events;
                            }
                            _ => {
                                self.counters
                                    .written
                                    .fetch_add(chunk.events, Ordering::Relaxed);
                            }
                        }
                    }
                }
                if let Some(front) = self.queue.front() {
                    front_lines += front.bytes[counted_from..self.offset]
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count() as u64;
                }
                self.shared
                    .front_lines
                    .store(front_lines, Ordering::Release);
                if self.failures > 0 {
                    tracing::info!(
                        target = %self.target,
                        failures = self.failures,
                        "Sink writes work again; taking events again."
                    );
                    self.failures = 0;
                    self.shared.set_failing(None);
                }
                self.backoff = BACKOFF_MIN;
                self.retry_at = None;
                Attempt::Progress
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Attempt::Progress,
            // A non-blocking stdout whose reader is slow: not a failure.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.retry_at = Some(Instant::now() + Duration::from_millis(1));
                Attempt::Retry
            }
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.output_gone(&e.to_string());
                Attempt::Gone
            }
            Err(e) if self.durable => {
                self.unwind(&e);
                Attempt::Retry
            }
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&mut self, error: &io::Error) -> Attempt {
        self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        self.failures += 1;
        if self.failures.is_power_of_two() {
            tracing::error!(
                %error,
                target = %self.target,
                failures = self.failures,
                events = self.queue.iter().map(|c| c.events).sum::<u64>(),
                "Sink write failed; the events are kept and retried, new ones are refused (503)."
            );
        }
        self.back_off(error);
        Attempt::Retry
    }

    /// Whether the pipe's reader has gone away (`POLLERR` on the write end).
    fn reader_gone(&self) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let mut fds = [PollFd::new(&self.out, PollFlags::OUT)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        poll(&mut fds, Some(&zero)).is_ok() && fds[0].revents().contains(PollFlags::ERR)
    }

    fn output_gone(&mut self, why: &str) {
        if !self.shared.gone.is_cancelled() {
            tracing::error!(
                target = %self.target,
                why,
                "The event output is gone for good; refusing events and shutting down."
            );
            self.shared.gone.cancel();
        }
        self.give_up("the output is closed");
    }

    /// Counts what is queued as lost and drops it.
    fn give_up(&mut self, why: &str) {
        // The whole lines of a partly written chunk are out.
        let out = self.shared.front_lines.swap(0, Ordering::AcqRel);
        self.counters.written.fetch_add(out, Ordering::Relaxed);
        let events = self
            .queue
            .drain(..)
            .map(|c| c.events)
            .sum::<u64>()
            .saturating_sub(out);
        self.offset = 0;
        if events > 0 {
            self.counters.lost.fetch_add(events, Ordering::Relaxed);
            tracing::error!(target = %self.target, events, why, "Events could not be written: lost.");
        }
    }

    /// The end of `close`: fsync, and the truth about what was left.
    fn finish(&mut self) -> Result<(), String> {
        if self.shared.gone.is_cancelled() {
            return Err(format!(
                "{} is closed; {} events were lost",
                self.target,
                self.counters.lost.load(Ordering::Relaxed)
            ));
        }
        self.commit();
        let left: u64 = self.queue.iter().map(|c| c.events).sum();
        if left > 0 {
            let error = self.shared.failing().unwrap_or_default();
            self.give_up("still failing at shutdown");
            return Err(format!(
                "{left} events could not be written to {} within {CLOSE_RETRY:?}: {error}",
                self.target
            ));
        }
        if self.path.is_some() && is_regular(&self.out) {
            self.out
                .sync_data()
                .map_err(|e| format!("fsync of {}: {e}", self.target))?;
        }
        Ok(())
    }

    /// Finishes with the current file and continues in a new one at the
    /// same path (called between whole chunks only).
    fn reopen(&mut self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        self.commit();
        if is_regular(&self.out)
            && let Err(error) = self.out.sync_data()
        {
            tracing::warn!(%error, path = %path.display(), "fsync before reopening failed.");
        }
        match open_append(&path) {
            Ok(file) => {
                self.out = file;
                self.file_len = self.out.metadata().map_or(0, |m| m.len());
                self.synced_len = self.file_len;
                tracing::info!(path = %path.display(), "Reopened the output file.");
            }
            Err(error) => {
                tracing::error!(%error, "Cannot reopen the output file; still writing to the old one.");
            }
        }
    }
}

impl EventSink for NdjsonSink {
    fn try_admit(&self, n: usize, bytes: usize) -> Result<Admission, SinkError> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        self.budget
            .try_acquire(n, bytes + CHUNK_OVERHEAD)
            .ok_or(SinkError::Full {
                limit: self.budget.limit(),
                limit_bytes: self.budget.limit_bytes(),
            })
    }

    fn send(&self, events: Vec<EnrichedEvent>, mut admission: Admission) -> Receipt {
        let bytes = serialize_lines(&events);
        admission.set_bytes(bytes.capacity() + CHUNK_OVERHEAD);
        let (done, synced) = match self.ack {
            AckMode::Memory => (None, None),
            AckMode::Disk => {
                let (done, synced) = oneshot::channel();
                (Some(done), Some(synced))
            }
        };
        let pushed = self.push(Chunk {
            bytes,
            events: events.len() as u64,
            _admission: admission,
            done,
        });
        match synced {
            None => Receipt::held(),
            Some(synced) => Receipt::durable(Box::pin(async move {
                if !pushed {
                    return Err(SinkError::Closed);
                }
                synced.await.unwrap_or_else(|_| {
                    Err(SinkError::Failed(
                        "the writer gave the events up before they were synced".into(),
                    ))
                })
            })),
        }
    }

    fn close(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        self.close_inner()
    }

    fn healthy(&self) -> bool {
        !self.shared.gone.is_cancelled() && !self.shared.failing_flag.load(Ordering::Acquire)
    }

    fn gone(&self) -> BoxFuture<'static, ()> {
        Box::pin(self.shared.gone.clone().cancelled_owned())
    }

    fn reopen(&self) {
        self.reopen_inner();
    }
}

impl DeadLetterSink for NdjsonSink {
    fn reject(&self, letter: DeadLetter) -> bool {
        let mut bytes = Vec::with_capacity(letter.raw.len() + letter.error.len() + 256);
        // Serializing our own types into memory cannot fail.
        if serde_json::to_writer(&mut bytes, &letter).is_ok() {
            bytes.push(b'\n');
        }
        let admission = match self.refusal() {
            None => self
                .budget
                .try_acquire(1, bytes.capacity() + CHUNK_OVERHEAD),
            Some(_) => None,
        };
        let Some(admission) = admission else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        self.push(Chunk {
            bytes,
            events: 1,
            _admission: admission,
            done: None,
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        self.close_inner()
    }

    fn reopen(&self) {
        self.reopen_inner();
    }
}

/// A dead-letter output that keeps nothing (counted by the caller).
#[derive(Debug, Default)]
pub struct DiscardDeadLetters {
    dropped: AtomicU64,
}

impl DiscardDeadLetters {
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl DeadLetterSink for DiscardDeadLetters {
    fn reject(&self, _letter: DeadLetter) -> bool {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn close(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(i: usize) -> DeadLetter {
        DeadLetter {
            received_at: tracking_core::Timestamp::from_millis(0),
            reason: "invalid_type",
            error: "bad".into(),
            index: Some(i),
            raw: format!("{{\"n\":{i},\n\"s\":\"\u{2028}\"}}"),
        }
    }

    fn bounds(events: usize) -> Bounds {
        Bounds {
            events,
            bytes: usize::MAX,
        }
    }

    #[tokio::test]
    async fn writes_lines_flushes_on_close_and_then_refuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.ndjson");
        let counters = Counters::default();
        let sink = NdjsonSink::start(
            Target::File(path.clone()),
            bounds(3),
            counters.clone(),
            AckMode::Memory,
        )
        .expect("start");
        for i in 0..3 {
            assert!(DeadLetterSink::reject(&sink, letter(i)));
        }
        DeadLetterSink::close(&sink).await.expect("close");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["index"], 2);
        assert_eq!(lines[2]["raw"], letter(2).raw, "raw is one escaped string");
        assert_eq!(counters.written.load(Ordering::Relaxed), 3);
        assert_eq!(
            (sink.budget().used(), sink.budget().used_bytes()),
            (0, 0),
            "written lines give their room back"
        );
        assert!(matches!(
            EventSink::try_admit(&sink, 1, 0),
            Err(SinkError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_full_queue_drops_dead_letters_and_counts_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = NdjsonSink::start(
            Target::File(dir.path().join("d.ndjson")),
            Bounds {
                events: 2,
                bytes: 4096,
            },
            Counters::default(),
            AckMode::Memory,
        )
        .expect("start");
        let held = sink.budget().try_acquire(2, 0).expect("fill the queue");
        assert!(!DeadLetterSink::reject(&sink, letter(0)));
        assert_eq!(sink.dropped(), 1);
        assert!(matches!(
            EventSink::try_admit(&sink, 1, 0),
            Err(SinkError::Full { limit: 2, .. })
        ));
        drop(held);
        let mut big = letter(1);
        big.raw = "x".repeat(8192);
        assert!(!DeadLetterSink::reject(&sink, big), "past the byte bound");
        assert_eq!(sink.dropped(), 2);
        assert!(DeadLetterSink::reject(&sink, letter(1)));
        DeadLetterSink::close(&sink).await.expect("close");
    }

    #[test]
    fn a_torn_last_line_is_cut_off_when_the_file_is_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (before, after) in [
            ("", ""),
            ("{\"a\":1}\n", "{\"a\":1}\n"),
            ("{\"a\":1}\n{\"b\":", "{\"a\":1}\n"),
            ("{\"b\":", ""),
        ] {
            let path = dir.path().join("t.ndjson");
            std::fs::write(&path, before).expect("write");
            drop(open_append(&path).expect("open"));
            assert_eq!(std::fs::read_to_string(&path).expect("read"), after);
        }
        let path = dir.path().join("long.ndjson");
        let long = format!("{}\n{}", "x".repeat(100_000), "y".repeat(70_000));
        std::fs::write(&path, &long).expect("write");
        drop(open_append(&path).expect("open"));
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 100_001);
    }
}
