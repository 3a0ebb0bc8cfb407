//! Stand-ins for the receivers of traces, so tests see what the services
//! export: a Datadog agent (`/v0.4/traces` and `/v0.5/traces`, msgpack) and
//! an OTLP/HTTP receiver (`/v1/traces`, protobuf), the latter also over TLS
//! with a certificate from a private CA made for it (as an in-cluster
//! collector has). Each listens on a free loopback port, answers `200`, and
//! keeps the spans it decoded.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One span as a receiver saw it. Datadog ids are 64-bit; OTLP trace ids
/// are 128-bit (`trace_id_high` holds the upper half, 0 for Datadog).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub resource: String,
    pub trace_id: u64,
    pub trace_id_high: u64,
    pub span_id: u64,
    pub parent_id: u64,
    pub error: bool,
    /// Tags (Datadog `meta`) or attributes (OTLP, as text).
    pub meta: HashMap<String, String>,
    /// Linked spans `(trace id low 64 bits, span id)` (OTLP only).
    pub links: Vec<(u64, u64)>,
}

type Decoder = fn(&str, &[u8]) -> Result<Vec<ReceivedSpan>, String>;

/// A loopback HTTP/1.1 server that decodes trace payloads.
#[derive(Debug)]
pub struct TraceReceiver {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    errors: Arc<Mutex<Vec<String>>>,
    /// TLS handshakes that failed (TLS receivers only).
    refused: Arc<Mutex<Vec<String>>>,
    /// The private CA that signed the certificate (TLS receivers only).
    ca_pem: Option<String>,
    stop: Arc<AtomicBool>,
}

impl TraceReceiver {
    /// A Datadog agent stand-in (`DD_TRACE_AGENT_URL` = [`TraceReceiver::url`]).
    pub fn datadog() -> Self {
        Self::start(decode_datadog, None)
    }

    /// An OTLP/HTTP receiver stand-in (`OTEL_EXPORTER_OTLP_ENDPOINT` = [`TraceReceiver::url`]).
    pub fn otlp() -> Self {
        Self::start(decode_otlp, None)
    }

    /// An OTLP/HTTP receiver stand-in behind TLS: its certificate (for
    /// `127.0.0.1` and `localhost`) is signed by a private CA made for it,
    /// whose certificate is [`TraceReceiver::ca_pem`]; [`TraceReceiver::url`]
    /// is `https://…`.
    pub fn otlp_tls() -> Self {
        let (config, ca_pem) = private_ca_server();
        Self::start(decode_otlp, Some((config, ca_pem)))
    }

