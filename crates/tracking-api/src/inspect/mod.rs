//! The live event inspector (`TRACKING_INSPECT`), served on the admin
//! listener: `GET /inspect` (a page), `GET /inspect/events`,
//! `GET /inspect/counts`, `POST /inspect/reset`.
//!
//! A lossy tap beside the request path, never in its way: every event's
//! outcome is counted (one atomic add), but an entry is rendered and kept
//! only within a budget of `max_events` entries a second (a burst of
//! `max_events`), and only when the buffer's lock is free at once. What it
//! does not keep is counted as dropped. The buffer is bounded in entries and
//! in bytes; the oldest entries make room.
//!
//! It shows what the outputs write, nothing more: an accepted event as
//! output (anonymised address), a rejected one as its dead letter has it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tracking_core::{EnrichedEvent, Event, Timestamp};

/// Where an event came in.
#[derive(Debug, Clone)]
pub enum Channel {
    /// `POST /v1/events` (the tracker's beacons too).
    Events,
    /// `GET /v1/pixel.gif`.
    Pixel,
    /// A Segment route, with its write key's source name.
    Segment(Arc<str>),
}

impl Channel {
    fn label(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Self::Events => "events".into(),
            Self::Pixel => "pixel".into(),
            // A refused request, its source unknown.
            Self::Segment(name) if name.is_empty() => "segment".into(),
            Self::Segment(name) => format!("segment/{name}").into(),
        }
    }
}

/// What happened to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Accepted,
    Rejected,
    Duplicate,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Duplicate => "duplicate",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "accepted" => Some(Self::Accepted),
            "rejected" => Some(Self::Rejected),
            "duplicate" => Some(Self::Duplicate),
            _ => None,
        }
    }
}

/// Bytes an entry costs besides its rendered text and keys.
const ENTRY_OVERHEAD: usize = 96;

/// One kept entry: its rendered JSON (without `seq`, added when listed)
/// and the fields the filters match.
#[derive(Debug)]
struct Entry {
    seq: u64,
    status: Status,
    ty: Option<Box<str>>,
    client_id: Option<Box<str>>,
    source: Box<str>,
    /// Exactly its length (no spare capacity): what is counted is what is
    /// held.
    json: Box<str>,
}

impl Entry {
    fn size(&self) -> usize {
        ENTRY_OVERHEAD
            + self.json.len()
            + self.source.len()
            + self.ty.as_deref().map_or(0, str::len)
            + self.client_id.as_deref().map_or(0, str::len)
    }
}

/// An entry rendered outside the lock, waiting to be kept.
#[derive(Debug)]
pub struct Rendered(Entry);

#[derive(Debug, Default)]
struct Ring {
    entries: VecDeque<Arc<Entry>>,
    bytes: usize,
    /// The last `seq` given; never rewound, so a page polling with
    /// `after=` keeps working across a reset.
    seq: u64,
}

#[derive(Debug, Default)]
struct Counts {
    accepted: AtomicU64,
    rejected: AtomicU64,
    duplicate: AtomicU64,
    dropped: AtomicU64,
}

/// A rate budget (GCRA): `rate` entries a second, in bursts of `rate`.
#[derive(Debug)]
struct Budget {
    epoch: Instant,
    interval_ns: u64,
    burst_ns: u64,
    /// The theoretical arrival time of the next entry, in ns from `epoch`.
    tat: AtomicU64,
}

impl Budget {
    fn new(rate: usize) -> Self {
        let interval_ns = (1_000_000_000 / rate.max(1) as u64).max(1);
        Self {
            epoch: Instant::now(),
            interval_ns,
            burst_ns: 1_000_000_000,
            tat: AtomicU64::new(0),
        }
    }

    fn take(&self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Relaxed);
        loop {
            let start = tat.max(now);
            if start - now >= self.burst_ns {
                return false;
            }
            match self
                .tat
                .compare_exchange_weak(tat, start + self.interval_ns, Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(t) => tat = t,
            }
        }
    }
}

/// The inspector's buffer and counts.
#[derive(Debug)]
pub struct Inspector {
    max_events: usize,
    max_bytes: usize,
    ring: Mutex<Ring>,
    counts: Counts,
    budget: Budget,
    /// Whether rejected inputs are shown: only when a dead-letter output
    /// writes them.
    show_raw: bool,
    /// Resets so far: a page polling with `after=` sees one it missed.
    resets: AtomicU64,
    /// One list at a time, off the request workers: a list's copy of the
    /// entries and its answer are bounded by one buffer's worth.
    lists: Arc<tokio::sync::Semaphore>,
}

