//! The one HTTP/1.1 server both services run, so that a hostile client costs
//! a connection, never the service:
//!
//! * [`serve`]: the accept loop. A connection permit bounds open connections
//!   (further ones wait in the listen backlog); headers must arrive within
//!   the header timeout (also the idle limit between keep-alive requests) and
//!   within [`MAX_HEAD_BYTES`]; half-closed clients still get their answer.
//! * [`RequestBody`]: every request's body. It fails with
//!   [`BodyError::TimedOut`] once the body timeout has passed since the
//!   headers arrived, and when a handler answers without reading it all (an
//!   early `413`, `415`, `401`, …) the rest is read and discarded in the
//!   background, up to [`LINGER_BYTES`] and [`LINGER_TIME`], so that a client
//!   that writes its whole body before reading still reads the answer
//!   instead of a reset.
//! * [`read_body`]: a body into memory within a size limit and a byte budget
//!   ([`BodyMemory`]) shared by every request of the process. Chunks are
//!   copied into a buffer that grows with what arrived, so a slow body holds
//!   the bytes it sent and no more.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Largest request head (request line and headers); past it hyper answers
/// `431` and closes. It is also the most a connection's read buffer grows
/// to, so it bounds what an idle connection keeps.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Most bytes of an unread body read and discarded after an early answer.
pub const LINGER_BYTES: u64 = 8 * 1024 * 1024;

/// Longest time spent discarding an unread body after an early answer (and
/// never past the body timeout).
pub const LINGER_TIME: Duration = Duration::from_secs(5);

/// A body up to this size that has arrived whole may use the whole
/// [`BodyMemory`]; larger ones and bodies still arriving leave its last
/// quarter, so neither a few large bodies nor many stalled ones can keep
/// beacons out.
pub const SMALL_BODY: usize = 64 * 1024;

/// Bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    /// Open connections at most; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Time to receive a request's head, and the longest a keep-alive
    /// connection stays idle.
    pub header_timeout: Duration,
    /// Time to receive a request's body, from its head on.
    pub body_timeout: Duration,
}

/// The bounds of an operator listener (metrics and probes): a scraper and
/// the kubelet.
/// Idle connections cost little and are cut after 2 s, so that a client
/// holding connections open must reconnect ~500 times a second to keep
/// the probes out.
const ADMIN: ServerOptions = ServerOptions {
    max_connections: 1024,
    header_timeout: Duration::from_secs(2),
    body_timeout: Duration::from_secs(2),
};

/// Why a [`RequestBody`] ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The client did not send it within the body timeout (its fault).
    #[error("the request body did not arrive within {0:?}")]
    TimedOut(Duration),
    /// The connection failed while reading (client's or network's fault).
    #[error("could not read the request body: {0}")]
    Io(#[from] hyper::Error),
}

/// A request's body as handlers see it: hyper's body under the body
/// deadline, lingering when dropped unread (see the module docs).
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
    deadline: Instant,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// The end, an error or the deadline was seen: nothing to linger for.
    finished: bool,
    /// Sent with `Expect: 100-continue`: until it is polled the client waits
    /// for our go-ahead, so an early answer needs no lingering.
    awaits_continue: bool,
}

impl RequestBody {
    fn new(inner: Incoming, timeout: Duration, awaits_continue: bool) -> Self {
        Self {
            finished: inner.is_end_stream(),
            inner: Some(inner),
            deadline: Instant::now() + timeout,
            timeout,
            timer: None,
            awaits_continue,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        this.awaits_continue = false;
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.finished = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(e))) => {
                this.finished = true;
                Poll::Ready(Some(Err(BodyError::Io(e))))
            }
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    // Dropping hyper's body closes the connection's read
                    // side: a client this slow gets no lingering.
                    this.finished = true;
                    this.inner = None;
                    return Poll::Ready(Some(Err(BodyError::TimedOut(this.timeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        if self.finished || self.awaits_continue || inner.is_end_stream() {
            return;
        }
        let until = self.deadline.min(Instant::now() + LINGER_TIME);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(inner, until));
        }
    }
}

/// Reads and discards what is left of a body, so that hyper keeps reading
/// the socket while the answer goes out; gives up (and hyper closes the
/// connection) past [`LINGER_BYTES`] or `until`.
async fn linger(mut body: Incoming, until: Instant) {
    let mut discarded = 0u64;
    let drained = tokio::time::timeout_at(until, async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                discarded += data.len() as u64;
                if discarded > LINGER_BYTES {
                    return false;
                }
            }
        }
        true
    })
    .await;
    tracing::debug!(
        discarded,
        drained = matches!(drained, Ok(true)),
        "Unread request body discarded."
    );
}

