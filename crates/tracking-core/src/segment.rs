//! The Segment HTTP Tracking API as a second way in: its calls (`track`,
//! `page`, `screen`, `identify`, `group`, `alias`), one at a time or in a
//! `{"batch": [...]}`, become [`Event`]s of the same pipeline as
//! `/v1/events`, carrying their Segment fields in a [`SegmentPart`].
//!
//! The mapping, in short: `messageId` is the event id, verbatim;
//! `anonymousId` (else `userId`) keys the visitor's sessions;
//! `context.campaign` is the via; `context.page.url` / `.referrer` are the
//! url and referrer; the call's own objects (`properties`, `traits`,
//! `context`, `integrations`) are kept as sent, with a batch's `context`
//! and `integrations` merged under each call's (the call's keys win); the
//! corrected time is `receivedAt − (sentAt − originalTimestamp)`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::envelope::BodyError;
use crate::event::{
    ClientId, Event, MAX_URL_BYTES, MAX_VIA_FIELD_BYTES, RejectReason, Via, json_str, minified,
    truncate,
};
use crate::time::Timestamp;

/// Longest `userId`, `anonymousId`, `groupId` or `previousId`, in bytes.
pub const MAX_SEGMENT_ID_BYTES: usize = 512;
/// Longest `event`, `name` or `category`, in bytes.
pub const MAX_EVENT_NAME_BYTES: usize = 1024;
/// Longest `messageId`, in bytes (printable ASCII).
pub const MAX_MESSAGE_ID_BYTES: usize = 128;

/// A Segment call type; the enriched event's `type` and `call`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    Track,
    Page,
    Screen,
    Identify,
    Group,
    Alias,
}

impl Call {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Track => "track",
            Self::Page => "page",
            Self::Screen => "screen",
            Self::Identify => "identify",
            Self::Group => "group",
            Self::Alias => "alias",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "track" => Self::Track,
            "page" => Self::Page,
            "screen" => Self::Screen,
            "identify" => Self::Identify,
            "group" => Self::Group,
            "alias" => Self::Alias,
            _ => return None,
        })
    }
}

/// Who sent a call: the source its write key names, and whether the key is
/// a server-side one (only those may set `context.ip`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub name: Arc<str>,
    pub server: bool,
}

/// The Segment fields of an event that came through the Segment API.
#[derive(Clone, Debug)]
pub struct SegmentPart {
    pub(crate) call: Call,
    pub(crate) event: Option<Box<str>>,
    pub(crate) category: Option<Box<str>>,
    pub(crate) user_id: Option<Box<str>>,
    pub(crate) anonymous_id: Option<Box<str>>,
    pub(crate) group_id: Option<Box<str>>,
    pub(crate) previous_id: Option<Box<str>>,
    pub(crate) properties: Option<Box<RawValue>>,
    pub(crate) traits: Option<Box<RawValue>>,
    pub(crate) context: Option<Box<RawValue>>,
    pub(crate) integrations: Option<Box<RawValue>>,
    pub(crate) source: Arc<str>,
    pub(crate) sent_at: Option<Timestamp>,
    pub(crate) original_timestamp: Option<Timestamp>,
    /// `context.userAgent`, for enrichment.
    pub(crate) user_agent: Option<Box<str>>,
    /// `context.ip`, kept only from a server-side key, for enrichment.
    pub(crate) ip: Option<IpAddr>,
}

impl SegmentPart {
    pub fn call(&self) -> Call {
        self.call
    }

    /// `context.userAgent`, when the call carried one.
    pub fn user_agent(&self) -> Option<&str> {
        self.user_agent.as_deref()
    }

    /// `context.ip`, when a server-side key set it.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }

    /// The event's time with the client's clock skew removed:
    /// `received_at − (sent_at − original_timestamp)`; the original time
    /// when the call was not stamped when sent; `received_at` when it has
    /// no time at all.
    pub fn corrected_timestamp(&self, received_at: Timestamp) -> Timestamp {
        match (self.original_timestamp, self.sent_at) {
            (Some(original), Some(sent)) => {
                let t = i128::from(received_at.as_millis()) - i128::from(sent.as_millis())
                    + i128::from(original.as_millis());
                let latest = i128::from(Timestamp::LATEST.as_millis());
                Timestamp::from_millis(u64::try_from(t.clamp(0, latest)).unwrap_or(0))
            }
            (Some(original), None) => original,
            (None, _) => received_at,
        }
    }

