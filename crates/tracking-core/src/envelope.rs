//! The body of `POST /v1/events`: one event object, or `{"events": [...]}`.

use serde_json::value::RawValue;

use crate::event::{RawEvent, RejectReason};

/// Why a whole body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("body is not valid UTF-8")]
    NotUtf8,
    #[error("body is not a JSON event object or {{\"events\": [...]}}: {0}")]
    Malformed(String),
    #[error("body is not a Segment call or {{\"batch\": [...]}}: {0}")]
    NotACall(String),
    #[error(
        "the batch's context and integrations, counted in each of its calls, make {got} bytes; at most {limit} are accepted"
    )]
    ExpandsTooMuch { limit: usize, got: usize },
    #[error("the batch holds no events")]
    NoEvents,
    #[error("the batch holds {got} events; at most {limit} are accepted")]
    TooManyEvents { limit: usize, got: usize },
}

/// One event of a body, parsed but not yet validated.
#[derive(Debug)]
pub struct Item<'a> {
    /// Position in the batch (0 for a single event).
    pub index: usize,
    /// The event's JSON text as sent, for dead letters.
    pub raw: &'a str,
    pub event: Result<RawEvent<'a>, RejectReason>,
}

/// Splits a body into its events, in order. Each event keeps borrowing the
/// body; nothing is copied until validation.
pub fn parse_body(body: &[u8], max_events: usize) -> Result<Vec<Item<'_>>, BodyError> {
    let text = std::str::from_utf8(body).map_err(|_| BodyError::NotUtf8)?;
    // serde also reads a struct from an array of its fields: insist on an object.
    if !text.trim_start().starts_with('{') {
        return Err(BodyError::Malformed("expected a JSON object".into()));
    }
    let top: RawEvent<'_> =
        serde_json::from_str(text).map_err(|e| BodyError::Malformed(e.to_string()))?;
    let Some(events) = top.events else {
        return Ok(vec![Item {
            index: 0,
            raw: text.trim(),
            event: Ok(top),
        }]);
    };
    let events: Vec<&RawValue> = serde_json::from_str(events.get())
        .map_err(|_| BodyError::Malformed("`events` must be an array".into()))?;
    if events.is_empty() {
        return Err(BodyError::NoEvents);
    }
    if events.len() > max_events {
        return Err(BodyError::TooManyEvents {
            limit: max_events,
            got: events.len(),
        });
    }
    Ok(events
        .into_iter()
        .enumerate()
        .map(|(index, raw)| Item {
            index,
            raw: raw.get(),
            event: if raw.get().starts_with('{') {
                serde_json::from_str(raw.get()).map_err(|_| RejectReason::NotAnObject)
            } else {
                Err(RejectReason::NotAnObject)
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Summarises a parse as `Ok(n items, [per-item ok or reason])`.
    fn check(body: &str, expected: Result<Vec<Result<(), RejectReason>>, BodyError>) {
        let got = parse_body(body.as_bytes(), 3).map(|items| {
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    assert_eq!(item.index, i);
                    item.event.as_ref().map(|_| ()).map_err(|r| *r)
                })
                .collect::<Vec<_>>()
        });
        assert_eq!(got, expected, "{body}");
    }

    #[test]
    fn bodies() {
        use RejectReason::NotAnObject;
        check(r#"{"type":"t"}"#, Ok(vec![Ok(())]));
        check(
            r#" {"events":[{"type":"a"},{"type":"b"}]} "#,
            Ok(vec![Ok(()), Ok(())]),
        );
        check(
            r#"{"events":[{"type":"a"},7,"x"]}"#,
            Ok(vec![Ok(()), Err(NotAnObject), Err(NotAnObject)]),
        );
        check(r#"{"events":[]}"#, Err(BodyError::NoEvents));
        check(
            r#"{"events":[{},{},{},{}]}"#,
            Err(BodyError::TooManyEvents { limit: 3, got: 4 }),
        );
        assert!(matches!(
            parse_body(b"{\"events\":{}}", 3),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            parse_body(b"[{}]", 3),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            parse_body(b"{\"type\":", 3),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(parse_body(b"", 3), Err(BodyError::Malformed(_))));
        assert_eq!(parse_body(b"\xff", 3).err(), Some(BodyError::NotUtf8));
    }

    #[test]
    fn items_keep_their_raw_text() {
        let items = parse_body(br#"{"events":[ {"type":"a"} , 5 ]}"#, 3).expect("parses");
        assert_eq!(items[0].raw, r#"{"type":"a"}"#);
        assert_eq!(items[1].raw, "5");
    }
}
