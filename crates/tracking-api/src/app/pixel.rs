//! `GET /v1/pixel.gif`: query parameters translated into one event.

use super::*;
use crate::inspect::{Channel, RejectedView};

/// A transparent 1×1 GIF.
pub const PIXEL_GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

impl App {
    /// `GET /v1/pixel.gif`: the event's fields are query parameters; the
    /// answer is always the GIF. When `url` is absent the `Referer` (the page
    /// that holds the pixel) is used.
    pub(super) async fn pixel<B>(&self, req: &Request<B>, peer: IpAddr) -> Response<Full<Bytes>> {
        let query = req.uri().query().unwrap_or_default();
        let referer = req.headers().get(REFERER).and_then(|v| v.to_str().ok());
        let json = pixel_event_json(query, referer);
        let result = match self.admit() {
            Ok(_permit) => {
                self.ingest(json.as_bytes(), req.headers(), peer, Channel::Pixel)
                    .await
            }
            Err(e) => Err(e),
        };
        let mut resp = Response::new(Full::new(Bytes::from_static(PIXEL_GIF)));
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("image/gif"));
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("no-store, max-age=0"),
        );
        match result {
            Ok(i) => self.set_cookie(&mut resp, i.new_visitor.as_ref()),
            // Each invalid event was already dead-lettered with its reason.
            Err(ApiError::AllRejected(_)) => {}
            Err(e) => {
                let received_at = self.state.parts.clock.now();
                let reason = if e.status() == StatusCode::SERVICE_UNAVAILABLE {
                    "overloaded"
                } else {
                    "invalid_request"
                };
                let error = e.to_string();
                if let Some(inspector) = &self.state.parts.inspect {
                    inspector.rejected(
                        RejectedView {
                            time: received_at,
                            reason,
                            error: &error,
                            index: None,
                            raw: Some(query),
                        },
                        &Channel::Pixel,
                        200,
                    );
                }
                self.dead_letter(received_at, reason, error, None, query.to_owned());
            }
        }
        resp
    }
}

/// Turns pixel query parameters into the JSON event they describe; values
/// of the wrong shape are kept as strings so validation explains them.
pub(super) fn pixel_event_json(query: &str, referer: Option<&str>) -> String {
    use serde_json::{Map, Value};
    let mut event = Map::new();
    let mut via = Map::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let (map, key, value) = match &*k {
            "type" | "client_id" | "event_id" | "url" | "referrer" => {
                (&mut event, &*k, Value::String(v.into_owned()))
            }
            "ts" => (
                &mut event,
                "ts",
                v.parse::<u64>()
                    .map_or_else(|_| Value::String(v.into_owned()), Value::from),
            ),
            "props" => (
                &mut event,
                "props",
                serde_json::from_str::<Map<String, Value>>(&v)
                    .map_or_else(|_| Value::String(v.into_owned()), Value::Object),
            ),
            "via_source" => (&mut via, "source", Value::String(v.into_owned())),
            "via_medium" => (&mut via, "medium", Value::String(v.into_owned())),
            "via_campaign" => (&mut via, "campaign", Value::String(v.into_owned())),
            _ => continue,
        };
        map.entry(key).or_insert(value);
    }
    if !via.is_empty() {
        event.insert("via".into(), Value::Object(via));
    }
    if let Some(r) = referer.filter(|r| r.len() <= tracking_core::event::MAX_URL_BYTES) {
        event
            .entry("url")
            .or_insert_with(|| Value::String(r.to_owned()));
    }
    Value::Object(event).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(query: &str, referer: Option<&str>, expected: serde_json::Value) {
        let got: serde_json::Value =
            serde_json::from_str(&pixel_event_json(query, referer)).expect("json");
        assert_eq!(got, expected, "{query}");
    }

    #[test]
    fn pixel_parameters() {
        use serde_json::json;
        check(
            "type=pv&client_id=c1&ts=5",
            None,
            json!({"type": "pv", "client_id": "c1", "ts": 5}),
        );
        check("type=pv&ts=x", None, json!({"type": "pv", "ts": "x"}));
        check("type=a&type=b", None, json!({"type": "a"}));
        check(
            "type=pv&via_source=ad&via_campaign=c%201&props=%7B%22k%22%3A1%7D&other=1",
            Some("https://site/p"),
            json!({"type": "pv", "via": {"source": "ad", "campaign": "c 1"}, "props": {"k": 1}, "url": "https://site/p"}),
        );
        check(
            "type=pv&url=u",
            Some("https://site/p"),
            json!({"type": "pv", "url": "u"}),
        );
        check("props=%5B1%5D", None, json!({"props": "[1]"}));
    }
}
