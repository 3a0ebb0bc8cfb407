//! What real clients send, generated deterministically from a seed.
//!
//! * `beacon`: sendBeacon-style `POST /v1/events`, `text/plain`, one event of a
//!   few hundred bytes; a share of them as `GET /v1/pixel.gif` instead.
//! * `mobile-batch`: `POST /v1/events`, `application/json`, gzip, 10–100 events.
//! * `mixed`: beacons and batches in a configurable proportion.
//!
//! Visitors come from a population where low ids come back far more often
//! than high ones (sessions are renewed, not only created); some page URLs
//! carry utm campaign parameters (via attribution). Mobile batches are
//! compressed once at start-up into a pool, so the generator spends its time
//! sending, not compressing.

use std::fmt::Write as _;
use std::io::Write as _;

use bytes::Bytes;
use clap::ValueEnum;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioKind {
    Beacon,
    MobileBatch,
    Mixed,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ScenarioConfig {
    pub kind: ScenarioKind,
    /// Percentage of `mixed` requests that are beacons (the rest are batches).
    pub beacon_percent: u8,
    /// Percentage of beacons sent as pixel GETs.
    pub pixel_percent: u8,
    /// Size of the visitor population.
    pub visitors: u64,
    /// Smallest and largest mobile batch.
    pub batch_min: usize,
    pub batch_max: usize,
    /// Give every event a unique `event_id` (and say which each request
    /// carries): batches are then built per request, not from a pool.
    pub ids: bool,
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Planned {
    pub method: http::Method,
    /// Path and query.
    pub path: String,
    pub content_type: Option<&'static str>,
    pub gzip: bool,
    pub body: Bytes,
    /// The `event_id`s the request carries (with `ScenarioConfig::ids`).
    pub ids: Vec<String>,
}

const TYPES: [(&str, u32); 4] = [
    ("page_view", 70),
    ("click", 15),
    ("add_to_cart", 10),
    ("purchase", 5),
];
const SOURCES: [&str; 5] = [
    "newsletter",
    "google",
    "affiliate-17",
    "instagram",
    "partner-x",
];
const MEDIUMS: [&str; 4] = ["email", "cpc", "affiliate", "social"];
const CATEGORIES: [&str; 6] = ["shoes", "bags", "kitchen", "books", "garden", "toys"];
const BATCH_POOL: usize = 256;

/// Generates requests for one generator worker.
#[derive(Debug)]
pub struct Generator {
    cfg: ScenarioConfig,
    rng: SmallRng,
    batches: Vec<Bytes>,
    next_batch: usize,
    /// Prefix of this generator's event ids, and the next id's number.
    id_prefix: String,
    next_id: u64,
}

impl Generator {
    pub fn new(cfg: ScenarioConfig, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let batches = if cfg.kind == ScenarioKind::Beacon || cfg.ids {
            Vec::new()
        } else {
            (0..BATCH_POOL)
                .map(|_| gzip(&batch_body(&cfg, &mut rng, None).0))
                .collect()
        };
        Self {
            cfg,
            rng,
            batches,
            next_batch: 0,
            id_prefix: format!("lt{seed}-"),
            next_id: 0,
        }
    }

    fn next_id(&mut self) -> Option<String> {
        if !self.cfg.ids {
            return None;
        }
        self.next_id += 1;
        Some(format!("{}{}", self.id_prefix, self.next_id))
    }

    pub fn next_request(&mut self) -> Planned {
        let beacon = match self.cfg.kind {
            ScenarioKind::Beacon => true,
            ScenarioKind::MobileBatch => false,
            ScenarioKind::Mixed => {
                self.rng.random_range(0..100) < u32::from(self.cfg.beacon_percent)
            }
        };
        if !beacon {
            let mut ids = Vec::new();
            let body = if self.cfg.ids {
                let first = self.next_id + 1;
                let (body, n) =
                    batch_body(&self.cfg, &mut self.rng, Some((&self.id_prefix, first)));
                ids = (first..first + n)
                    .map(|i| format!("{}{i}", self.id_prefix))
                    .collect();
                self.next_id += n;
                gzip(&body)
            } else {
                self.next_batch += 1;
                self.batches[(self.next_batch - 1) % self.batches.len()].clone()
            };
            return Planned {
                method: http::Method::POST,
                path: "/v1/events".into(),
                content_type: Some("application/json"),
                gzip: true,
                body,
                ids,
            };
        }
        if self.rng.random_range(0..100) < u32::from(self.cfg.pixel_percent) {
            let visitor = visitor(&mut self.rng, self.cfg.visitors);
            let (url, _) = page_url(&mut self.rng);
            let mut path = format!("/v1/pixel.gif?type=page_view&client_id=v-{visitor}&url=");
            path.extend(form_encode(&url));
            if let Some(id) = self.next_id() {
                let _ = write!(path, "&event_id={id}");
            }
            // A pixel is answered 200 whatever became of its event (a
            // browser does not retry an image): its id is not reported as
            // accepted.
            return Planned {
                method: http::Method::GET,
                path,
                content_type: None,
                gzip: false,
                body: Bytes::new(),
                ids: Vec::new(),
            };
        }
        let mut body = String::with_capacity(640);
        let visitor = visitor(&mut self.rng, self.cfg.visitors);
        let id = self.next_id();
        event_json(
            &mut body,
            &mut self.rng,
            &format!("v-{visitor}"),
            None,
            id.as_deref(),
        );
        Planned {
            method: http::Method::POST,
            path: "/v1/events".into(),
            content_type: Some("text/plain;charset=UTF-8"),
            gzip: false,
            body: Bytes::from(body),
            ids: id.into_iter().collect(),
        }
    }
}

/// Frequent visitors have low ids: u² concentrates draws near 0.
fn visitor(rng: &mut SmallRng, population: u64) -> u64 {
    let u: f64 = rng.random();
    ((u * u) * population as f64) as u64
}

fn page_url(rng: &mut SmallRng) -> (String, bool) {
    let cat = CATEGORIES[rng.random_range(0..CATEGORIES.len())];
    let item = rng.random_range(1..5000);
    let mut url = format!("https://shop.example/{cat}/item-{item}");
    let campaign = rng.random_range(0..100) < 15;
    if campaign {
        let _ = write!(
            url,
            "?utm_source={}&utm_medium={}&utm_campaign=w{}",
            SOURCES[rng.random_range(0..SOURCES.len())],
            MEDIUMS[rng.random_range(0..MEDIUMS.len())],
            rng.random_range(1..53)
        );
    }
    (url, campaign)
}

fn event_type(rng: &mut SmallRng) -> &'static str {
    let mut roll = rng.random_range(0..100);
    for (t, weight) in TYPES {
        if roll < weight {
            return t;
        }
        roll -= weight;
    }
    TYPES[0].0
}

fn event_json(
    out: &mut String,
    rng: &mut SmallRng,
    client_id: &str,
    ts: Option<u64>,
    event_id: Option<&str>,
) {
    let ty = event_type(rng);
    let (url, _) = page_url(rng);
    let title_len = rng.random_range(20..200);
    let title: String = (0..title_len)
        .map(|i| if i % 7 == 6 { ' ' } else { 'x' })
        .collect();
    let _ = write!(
        out,
        r#"{{"type":"{ty}","client_id":"{client_id}","url":"{url}","referrer":"https://www.example.org/search","#
    );
    if let Some(ts) = ts {
        let _ = write!(out, r#""ts":{ts},"#);
    }
    if let Some(id) = event_id {
        let _ = write!(out, r#""event_id":"{id}","#);
    }
    let _ = write!(
        out,
        r#""props":{{"title":"{title}","price":{},"currency":"JPY","qty":{}}}}}"#,
        rng.random_range(100..50_000),
        rng.random_range(1..4)
    );
}

/// A batch and its number of events; with `ids` (prefix, first number), its
/// events are numbered on from there.
fn batch_body(
    cfg: &ScenarioConfig,
    rng: &mut SmallRng,
    ids: Option<(&str, u64)>,
) -> (Vec<u8>, u64) {
    let n = rng.random_range(cfg.batch_min..=cfg.batch_max.max(cfg.batch_min));
    let client = format!("m-{}", visitor(rng, cfg.visitors));
    let mut ts = 1_763_000_000_000 + rng.random_range(0..86_400_000u64);
    let mut body = String::from(r#"{"events":["#);
    for i in 0..n {
        if i > 0 {
            body.push(',');
        }
        ts += rng.random_range(500..30_000);
        let id = ids.map(|(prefix, first)| format!("{prefix}{}", first + i as u64));
        event_json(&mut body, rng, &client, Some(ts), id.as_deref());
    }
    body.push_str("]}");
    (body.into_bytes(), n as u64)
}

fn gzip(data: &[u8]) -> Bytes {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = e.write_all(data);
    Bytes::from(e.finish().unwrap_or_default())
}

fn form_encode(s: &str) -> impl Iterator<Item = char> + '_ {
    s.bytes().flat_map(|b| {
        let keep = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        let hex = |n: u8| char::from(b"0123456789ABCDEF"[usize::from(n)]);
        let chars = if keep {
            [char::from(b), '\0', '\0']
        } else {
            ['%', hex(b >> 4), hex(b & 15)]
        };
        chars.into_iter().filter(|c| *c != '\0')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: ScenarioKind) -> ScenarioConfig {
        ScenarioConfig {
            kind,
            beacon_percent: 80,
            pixel_percent: 5,
            visitors: 10_000,
            batch_min: 10,
            batch_max: 100,
            ids: false,
        }
    }

    #[test]
    fn deterministic_for_a_seed() {
        let a: Vec<_> = {
            let mut g = Generator::new(cfg(ScenarioKind::Mixed), 7);
            (0..50).map(|_| g.next_request().body).collect()
        };
        let mut g = Generator::new(cfg(ScenarioKind::Mixed), 7);
        let b: Vec<_> = (0..50).map(|_| g.next_request().body).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn beacons_are_valid_events_of_realistic_size() {
        let mut g = Generator::new(cfg(ScenarioKind::Beacon), 1);
        let (mut posts, mut pixels, mut campaigns) = (0, 0, 0);
        for _ in 0..2000 {
            let r = g.next_request();
            if r.method == http::Method::GET {
                pixels += 1;
                assert!(
                    r.path
                        .starts_with("/v1/pixel.gif?type=page_view&client_id=v-")
                );
                continue;
            }
            posts += 1;
            let v: serde_json::Value = serde_json::from_slice(&r.body).expect("valid JSON");
            assert!(v["type"].is_string() && v["client_id"].is_string());
            assert!(
                (200..1000).contains(&r.body.len()),
                "{} bytes",
                r.body.len()
            );
            if v["url"].as_str().is_some_and(|u| u.contains("utm_source")) {
                campaigns += 1;
            }
        }
        assert!((40..200).contains(&pixels), "{pixels} pixels");
        assert!(campaigns > posts / 20, "{campaigns} campaigns");
    }

    #[test]
    fn batches_are_gzip_json_of_10_to_100_events() {
        use std::io::Read;
        let mut g = Generator::new(cfg(ScenarioKind::MobileBatch), 3);
        for _ in 0..20 {
            let r = g.next_request();
            assert!(r.gzip);
            let mut text = String::new();
            #[allow(clippy::disallowed_methods)] // the generator's own small test body
            flate2::read::GzDecoder::new(&r.body[..])
                .read_to_string(&mut text)
                .expect("gzip");
            let v: serde_json::Value = serde_json::from_str(&text).expect("json");
            let n = v["events"].as_array().map_or(0, Vec::len);
            assert!((10..=100).contains(&n), "{n}");
        }
    }

    #[test]
    fn with_ids_every_event_has_its_own_and_the_request_names_them() {
        use std::io::Read;
        let mut g = Generator::new(
            ScenarioConfig {
                ids: true,
                pixel_percent: 20,
                ..cfg(ScenarioKind::Mixed)
            },
            5,
        );
        let mut all = std::collections::HashSet::new();
        for _ in 0..300 {
            let r = g.next_request();
            let text = if r.gzip {
                let mut text = String::new();
                #[allow(clippy::disallowed_methods)] // the generator's own small test body
                flate2::read::GzDecoder::new(&r.body[..])
                    .read_to_string(&mut text)
                    .expect("gzip");
                text
            } else if r.method == http::Method::GET {
                r.path.clone()
            } else {
                String::from_utf8(r.body.to_vec()).expect("utf-8")
            };
            let events = if r.method == http::Method::GET {
                0
            } else {
                text.matches(r#""type":"#).count()
            };
            assert_eq!(r.ids.len(), events, "{text}");
            for id in &r.ids {
                assert!(
                    text.contains(&format!("{id}\"")) || text.ends_with(id.as_str()),
                    "{id} in {text}"
                );
                assert!(all.insert(id.clone()), "{id} twice");
            }
        }
    }
}
