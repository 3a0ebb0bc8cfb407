//! The first-party visitor-id cookie.

use std::time::Duration;

use http::HeaderMap;
use http::HeaderValue;
use http::header::COOKIE;
use tracking_core::ClientId;

use crate::config::{Config, SameSite};

#[derive(Debug, Clone)]
pub struct VisitorCookie {
    name: String,
    /// Everything after `name=value`, prepared once.
    attributes: String,
}

impl VisitorCookie {
    pub fn new(
        name: &str,
        domain: Option<&str>,
        secure: bool,
        same_site: SameSite,
        max_age: Duration,
    ) -> Self {
        let mut attributes = format!(
            "; Max-Age={}; Path=/; HttpOnly; SameSite={}",
            max_age.as_secs(),
            same_site.as_str()
        );
        if secure {
            attributes.push_str("; Secure");
        }
        if let Some(d) = domain {
            attributes.push_str("; Domain=");
            attributes.push_str(d);
        }
        Self {
            name: name.to_owned(),
            attributes,
        }
    }

    pub fn from_config(c: &Config) -> Self {
        Self::new(
            &c.cookie_name,
            c.cookie_domain.as_deref(),
            c.cookie_secure,
            c.cookie_same_site,
            c.cookie_max_age,
        )
    }

    /// The visitor id from the request's cookies, when present and valid.
    pub fn read(&self, headers: &HeaderMap) -> Option<ClientId> {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == self.name)
            .and_then(|(_, v)| ClientId::parse(v.trim_matches('"')))
    }

    /// A `Set-Cookie` value carrying `id`.
    pub fn set(&self, id: &ClientId) -> HeaderValue {
        let text = format!("{}={}{}", self.name, id.as_str(), self.attributes);
        // Name, id and attributes are all validated visible ASCII.
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_sets() {
        let c = VisitorCookie::new(
            "_tid",
            Some("example.com"),
            true,
            SameSite::None,
            Duration::from_secs(86_400),
        );
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; _tidx=2"));
        h.append(COOKIE, HeaderValue::from_static("b=3;  _tid=v-123 ; c=4"));
        assert_eq!(
            c.read(&h).map(|id| id.as_str().to_owned()),
            Some("v-123".into())
        );
        let mut bad = HeaderMap::new();
        bad.insert(COOKIE, HeaderValue::from_static("_tid=not valid"));
        assert_eq!(c.read(&bad), None);
        let id = ClientId::parse("v-1").expect("id");
        assert_eq!(
            c.set(&id).to_str().expect("ascii"),
            "_tid=v-1; Max-Age=86400; Path=/; HttpOnly; SameSite=None; Secure; Domain=example.com"
        );
    }
}
