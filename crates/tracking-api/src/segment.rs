//! The Segment HTTP Tracking API's settings: the write keys and the sources
//! they name (`TRACKING_WRITE_KEYS`, `TRACKING_SERVER_WRITE_KEYS`,
//! `TRACKING_WRITE_KEYS_FILE`), the body limits of its routes, and the
//! address its settings point SDKs at. The routes themselves are in
//! `app::segment`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use tracking_core::{SegmentLimits, Source};

use crate::config::{ConfigError, bytes, positive};

/// Longest write key, in bytes; a longer one is refused like an unknown one.
pub const MAX_WRITE_KEY_BYTES: usize = 256;

#[derive(Debug, Clone, clap::Args)]
pub struct SegmentArgs {
    /// Write keys of the Segment API routes, comma-separated `KEY=SOURCE`
    /// entries; the source name goes into every event sent with the key.
    /// With no key configured (here, below or in the file) every key, or
    /// none, is accepted and the source is the key itself, or `default`.
    #[arg(
        long,
        env = "TRACKING_WRITE_KEYS",
        value_delimiter = ',',
        global = true
    )]
    pub write_keys: Vec<String>,

    /// Server-side write keys, as --write-keys: only their events may set
    /// `context.ip` (other events get the connection's address).
    #[arg(
        long,
        env = "TRACKING_SERVER_WRITE_KEYS",
        value_delimiter = ',',
        global = true
    )]
    pub server_write_keys: Vec<String>,

    /// File of write keys: a `KEY=SOURCE` line each, ` server` at the end of
    /// a server-side key's line; blank lines and lines starting with `#`
    /// are skipped. Read at start-up.
    #[arg(long, env = "TRACKING_WRITE_KEYS_FILE", global = true)]
    pub write_keys_file: Option<PathBuf>,

    /// Largest body of a Segment batch route (/v1/batch, /v1/b, /b), in
    /// bytes, as sent and after gzip decompression (at most
    /// --max-body-bytes and --max-decompressed-bytes). Units B, KiB, MiB.
    #[arg(long, env = "TRACKING_SEGMENT_MAX_BATCH_BYTES", default_value = "512KiB", value_parser = bytes, global = true)]
    pub segment_max_batch_bytes: u64,

    /// Largest Segment call, in bytes: the body of a single-call route
    /// (/v1/track, /v1/t, …; 413 past it), or one call of a batch with the
    /// batch's context and integrations counted in (sent to the dead-letter
    /// output past it).
    #[arg(long, env = "TRACKING_SEGMENT_MAX_CALL_BYTES", default_value = "32KiB", value_parser = bytes, global = true)]
    pub segment_max_call_bytes: u64,

    /// Most calls in one Segment batch (413 past it).
    #[arg(long, env = "TRACKING_SEGMENT_MAX_BATCH_CALLS", default_value = "4000", value_parser = positive, global = true)]
    pub segment_max_batch_calls: usize,

    /// Base URL that GET /v1/projects/{writeKey}/settings points SDKs at,
    /// e.g. `https://t.example.com` (what the SDKs' `apiHost` and
    /// `protocol` become). Default: the request's Host, over http, or https
    /// when a trusted proxy says `X-Forwarded-Proto: https`.
    #[arg(long, env = "TRACKING_SEGMENT_PUBLIC_URL", global = true)]
    pub segment_public_url: Option<String>,
}

impl SegmentArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.segment_public_url {
            public_url(url)?;
        }
        self.keys().map(|_| ())
    }

    /// The keys from the flags and the file.
    pub fn keys(&self) -> Result<WriteKeys, ConfigError> {
        let mut keys = WriteKeys::default();
        for (entries, server) in [(&self.write_keys, false), (&self.server_write_keys, true)] {
            let var = if server {
                "TRACKING_SERVER_WRITE_KEYS"
            } else {
                "TRACKING_WRITE_KEYS"
            };
            for entry in entries.iter().filter(|e| !e.trim().is_empty()) {
                keys.add(entry, server)
                    .map_err(|e| ConfigError::new(format!("{var}: {e}")))?;
            }
        }
        if let Some(path) = &self.write_keys_file {
            keys.read_file(path)?;
        }
        Ok(keys)
    }

    /// The settings; `max_body` and `max_decompressed` are the API's own
    /// body limits, which cap the Segment ones (the body memory is sized
    /// for them).
    pub fn settings(
        &self,
        max_body: usize,
        max_decompressed: usize,
    ) -> Result<SegmentSettings, ConfigError> {
        let batch_bytes = usize::try_from(self.segment_max_batch_bytes)
            .unwrap_or(usize::MAX)
            .min(max_body)
            .min(max_decompressed);
        let call_bytes = usize::try_from(self.segment_max_call_bytes)
            .unwrap_or(usize::MAX)
            .min(batch_bytes);
        Ok(SegmentSettings {
            keys: self.keys()?,
            max_batch_bytes: batch_bytes,
            limits: SegmentLimits {
                max_calls: self.segment_max_batch_calls,
                max_call_bytes: call_bytes,
                // A batch's context and integrations, counted in each call,
                // may make up to four batches' worth of calls.
                max_expanded_bytes: batch_bytes.saturating_mul(4),
            },
            public_url: self
                .segment_public_url
                .as_deref()
                .map(public_url)
                .transpose()?,
        })
    }
}