    /// Bytes of text this part adds to an enriched event, about.
    pub(crate) fn size_hint(&self) -> usize {
        let len = |s: &Option<Box<str>>| s.as_deref().map_or(0, str::len);
        let raw = |r: &Option<Box<RawValue>>| r.as_deref().map_or(0, |r| r.get().len());
        len(&self.event)
            + len(&self.category)
            + len(&self.user_id)
            + len(&self.anonymous_id)
            + len(&self.group_id)
            + len(&self.previous_id)
            + raw(&self.properties)
            + raw(&self.traits)
            + raw(&self.context)
            + raw(&self.integrations)
            + self.source.len()
    }
}

/// A Segment call as sent: every field optional and unchecked; `null` means
/// absent; unknown fields are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct RawCall<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<&'a RawValue>,
    #[serde(rename = "messageId", borrow, default)]
    message_id: Option<&'a RawValue>,
    #[serde(rename = "anonymousId", borrow, default)]
    anonymous_id: Option<&'a RawValue>,
    #[serde(rename = "userId", borrow, default)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    category: Option<&'a RawValue>,
    #[serde(rename = "groupId", borrow, default)]
    group_id: Option<&'a RawValue>,
    #[serde(rename = "previousId", borrow, default)]
    previous_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    properties: Option<&'a RawValue>,
    #[serde(borrow, default)]
    traits: Option<&'a RawValue>,
    #[serde(borrow, default)]
    context: Option<&'a RawValue>,
    #[serde(borrow, default)]
    integrations: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
    #[serde(rename = "originalTimestamp", borrow, default)]
    original_timestamp: Option<&'a RawValue>,
    #[serde(rename = "sentAt", borrow, default)]
    sent_at: Option<&'a RawValue>,
    #[serde(rename = "writeKey", borrow, default)]
    write_key: Option<&'a RawValue>,
}

/// A batch body: its calls, and what it gives them all.
#[derive(Debug, Default, Deserialize)]
struct RawBatch<'a> {
    #[serde(borrow, default)]
    batch: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    context: Option<&'a RawValue>,
    #[serde(borrow, default)]
    integrations: Option<&'a RawValue>,
    #[serde(rename = "sentAt", borrow, default)]
    sent_at: Option<&'a RawValue>,
    #[serde(rename = "writeKey", borrow, default)]
    write_key: Option<&'a RawValue>,
}

/// The parts of `context` the pipeline reads; the rest is carried as sent.
#[derive(Debug, Default, Deserialize)]
struct RawContext<'a> {
    #[serde(borrow, default)]
    campaign: Option<&'a RawValue>,
    #[serde(rename = "userAgent", borrow, default)]
    user_agent: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ip: Option<&'a RawValue>,
    #[serde(borrow, default)]
    page: Option<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
struct RawCampaign<'a> {
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    source: Option<&'a RawValue>,
    #[serde(borrow, default)]
    medium: Option<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
struct RawPage<'a> {
    #[serde(borrow, default)]
    url: Option<&'a RawValue>,
    #[serde(borrow, default)]
    referrer: Option<&'a RawValue>,
}

/// One call of a body, parsed but not yet validated.
#[derive(Debug)]
pub struct SegmentItem<'a> {
    /// Position in the batch (0 for a single call).
    pub index: usize,
    /// The call's JSON text as sent, for dead letters.
    pub raw: &'a str,
    pub call: Result<RawCall<'a>, RejectReason>,
}

/// What a body's envelope gives every call of it.
#[derive(Debug, Default)]
struct Envelope<'a> {
    /// Its `sentAt`, read once for all its calls.
    sent_at: Option<Result<Timestamp, RejectReason>>,
    context: Option<&'a RawValue>,
    integrations: Option<&'a RawValue>,
}

/// A Segment body split into its calls, each borrowing the body.
#[derive(Debug)]
pub struct SegmentBody<'a> {
    pub items: Vec<SegmentItem<'a>>,
    /// The write key the body names: `writeKey` of the envelope, else of
    /// its first call that has one.
    pub write_key: Option<Cow<'a, str>>,
    /// How its calls are validated.
    pub rules: CallRules<'a>,
}

/// What validating a body's calls needs besides each call: the call type
/// its route implies (`/v1/track`, `/v1/t`, …; `None` for the batch routes,
/// whose calls name their own) and what the envelope gives every call.
#[derive(Debug)]
pub struct CallRules<'a> {
    route_call: Option<Call>,
    envelope: Envelope<'a>,
}