/// A connection's socket, shared between hyper and its task (reads and
/// writes through `&TcpStream`, as tokio's own `AsyncRead` does), and the
/// size of its next read.
struct SharedStream {
    socket: Arc<TcpStream>,
    read_size: usize,
}

/// A safe read must zero the bytes it reads into, and hyper offers its
/// whole spare capacity (up to 16 KiB) on every read, twice per request
/// (the second read finds the socket empty): zeroing all of it took ~4 % of
/// the CPU samples (perf, embedded default under wrk), 4 KiB reads ~1.5 %.
/// So a read
/// asks for `MIN_READ` bytes, twice as many after a read that filled its
/// buffer (a large body), up to `MAX_READ`, and `MIN_READ` again after one
/// that did not.
const MIN_READ: usize = 4 * 1024;
const MAX_READ: usize = 64 * 1024;

impl tokio::io::AsyncRead for SharedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            std::task::ready!(self.socket.poll_read_ready(cx))?;
            let want = buf.remaining().min(self.read_size);
            match self.socket.try_read(buf.initialize_unfilled_to(want)) {
                Ok(n) => {
                    buf.advance(n);
                    self.read_size = if n == want && n > 0 {
                        (want * 2).min(MAX_READ)
                    } else {
                        MIN_READ
                    };
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl SharedStream {
    fn new(socket: Arc<TcpStream>) -> Self {
        Self {
            socket,
            read_size: MIN_READ,
        }
    }

    /// Waits until the socket is writable and runs `write`, again while it
    /// would block.
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        write: impl Fn(&TcpStream) -> std::io::Result<usize>,
    ) -> Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.socket.poll_write_ready(cx))?;
            match write(&self.socket) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }
}

impl tokio::io::AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_with(cx, |s| s.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_with(cx, |s| s.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends the write side (the answer is complete); the read side stays
    /// open for [`discard_rest`].
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(
            rustix::net::shutdown(&*self.socket, rustix::net::Shutdown::Write).map_err(Into::into),
        )
    }
}

