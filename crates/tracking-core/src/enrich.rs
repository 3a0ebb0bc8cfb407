//! From a validated event and what the request and the session store tell
//! about it, to the one thing written to sinks: [`EnrichedEvent`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use serde::Serialize;
use serde::ser::SerializeStruct;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::event::{ClientId, Event, Via};
use crate::ids::IdSource;
use crate::segment::SegmentPart;
use crate::session::Sessions;
use crate::time::Timestamp;

/// Version of the enriched-event JSON shape (Pub/Sub attribute `schema_version`).
pub const SCHEMA_VERSION: u32 = 1;

/// A parsed `User-Agent`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UserAgent {
    pub name: Box<str>,
    pub category: Box<str>,
    pub version: Box<str>,
    pub os: Box<str>,
    pub os_version: Box<str>,
    pub vendor: Box<str>,
}

/// Where an address is, from a geo-IP database.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Geo {
    /// ISO 3166-1 alpha-2.
    pub country: Option<Box<str>>,
    /// ISO 3166-2 subdivision code (without the country prefix).
    pub region: Option<Box<str>>,
    /// City name in English.
    pub city: Option<Box<str>>,
}

/// What every event of one request shares.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    pub received_at: Timestamp,
    /// Already anonymised (see [`anonymize_ip`]).
    pub ip: Option<IpAddr>,
    pub ua: Option<Arc<UserAgent>>,
    pub geo: Option<Arc<Geo>>,
}

/// Keeps the network, drops the host: IPv4 to its /24, IPv6 to its /48. An
/// IPv4-mapped IPv6 address is treated as the IPv4 address it carries.
pub fn anonymize_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(anonymize_v4(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(anonymize_v4(v4)),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
            }
        },
    }
}

fn anonymize_v4(ip: Ipv4Addr) -> Ipv4Addr {
    let [a, b, c, _] = ip.octets();
    Ipv4Addr::new(a, b, c, 0)
}

/// The session part of an enriched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionOutcome {
    Resolved(Sessions),
    /// The session store could not answer in time; the event carries no ids.
    Unavailable,
}

impl SessionOutcome {
    pub fn status(&self) -> &'static str {
        match self {
            Self::Resolved(_) => "ok",
            Self::Unavailable => "unavailable",
        }
    }
}

impl Serialize for SessionOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Session", 5)?;
        st.serialize_field("status", self.status())?;
        match self {
            Self::Resolved(x) => {
                st.serialize_field("short_id", &x.short_id)?;
                st.serialize_field("long_id", &x.long_id)?;
                st.serialize_field("short_new", &x.short_new)?;
                st.serialize_field("long_new", &x.long_new)?;
            }
            Self::Unavailable => {
                st.serialize_field("short_id", &None::<&str>)?;
                st.serialize_field("long_id", &None::<&str>)?;
                st.serialize_field("short_new", &None::<bool>)?;
                st.serialize_field("long_new", &None::<bool>)?;
            }
        }
        st.end()
    }
}

#[derive(Debug, Serialize)]
struct ViaOut {
    #[serde(flatten)]
    via: Via,
    expires_at: Timestamp,
}

#[derive(Debug)]
enum EventId {
    Client(Box<str>),
    Assigned(Uuid),
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Client(id) => s.serialize_str(id),
            Self::Assigned(id) => id.serialize(s),
        }
    }
}

/// The one thing serialized to sinks (NDJSON line, Pub/Sub message data).
/// Serialized by hand (below): an event from the Segment API adds its
/// Segment fields after the common ones.
#[derive(Debug)]
pub struct EnrichedEvent {
    event_id: EventId,
    ty: Box<str>,
    client_id: ClientId,
    received_at: Timestamp,
    client_ts: Option<u64>,
    url: Option<Box<str>>,
    referrer: Option<Box<str>>,
    props: Option<Box<RawValue>>,
    session: SessionOutcome,
    /// Its client-given id could not be checked against the visitor's
    /// recent ids (the store did not answer): it may be a retry.
    dedup_unchecked: bool,
    via: Option<ViaOut>,
    ip: Option<IpAddr>,
    ua: Option<Arc<UserAgent>>,
    geo: Option<Arc<Geo>>,
    schema_version: u32,
    segment: Option<Box<SegmentPart>>,
}

