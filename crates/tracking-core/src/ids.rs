//! Where new identifiers come from: UUIDv7 (time-ordered, random tail), with
//! the time taken from the injected clock, not from the id generator; and
//! what a session id is ([`SessionId`]: an opaque string).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::RngCore;
use uuid::Uuid;

use crate::time::Timestamp;

pub trait IdSource: Send + Sync + fmt::Debug {
    /// A new, unique id minted at `now`.
    fn new_id(&self, now: Timestamp) -> Uuid;
}

/// UUIDv7 with 74 random bits from the thread-local CSPRNG.
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn new_id(&self, now: Timestamp) -> Uuid {
        let mut tail = [0u8; 10];
        rand::rng().fill_bytes(&mut tail);
        uuid::Builder::from_unix_timestamp_millis(now.as_millis(), &tail).into_uuid()
    }
}

/// Predictable UUIDv7s (`…-000000000001`, `…-000000000002`, …); for tests.
#[derive(Debug, Default)]
pub struct SequentialIds(AtomicU64);

impl IdSource for SequentialIds {
    fn new_id(&self, now: Timestamp) -> Uuid {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        let mut tail = [0u8; 10];
        tail[2..].copy_from_slice(&n.to_be_bytes());
        uuid::Builder::from_unix_timestamp_millis(now.as_millis(), &tail).into_uuid()
    }
}

/// Longest session id carried, in bytes.
pub const MAX_SESSION_ID_BYTES: usize = 128;

/// A session id: an opaque string. New ids are UUIDv7 (their canonical,
/// lowercase, hyphenated text); ids that came from the legacy store are
/// carried verbatim, whatever their shape, if they are in the accepted set:
/// 1 to [`MAX_SESSION_ID_BYTES`] bytes of printable ASCII (0x20–0x7E).
/// Anything else (control characters, non-ASCII, longer) cannot be carried
/// safely through every store and output, and is refused by [`parse`].
///
/// Cheap to clone and compare on the hot path: a UUID in canonical form is
/// held as its 16 bytes; any other id shares one allocation.
///
/// [`parse`]: SessionId::parse
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    /// An id whose text is exactly this UUID's canonical lowercase form.
    Uuid(Uuid),
    /// Any other accepted id, verbatim.
    Text(std::sync::Arc<str>),
}

impl SessionId {
    /// The id `text`, if it is in the accepted set. The canonical form of a
    /// UUID becomes the same id as [`SessionId::from`] that UUID; any other
    /// text (an uppercase UUID included) stays exactly as given.
    pub fn parse(text: &str) -> Option<Self> {
        if !Self::acceptable(text.as_bytes()) {
            return None;
        }
        if text.len() == 36
            && let Ok(uuid) = Uuid::try_parse(text)
            && uuid.hyphenated().encode_lower(&mut Uuid::encode_buffer()) == text
        {
            return Some(Self(Repr::Uuid(uuid)));
        }
        Some(Self(Repr::Text(text.into())))
    }

    /// Whether `bytes` are an id in the accepted set.
    pub fn acceptable(bytes: &[u8]) -> bool {
        (1..=MAX_SESSION_ID_BYTES).contains(&bytes.len())
            && bytes.iter().all(|b| (0x20..=0x7e).contains(b))
    }

    /// The UUID this id is the canonical text of, if it is one.
    pub fn as_uuid(&self) -> Option<Uuid> {
        match &self.0 {
            Repr::Uuid(u) => Some(*u),
            Repr::Text(_) => None,
        }
    }

    /// Calls `f` with the id's text (written on the stack when the id is
    /// held as a UUID).
    pub fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match &self.0 {
            Repr::Uuid(u) => f(u
                .hyphenated()
                .encode_lower(&mut [0; uuid::fmt::Hyphenated::LENGTH])),
            Repr::Text(t) => f(t),
        }
    }
}

impl From<Uuid> for SessionId {
    fn from(uuid: Uuid) -> Self {
        Self(Repr::Uuid(uuid))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_str(|t| f.write_str(t))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_str(|t| write!(f, "SessionId({t:?})"))
    }
}

impl serde::Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.with_str(|t| s.serialize_str(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` → `Some((the id's text, whether it is held as a UUID))`, or
    /// `None` when refused.
    fn check(text: &str, expected: Option<(&str, bool)>) {
        let got = SessionId::parse(text).map(|id| (id.to_string(), id.as_uuid().is_some()));
        let expected = expected.map(|(t, u)| (t.to_owned(), u));
        assert_eq!(got, expected, "{text:?}");
    }

    #[test]
    fn the_accepted_set() {
        let canonical = "0192f5a4-7b3c-7d2e-9f10-1a2b3c4d5e6f";
        check(canonical, Some((canonical, true)));
        // Everything else is verbatim text: other UUID spellings included.
        let upper = canonical.to_uppercase();
        check(&upper, Some((&upper, false)));
        let simple = canonical.replace('-', "");
        check(&simple, Some((&simple, false)));
        for legacy in [
            "a1b2c3d4e5f6",
            "4f9c2a",
            "0123456789abcdef",
            "dGhpcyBpcyBiYXNlNjR1cmw_-w",
            "sess.2019-04-01.17:03:12.000042",
            "node-3:1554131000:42",
            "with space",
            "~!\"#$%&'()*+,/;<=>?@[\\]^`{|}",
            "x",
        ] {
            check(legacy, Some((legacy, false)));
        }
        let longest = "z".repeat(MAX_SESSION_ID_BYTES);
        check(&longest, Some((&longest, false)));
        // Refused: empty, too long, control characters, non-ASCII.
        check("", None);
        check(&"z".repeat(MAX_SESSION_ID_BYTES + 1), None);
        check("tab\there", None);
        check("line\nbreak", None);
        check("nul\0", None);
        check("del\x7f", None);
        check("café", None);
    }

    #[test]
    fn uuids_and_their_text_are_one_id() {
        let uuid = RandomIds.new_id(Timestamp::from_millis(1_700_000_000_000));
        let id = SessionId::from(uuid);
        assert_eq!(SessionId::parse(&uuid.to_string()), Some(id.clone()));
        assert_eq!(
            serde_json::to_string(&id).expect("json"),
            format!("\"{uuid}\"")
        );
        assert_ne!(SessionId::parse(&uuid.to_string().to_uppercase()), Some(id));
    }
}