/// After hyper answered a head it refused: reads and discards what the
/// client still sends, up to [`LINGER_BYTES`] or `until`, so that a client
/// that writes its whole body before reading gets the answer rather than a
/// reset.
async fn discard_rest(stream: &TcpStream, until: Instant) {
    let _ = rustix::net::shutdown(stream, rustix::net::Shutdown::Write);
    let mut buf = vec![0u8; 16 * 1024];
    let mut discarded = 0u64;
    let _ = tokio::time::timeout_at(until, async {
        while discarded <= LINGER_BYTES {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut buf) {
                Ok(0) => return, // the client is done
                Ok(n) => discarded += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
    tracing::debug!(discarded, "Rest of a refused request discarded.");
}

/// The connections of a listener that stopped accepting, for the drain.
#[derive(Debug)]
pub struct Open {
    graceful: GracefulShutdown,
}

impl Open {
    /// Asks every connection to finish its current request and close, and
    /// waits for them until `deadline`. Returns whether all closed in time.
    pub async fn drain(self, deadline: Instant) -> bool {
        tokio::time::timeout_at(deadline, self.graceful.shutdown())
            .await
            .is_ok()
    }
}

/// Serves HTTP/1.1 on `listener` with `handler` until `stop` resolves; then
/// stops accepting and returns the connections still open.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    opts: ServerOptions,
    handler: H,
    stop: impl Future<Output = ()>,
) -> Open
where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(opts.max_connections));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = accept(&listener, &permits) => {
                let Some((stream, peer, permit)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let awaits_continue = req
                        .headers()
                        .get(http::header::EXPECT)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
                    let req = req.map(|b| RequestBody::new(b, opts.body_timeout, awaits_continue));
                    let answer = handler(req, peer);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                // half_close: a client that shuts down its write side right after
                // sending (EOF while its request is in flight) still gets its
                // request read and processed; without it hyper drops the request.
                // hyper gets a handle on the socket, this task keeps one: when
                // hyper refuses a head (400, 431) it answers and drops its
                // handle, and the rest of what the client sends is read and
                // discarded here before the socket closes.
                let stream = Arc::new(stream);
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .half_close(true)
                    .header_read_timeout(opts.header_timeout)
                    .max_buf_size(MAX_HEAD_BYTES)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(SharedStream::new(Arc::clone(&stream))), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(error) = conn.await {
                        tracing::debug!(%error, %peer, "Connection ended with an error.");
                        if error.is_parse() || error.is_parse_too_large() {
                            let until = Instant::now() + LINGER_TIME.min(opts.body_timeout);
                            discard_rest(&stream, until).await;
                        }
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    Open { graceful }
}

/// Serves an operator listener (`/metrics` and the probes) with small
/// bounds until `stop` resolves, then closes its connections within a
/// second.
pub async fn serve_admin<H, F, B>(listener: TcpListener, handler: H, stop: impl Future<Output = ()>)
where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let open = serve(listener, ADMIN, handler, stop).await;
    if !open.drain(Instant::now() + Duration::from_secs(1)).await {
        tracing::debug!("Admin connections were still open after a second; closed.");
    }
}

async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let permit = Arc::clone(permits).acquire_owned().await.ok()?;
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

/// The bytes of request bodies held in memory by the whole process, and
/// their bound.
#[derive(Debug)]
pub struct BodyMemory {
    limit: usize,
    used: AtomicUsize,
}

impl BodyMemory {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes for a buffer that will then hold `size` bytes, or
    /// nothing. Only a body of at most [`SMALL_BODY`] that is complete with
    /// these bytes may take the last quarter: bodies still arriving (slow
    /// or stalled senders) and large ones share three quarters, so that
    /// however many connections hold partial bodies, a beacon that arrives
    /// whole is still read.
    fn take(&self, n: usize, size: usize, complete: bool) -> bool {
        let ceiling = if complete && size <= SMALL_BODY {
            self.limit
        } else {
            self.limit - self.limit / 4
        };
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= ceiling)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Why a body could not be held in memory.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Larger than the limit (client's fault).
    #[error("body exceeds {0} bytes")]
    TooLarge(usize),
    /// Not received within the body timeout (client's fault).
    #[error("the request body did not arrive within {0:?}")]
    TimedOut(Duration),
    /// Request bodies already fill the process's [`BodyMemory`] (ours; retry).
    #[error("request bodies fill the memory set aside for them; retry later")]
    NoMemory,
    /// The connection failed while reading.
    #[error("could not read body: {0}")]
    Io(String),
}

/// Bytes held for a request, counted in a [`BodyMemory`] until dropped.
#[derive(Debug)]
pub struct BodyBuf {
    data: Vec<u8>,
    limit: usize,
    /// Expected final size (a declared `Content-Length`): growth stops there.
    expected: Option<usize>,
    held: usize,
    memory: Arc<BodyMemory>,
}

impl BodyBuf {
    /// An empty buffer that refuses to grow past `limit` bytes.
    pub fn new(memory: &Arc<BodyMemory>, limit: usize, expected: Option<usize>) -> Self {
        Self {
            data: Vec::new(),
            limit,
            expected: expected.filter(|&n| n <= limit),
            held: 0,
            memory: Arc::clone(memory),
        }
    }

    /// Appends `bytes`, growing the buffer (at most doubling what it holds,
    /// so a slow body never reserves what it has not sent).
    pub fn extend(&mut self, bytes: &[u8]) -> Result<(), ReadError> {
        let need = self.data.len() + bytes.len();
        if need > self.limit {
            return Err(ReadError::TooLarge(self.limit));
        }
        if need > self.held {
            let mut size = need.max(self.held * 2);
            if let Some(expected) = self.expected.filter(|&e| e >= need) {
                size = size.min(expected);
            }
            let size = size.min(self.limit);
            let complete = self.expected == Some(need);
            if !self.memory.take(size - self.held, size, complete) {
                return Err(ReadError::NoMemory);
            }
            self.held = size;
            self.data.reserve_exact(size - self.data.len());
        }
        self.data.extend_from_slice(bytes);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Bytes counted against the [`BodyMemory`] for this buffer.
    pub fn held(&self) -> usize {
        self.held
    }
}

impl std::ops::Deref for BodyBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for BodyBuf {
    fn drop(&mut self) {
        self.memory.give(self.held);
    }
}

/// Reads a whole body into memory: at most `limit` bytes, counted in
/// `memory`. A [`RequestBody`] past its deadline gives
/// [`ReadError::TimedOut`].
pub async fn read_body<B>(
    body: B,
    limit: usize,
    memory: &Arc<BodyMemory>,
) -> Result<BodyBuf, ReadError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = body
        .size_hint()
        .exact()
        .and_then(|n| usize::try_from(n).ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ReadError::TooLarge(limit));
    }
    let mut buf = BodyBuf::new(memory, limit, declared);
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            let e: Box<dyn std::error::Error + Send + Sync> = e.into();
            match e.downcast_ref::<BodyError>() {
                Some(BodyError::TimedOut(t)) => ReadError::TimedOut(*t),
                _ => ReadError::Io(e.to_string()),
            }
        })?;
        if let Ok(mut data) = frame.into_data() {
            while data.has_remaining() {
                let chunk = data.chunk();
                let n = chunk.len();
                buf.extend(chunk)?;
                data.advance(n);
            }
        }
    }
    Ok(buf)
}

