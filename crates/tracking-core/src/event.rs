//! Events on their way in: [`RawEvent`] is what a client sent (lenient, every
//! field optional and untyped), [`Event`] is what survived validation (private
//! fields, built only by `TryFrom<RawEvent>`).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Longest `url` / `referrer`, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Largest `props` object, in bytes of JSON text.
pub const MAX_PROPS_BYTES: usize = 8192;
/// Longest `via` field, in bytes.
pub const MAX_VIA_FIELD_BYTES: usize = 256;

/// Why one event was refused. Each reason is the client's fault: sending the
/// same event again will not help. `as_str` is a bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    NotAnObject,
    MissingType,
    InvalidType,
    MissingClientId,
    InvalidClientId,
    InvalidEventId,
    InvalidTs,
    InvalidUrl,
    InvalidReferrer,
    InvalidVia,
    InvalidProps,
    // The Segment API's own (see `segment`).
    InvalidCall,
    MissingUserId,
    InvalidUserId,
    MissingEvent,
    InvalidEventName,
    InvalidMessageId,
    MissingGroupId,
    MissingPreviousId,
    InvalidProperties,
    InvalidTraits,
    InvalidContext,
    InvalidIntegrations,
    InvalidTimestamp,
    CallTooLarge,
}

impl RejectReason {
    pub const ALL: [RejectReason; 25] = [
        Self::NotAnObject,
        Self::MissingType,
        Self::InvalidType,
        Self::MissingClientId,
        Self::InvalidClientId,
        Self::InvalidEventId,
        Self::InvalidTs,
        Self::InvalidUrl,
        Self::InvalidReferrer,
        Self::InvalidVia,
        Self::InvalidProps,
        Self::InvalidCall,
        Self::MissingUserId,
        Self::InvalidUserId,
        Self::MissingEvent,
        Self::InvalidEventName,
        Self::InvalidMessageId,
        Self::MissingGroupId,
        Self::MissingPreviousId,
        Self::InvalidProperties,
        Self::InvalidTraits,
        Self::InvalidContext,
        Self::InvalidIntegrations,
        Self::InvalidTimestamp,
        Self::CallTooLarge,
    ];

    /// Short stable name, used as a metric label and in dead letters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotAnObject => "not_an_object",
            Self::MissingType => "missing_type",
            Self::InvalidType => "invalid_type",
            Self::MissingClientId => "missing_client_id",
            Self::InvalidClientId => "invalid_client_id",
            Self::InvalidEventId => "invalid_event_id",
            Self::InvalidTs => "invalid_ts",
            Self::InvalidUrl => "invalid_url",
            Self::InvalidReferrer => "invalid_referrer",
            Self::InvalidVia => "invalid_via",
            Self::InvalidProps => "invalid_props",
            Self::InvalidCall => "invalid_call",
            Self::MissingUserId => "missing_user_id",
            Self::InvalidUserId => "invalid_user_id",
            Self::MissingEvent => "missing_event",
            Self::InvalidEventName => "invalid_event_name",
            Self::InvalidMessageId => "invalid_message_id",
            Self::MissingGroupId => "missing_group_id",
            Self::MissingPreviousId => "missing_previous_id",
            Self::InvalidProperties => "invalid_properties",
            Self::InvalidTraits => "invalid_traits",
            Self::InvalidContext => "invalid_context",
            Self::InvalidIntegrations => "invalid_integrations",
            Self::InvalidTimestamp => "invalid_timestamp",
            Self::CallTooLarge => "call_too_large",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotAnObject => "an event must be a JSON object",
            Self::MissingType => "`type` is required",
            Self::InvalidType => "`type` must be a string matching [a-z0-9_.:-]{1,64}",
            Self::MissingClientId => "`client_id` is required when no visitor cookie is present",
            Self::InvalidClientId => "`client_id` must be a string matching [A-Za-z0-9._:-]{1,128}",
            Self::InvalidEventId => "`event_id` must be a string matching [A-Za-z0-9._:-]{1,128}",
            Self::InvalidTs => "`ts` must be a non-negative integer (ms since the epoch)",
            Self::InvalidUrl => "`url` must be a string of at most 2048 bytes",
            Self::InvalidReferrer => "`referrer` must be a string of at most 2048 bytes",
            Self::InvalidVia => {
                "`via` must be an object whose `source`, `medium`, `campaign` are strings of at most 256 bytes"
            }
            Self::InvalidProps => "`props` must be a JSON object of at most 8192 bytes",
            Self::InvalidCall => {
                "`type` must be one of track, page, screen, identify, group, alias"
            }
            Self::MissingUserId => "`userId` or `anonymousId` is required",
            Self::InvalidUserId => {
                "`userId` and `anonymousId` must be strings (or numbers) of 1 to 512 bytes"
            }
            Self::MissingEvent => "a track call needs `event`",
            Self::InvalidEventName => {
                "`event`, `name` and `category` must be strings of at most 1024 bytes"
            }
            Self::InvalidMessageId => {
                "`messageId` must be a string of 1 to 128 printable ASCII characters"
            }
            Self::MissingGroupId => "a group call needs `groupId` (a string of 1 to 512 bytes)",
            Self::MissingPreviousId => {
                "an alias call needs `previousId` (a string of 1 to 512 bytes)"
            }
            Self::InvalidProperties => "`properties` must be a JSON object",
            Self::InvalidTraits => "`traits` must be a JSON object",
            Self::InvalidContext => "`context` must be a JSON object",
            Self::InvalidIntegrations => "`integrations` must be a JSON object",
            Self::InvalidTimestamp => {
                "`timestamp`, `originalTimestamp` and `sentAt` must be ISO 8601 date-times (UTC when they have no offset)"
            }
            Self::CallTooLarge => "the call exceeds the largest call accepted",
        })
    }
}