    fn start(decode: Decoder, tls: Option<(Arc<rustls::ServerConfig>, String)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind trace receiver");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (config, ca_pem) = tls.unzip();
        let (sp, er, re, st) = (
            Arc::clone(&spans),
            Arc::clone(&errors),
            Arc::clone(&refused),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (sp, er, re) = (Arc::clone(&sp), Arc::clone(&er), Arc::clone(&re));
                        let config = config.clone();
                        std::thread::spawn(move || {
                            if let Err(e) = stream.set_read_timeout(Some(IDLE)) {
                                er.lock().expect("errors").push(e.to_string());
                                return;
                            }
                            let served = match config {
                                None => serve(stream, decode, &sp),
                                Some(config) => match handshake(stream, config) {
                                    Ok(tls) => serve(tls, decode, &sp),
                                    Err(e) => {
                                        re.lock().expect("refused").push(e);
                                        return;
                                    }
                                },
                            };
                            if let Err(e) = served {
                                er.lock().expect("errors").push(e);
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            addr,
            spans,
            errors,
            refused,
            ca_pem,
            stop,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The private CA's certificate (PEM) of a TLS receiver: what a client
    /// must trust, e.g. through `SSL_CERT_FILE`.
    pub fn ca_pem(&self) -> &str {
        self.ca_pem
            .as_deref()
            .expect("only a TLS receiver has a CA")
    }

    /// TLS handshakes that failed, with the reason (a client that does not
    /// trust the CA ends its handshake with an alert).
    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().expect("refused").clone()
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("spans").clone()
    }

    /// Payloads it could not decode (a test should expect none).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().expect("errors").clone()
    }

    /// Waits until `done(&spans)` or `within` passes; returns the spans.
    pub fn wait_for(
        &self,
        within: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + within;
        loop {
            let spans = self.spans();
            if done(&spans) || Instant::now() > deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TraceReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A server configuration whose certificate (for `127.0.0.1` and
/// `localhost`) is signed by a CA made here; returns it and the CA's PEM.
fn private_ca_server() -> (Arc<rustls::ServerConfig>, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "test-support private CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_pem = ca.self_signed(&ca_key).expect("CA certificate").pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("server key");
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server parameters");
    server
        .distinguished_name
        .push(DnType::CommonName, "trace receiver");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server.signed_by(&key, &issuer).expect("server certificate");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("server certificate and key");
    (Arc::new(config), ca_pem)
}

/// The server side of a TLS handshake on `tcp`.
fn handshake(
    mut tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> Result<rustls::StreamOwned<rustls::ServerConnection, TcpStream>, String> {
    let mut conn = rustls::ServerConnection::new(config).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// How long a read may wait: a kept-alive connection idle this long is
/// closed (quietly, as a server does).
const IDLE: Duration = Duration::from_secs(60);

/// Reads requests on one connection (keep-alive or not) and answers each.
/// A connection closed or left idle between requests ends quietly.
fn serve<S: Read + Write>(
    stream: S,
    decode: Decoder,
    spans: &Mutex<Vec<ReceivedSpan>>,
) -> Result<(), String> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if line.is_empty()
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof
                            | std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::ConnectionReset
                    ) =>
            {
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        }
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut length = 0usize;
        let mut close = false;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).map_err(|e| e.to_string())?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().map_err(|_| format!("bad length {v}"))?;
            }
            if lower == "connection: close" {
                close = true;
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).map_err(|e| e.to_string())?;
        let decoded = decode(&path, &body);
        let (status, result) = match decoded {
            Ok(s) => {
                spans.lock().map_err(|e| e.to_string())?.extend(s);
                ("200 OK", Ok(()))
            }
            Err(e) => ("400 Bad Request", Err(format!("{path}: {e}"))),
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
        );
        let writer = reader.get_mut();
        writer
            .write_all(answer.as_bytes())
            .and_then(|()| writer.flush())
            .map_err(|e| e.to_string())?;
        result?;
        if close {
            return Ok(());
        }
    }
}

fn decode_datadog(path: &str, body: &[u8]) -> Result<Vec<ReceivedSpan>, String> {
    use rmpv::Value;
    let value = rmpv::decode::read_value(&mut &body[..]).map_err(|e| e.to_string())?;
    let u64_of = |v: &Value| {
        v.as_u64()
            .or_else(|| v.as_i64().map(|i| i as u64))
            .unwrap_or(0)
    };
    let mut out = Vec::new();
    match path {
        "/v0.5/traces" => {
            // [strings, [[span, …], …]]; a span is a 12-element array whose
            // strings are indexes into `strings`.
            let top = value.as_array().ok_or("v0.5 payload is not an array")?;
            let (Some(strings), Some(traces)) = (
                top.first().and_then(Value::as_array),
                top.get(1).and_then(Value::as_array),
            ) else {
                return Err("v0.5 payload is not [strings, traces]".into());
            };
            let s = |v: &Value| -> String {
                v.as_u64()
                    .and_then(|i| strings.get(i as usize))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            for trace in traces {
                for span in trace.as_array().ok_or("a trace is not an array")? {
                    let f = span.as_array().ok_or("a span is not an array")?;
                    if f.len() < 12 {
                        return Err(format!("a v0.5 span has {} fields", f.len()));
                    }
                    let meta = f[9]
                        .as_map()
                        .map(|m| m.iter().map(|(k, v)| (s(k), s(v))).collect())
                        .unwrap_or_default();
                    out.push(ReceivedSpan {
                        service: s(&f[0]),
                        name: s(&f[1]),
                        resource: s(&f[2]),
                        trace_id: u64_of(&f[3]),
                        span_id: u64_of(&f[4]),
                        parent_id: u64_of(&f[5]),
                        error: u64_of(&f[8]) != 0,
                        meta,
                        ..ReceivedSpan::default()
                    });
                }
            }
        }
        "/v0.4/traces" => {
            for trace in value.as_array().ok_or("v0.4 payload is not an array")? {
                for span in trace.as_array().ok_or("a trace is not an array")? {
                    let m = span.as_map().ok_or("a v0.4 span is not a map")?;
                    let get = |k: &str| {
                        m.iter()
                            .find(|(key, _)| key.as_str() == Some(k))
                            .map(|(_, v)| v)
                    };
                    let text = |k: &str| {
                        get(k)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned()
                    };
                    out.push(ReceivedSpan {
                        service: text("service"),
                        name: text("name"),
                        resource: text("resource"),
                        trace_id: get("trace_id").map_or(0, u64_of),
                        span_id: get("span_id").map_or(0, u64_of),
                        parent_id: get("parent_id").map_or(0, u64_of),
                        error: get("error").map_or(0, u64_of) != 0,
                        ..ReceivedSpan::default()
                    });
                }
            }
        }
        other => return Err(format!("unknown path {other}")),
    }
    Ok(out)
}

fn decode_otlp(path: &str, body: &[u8]) -> Result<Vec<ReceivedSpan>, String> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;
    if path != "/v1/traces" {
        return Err(format!("unknown path {path}"));
    }
    let req = ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())?;
    let be = |b: &[u8], from: usize| -> u64 {
        b.get(from..from + 8)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u64::from_be_bytes)
    };
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .and_then(|a| match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Any::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name.clone(),
                    resource: span.name.clone(),
                    trace_id_high: be(&span.trace_id, 0),
                    trace_id: be(&span.trace_id, 8),
                    span_id: be(&span.span_id, 0),
                    parent_id: be(&span.parent_span_id, 0),
                    error: span.status.as_ref().is_some_and(|s| s.code == 2),
                    meta: span
                        .attributes
                        .iter()
                        .filter_map(|a| {
                            let text = match a.value.as_ref()?.value.as_ref()? {
                                Any::StringValue(s) => s.clone(),
                                Any::IntValue(i) => i.to_string(),
                                Any::BoolValue(b) => b.to_string(),
                                Any::DoubleValue(d) => d.to_string(),
                                _ => return None,
                            };
                            Some((a.key.clone(), text))
                        })
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|l| (be(&l.trace_id, 8), be(&l.span_id, 0)))
                        .collect(),
                });
            }
        }
    }
    Ok(out)
}