impl Serialize for EnrichedEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The length is a hint for most formats, but serde_json writes `{}`
        // at once for 0: count every field that can be written.
        let mut st = s.serialize_struct("EnrichedEvent", 30)?;
        st.serialize_field("event_id", &self.event_id)?;
        st.serialize_field("type", &self.ty)?;
        st.serialize_field("client_id", &self.client_id)?;
        st.serialize_field("received_at", &self.received_at)?;
        if let Some(ts) = self.client_ts {
            st.serialize_field("client_ts", &ts)?;
        }
        st.serialize_field("url", &self.url)?;
        st.serialize_field("referrer", &self.referrer)?;
        st.serialize_field("props", &self.props)?;
        st.serialize_field("session", &self.session)?;
        if self.dedup_unchecked {
            st.serialize_field("dedup", "unchecked")?;
        }
        st.serialize_field("via", &self.via)?;
        st.serialize_field("ip", &self.ip)?;
        st.serialize_field("ua", &self.ua)?;
        if let Some(geo) = &self.geo {
            st.serialize_field("geo", geo)?;
        }
        st.serialize_field("schema_version", &self.schema_version)?;
        if let Some(p) = &self.segment {
            st.serialize_field("call", p.call.as_str())?;
            st.serialize_field("event", &p.event)?;
            // The fields of one call type only, when it has them.
            for (key, value) in [
                ("category", &p.category),
                ("group_id", &p.group_id),
                ("previous_id", &p.previous_id),
            ] {
                if let Some(v) = value {
                    st.serialize_field(key, v)?;
                }
            }
            st.serialize_field("user_id", &p.user_id)?;
            st.serialize_field("anonymous_id", &p.anonymous_id)?;
            st.serialize_field("properties", &p.properties)?;
            st.serialize_field("traits", &p.traits)?;
            st.serialize_field("context", &p.context)?;
            st.serialize_field("integrations", &p.integrations)?;
            st.serialize_field("source", &*p.source)?;
            st.serialize_field("sent_at", &p.sent_at)?;
            st.serialize_field("original_timestamp", &p.original_timestamp)?;
            st.serialize_field("timestamp", &p.corrected_timestamp(self.received_at))?;
        }
        st.end()
    }
}

impl EnrichedEvent {
    pub fn event_type(&self) -> &str {
        &self.ty
    }

    pub fn event_id(&self) -> String {
        match &self.event_id {
            EventId::Client(id) => id.to_string(),
            EventId::Assigned(id) => id.to_string(),
        }
    }

    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    /// When the API accepted the event.
    pub fn received_at(&self) -> Timestamp {
        self.received_at
    }

    pub fn session(&self) -> &SessionOutcome {
        &self.session
    }

    /// The event's id when the client gave it (not one the service
    /// assigned).
    pub fn client_event_id(&self) -> Option<&str> {
        match &self.event_id {
            EventId::Client(id) => Some(id),
            EventId::Assigned(_) => None,
        }
    }

    /// Whether it was output without being checked for a retry.
    pub fn dedup_unchecked(&self) -> bool {
        self.dedup_unchecked
    }

    /// Marks the event as not checked for being a retry (`"dedup":
    /// "unchecked"` in the output): deduplication is on, it has a
    /// client-given id, and the store could not be asked.
    pub fn mark_dedup_unchecked(&mut self) {
        self.dedup_unchecked = true;
    }
}

/// What enrichment adds to an event's own fields, about: keys, ids, times,
/// sessions, the visitor's via record, address, user agent and geo.
pub const ENRICHMENT_BYTES: usize = 1024;

/// About the size of `event` once enriched and serialized: its own fields
/// plus [`ENRICHMENT_BYTES`]. What a sink reserves before the real size is
/// known.
pub fn enriched_size_hint(event: &Event) -> usize {
    let len = |s: Option<&str>| s.map_or(0, str::len);
    let via = event.via().map_or(0, |v| {
        len(v.source.as_deref()) + len(v.medium.as_deref()) + len(v.campaign.as_deref())
    });
    ENRICHMENT_BYTES
        + event.event_type().len()
        + event.client_id().as_str().len()
        + len(event.event_id())
        + len(event.url())
        + len(event.referrer())
        + event.props().map_or(0, |p| p.get().len())
        + via
        + event.segment().map_or(0, SegmentPart::size_hint)
}

