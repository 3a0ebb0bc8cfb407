//! The tracking domain: what an event is, how a visitor's sessions and via
//! ("経由") record evolve, and what an enriched event looks like.
//!
//! This crate decides; it performs no IO. It knows no tokio runtime, no HTTP
//! library, no Google, Aerospike or OpenTelemetry type. Backends plug in through
//! the capability traits in [`ports`] (`SessionStore`, `EventSink`,
//! `DeadLetterSink`), time through [`time::Clock`], randomness through
//! [`ids::IdSource`], so every rule here is tested without sleeping or sockets.

pub mod budget;
pub mod enrich;
pub mod envelope;
pub mod event;
pub mod fsync;
pub mod ids;
pub mod legacy;
pub mod ports;
pub mod segment;
pub mod session;
pub mod time;

pub use budget::{Admission, Budget};
pub use enrich::{
    ENRICHMENT_BYTES, EnrichedEvent, Geo, RequestContext, SCHEMA_VERSION, SessionOutcome,
    UserAgent, anonymize_ip, enrich, enriched_size_hint,
};
pub use envelope::{BodyError, Item, parse_body};
pub use event::{ClientId, Event, RawEvent, RejectReason, Via};
pub use fsync::{FSYNC_BUCKETS, FsyncLatency, FsyncStats};
pub use ids::{IdSource, MAX_SESSION_ID_BYTES, RandomIds, SequentialIds, SessionId};
pub use legacy::{LegacySession, LegacyVia, LegacyVisitor};
pub use ports::{
    AckMode, BoxFuture, CallContext, DeadLetter, DeadLetterSink, EventSink, IdCheck, LegacyLookup,
    LegacySessions, Receipt, SessionStore, SinkError, StoreError, Touched,
};
pub use segment::{
    Call, CallRules, RawCall, SegmentBody, SegmentItem, SegmentLimits, SegmentPart, Source,
    parse_segment_body,
};
pub use session::{
    SessionPolicy, SessionRecord, Sessions, StateParts, Ttls, ViaRecord, VisitorState,
};
pub use time::{Clock, ManualClock, OncePerSecond, SystemClock, Timestamp, parse_duration};