/// The bounds of a Segment body.
#[derive(Debug, Clone, Copy)]
pub struct SegmentLimits {
    /// Most calls in one batch.
    pub max_calls: usize,
    /// Largest call, in bytes of JSON text, with the batch's `context` and
    /// `integrations` counted in.
    pub max_call_bytes: usize,
    /// Most bytes of calls a batch may hold once its `context` and
    /// `integrations` are counted in each call.
    pub max_expanded_bytes: usize,
}

/// Splits a Segment body into its calls, in order: one call object for
/// the single-call routes (`route_call` given), `{"batch": [...]}` for the
/// batch routes.
pub fn parse_segment_body(
    body: &[u8],
    route_call: Option<Call>,
    limits: SegmentLimits,
) -> Result<SegmentBody<'_>, BodyError> {
    let text = std::str::from_utf8(body).map_err(|_| BodyError::NotUtf8)?;
    let malformed = |m: String| BodyError::NotACall(m);
    if !text.trim_start().starts_with('{') {
        return Err(malformed("expected a JSON object".into()));
    }
    if let Some(call) = route_call {
        let top: RawCall<'_> = serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
        // A single call's own `sentAt` is read with its other times.
        return Ok(SegmentBody {
            write_key: top.write_key.and_then(json_str),
            items: vec![SegmentItem {
                index: 0,
                raw: text.trim(),
                call: Ok(top),
            }],
            rules: CallRules {
                route_call: Some(call),
                envelope: Envelope::default(),
            },
        });
    }
    // The batch's calls are split in the same pass as its envelope.
    let top: RawBatch<'_> = serde_json::from_str(text)
        .map_err(|e| malformed(format!("{e} (`batch` must be an array of calls)")))?;
    let Some(calls) = top.batch else {
        return Err(malformed("`batch` is required".into()));
    };
    if calls.is_empty() {
        return Err(BodyError::NoEvents);
    }
    if calls.len() > limits.max_calls {
        return Err(BodyError::TooManyEvents {
            limit: limits.max_calls,
            got: calls.len(),
        });
    }
    let context = top.context.filter(|c| c.get().starts_with('{'));
    let integrations = top.integrations.filter(|c| c.get().starts_with('{'));
    // The batch's context and integrations go into every call: they count
    // toward each call's size, and toward the batch's once per call, so a
    // small body cannot make a large output.
    let shared = context.map_or(0, |c| c.get().len()) + integrations.map_or(0, |c| c.get().len());
    let expanded = calls.iter().map(|c| c.get().len() + shared).sum::<usize>();
    if expanded > limits.max_expanded_bytes {
        return Err(BodyError::ExpandsTooMuch {
            limit: limits.max_expanded_bytes,
            got: expanded,
        });
    }
    let items: Vec<SegmentItem<'_>> = calls
        .into_iter()
        .enumerate()
        .map(|(index, raw)| SegmentItem {
            index,
            raw: raw.get(),
            call: if raw.get().len() + shared > limits.max_call_bytes {
                Err(RejectReason::CallTooLarge)
            } else if raw.get().starts_with('{') {
                serde_json::from_str(raw.get()).map_err(|_| RejectReason::NotAnObject)
            } else {
                Err(RejectReason::NotAnObject)
            },
        })
        .collect();
    // A batch without a key of its own: the first call that names one.
    let write_key = top.write_key.and_then(json_str).or_else(|| {
        items
            .iter()
            .find_map(|i| i.call.as_ref().ok()?.write_key.and_then(json_str))
    });
    Ok(SegmentBody {
        items,
        write_key,
        rules: CallRules {
            route_call: None,
            envelope: Envelope {
                sent_at: top.sent_at.map(parse_time),
                context,
                integrations,
            },
        },
    })
}