/// `scheme://host[:port]` → (`protocol`, `apiHost` without the `/v1`).
fn public_url(url: &str) -> Result<(&'static str, String), ConfigError> {
    let url = url.trim_end_matches('/');
    let (protocol, rest) = match url.split_once("://") {
        Some(("http", rest)) => ("http", rest),
        Some(("https", rest)) => ("https", rest),
        _ => {
            return Err(ConfigError::new(format!(
                "TRACKING_SEGMENT_PUBLIC_URL `{url}` must start with http:// or https://"
            )));
        }
    };
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(format!(
            "TRACKING_SEGMENT_PUBLIC_URL `{url}` has no host"
        )));
    }
    Ok((protocol, rest.to_owned()))
}

/// The Segment API's settings, built once at start-up.
#[derive(Debug, Clone)]
pub struct SegmentSettings {
    pub keys: WriteKeys,
    /// Largest batch body, as sent and inflated.
    pub max_batch_bytes: usize,
    pub limits: SegmentLimits,
    /// (`protocol`, host and path) the settings answer points SDKs at.
    pub public_url: Option<(&'static str, String)>,
}

/// Configured write keys and the sources they name.
#[derive(Debug, Clone, Default)]
pub struct WriteKeys {
    keys: HashMap<Box<str>, Source>,
}

/// Why a request's write key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "a write key is required: Basic auth with the key as user name, X-Write-Key, or `writeKey` in the body"
    )]
    Missing,
    #[error("unknown write key")]
    Unknown,
}

impl WriteKeys {
    /// Adds one `KEY=SOURCE` entry.
    fn add(&mut self, entry: &str, server: bool) -> Result<(), String> {
        let Some((key, source)) = entry.trim().split_once('=') else {
            return Err(format!("`{entry}` is not KEY=SOURCE"));
        };
        let (key, source) = (key.trim(), source.trim());
        if key.is_empty()
            || key.len() > MAX_WRITE_KEY_BYTES
            || !key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!(
                "key `{key}` must be 1 to {MAX_WRITE_KEY_BYTES} printable ASCII characters"
            ));
        }
        if source.is_empty() || source.len() > 128 {
            return Err(format!("key `{key}` needs a source name of 1 to 128 bytes"));
        }
        let source = Source {
            name: source.into(),
            server,
        };
        match self.keys.insert(key.into(), source) {
            Some(_) => Err(format!("key `{key}` is configured twice")),
            None => Ok(()),
        }
    }

    fn read_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(format!("TRACKING_WRITE_KEYS_FILE {}: {e}", path.display()))
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (entry, server) = match line.rsplit_once(char::is_whitespace) {
                Some((entry, "server")) => (entry, true),
                _ => (line, false),
            };
            self.add(entry, server).map_err(|e| {
                ConfigError::new(format!(
                    "TRACKING_WRITE_KEYS_FILE {} line {}: {e}",
                    path.display(),
                    n + 1
                ))
            })?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The source a request's key names. With no key configured, any key
    /// names itself (a browser key, never server-side) and no key names
    /// `default`.
    pub fn resolve(&self, key: Option<&str>) -> Result<Source, KeyError> {
        let key = key.filter(|k| !k.is_empty());
        // No key configured: every key is accepted.
        if self.is_empty() {
            return Ok(Source {
                name: match key {
                    Some(k) if k.len() <= MAX_WRITE_KEY_BYTES => k.into(),
                    Some(_) => return Err(KeyError::Unknown),
                    None => Arc::from("default"),
                },
                server: false,
            });
        }
        let key = key.ok_or(KeyError::Missing)?;
        self.keys.get(key).cloned().ok_or(KeyError::Unknown)
    }
}