fn is_type_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b':' | b'-')
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

fn is_id(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(is_id_byte)
}

/// A visitor's id: `[A-Za-z0-9._:-]{1,128}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Box<str>);

impl ClientId {
    pub fn parse(s: &str) -> Option<Self> {
        is_id(s).then(|| Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A visitor id from another system's id (a Segment `anonymousId` or
    /// `userId`): the id itself when it is a valid client id, else `h.`
    /// and the hex SHA-256 of it, so that any id keys one visitor.
    pub fn from_foreign(id: &str) -> Self {
        if is_id(id) {
            return Self(id.into());
        }
        use sha2::Digest;
        use std::fmt::Write;
        let digest = sha2::Sha256::digest(id.as_bytes());
        let mut out = String::with_capacity(2 + 2 * digest.len());
        out.push_str("h.");
        for b in digest.iter() {
            let _ = write!(out, "{b:02x}");
        }
        Self(out.into())
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({})", self.0)
    }
}

impl serde::Serialize for ClientId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// The route that brought a visitor in. At least one field is present.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Via {
    pub source: Option<Box<str>>,
    pub medium: Option<Box<str>>,
    pub campaign: Option<Box<str>>,
}

impl Via {
    /// `None` when every field is absent or empty.
    pub fn new(source: Option<&str>, medium: Option<&str>, campaign: Option<&str>) -> Option<Self> {
        let keep = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(Box::from);
        let via = Self {
            source: keep(source),
            medium: keep(medium),
            campaign: keep(campaign),
        };
        (via.source.is_some() || via.medium.is_some() || via.campaign.is_some()).then_some(via)
    }

    /// The `utm_source` / `utm_medium` / `utm_campaign` parameters of a URL's
    /// query, if any is present and non-empty. Over-long values are cut at
    /// [`MAX_VIA_FIELD_BYTES`] (on a character boundary).
    pub fn from_url(url: &str) -> Option<Self> {
        let url = url.split_once('#').map_or(url, |(u, _)| u);
        let query = url.split_once('?')?.1;
        if !query.contains("utm_") {
            return None;
        }
        let (mut source, mut medium, mut campaign) = (None, None, None);
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match &*k {
                "utm_source" => &mut source,
                "utm_medium" => &mut medium,
                "utm_campaign" => &mut campaign,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(truncate(v, MAX_VIA_FIELD_BYTES));
            }
        }
        Self::new(source.as_deref(), medium.as_deref(), campaign.as_deref())
    }
}