impl<'a> CallRules<'a> {
    /// Validates one call into an event from `source`.
    pub fn validate(&self, call: RawCall<'a>, source: &Source) -> Result<Event, RejectReason> {
        let ty = match self.route_call {
            Some(c) => c,
            None => match call.ty {
                None => return Err(RejectReason::MissingType),
                Some(t) => json_str(t)
                    .and_then(|t| Call::parse(&t))
                    .ok_or(RejectReason::InvalidCall)?,
            },
        };
        let id = |raw: Option<&RawValue>, reason| -> Result<Option<Box<str>>, RejectReason> {
            raw.map_or(Ok(None), |r| segment_id(r).ok_or(reason))
        };
        let user_id = id(call.user_id, RejectReason::InvalidUserId)?;
        let anonymous_id = id(call.anonymous_id, RejectReason::InvalidUserId)?;
        let visitor = anonymous_id
            .as_deref()
            .or(user_id.as_deref())
            .ok_or(RejectReason::MissingUserId)?;
        let client_id = ClientId::from_foreign(visitor);
        let event_id = match call.message_id {
            None => None,
            Some(raw) => match json_str(raw) {
                Some(s)
                    if (1..=MAX_MESSAGE_ID_BYTES).contains(&s.len())
                        && s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) =>
                {
                    Some(Box::from(s))
                }
                _ => return Err(RejectReason::InvalidMessageId),
            },
        };
        let name = |raw: Option<&RawValue>| -> Result<Option<Box<str>>, RejectReason> {
            match raw {
                None => Ok(None),
                Some(r) => match json_str(r) {
                    Some(s) if s.len() <= MAX_EVENT_NAME_BYTES => Ok(Some(s.into())),
                    _ => Err(RejectReason::InvalidEventName),
                },
            }
        };
        let event = match ty {
            Call::Track => Some(
                name(call.event)?
                    .filter(|e| !e.is_empty())
                    .ok_or(RejectReason::MissingEvent)?,
            ),
            Call::Page | Call::Screen => name(call.name)?,
            _ => None,
        };
        let category = name(call.category)?;
        let group_id = id(call.group_id, RejectReason::MissingGroupId)?;
        if ty == Call::Group && group_id.is_none() {
            return Err(RejectReason::MissingGroupId);
        }
        let previous_id = id(call.previous_id, RejectReason::MissingPreviousId)?;
        if ty == Call::Alias && previous_id.is_none() {
            return Err(RejectReason::MissingPreviousId);
        }
        fn object(
            raw: Option<&RawValue>,
            reason: RejectReason,
        ) -> Result<Option<&RawValue>, RejectReason> {
            match raw {
                Some(r) if !r.get().starts_with('{') => Err(reason),
                r => Ok(r),
            }
        }
        let properties = object(call.properties, RejectReason::InvalidProperties)?;
        let traits = object(call.traits, RejectReason::InvalidTraits)?;
        let context = object(call.context, RejectReason::InvalidContext)?;
        let integrations = object(call.integrations, RejectReason::InvalidIntegrations)?;
        let original_timestamp = time(call.original_timestamp.or(call.timestamp))?;
        let sent_at = match (call.sent_at, self.envelope.sent_at) {
            (Some(own), _) => time(Some(own))?,
            (None, Some(batch)) => Some(batch?),
            (None, None) => None,
        };

        // Read from the call's context as merged with its batch's.
        let context = merged(context, self.envelope.context);
        let ctx: RawContext<'_> = context
            .as_deref()
            .and_then(|c| serde_json::from_str(c.get()).ok())
            .unwrap_or_default();
        let page: RawPage<'_> = ctx
            .page
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .unwrap_or_default();
        let url_field = |raw: Option<&RawValue>| {
            raw.and_then(json_str)
                .filter(|s| s.len() <= MAX_URL_BYTES)
                .map(Box::<str>::from)
        };
        let url = url_field(page.url);
        let referrer = url_field(page.referrer);
        let via = ctx
            .campaign
            .and_then(campaign_via)
            .or_else(|| url.as_deref().and_then(Via::from_url));
        let user_agent = ctx
            .user_agent
            .and_then(json_str)
            .filter(|s| s.len() <= MAX_URL_BYTES)
            .map(Box::from);
        let ip = if source.server {
            ctx.ip
                .and_then(json_str)
                .and_then(|s| s.trim().parse::<IpAddr>().ok())
        } else {
            None
        };

        let part = SegmentPart {
            call: ty,
            event,
            category,
            user_id,
            anonymous_id,
            group_id,
            previous_id,
            properties: properties.map(minified),
            traits: traits.map(minified),
            context,
            integrations: merged(integrations, self.envelope.integrations),
            source: Arc::clone(&source.name),
            sent_at,
            original_timestamp,
            user_agent,
            ip,
        };
        Ok(Event {
            ty: ty.as_str().into(),
            client_id,
            event_id,
            ts: None,
            url,
            referrer,
            via,
            props: None,
            segment: Some(Box::new(part)),
        })
    }
}

/// An ISO 8601 date-time string.
fn parse_time(raw: &RawValue) -> Result<Timestamp, RejectReason> {
    json_str(raw)
        .and_then(|s| Timestamp::parse_rfc3339(&s))
        .ok_or(RejectReason::InvalidTimestamp)
}

/// An ISO 8601 date-time string, if there is one.
fn time(raw: Option<&RawValue>) -> Result<Option<Timestamp>, RejectReason> {
    raw.map(parse_time).transpose()
}