/// The longest free text (`q`) a list takes.
pub const MAX_QUERY_TEXT: usize = 256;

/// The filters of `GET /inspect/events`.
#[derive(Debug, Default)]
pub struct Filter {
    pub status: Option<Status>,
    pub ty: Option<String>,
    pub client_id: Option<String>,
    pub source: Option<String>,
    /// Case-insensitive (ASCII) text anywhere in the entry.
    pub q: Option<String>,
    /// Only entries newer than this `seq`.
    pub after: u64,
    pub limit: usize,
}

/// What `GET /inspect/counts` answers.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Snapshot {
    pub accepted: u64,
    pub rejected: u64,
    pub duplicate: u64,
    pub dropped: u64,
    pub held: usize,
    pub held_bytes: usize,
    pub max_events: usize,
    pub max_bytes: usize,
}

#[derive(Serialize)]
struct View<'a> {
    status: &'static str,
    time: Timestamp,
    answer: u16,
    source: &'a str,
    #[serde(rename = "type")]
    ty: Option<&'a str>,
    client_id: Option<&'a str>,
    event_id: Option<&'a str>,
    #[serde(flatten)]
    detail: Detail<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Detail<'a> {
    Accepted {
        event: &'a EnrichedEvent,
    },
    Rejected {
        reason: &'a str,
        error: &'a str,
        index: Option<usize>,
        raw: Option<&'a str>,
    },
    Duplicate {
        accepted_at: Timestamp,
    },
}

/// A rejected event or request, as the inspector shows it.
#[derive(Debug)]
pub struct RejectedView<'a> {
    pub time: Timestamp,
    pub reason: &'a str,
    pub error: &'a str,
    /// Its index in the request's batch; `None` when the request as a whole
    /// was refused.
    pub index: Option<usize>,
    /// As the dead-letter output has it; `None` when it writes nothing.
    pub raw: Option<&'a str>,
}

impl Inspector {
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            max_events,
            max_bytes,
            ring: Mutex::default(),
            counts: Counts::default(),
            budget: Budget::new(max_events),
            show_raw: true,
            resets: AtomicU64::new(0),
            lists: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// Whether a rejected event's input is shown (`raw`, and what its
    /// `type` and `client_id` say): only when the dead letters are written
    /// somewhere (not `TRACKING_DEADLETTER=discard` without a Pub/Sub
    /// dead-letter topic).
    pub fn with_raw(mut self, shown: bool) -> Self {
        self.show_raw = shown;
        self
    }

