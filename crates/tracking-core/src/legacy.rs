//! A visitor's state as the legacy system keeps it, and as migration-proxy
//! carries it over HTTP (`GET`/`PUT /v1/sessions/{client_id}`): each part
//! with the moment it ends (`expires_at`, ms since the epoch), because
//! Aerospike stores a record's remaining lifetime, not its last event.
//!
//! Converting to the cloud's [`VisitorState`] (sessions keyed by their last
//! event) needs the TTLs: `last_seen = expires_at - ttl`. Both systems must run
//! with the same TTLs for the two views to agree (see ARCHITECTURE.md).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::Via;
use crate::ids::SessionId;
use crate::session::{SessionRecord, StateParts, Ttls, ViaRecord, VisitorState};
use crate::time::Timestamp;

/// One legacy session: its id (the string the legacy system minted, or one
/// of ours; carried verbatim when it is a [`SessionId`]) and when it ends.
/// `expires_at: null` is a record without an expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacySession {
    pub id: String,
    pub expires_at: Option<u64>,
}

/// The legacy via record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyVia {
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub medium: Option<String>,
    #[serde(default)]
    pub campaign: Option<String>,
    pub expires_at: Option<u64>,
}

/// Everything the legacy system has about one visitor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyVisitor {
    #[serde(default)]
    pub short: Option<LegacySession>,
    #[serde(default)]
    pub long: Option<LegacySession>,
    #[serde(default)]
    pub via: Option<LegacyVia>,
}

impl LegacyVisitor {
    pub fn is_empty(&self) -> bool {
        self.short.is_none() && self.long.is_none() && self.via.is_none()
    }

    /// The legacy view of `state`: each part ends one TTL after its last
    /// event (the via record when it says).
    pub fn from_state(state: &VisitorState, ttls: Ttls) -> Self {
        let session = |r: &Option<SessionRecord>, ttl: Duration| {
            r.as_ref().map(|r| LegacySession {
                id: r.id.to_string(),
                expires_at: Some(r.last_seen.saturating_add(ttl).as_millis()),
            })
        };
        Self {
            short: session(&state.short, ttls.short),
            long: session(&state.long, ttls.long),
            via: state.via.as_ref().map(|v| LegacyVia {
                source: v.via.source.as_deref().map(str::to_owned),
                medium: v.via.medium.as_deref().map(str::to_owned),
                campaign: v.via.campaign.as_deref().map(str::to_owned),
                expires_at: Some(v.expires_at.as_millis()),
            }),
        }
    }

    /// The cloud view at `now`. A part without an expiry counts as touched
    /// `now`. Parts that cannot be read (an id outside the accepted set of
    /// [`SessionId`], a via with no field) are left out and named in the
    /// second value.
    pub fn to_state(&self, ttls: Ttls, now: Timestamp) -> (VisitorState, StateParts) {
        let session = |s: &Option<LegacySession>, ttl: Duration, invalid: &mut bool| {
            let s = s.as_ref()?;
            let Some(id) = SessionId::parse(&s.id) else {
                *invalid = true;
                return None;
            };
            let last_seen = match s.expires_at {
                Some(end) => Timestamp::from_millis(end.saturating_sub(millis(ttl))),
                None => now,
            };
            Some(SessionRecord { id, last_seen })
        };
        let mut invalid = StateParts::default();
        let short = session(&self.short, ttls.short, &mut invalid.short);
        let long = session(&self.long, ttls.long, &mut invalid.long);
        let via = self.via.as_ref().and_then(|v| {
            let via = Via::new(
                v.source.as_deref(),
                v.medium.as_deref(),
                v.campaign.as_deref(),
            );
            invalid.via = via.is_none();
            Some(ViaRecord {
                via: via?,
                expires_at: v
                    .expires_at
                    .map_or(now.saturating_add(ttls.via), Timestamp::from_millis),
            })
        });
        (VisitorState { short, long, via }, invalid)
    }

    /// The first part whose session id is outside the accepted set of
    /// [`SessionId`] (`"short"` or `"long"`), if any: such a body must not
    /// be written anywhere.
    pub fn invalid_id(&self) -> Option<&'static str> {
        [("short", &self.short), ("long", &self.long)]
            .into_iter()
            .find(|(_, s)| {
                s.as_ref()
                    .is_some_and(|s| SessionId::parse(&s.id).is_none())
            })
            .map(|(part, _)| part)
    }

    /// The moment a via record with this expiry was recorded, given the via
    /// TTL (the cloud stores the recording time as the cell's timestamp).
    pub fn via_recorded_at(expires_at: Timestamp, ttls: Ttls) -> Timestamp {
        Timestamp::from_millis(expires_at.as_millis().saturating_sub(millis(ttls.via)))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    const TTLS: Ttls = Ttls {
        short: Duration::from_secs(1800),
        long: Duration::from_secs(90 * 86_400),
        via: Duration::from_secs(30 * 86_400),
    };

    #[test]
    fn round_trips_through_the_legacy_view() {
        let t = Timestamp::from_millis(1_700_000_000_000);
        let state = VisitorState {
            // A legacy id of the old system's own shape, and one of ours.
            short: Some(SessionRecord {
                id: SessionId::parse("AB12cd.34:ef-Legacy").expect("id"),
                last_seen: t,
            }),
            long: Some(SessionRecord {
                id: SessionId::from(Uuid::from_u128(2)),
                last_seen: Timestamp::from_millis(t.as_millis() - 5_000),
            }),
            via: Some(ViaRecord {
                via: Via::new(Some("newsletter"), Some("email"), None).expect("via"),
                expires_at: t.saturating_add(TTLS.via),
            }),
        };
        let legacy = LegacyVisitor::from_state(&state, TTLS);
        assert_eq!(
            legacy.short.as_ref().and_then(|s| s.expires_at),
            Some(t.as_millis() + 1_800_000)
        );
        assert_eq!(
            legacy.short.as_ref().map(|s| s.id.as_str()),
            Some("AB12cd.34:ef-Legacy")
        );
        assert_eq!(legacy.invalid_id(), None);
        let json = serde_json::to_string(&legacy).expect("json");
        let back: LegacyVisitor = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.to_state(TTLS, t), (state, StateParts::default()));
    }

    #[test]
    fn unreadable_parts_are_left_out_and_counted() {
        let now = Timestamp::from_millis(1_000_000);
        let legacy: LegacyVisitor = serde_json::from_str(
            r#"{"short":{"id":"bell\u0007","expires_at":5},"long":null,
                "via":{"expires_at":null}}"#,
        )
        .expect("parse");
        assert_eq!(legacy.invalid_id(), Some("short"));
        let (state, invalid) = legacy.to_state(TTLS, now);
        let short_and_via = StateParts {
            short: true,
            long: false,
            via: true,
        };
        assert_eq!((state, invalid), (VisitorState::default(), short_and_via));
        let long = format!(
            r#"{{"long":{{"id":"{}","expires_at":null}}}}"#,
            "x".repeat(129)
        );
        let legacy: LegacyVisitor = serde_json::from_str(&long).expect("parse");
        assert_eq!(legacy.invalid_id(), Some("long"));
        assert_eq!(legacy.to_state(TTLS, now).1.count(), 1);
        // No expiry: alive, as if touched now.
        let legacy: LegacyVisitor = serde_json::from_str(&format!(
            r#"{{"long":{{"id":"{}","expires_at":null}}}}"#,
            Uuid::from_u128(9)
        ))
        .expect("parse");
        let (state, _) = legacy.to_state(TTLS, now);
        assert_eq!(state.long.map(|l| l.last_seen), Some(now));
    }
}
