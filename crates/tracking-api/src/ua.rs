//! User-agent parsing (woothee) behind a small bounded cache: the same few
//! hundred browser strings make up most traffic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracking_core::UserAgent;

const SHARDS: usize = 16;

#[derive(Debug)]
pub struct UaParser {
    shards: Vec<Mutex<HashMap<Box<str>, Arc<UserAgent>>>>,
    per_shard: usize,
}

impl UaParser {
    /// A parser caching up to about `capacity` distinct strings.
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    pub fn parse(&self, ua: &str) -> Arc<UserAgent> {
        if ua.len() > 512 {
            return Arc::new(parse_uncached(ua));
        }
        let shard = &self.shards[shard_of(ua)];
        if let Some(hit) = shard.lock().ok().and_then(|m| m.get(ua).cloned()) {
            return hit;
        }
        let parsed = Arc::new(parse_uncached(ua));
        if let Ok(mut m) = shard.lock() {
            // Bounded by clearing: cheap, and a full shard means the traffic
            // is not repetitive enough for a cache to matter much anyway.
            if m.len() >= self.per_shard {
                m.clear();
            }
            m.insert(ua.into(), Arc::clone(&parsed));
        }
        parsed
    }
}

fn shard_of(s: &str) -> usize {
    // FNV-1a over the last bytes: version numbers differ at the end.
    let tail = &s.as_bytes()[s.len().saturating_sub(32)..];
    let mut h: u32 = 0x811c_9dc5;
    for b in tail {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    h as usize % SHARDS
}

fn parse_uncached(ua: &str) -> UserAgent {
    match woothee::parser::Parser::new().parse(ua) {
        Some(r) => UserAgent {
            name: r.name.into(),
            category: r.category.into(),
            version: r.version.into(),
            os: r.os.into(),
            os_version: r.os_version.as_ref().into(),
            vendor: r.vendor.into(),
        },
        None => UserAgent {
            name: "UNKNOWN".into(),
            category: "UNKNOWN".into(),
            version: "UNKNOWN".into(),
            os: "UNKNOWN".into(),
            os_version: "UNKNOWN".into(),
            vendor: "UNKNOWN".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_caches() {
        let p = UaParser::new(32);
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        let a = p.parse(chrome);
        assert_eq!(&*a.name, "Chrome");
        assert_eq!(&*a.category, "pc");
        assert_eq!(&*a.os, "Linux");
        assert!(
            Arc::ptr_eq(&a, &p.parse(chrome)),
            "second parse is a cache hit"
        );
        assert_eq!(&*p.parse("curl/8.0").name, "HTTP Library");
        assert_eq!(&*p.parse("zz-unknown-agent").name, "UNKNOWN");
        for i in 0..1000 {
            p.parse(&format!("agent/{i}"));
        }
        let held: usize = p
            .shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum();
        assert!(held <= 32, "cache stays bounded: {held}");
    }
}