    /// `GET /inspect/events` on a blocking thread, one at a time.
    pub async fn list_off_thread(self: &Arc<Self>, filter: Filter) -> String {
        let Ok(_permit) = Arc::clone(&self.lists).acquire_owned().await else {
            return String::new();
        };
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.list(&filter))
            .await
            .unwrap_or_default()
    }

    /// Counts `n` accepted events (once they are accepted for good).
    pub fn count_accepted(&self, n: usize) {
        self.counts.accepted.fetch_add(n as u64, Relaxed);
    }

    /// An accepted event, rendered when the budget allows (counted by
    /// [`Inspector::count_accepted`]).
    pub fn accepted(
        &self,
        event: &EnrichedEvent,
        channel: &Channel,
        answer: u16,
    ) -> Option<Rendered> {
        if !self.budget.take() {
            self.counts.dropped.fetch_add(1, Relaxed);
            return None;
        }
        let event_id = event.event_id();
        Some(self.render(
            Status::Accepted,
            event.received_at(),
            answer,
            channel,
            Some(event.event_type()),
            Some(event.client_id().as_str()),
            Some(&event_id),
            Detail::Accepted { event },
        ))
    }

    /// A retry of `event` answered as accepted and not output; counted here.
    pub fn duplicate(
        &self,
        time: Timestamp,
        event: &Event,
        event_id: &str,
        accepted_at: Timestamp,
        channel: &Channel,
        answer: u16,
    ) -> Option<Rendered> {
        self.counts.duplicate.fetch_add(1, Relaxed);
        if !self.budget.take() {
            self.counts.dropped.fetch_add(1, Relaxed);
            return None;
        }
        Some(self.render(
            Status::Duplicate,
            time,
            answer,
            channel,
            Some(event.event_type()),
            Some(event.client_id().as_str()),
            Some(event_id),
            Detail::Duplicate { accepted_at },
        ))
    }

    /// A refused event or request: counted and, within the budget, kept.
    pub fn rejected(&self, r: RejectedView<'_>, channel: &Channel, answer: u16) {
        self.counts.rejected.fetch_add(1, Relaxed);
        // An input larger than the whole buffer is not even read.
        let raw = r.raw.filter(|_| self.show_raw);
        let too_large = raw.map_or(0, str::len) + r.error.len() > self.max_bytes;
        if too_large || !self.budget.take() {
            self.counts.dropped.fetch_add(1, Relaxed);
            return;
        }
        // What the raw input says it is, when it says so plainly.
        #[derive(serde::Deserialize, Default)]
        struct Peek {
            #[serde(rename = "type")]
            ty: Option<String>,
            client_id: Option<String>,
            #[serde(rename = "anonymousId")]
            anonymous_id: Option<String>,
            #[serde(rename = "userId")]
            user_id: Option<String>,
        }
        let peek: Peek = match raw {
            Some(raw) if raw.starts_with('{') => serde_json::from_str(raw).unwrap_or_default(),
            // A pixel's query string.
            Some(query) => {
                let mut p = Peek::default();
                for (k, v) in form_urlencoded::parse(query.as_bytes()) {
                    match &*k {
                        "type" => p.ty = Some(v.into_owned()),
                        "client_id" => p.client_id = Some(v.into_owned()),
                        _ => {}
                    }
                }
                p
            }
            None => Peek::default(),
        };
        let client = peek.client_id.or(peek.anonymous_id).or(peek.user_id);
        let rendered = self.render(
            Status::Rejected,
            r.time,
            answer,
            channel,
            peek.ty.as_deref(),
            client.as_deref(),
            None,
            Detail::Rejected {
                reason: r.reason,
                error: r.error,
                index: r.index,
                raw,
            },
        );
        self.keep([rendered]);
    }

    #[allow(clippy::too_many_arguments)] // an entry's fields
    fn render(
        &self,
        status: Status,
        time: Timestamp,
        answer: u16,
        channel: &Channel,
        ty: Option<&str>,
        client_id: Option<&str>,
        event_id: Option<&str>,
        detail: Detail<'_>,
    ) -> Rendered {
        let source = channel.label();
        let view = View {
            status: status.as_str(),
            time,
            answer,
            source: &source,
            ty,
            client_id,
            event_id,
            detail,
        };
        let json = serde_json::to_string(&view)
            .unwrap_or_else(|e| {
                format!(
                    r#"{{"status":"{}","error":"not rendered: {e}"}}"#,
                    status.as_str()
                )
            })
            .into_boxed_str();
        Rendered(Entry {
            seq: 0,
            status,
            ty: ty.map(Into::into),
            client_id: client_id.map(Into::into),
            source: source.into(),
            json,
        })
    }

    /// Keeps rendered entries, in order, when the buffer's lock is free;
    /// otherwise drops (and counts) them.
    pub fn keep(&self, entries: impl IntoIterator<Item = Rendered>) {
        let mut entries = entries.into_iter().peekable();
        if entries.peek().is_none() {
            return;
        }
        let Some(mut ring) = self.try_lock() else {
            self.counts
                .dropped
                .fetch_add(entries.count() as u64, Relaxed);
            return;
        };
        for Rendered(mut entry) in entries {
            let size = entry.size();
            if size > self.max_bytes {
                self.counts.dropped.fetch_add(1, Relaxed);
                continue;
            }
            ring.seq += 1;
            entry.seq = ring.seq;
            while ring.entries.len() >= self.max_events || ring.bytes + size > self.max_bytes {
                let Some(old) = ring.entries.pop_front() else {
                    break;
                };
                ring.bytes -= old.size();
            }
            ring.bytes += size;
            ring.entries.push_back(Arc::new(entry));
        }
    }

    /// The lock, if it is free now or within a few spins: a request never
    /// waits on a reader.
    fn try_lock(&self) -> Option<std::sync::MutexGuard<'_, Ring>> {
        for _ in 0..64 {
            match self.ring.try_lock() {
                Ok(guard) => return Some(guard),
                Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => std::hint::spin_loop(),
            }
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `{"events": [...], "latest", "dropped"}`: the matching entries,
    /// newest first.
    pub fn list(&self, filter: &Filter) -> String {
        // References taken under the lock; matched and written outside it.
        let (entries, latest) = {
            let ring = self.lock();
            let newer = ring
                .entries
                .iter()
                .rev()
                .take_while(|e| e.seq > filter.after)
                .cloned()
                .collect::<Vec<_>>();
            (newer, ring.entries.back().map_or(0, |e| e.seq))
        };
        let mut out = String::from(r#"{"events":["#);
        // The free text, lowered once; each entry lowered into one buffer
        // (linear time whatever the text: `str::contains` is two-way).
        let q = filter.q.as_deref().map(str::to_ascii_lowercase);
        let mut lowered = String::new();
        let matching = entries
            .iter()
            .filter(|e| filter.matches(e))
            .filter(|e| {
                q.as_deref().is_none_or(|q| {
                    lowered.clear();
                    lowered.push_str(&e.json);
                    lowered.make_ascii_lowercase();
                    lowered.contains(q)
                })
            })
            .take(filter.limit);
        for (i, e) in matching.enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&format!(r#"{{"seq":{},"#, e.seq));
            out.push_str(&e.json[1..]);
        }
        out.push_str(&format!(
            r#"],"latest":{latest},"dropped":{},"resets":{}}}"#,
            self.counts.dropped.load(Relaxed),
            self.resets.load(Relaxed)
        ));
        out
    }

    pub fn snapshot(&self) -> Snapshot {
        let (held, held_bytes) = {
            let ring = self.lock();
            (ring.entries.len(), ring.bytes)
        };
        Snapshot {
            accepted: self.counts.accepted.load(Relaxed),
            rejected: self.counts.rejected.load(Relaxed),
            duplicate: self.counts.duplicate.load(Relaxed),
            dropped: self.counts.dropped.load(Relaxed),
            held,
            held_bytes,
            max_events: self.max_events,
            max_bytes: self.max_bytes,
        }
    }

    /// Empties the buffer and zeroes the counts (`seq` goes on).
    pub fn reset(&self) {
        let old = {
            let mut ring = self.lock();
            ring.bytes = 0;
            std::mem::take(&mut ring.entries)
        };
        drop(old);
        self.resets.fetch_add(1, Relaxed);
        for c in [
            &self.counts.accepted,
            &self.counts.rejected,
            &self.counts.duplicate,
            &self.counts.dropped,
        ] {
            c.store(0, Relaxed);
        }
    }

    pub fn max_events(&self) -> usize {
        self.max_events
    }
}

impl Filter {
    fn matches(&self, e: &Entry) -> bool {
        self.status.is_none_or(|s| s == e.status)
            && self
                .ty
                .as_deref()
                .is_none_or(|t| e.ty.as_deref() == Some(t))
            && self
                .client_id
                .as_deref()
                .is_none_or(|c| e.client_id.as_deref() == Some(c))
            && self.source.as_deref().is_none_or(|s| *e.source == *s)
    }

    /// The filters of a query string; `max` bounds `limit`.
    pub fn parse(query: &str, max: usize) -> Result<Self, String> {
        let mut f = Self {
            limit: 100.min(max),
            ..Self::default()
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let value = || Some(v.to_string()).filter(|v| !v.is_empty());
            match &*k {
                "status" if v.is_empty() => {}
                "status" => {
                    f.status = Some(Status::parse(&v).ok_or_else(|| {
                        format!("status `{v}`: expected accepted, rejected or duplicate")
                    })?)
                }
                "type" => f.ty = value(),
                "client_id" => f.client_id = value(),
                "source" => f.source = value(),
                "q" if v.len() > MAX_QUERY_TEXT => {
                    return Err(format!("q: at most {MAX_QUERY_TEXT} bytes"));
                }
                "q" => f.q = value(),
                "after" => {
                    f.after = v
                        .parse()
                        .map_err(|_| format!("after `{v}`: expected a sequence number"))?
                }
                "limit" => {
                    let n: usize = v
                        .parse()
                        .map_err(|_| format!("limit `{v}`: expected a number"))?;
                    f.limit = n.min(max);
                }
                _ => {}
            }
        }
        Ok(f)
    }
}

impl service_kit::prom::Collect for Inspector {
    fn collect(&self, out: &mut String) {
        use service_kit::prom::{counter, gauge};
        let s = self.snapshot();
        gauge(
            out,
            "tracking_inspect_entries",
            "Entries held by the event inspector (TRACKING_INSPECT_MAX_EVENTS bounds it).",
            s.held as f64,
        );
        gauge(
            out,
            "tracking_inspect_bytes",
            "Bytes held by the event inspector (TRACKING_INSPECT_MAX_BYTES bounds it).",
            s.held_bytes as f64,
        );
        counter(
            out,
            "tracking_inspect_dropped_total",
            "Events the inspector did not keep because it could not keep up (its budget is TRACKING_INSPECT_MAX_EVENTS a second); since start or the last reset.",
            s.dropped,
        );
    }
}

/// The page (`GET /inspect`): one file, no external resources.
pub const PAGE: &str = include_str!("page.html");

/// The page gzipped, made once.
pub fn page_gzip() -> Option<bytes::Bytes> {
    static GZ: std::sync::OnceLock<Option<bytes::Bytes>> = std::sync::OnceLock::new();
    GZ.get_or_init(|| crate::tracker::gzip(PAGE.as_bytes()))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(i: &Inspector, raw: &str) {
        i.rejected(
            RejectedView {
                time: Timestamp::from_millis(1_000),
                reason: "invalid_type",
                error: "bad type",
                index: Some(0),
                raw: Some(raw),
            },
            &Channel::Events,
            400,
        );
    }

    fn listed(i: &Inspector, query: &str) -> serde_json::Value {
        serde_json::from_str(&i.list(&Filter::parse(query, 1000).unwrap())).unwrap()
    }

    #[test]
    fn bounded_in_entries_and_bytes_newest_first() {
        let mut i = Inspector::new(3, 1 << 20);
        // A budget that lets every entry through.
        i.budget = Budget::new(1_000);
        for n in 0..5 {
            rejected(&i, &format!(r#"{{"type":"t{n}","client_id":"c{n}"}}"#));
        }
        let l = listed(&i, "");
        let seqs: Vec<u64> = l["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [5, 4, 3]);
        assert_eq!(l["latest"], 5);
        assert_eq!(l["events"][0]["type"], "t4");
        assert_eq!(l["events"][0]["client_id"], "c4");
        assert_eq!(l["events"][0]["raw"], r#"{"type":"t4","client_id":"c4"}"#);
        assert_eq!(i.snapshot().rejected, 5);
        assert_eq!(i.snapshot().held, 3);

        let small = Inspector::new(1000, 2_000);
        for _ in 0..50 {
            rejected(&small, &"x".repeat(300));
        }
        let s = small.snapshot();
        assert!(s.held_bytes <= 2_000 && s.held >= 1, "{s:?}");
        // Larger than the whole buffer: dropped, counted.
        rejected(&small, &"x".repeat(3_000));
        assert_eq!(small.snapshot().dropped, 1);
    }

    #[test]
    fn filters_after_and_reset() {
        let i = Inspector::new(100, 1 << 20);
        rejected(&i, r#"{"type":"a","client_id":"v1"}"#);
        rejected(&i, r#"{"type":"b","client_id":"v2","props":{"Needle":1}}"#);
        assert_eq!(listed(&i, "type=a")["events"].as_array().unwrap().len(), 1);
        assert_eq!(listed(&i, "client_id=v2")["events"][0]["type"], "b");
        assert_eq!(listed(&i, "q=needle")["events"][0]["type"], "b");
        assert_eq!(
            listed(&i, "status=accepted")["events"],
            serde_json::json!([])
        );
        assert_eq!(listed(&i, "after=1")["events"][0]["seq"], 2);
        assert_eq!(listed(&i, "limit=1")["events"][0]["seq"], 2);
        assert!(Filter::parse("status=lost", 10).is_err());
        i.reset();
        assert_eq!(i.snapshot().rejected, 0);
        assert_eq!(listed(&i, "")["latest"], 0);
        rejected(&i, "{}");
        // The sequence goes on across a reset.
        assert_eq!(listed(&i, "")["latest"], 3);
    }

    #[test]
    fn the_budget_drops_beyond_its_rate() {
        let i = Inspector::new(10, 1 << 20);
        for _ in 0..100 {
            rejected(&i, "{}");
        }
        let s = i.snapshot();
        assert_eq!(s.rejected, 100);
        assert!(s.dropped >= 80, "{s:?}");
        assert!(s.held == 10 && s.dropped <= 90, "{s:?}");
    }
}