pub(crate) fn truncate(s: Cow<'_, str>, max: usize) -> String {
    if s.len() <= max {
        return s.into_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// What a client sent for one event: every field optional, every value
/// unchecked. Unknown fields are ignored; `null` means absent.
#[derive(Debug, Default, Deserialize)]
pub struct RawEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    pub ty: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub client_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub event_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub ts: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub url: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub referrer: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub via: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub props: Option<&'a RawValue>,
    /// A batch envelope's events; only meaningful at the top level.
    #[serde(borrow, default)]
    pub(crate) events: Option<&'a RawValue>,
    /// The visitor id to use when the event has none (the visitor cookie).
    #[serde(skip)]
    pub fallback_client_id: Option<ClientId>,
}

/// A JSON string value, borrowed when it has no escapes.
pub(crate) fn json_str<'a>(raw: &'a RawValue) -> Option<Cow<'a, str>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    if let Ok(s) = serde_json::from_str::<&'a str>(text) {
        return Some(Cow::Borrowed(s));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

fn optional_string(
    raw: Option<&RawValue>,
    max: usize,
    reason: RejectReason,
) -> Result<Option<Box<str>>, RejectReason> {
    match raw {
        None => Ok(None),
        Some(raw) => match json_str(raw) {
            Some(s) if s.len() <= max => Ok(Some(s.into())),
            _ => Err(reason),
        },
    }
}

#[derive(Deserialize)]
struct RawVia<'a> {
    #[serde(borrow, default)]
    source: Option<&'a RawValue>,
    #[serde(borrow, default)]
    medium: Option<&'a RawValue>,
    #[serde(borrow, default)]
    campaign: Option<&'a RawValue>,
}

fn parse_via(raw: &RawValue) -> Result<Option<Via>, RejectReason> {
    let raw: RawVia<'_> = serde_json::from_str(raw.get()).map_err(|_| RejectReason::InvalidVia)?;
    let field = |r| optional_string(r, MAX_VIA_FIELD_BYTES, RejectReason::InvalidVia);
    let (source, medium, campaign) = (field(raw.source)?, field(raw.medium)?, field(raw.campaign)?);
    Ok(Via::new(
        source.as_deref(),
        medium.as_deref(),
        campaign.as_deref(),
    ))
}

/// The JSON text of `raw` without its insignificant whitespace: one line,
/// whatever the client's formatting, with every string kept byte for byte
/// (escapes, U+2028/U+2029). A valid JSON text has no raw control character
/// inside a string, so a byte scan that skips strings finds every space,
/// tab, CR and LF outside them.
pub(crate) fn minified(raw: &RawValue) -> Box<RawValue> {
    let text = raw.get();
    // Most texts have no byte at or below a space at all (whitespace, or a
    // space inside a string): checked 16 bytes at a time, which vectorises.
    if text
        .as_bytes()
        .chunks(16)
        .all(|c| c.iter().fold(true, |all, &b| all & (b > b' ')))
    {
        return raw.to_owned();
    }
    let mut out: Option<String> = None;
    let (mut in_string, mut escaped) = (false, false);
    let mut kept = 0;
    for (i, b) in text.bytes().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            // Whitespace is ASCII: `i` is a character boundary.
            out.get_or_insert_with(|| String::with_capacity(text.len()))
                .push_str(&text[kept..i]);
            kept = i + 1;
        }
    }
    let Some(mut out) = out else {
        return raw.to_owned();
    };
    out.push_str(&text[kept..]);
    // Removing whitespace between tokens keeps valid JSON valid; the check
    // costs a parse only for the texts that had some.
    RawValue::from_string(out).unwrap_or_else(|_| raw.to_owned())
}