/// A user, anonymous, group or previous id: a string (or a number, which
/// some SDKs let through) of at most [`MAX_SEGMENT_ID_BYTES`] bytes; `""`
/// is absent (`Some(None)`), as Segment reads it.
fn segment_id(raw: &RawValue) -> Option<Option<Box<str>>> {
    let text = raw.get();
    let s: Cow<'_, str> = if text.starts_with('"') {
        json_str(raw)?
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Cow::Borrowed(text)
    } else {
        return None;
    };
    (s.len() <= MAX_SEGMENT_ID_BYTES).then(|| (!s.is_empty()).then(|| s.into()))
}

/// `context.campaign` as a via record: `source`, `medium`, and `name` as the
/// campaign; each cut at [`MAX_VIA_FIELD_BYTES`]; non-string fields are
/// left out.
fn campaign_via(raw: &RawValue) -> Option<Via> {
    let c: RawCampaign<'_> = serde_json::from_str(raw.get()).ok()?;
    let field = |r: Option<&RawValue>| {
        r.and_then(json_str)
            .map(|s| truncate(s, MAX_VIA_FIELD_BYTES))
    };
    Via::new(
        field(c.source).as_deref(),
        field(c.medium).as_deref(),
        field(c.name).as_deref(),
    )
}

/// A call's object with its batch's under it: the batch's keys that the
/// call does not have, then the call's own (Segment's rule for a batch's
/// `context` and `integrations`). One line, strings as sent.
fn merged(own: Option<&RawValue>, batch: Option<&RawValue>) -> Option<Box<RawValue>> {
    let Some(batch) = batch else {
        return own.map(minified);
    };
    let Some(own) = own else {
        return Some(minified(batch));
    };
    fn parse(r: &RawValue) -> Option<BTreeMap<String, &RawValue>> {
        serde_json::from_str(r.get()).ok()
    }
    match (parse(batch), parse(own)) {
        (Some(mut all), Some(mine)) => {
            all.extend(mine);
            serde_json::value::to_raw_value(&all).ok()
        }
        _ => Some(minified(own)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::{RequestContext, SessionOutcome, enrich};
    use crate::ids::SequentialIds;

    const LIMITS: SegmentLimits = SegmentLimits {
        max_calls: 3,
        max_call_bytes: 1000,
        max_expanded_bytes: 4000,
    };

    fn source(server: bool) -> Source {
        Source {
            name: "ios-app".into(),
            server,
        }
    }

    /// Parses `body` for `route`, validates every call and returns each
    /// outcome as its enriched JSON (received at 2023-11-14T22:13:20.123Z).
    fn outcomes(
        body: &str,
        route: Option<Call>,
        server: bool,
    ) -> Result<Vec<Result<serde_json::Value, RejectReason>>, BodyError> {
        let parsed = parse_segment_body(body.as_bytes(), route, LIMITS)?;
        let ctx = RequestContext {
            received_at: Timestamp::from_millis(1_700_000_000_123),
            ..RequestContext::default()
        };
        let ids = SequentialIds::default();
        let mut out = Vec::new();
        for item in parsed.items {
            let got = item
                .call
                .and_then(|c| parsed.rules.validate(c, &source(server)));
            out.push(got.map(|e| {
                let e = enrich(e, SessionOutcome::Unavailable, &ctx, &ids);
                // As the sinks write it: JSON text.
                let text = serde_json::to_string(&e).expect("serializes");
                serde_json::from_str(&text).expect("the sinks write JSON")
            }));
        }
        Ok(out)
    }

    /// One call: sent to its single-call route, or (`None`) as the only
    /// call of a batch.
    fn one(call: &str, route: Option<Call>) -> Result<serde_json::Value, RejectReason> {
        let body = match route {
            Some(_) => call.to_owned(),
            None => format!(r#"{{"batch":[{call}]}}"#),
        };
        let mut all = outcomes(&body, route, false).expect("body parses");
        assert_eq!(all.len(), 1, "{call}");
        all.remove(0)
    }

    fn check_reason(body: &str, route: Option<Call>, expected: RejectReason) {
        assert_eq!(one(body, route).err(), Some(expected), "{body}");
    }

    #[test]
    fn a_track_call_maps_field_by_field() {
        let e = one(
            r#"{"type":"track","messageId":"ajs-next-1a2b","anonymousId":"anon-1","userId":"u@x.com",
                "event":"Order Completed","properties":{"total": 12.5},
                "context":{"library":{"name":"analytics.js","version":"1"},"campaign":{"name":"spring","source":"news","medium":"email"},
                           "page":{"url":"https://shop.example/p?x=1","referrer":"https://ref.example/"},"userAgent":"UA/1","ip":"198.51.100.7"},
                "integrations":{"All":true},
                "timestamp":"2023-11-14T22:13:10.000Z","sentAt":"2023-11-14T22:13:15.000Z"}"#,
            None,
        )
        .expect("valid");
        assert_eq!(e["event_id"], "ajs-next-1a2b");
        assert_eq!(e["type"], "track");
        assert_eq!(e["call"], "track");
        assert_eq!(e["event"], "Order Completed");
        assert_eq!(e["client_id"], "anon-1");
        assert_eq!(e["anonymous_id"], "anon-1");
        assert_eq!(e["user_id"], "u@x.com");
        assert_eq!(e["properties"], serde_json::json!({"total": 12.5}));
        assert_eq!(e["context"]["library"]["name"], "analytics.js");
        assert_eq!(e["integrations"], serde_json::json!({"All": true}));
        assert_eq!(e["url"], "https://shop.example/p?x=1");
        assert_eq!(e["referrer"], "https://ref.example/");
        assert_eq!(e["source"], "ios-app");
        assert_eq!(e["sent_at"], "2023-11-14T22:13:15.000Z");
        assert_eq!(e["original_timestamp"], "2023-11-14T22:13:10.000Z");
        // Received 5.123 s after it was sent, which was 5 s after the call.
        assert_eq!(e["timestamp"], "2023-11-14T22:13:15.123Z");
        assert_eq!(e["received_at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(e["props"], serde_json::Value::Null);
        assert_eq!(e["schema_version"], 1);
    }

    #[test]
    fn visitor_ids() {
        // userId alone keys the visitor; an id outside the client_id
        // alphabet is keyed by its digest, and kept verbatim beside it.
        let e = one(
            r#"{"type":"identify","userId":"jane doe@x.com","traits":{"plan":"pro"}}"#,
            None,
        )
        .expect("valid");
        let client = e["client_id"].as_str().expect("id");
        assert!(client.starts_with("h.") && client.len() == 66, "{client}");
        assert_eq!(
            Some(client),
            ClientId::from_foreign("jane doe@x.com").as_str().into()
        );
        assert_eq!(e["user_id"], "jane doe@x.com");
        assert_eq!(e["anonymous_id"], serde_json::Value::Null);
        assert_eq!(e["traits"], serde_json::json!({"plan": "pro"}));
        // An empty id is absent.
        let e = one(
            r#"{"type":"identify","userId":"","anonymousId":"a-1"}"#,
            None,
        )
        .expect("valid");
        assert_eq!(e["client_id"], "a-1");
        assert_eq!(e["user_id"], serde_json::Value::Null);
        // Numbers are ids too.
        let e = one(r#"{"type":"identify","userId":42}"#, None).expect("valid");
        assert_eq!(e["client_id"], "42");
        assert_eq!(e["user_id"], "42");
        // No time at all: the receive time.
        assert_eq!(e["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(e["sent_at"], serde_json::Value::Null);
    }

    #[test]
    fn per_call_problems() {
        use RejectReason::*;
        let cases: &[(&str, RejectReason)] = &[
            (r#"{"type":"track","event":"e"}"#, MissingUserId),
            (r#"{"type":"track","userId":"u"}"#, MissingEvent),
            (
                r#"{"type":"track","userId":"u","event":7}"#,
                InvalidEventName,
            ),
            (r#"{"userId":"u"}"#, MissingType),
            (r#"{"type":"purchase","userId":"u"}"#, InvalidCall),
            (r#"{"type":"page","userId":""}"#, MissingUserId),
            (
                r#"{"type":"page","userId":"","anonymousId":""}"#,
                MissingUserId,
            ),
            (r#"{"type":"page","anonymousId":{}}"#, InvalidUserId),
            (
                r#"{"type":"page","userId":"u","messageId":"caf\u00e9"}"#,
                InvalidMessageId,
            ),
            (r#"{"type":"track","userId":"u","event":""}"#, MissingEvent),
            (
                r#"{"type":"page","userId":"u","messageId":5}"#,
                InvalidMessageId,
            ),
            (r#"{"type":"group","userId":"u"}"#, MissingGroupId),
            (r#"{"type":"alias","userId":"u"}"#, MissingPreviousId),
            (
                r#"{"type":"page","userId":"u","properties":[1]}"#,
                InvalidProperties,
            ),
            (
                r#"{"type":"identify","userId":"u","traits":"x"}"#,
                InvalidTraits,
            ),
            (
                r#"{"type":"page","userId":"u","context":1}"#,
                InvalidContext,
            ),
            (
                r#"{"type":"page","userId":"u","integrations":true}"#,
                InvalidIntegrations,
            ),
            (
                r#"{"type":"page","userId":"u","timestamp":"yesterday"}"#,
                InvalidTimestamp,
            ),
            (
                r#"{"type":"page","userId":"u","sentAt":5}"#,
                InvalidTimestamp,
            ),
        ];
        for (body, reason) in cases {
            check_reason(body, None, *reason);
        }
    }

    #[test]
    fn single_call_routes_imply_the_type() {
        let e = one(r#"{"userId":"u","name":"Home"}"#, Some(Call::Screen)).expect("valid");
        assert_eq!(e["call"], "screen");
        assert_eq!(e["event"], "Home");
        let e = one(
            r#"{"type":"track","userId":"u","groupId":"g","traits":{}}"#,
            Some(Call::Group),
        )
        .expect("the route wins");
        assert_eq!(e["call"], "group");
        assert_eq!(e["group_id"], "g");
        check_reason(
            r#"{"anonymousId":"a"}"#,
            Some(Call::Track),
            RejectReason::MissingEvent,
        );
    }

    #[test]
    fn batches() {
        let body = r#"{"batch":[
            {"type":"track","event":"a","anonymousId":"v","messageId":"m1","context":{"locale":"ja-JP"}},
            7,
            {"type":"page","anonymousId":"v","integrations":{"Amplitude":false}}
          ],
          "context":{"library":{"name":"custom"},"locale":"en-US"},"integrations":{"All":false},
          "sentAt":"2023-11-14T22:13:19.000Z","writeKey":"wk"}"#;
        let parsed = parse_segment_body(body.as_bytes(), None, LIMITS).expect("parses");
        assert_eq!(parsed.write_key.as_deref(), Some("wk"));
        let got = outcomes(body, None, false).expect("parses");
        let first = got[0].as_ref().expect("valid");
        // The call's keys win; the batch's fill in.
        assert_eq!(
            first["context"],
            serde_json::json!({"library": {"name": "custom"}, "locale": "ja-JP"})
        );
        assert_eq!(first["integrations"], serde_json::json!({"All": false}));
        assert_eq!(first["sent_at"], "2023-11-14T22:13:19.000Z");
        assert_eq!(got[1].as_ref().err(), Some(&RejectReason::NotAnObject));
        let third = got[2].as_ref().expect("valid");
        assert_eq!(
            third["integrations"],
            serde_json::json!({"All": false, "Amplitude": false})
        );
        assert_eq!(third["context"]["locale"], "en-US");

        // The key of a batch without one of its own: its first call's.
        let parsed = parse_segment_body(
            br#"{"batch":[{"type":"page","userId":"u"},{"type":"page","userId":"u","writeKey":"k2"}]}"#,
            None,
            LIMITS,
        )
        .expect("parses");
        assert_eq!(parsed.write_key.as_deref(), Some("k2"));

        // Oversized calls are refused one by one; too many calls, or no
        // batch, refuse the body.
        let big = format!(
            r#"{{"batch":[{{"type":"track","event":"e","userId":"u","properties":{{"p":"{}"}}}},{{"type":"page","userId":"u"}}]}}"#,
            "x".repeat(1000)
        );
        let got = outcomes(&big, None, false).expect("parses");
        assert_eq!(got[0].as_ref().err(), Some(&RejectReason::CallTooLarge));
        assert!(got[1].is_ok());
        let four = r#"{"batch":[{},{},{},{}]}"#;
        assert_eq!(
            parse_segment_body(four.as_bytes(), None, LIMITS).err(),
            Some(BodyError::TooManyEvents { limit: 3, got: 4 })
        );
        for bad in [r#"{"type":"track"}"#, r#"{"batch":{}}"#, "[]", "{", ""] {
            assert!(
                matches!(
                    parse_segment_body(bad.as_bytes(), None, LIMITS),
                    Err(BodyError::NotACall(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            parse_segment_body(br#"{"batch":[]}"#, None, LIMITS).err(),
            Some(BodyError::NoEvents)
        );
    }

    #[test]
    fn a_batch_context_counts_in_every_call() {
        let call = r#"{"type":"track","event":"e","anonymousId":"a"}"#;
        let body = |shared: usize, calls: usize| {
            let calls = vec![call; calls].join(",");
            format!(
                r#"{{"context":{{"ip":"203.0.113.5","campaign":{{"name":"spring"}},"pad":"{}"}},"batch":[{calls}]}}"#,
                "p".repeat(shared)
            )
        };
        // Within both bounds: every call carries the batch's context, and
        // it is what enrichment reads.
        let text = body(500, 3);
        let parsed = parse_segment_body(text.as_bytes(), None, LIMITS).expect("parses");
        for item in parsed.items {
            let e = parsed
                .rules
                .validate(item.call.expect("ok"), &source(true))
                .expect("valid");
            assert_eq!(e.via().and_then(|v| v.campaign.as_deref()), Some("spring"));
            assert_eq!(
                e.segment().and_then(SegmentPart::ip),
                Some("203.0.113.5".parse().expect("ip"))
            );
        }
        // A call with the batch's context over the call limit is refused.
        let text = body(950, 1);
        let parsed = parse_segment_body(text.as_bytes(), None, LIMITS).expect("parses");
        assert_eq!(
            parsed.items[0].call.as_ref().err(),
            Some(&RejectReason::CallTooLarge)
        );
        // A small body whose context, once in each call, makes too much.
        let limits = SegmentLimits {
            max_calls: 100,
            max_call_bytes: 1000,
            max_expanded_bytes: 10_000,
        };
        let text = body(500, 20);
        assert!(text.len() < 2_000);
        assert!(matches!(
            parse_segment_body(text.as_bytes(), None, limits),
            Err(BodyError::ExpandsTooMuch { limit: 10_000, .. })
        ));
    }

    #[test]
    fn via_and_enrichment_inputs() {
        // Campaign fields are cut, not refused; the URL's utm_* fill in.
        let long = "c".repeat(300);
        let body = format!(
            r#"{{"type":"page","anonymousId":"a","context":{{"campaign":{{"name":"{long}","source":5}},"ip":"203.0.113.9","userAgent":"Mozilla/5.0"}}}}"#
        );
        let body = format!(r#"{{"batch":[{body}]}}"#);
        let validate = |server| {
            let parsed = parse_segment_body(body.as_bytes(), None, LIMITS).expect("parses");
            let call = parsed
                .items
                .into_iter()
                .next()
                .expect("one")
                .call
                .expect("ok");
            parsed.rules.validate(call, &source(server)).expect("valid")
        };
        let e = validate(false);
        let via = e.via().expect("via");
        assert_eq!(
            via.campaign.as_deref().map(str::len),
            Some(MAX_VIA_FIELD_BYTES)
        );
        assert_eq!(via.source, None);
        let part = e.segment().expect("segment");
        assert_eq!(part.user_agent(), Some("Mozilla/5.0"));
        assert_eq!(part.ip(), None, "only a server-side key sets the address");

        let e = validate(true);
        assert_eq!(
            e.segment().and_then(SegmentPart::ip),
            Some("203.0.113.9".parse().expect("ip"))
        );

        let e = one(
            r#"{"type":"page","anonymousId":"a","context":{"page":{"url":"https://s/?utm_source=ad&utm_campaign=x"}}}"#,
            None,
        )
        .expect("valid");
        assert_eq!(e["url"], "https://s/?utm_source=ad&utm_campaign=x");
    }

    #[test]
    fn corrected_time() {
        let part = |original: Option<u64>, sent: Option<u64>| SegmentPart {
            call: Call::Track,
            event: None,
            category: None,
            user_id: None,
            anonymous_id: None,
            group_id: None,
            previous_id: None,
            properties: None,
            traits: None,
            context: None,
            integrations: None,
            source: "s".into(),
            sent_at: sent.map(Timestamp::from_millis),
            original_timestamp: original.map(Timestamp::from_millis),
            user_agent: None,
            ip: None,
        };
        let received = Timestamp::from_millis(10_000);
        let check = |original, sent, expected: u64| {
            assert_eq!(
                part(original, sent).corrected_timestamp(received),
                Timestamp::from_millis(expected),
                "{original:?} {sent:?}"
            );
        };
        // A device clock 1 h behind, call made 2 s before sending.
        check(Some(3_000), Some(5_000), 8_000);
        // A device clock ahead.
        check(Some(1_000_000), Some(1_002_000), 8_000);
        check(Some(4_000), None, 4_000);
        check(None, Some(5_000), 10_000);
        check(None, None, 10_000);
        // Skew larger than the epoch, or past year 9999: clamped, never wraps.
        check(Some(0), Some(u64::MAX / 2), 0);
        check(
            Some(Timestamp::LATEST.as_millis()),
            Some(0),
            Timestamp::LATEST.as_millis(),
        );
    }
}