/// Raises this process's soft limit of open files to its hard limit (each
/// connection is a file descriptor), and warns when it stays below
/// `connections` plus room for the rest of the process. Returns the limit
/// in force (`None`: unlimited).
pub fn raise_open_files_limit(connections: usize) -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum || (limit.current.is_some() && limit.maximum.is_none()) {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    if let Some(open_files) = limit.current.filter(|&n| n < connections as u64 + 256) {
        tracing::warn!(
            open_files,
            connections,
            "The open-files limit is below the connection limit plus 256: connections past it fail to be accepted."
        );
    }
    limit.current
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends `chunks` to one buffer over `memory`; the outcome of each.
    fn check(
        memory: &Arc<BodyMemory>,
        limit: usize,
        chunks: &[usize],
        expected: &[Result<(), ReadError>],
    ) -> BodyBuf {
        check_declared(memory, limit, None, chunks, expected)
    }

    /// [`check`] with a declared length.
    fn check_declared(
        memory: &Arc<BodyMemory>,
        limit: usize,
        declared: Option<usize>,
        chunks: &[usize],
        expected: &[Result<(), ReadError>],
    ) -> BodyBuf {
        let mut buf = BodyBuf::new(memory, limit, declared);
        let got: Vec<_> = chunks.iter().map(|&n| buf.extend(&vec![7u8; n])).collect();
        assert_eq!(got, expected, "chunks {chunks:?}");
        buf
    }

    #[test]
    fn buffers_hold_what_arrived_within_the_limit_and_the_memory() {
        let memory = BodyMemory::new(1 << 20);
        // Growth at most doubles what arrived: 1 byte holds 1, 3 hold 4.
        let small = check(&memory, 1000, &[1, 1, 1], &[Ok(()), Ok(()), Ok(())]);
        assert_eq!((small.len(), small.held(), memory.used()), (3, 4, 4));
        // The limit counts bytes, whatever the chunking.
        let _ = check(
            &memory,
            10,
            &[6, 4, 1],
            &[Ok(()), Ok(()), Err(ReadError::TooLarge(10))],
        );
        drop(small);
        assert_eq!(memory.used(), 0, "dropped buffers give their bytes back");

        // A large buffer stops at three quarters; small bodies that have
        // arrived whole use the rest.
        let big = check(
            &memory,
            2 << 20,
            &[700 << 10, 100 << 10],
            &[Ok(()), Err(ReadError::NoMemory)],
        );
        assert_eq!(memory.used(), 700 << 10);
        let beacon = check_declared(&memory, 1 << 20, Some(60 << 10), &[60 << 10], &[Ok(())]);
        let _ = check(&memory, 1 << 20, &[70 << 10], &[Err(ReadError::NoMemory)]);
        // Small but still arriving (no length, or short of it): three quarters.
        let _ = check(&memory, 1 << 20, &[10 << 10], &[Err(ReadError::NoMemory)]);
        let _ = check_declared(
            &memory,
            1 << 20,
            Some(64 << 10),
            &[(64 << 10) - 1],
            &[Err(ReadError::NoMemory)],
        );
        drop((big, beacon));
        assert_eq!(memory.used(), 0);
    }

    #[test]
    fn a_declared_length_caps_growth() {
        let memory = BodyMemory::new(1 << 20);
        let mut buf = BodyBuf::new(&memory, 1000, Some(300));
        for _ in 0..3 {
            buf.extend(&[1; 100]).expect("fits");
        }
        // 100 → 200 → 300 (not 400): the declared length.
        assert_eq!((buf.len(), buf.held()), (300, 300));
        // A lying client gets more room, still within the limit.
        buf.extend(&[1; 50]).expect("fits");
        assert_eq!(buf.held(), 600);
    }
}