/// A validated event. Built only through `TryFrom<RawEvent>`.
#[derive(Debug, Clone)]
pub struct Event {
    // Crate-visible so that `enrich` moves them into the enriched event:
    // a new field is added here, parsed below, and carried in `enrich`.
    pub(crate) ty: Box<str>,
    pub(crate) client_id: ClientId,
    pub(crate) event_id: Option<Box<str>>,
    pub(crate) ts: Option<u64>,
    pub(crate) url: Option<Box<str>>,
    pub(crate) referrer: Option<Box<str>>,
    pub(crate) via: Option<Via>,
    pub(crate) props: Option<Box<RawValue>>,
    /// The Segment fields, for an event that came through the Segment API.
    pub(crate) segment: Option<Box<crate::segment::SegmentPart>>,
}

impl Event {
    pub fn event_type(&self) -> &str {
        &self.ty
    }
    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }
    pub fn event_id(&self) -> Option<&str> {
        self.event_id.as_deref()
    }
    pub fn ts(&self) -> Option<u64> {
        self.ts
    }
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }
    pub fn referrer(&self) -> Option<&str> {
        self.referrer.as_deref()
    }
    /// The route this event records: its `via` object, else the `utm_*`
    /// parameters of its `url`.
    pub fn via(&self) -> Option<&Via> {
        self.via.as_ref()
    }
    pub fn props(&self) -> Option<&RawValue> {
        self.props.as_deref()
    }
    /// The Segment fields, when the event came through the Segment API.
    pub fn segment(&self) -> Option<&crate::segment::SegmentPart> {
        self.segment.as_deref()
    }
}