/// The write key a request's headers carry: Basic auth's user name (the
/// SDKs send `base64(key + ":")`), else `X-Write-Key`.
pub fn header_key(headers: &HeaderMap) -> Option<String> {
    if let Some(auth) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, creds) = auth.trim().split_once(' ')?;
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(creds.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
            return Some(user.to_owned());
        }
    }
    headers
        .get("x-write-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| k.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(entries: &[&str], server: &[&str]) -> WriteKeys {
        let mut k = WriteKeys::default();
        for e in entries {
            k.add(e, false).expect("valid entry");
        }
        for e in server {
            k.add(e, true).expect("valid entry");
        }
        k
    }

    #[test]
    fn resolving_keys() {
        let open = WriteKeys::default();
        assert_eq!(
            open.resolve(Some("wk")),
            Ok(Source {
                name: "wk".into(),
                server: false
            })
        );
        assert_eq!(open.resolve(None).map(|s| s.name), Ok("default".into()));
        assert_eq!(open.resolve(Some("")).map(|s| s.name), Ok("default".into()));
        let long = "k".repeat(MAX_WRITE_KEY_BYTES + 1);
        assert_eq!(open.resolve(Some(&long)), Err(KeyError::Unknown));

        let k = keys(&["wk1=web", " wk2 = ios "], &["srv=backend"]);
        assert_eq!(k.resolve(Some("wk2")).map(|s| s.name), Ok("ios".into()));
        assert_eq!(k.resolve(Some("srv")).map(|s| s.server), Ok(true));
        assert_eq!(k.resolve(Some("wk1")).map(|s| s.server), Ok(false));
        assert_eq!(k.resolve(Some("nope")), Err(KeyError::Unknown));
        assert_eq!(k.resolve(None), Err(KeyError::Missing));

        let mut bad = WriteKeys::default();
        assert!(bad.add("novalue", false).is_err());
        assert!(bad.add("=src", false).is_err());
        assert!(bad.add("k=", false).is_err());
        assert!(bad.add("a b=src", false).is_err());
        assert!(bad.add("k=a", false).is_ok());
        assert!(bad.add("k=b", true).is_err(), "twice");
    }

    #[test]
    fn key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        std::fs::write(
            &path,
            "# keys\n\nwk1=web\nsrv=backend server\n  wk3=android  \n",
        )
        .expect("write");
        let mut k = WriteKeys::default();
        k.read_file(&path).expect("reads");
        assert_eq!(k.len(), 3);
        assert_eq!(k.resolve(Some("srv")).map(|s| s.server), Ok(true));
        assert_eq!(k.resolve(Some("wk3")).map(|s| s.name), Ok("android".into()));
        std::fs::write(&path, "wk1=web\nbroken\n").expect("write");
        let err = WriteKeys::default().read_file(&path).expect_err("line 2");
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = WriteKeys::default()
            .read_file(&dir.path().join("missing"))
            .expect_err("missing file");
        assert!(
            err.to_string().contains("TRACKING_WRITE_KEYS_FILE"),
            "{err}"
        );
    }

    #[test]
    fn keys_from_headers() {
        let check = |pairs: &[(&str, &str)], expected: Option<&str>| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(
                    http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    v.parse().expect("value"),
                );
            }
            assert_eq!(header_key(&h).as_deref(), expected, "{pairs:?}");
        };
        check(&[], None);
        // base64("wk1:"), as every SDK sends it.
        check(&[("authorization", "Basic d2sxOg==")], Some("wk1"));
        check(&[("authorization", "basic d2sx")], Some("wk1"));
        check(&[("x-write-key", " wk2 ")], Some("wk2"));
        check(
            &[("authorization", "Basic d2sxOg=="), ("x-write-key", "wk2")],
            Some("wk1"),
        );
        check(
            &[("authorization", "Bearer t"), ("x-write-key", "wk2")],
            Some("wk2"),
        );
        check(&[("authorization", "Basic !!!")], None);
    }

    #[test]
    fn public_urls() {
        assert_eq!(
            public_url("https://t.example.com/").expect("ok"),
            ("https", "t.example.com".to_owned())
        );
        assert_eq!(
            public_url("http://127.0.0.1:8080").expect("ok"),
            ("http", "127.0.0.1:8080".to_owned())
        );
        assert!(public_url("t.example.com").is_err());
        assert!(public_url("ftp://x").is_err());
        assert!(public_url("https://").is_err());
    }
}