/// Builds the enriched event. An event without `event_id` gets a UUIDv7
/// minted at `received_at`.
pub fn enrich(
    event: Event,
    session: SessionOutcome,
    ctx: &RequestContext,
    ids: &dyn IdSource,
) -> EnrichedEvent {
    let via = match &session {
        SessionOutcome::Resolved(s) => s.via.as_ref().map(|r| ViaOut {
            via: r.via.clone(),
            expires_at: r.expires_at,
        }),
        SessionOutcome::Unavailable => None,
    };
    let Event {
        ty,
        client_id,
        event_id,
        ts,
        url,
        referrer,
        via: _,
        props,
        segment,
    } = event;
    let event_id = match event_id {
        Some(id) => EventId::Client(id),
        None => EventId::Assigned(ids.new_id(ctx.received_at)),
    };
    EnrichedEvent {
        event_id,
        ty,
        client_id,
        received_at: ctx.received_at,
        client_ts: ts,
        url,
        referrer,
        props,
        session,
        dedup_unchecked: false,
        via,
        ip: ctx.ip,
        ua: ctx.ua.clone(),
        geo: ctx.geo.clone(),
        schema_version: SCHEMA_VERSION,
        segment,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::RawEvent;
    use crate::ids::SequentialIds;
    use crate::session::ViaRecord;

    fn check_ip(input: &str, expected: &str) {
        let ip: IpAddr = input.parse().expect("test ip");
        assert_eq!(anonymize_ip(ip).to_string(), expected, "{input}");
    }

    #[test]
    fn ip_anonymisation() {
        for (input, expected) in [
            ("203.0.113.77", "203.0.113.0"),
            ("10.1.2.255", "10.1.2.0"),
            ("0.0.0.0", "0.0.0.0"),
            ("2001:db8:abcd:12:34::1", "2001:db8:abcd::"),
            ("2001:db8:abcd:ffff:ffff:ffff:ffff:ffff", "2001:db8:abcd::"),
            ("::ffff:198.51.100.9", "198.51.100.0"),
            ("::1", "::"),
        ] {
            check_ip(input, expected);
        }
    }

    fn event(json: &str) -> Event {
        let raw: RawEvent<'_> = serde_json::from_str(json).expect("json");
        Event::try_from(raw).expect("valid")
    }

    #[test]
    fn serialized_shape() {
        let ids = SequentialIds::default();
        let ctx = RequestContext {
            received_at: Timestamp::from_millis(1_700_000_000_123),
            ip: Some(anonymize_ip("203.0.113.77".parse().expect("ip"))),
            ua: Some(Arc::new(UserAgent {
                name: "Chrome".into(),
                ..UserAgent::default()
            })),
            geo: None,
        };
        let sessions = Sessions {
            short_id: ids.new_id(ctx.received_at).into(),
            long_id: ids.new_id(ctx.received_at).into(),
            short_new: true,
            long_new: false,
            via: Some(ViaRecord {
                via: Via::new(Some("ad"), None, Some("c")).expect("via"),
                expires_at: Timestamp::from_millis(1_700_000_060_000),
            }),
        };
        let e = enrich(
            event(r#"{"type":"page_view","client_id":"v1","ts":5,"props":{"a": 1}}"#),
            SessionOutcome::Resolved(sessions),
            &ctx,
            &ids,
        );
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&e).expect("serializes")).expect("JSON");
        assert_eq!(json["type"], "page_view");
        assert_eq!(json["client_id"], "v1");
        assert_eq!(json["received_at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["client_ts"], 5);
        assert_eq!(json["props"], serde_json::json!({"a": 1}));
        assert_eq!(json["url"], serde_json::Value::Null);
        assert_eq!(json["session"]["status"], "ok");
        assert_eq!(json["session"]["short_new"], true);
        assert_eq!(json["session"]["long_new"], false);
        assert_eq!(
            json["via"],
            serde_json::json!({"source": "ad", "medium": null, "campaign": "c", "expires_at": "2023-11-14T22:14:20.000Z"})
        );
        assert_eq!(json["ip"], "203.0.113.0");
        assert_eq!(json["ua"]["name"], "Chrome");
        assert!(json.get("geo").is_none());
        assert_eq!(json["schema_version"], 1);
        // Assigned ids are UUIDv7 minted at received_at.
        let id: Uuid = json["event_id"]
            .as_str()
            .expect("id")
            .parse()
            .expect("uuid");
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(e.event_id(), id.to_string());

        let e = enrich(
            event(r#"{"type":"t","client_id":"v1","event_id":"mine"}"#),
            SessionOutcome::Unavailable,
            &RequestContext::default(),
            &ids,
        );
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&e).expect("serializes")).expect("JSON");
        assert_eq!(json["event_id"], "mine");
        assert!(json.get("client_ts").is_none());
        assert_eq!(
            json["session"],
            serde_json::json!({"status": "unavailable", "short_id": null, "long_id": null, "short_new": null, "long_new": null})
        );
        assert_eq!(json["via"], serde_json::Value::Null);
    }
}