impl TryFrom<RawEvent<'_>> for Event {
    type Error = RejectReason;

    fn try_from(raw: RawEvent<'_>) -> Result<Self, RejectReason> {
        let ty = match raw.ty {
            None => return Err(RejectReason::MissingType),
            Some(v) => match json_str(v) {
                Some(s) if (1..=64).contains(&s.len()) && s.bytes().all(is_type_byte) => {
                    Box::from(s)
                }
                _ => return Err(RejectReason::InvalidType),
            },
        };
        let client_id = match raw.client_id {
            Some(v) => json_str(v)
                .and_then(|s| ClientId::parse(&s))
                .ok_or(RejectReason::InvalidClientId)?,
            None => raw
                .fallback_client_id
                .ok_or(RejectReason::MissingClientId)?,
        };
        let event_id = match raw.event_id {
            None => None,
            Some(v) => match json_str(v) {
                Some(s) if is_id(&s) => Some(Box::from(s)),
                _ => return Err(RejectReason::InvalidEventId),
            },
        };
        let ts = match raw.ts {
            None => None,
            // Integers only: `1.5`, `-1`, `"123"` and numbers above u64 are refused.
            Some(v) => Some(
                v.get()
                    .parse::<u64>()
                    .map_err(|_| RejectReason::InvalidTs)?,
            ),
        };
        let url = optional_string(raw.url, MAX_URL_BYTES, RejectReason::InvalidUrl)?;
        let referrer = optional_string(raw.referrer, MAX_URL_BYTES, RejectReason::InvalidReferrer)?;
        let via = match raw.via {
            Some(v) => parse_via(v)?,
            None => None,
        };
        let via = via.or_else(|| url.as_deref().and_then(Via::from_url));
        let props = match raw.props {
            None => None,
            Some(v) if v.get().starts_with('{') && v.get().len() <= MAX_PROPS_BYTES => {
                Some(minified(v))
            }
            Some(_) => return Err(RejectReason::InvalidProps),
        };
        Ok(Self {
            ty,
            client_id,
            event_id,
            ts,
            url,
            referrer,
            via,
            props,
            segment: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Validates `json` (with an optional cookie id) and compares the outcome,
    /// rendered as a short string, with `expected`.
    fn check(json: &str, cookie: Option<&str>, expected: Result<&str, RejectReason>) {
        let mut raw: RawEvent<'_> = serde_json::from_str(json).expect("test input is JSON");
        raw.fallback_client_id = cookie.and_then(ClientId::parse);
        let got = Event::try_from(raw).map(|e| {
            let via = e
                .via()
                .map(|v| format!("{:?}/{:?}/{:?}", v.source, v.medium, v.campaign))
                .unwrap_or_default();
            format!(
                "{} {} {:?} {:?} {}",
                e.event_type(),
                e.client_id().as_str(),
                e.event_id(),
                e.ts(),
                via
            )
        });
        assert_eq!(got.as_deref().map_err(|r| *r), expected, "{json}");
    }

    #[test]
    fn validation_rules() {
        use RejectReason::*;
        let long_type = format!(r#"{{"type":"{}","client_id":"c"}}"#, "a".repeat(65));
        let long_id = format!(r#"{{"type":"t","client_id":"{}"}}"#, "c".repeat(129));
        let long_url = format!(
            r#"{{"type":"t","client_id":"c","url":"{}"}}"#,
            "u".repeat(2049)
        );
        let max_url = format!(
            r#"{{"type":"t","client_id":"c","url":"{}"}}"#,
            "u".repeat(2048)
        );
        let big_props = format!(
            r#"{{"type":"t","client_id":"c","props":{{"k":"{}"}}}}"#,
            "p".repeat(8190)
        );
        let cases: Vec<(&str, Option<&str>, Result<&str, RejectReason>)> = vec![
            (
                r#"{"type":"page_view","client_id":"abc"}"#,
                None,
                Ok("page_view abc None None "),
            ),
            (
                r#"{"type":"a.b:c-d_1","client_id":"A.b_c:d-9"}"#,
                None,
                Ok("a.b:c-d_1 A.b_c:d-9 None None "),
            ),
            (r#"{"client_id":"abc"}"#, None, Err(MissingType)),
            (r#"{"type":null,"client_id":"abc"}"#, None, Err(MissingType)),
            (
                r#"{"type":"Page","client_id":"abc"}"#,
                None,
                Err(InvalidType),
            ),
            (r#"{"type":"","client_id":"abc"}"#, None, Err(InvalidType)),
            (r#"{"type":7,"client_id":"abc"}"#, None, Err(InvalidType)),
            (&long_type, None, Err(InvalidType)),
            (r#"{"type":"t"}"#, None, Err(MissingClientId)),
            (
                r#"{"type":"t"}"#,
                Some("cookie-1"),
                Ok("t cookie-1 None None "),
            ),
            (
                r#"{"type":"t","client_id":"own"}"#,
                Some("cookie-1"),
                Ok("t own None None "),
            ),
            (
                r#"{"type":"t","client_id":"a b"}"#,
                Some("cookie-1"),
                Err(InvalidClientId),
            ),
            (r#"{"type":"t","client_id":""}"#, None, Err(InvalidClientId)),
            (r#"{"type":"t","client_id":12}"#, None, Err(InvalidClientId)),
            (&long_id, None, Err(InvalidClientId)),
            (
                r#"{"type":"t","client_id":"c","event_id":"e-1"}"#,
                None,
                Ok(r#"t c Some("e-1") None "#),
            ),
            (
                r#"{"type":"t","client_id":"c","event_id":"e/1"}"#,
                None,
                Err(InvalidEventId),
            ),
            (
                r#"{"type":"t","client_id":"c","ts":1700000000000}"#,
                None,
                Ok("t c None Some(1700000000000) "),
            ),
            (
                r#"{"type":"t","client_id":"c","ts":-1}"#,
                None,
                Err(InvalidTs),
            ),
            (
                r#"{"type":"t","client_id":"c","ts":1.5}"#,
                None,
                Err(InvalidTs),
            ),
            (
                r#"{"type":"t","client_id":"c","ts":"1"}"#,
                None,
                Err(InvalidTs),
            ),
            (
                r#"{"type":"t","client_id":"c","ts":1e3}"#,
                None,
                Err(InvalidTs),
            ),
            (&max_url, None, Ok("t c None None ")),
            (&long_url, None, Err(InvalidUrl)),
            (
                r#"{"type":"t","client_id":"c","url":5}"#,
                None,
                Err(InvalidUrl),
            ),
            (
                r#"{"type":"t","client_id":"c","referrer":{}}"#,
                None,
                Err(InvalidReferrer),
            ),
            (
                r#"{"type":"t","client_id":"c","props":[1]}"#,
                None,
                Err(InvalidProps),
            ),
            (
                r#"{"type":"t","client_id":"c","props":"x"}"#,
                None,
                Err(InvalidProps),
            ),
            (&big_props, None, Err(InvalidProps)),
            (
                r#"{"type":"t","client_id":"c","props":{"a":[1,{"b":2}]}}"#,
                None,
                Ok("t c None None "),
            ),
            (
                r#"{"type":"t","client_id":"c","via":"x"}"#,
                None,
                Err(InvalidVia),
            ),
            (
                r#"{"type":"t","client_id":"c","via":{"source":1}}"#,
                None,
                Err(InvalidVia),
            ),
            (
                r#"{"type":"t","client_id":"c","unknown":1}"#,
                None,
                Ok("t c None None "),
            ),
            (
                r#"{"type":"t\u0031","client_id":"c"}"#,
                None,
                Ok("t1 c None None "),
            ),
        ];
        for (json, cookie, expected) in cases {
            check(json, cookie, expected);
        }
        let max_type = "a".repeat(64);
        check(
            &format!(r#"{{"type":"{max_type}","client_id":"c"}}"#),
            None,
            Ok(&format!("{max_type} c None None ")),
        );
    }

    /// The `props` text an event with `props` (JSON text) carries.
    fn check_props(props: &str, expected: &str) {
        let json = format!(r#"{{"type":"t","client_id":"c","props":{props}}}"#);
        let raw: RawEvent<'_> = serde_json::from_str(&json).expect("test input is JSON");
        let event = Event::try_from(raw).expect("valid");
        let got = event.props().map(RawValue::get);
        assert_eq!(got, Some(expected), "{props:?}");
        let before: serde_json::Value = serde_json::from_str(props).expect("json");
        let after: serde_json::Value = serde_json::from_str(expected).expect("json");
        assert_eq!(before, after, "same JSON value");
    }

    #[test]
    fn props_become_one_line_and_keep_their_strings() {
        let cases = [
            (r#"{"a":1}"#, r#"{"a":1}"#),
            (
                "{\n  \"a\" : [1, 2],\r\n\t\"b\": {}\n}",
                r#"{"a":[1,2],"b":{}}"#,
            ),
            // Spaces, escapes and line separators inside strings stay as sent.
            (
                "{ \"k y\" : \"a b\\n\\\"\\\\ \u{2028}\u{2029}\\u2028\" }",
                "{\"k y\":\"a b\\n\\\"\\\\ \u{2028}\u{2029}\\u2028\"}",
            ),
            (
                "{\"s\":\"\\\\\" , \"t\" :\"\\\"\"}",
                "{\"s\":\"\\\\\",\"t\":\"\\\"\"}",
            ),
        ];
        for (props, expected) in cases {
            check_props(props, expected);
        }
    }

    #[test]
    fn via_precedence() {
        let cases: Vec<(&str, Result<&str, RejectReason>)> = vec![
            // The explicit object wins over the URL's utm parameters.
            (
                r#"{"type":"t","client_id":"c","via":{"source":"news"},"url":"https://s/?utm_source=ad"}"#,
                Ok(r#"t c None None Some("news")/None/None"#),
            ),
            (
                r#"{"type":"t","client_id":"c","url":"https://s/p?a=1&utm_source=ad&utm_medium=cpc&utm_campaign=x%20y#f"}"#,
                Ok(r#"t c None None Some("ad")/Some("cpc")/Some("x y")"#),
            ),
            // An empty via object falls back to the URL.
            (
                r#"{"type":"t","client_id":"c","via":{},"url":"https://s/?utm_campaign=c1"}"#,
                Ok(r#"t c None None None/None/Some("c1")"#),
            ),
            (
                r#"{"type":"t","client_id":"c","url":"https://s/?utm_source="}"#,
                Ok("t c None None "),
            ),
            (
                r#"{"type":"t","client_id":"c","url":"https://s/#?utm_source=x"}"#,
                Ok("t c None None "),
            ),
        ];
        for (json, expected) in cases {
            check(json, None, expected);
        }
    }
}
