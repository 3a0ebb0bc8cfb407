//! A wire-compatible stand-in for one Aerospike server node, in memory, for
//! tests and local runs (no Aerospike server can be installed here).
//!
//! Implemented: the info protocol (`node`, `build`, `cluster-name`,
//! `partition-generation`, `peers-generation`, `peers-clear-std`,
//! `peers-clear-alt`, `replicas`, `namespaces`, `features`, `version`) and
//! single-record messages: put (write), get (all bins or selected bins),
//! exists (no bin data), touch, delete, with record TTL (void time; an
//! expired record is gone), generation, and the write policies create-only,
//! update-only, replace(-only) and generation check, answering with the
//! server's result codes. String, integer and blob user keys; digests as the
//! server computes them (RIPEMD-160 of set name, key type and key bytes).
//!
//! Scans: a read message without a key (a "query" with no index filter, as
//! the clients send for a scan) streams every live record of the namespace
//! (and set, when given) in the requested partitions (`PID array`), resuming
//! a partition after a digest (`digest array`), within a record limit
//! (`max records`); records come in digest order per partition, each with its
//! stored user key, and every finished partition is reported with the
//! `partition done` flag. The user key is stored when a write sends it (the
//! clients' `send_key` policy), as the server does.
//!
//! Not implemented: secondary-index queries, scan throttling (records per
//! second is accepted and ignored), batch reads, operate with bin arithmetic, list/map operations, UDFs,
//! secondary indexes, compression, TLS, authentication, clustering (it is
//! always one node owning all 4096 partitions). A message it does not
//! understand is answered with result code 4 (parameter error) or 16
//! (unsupported feature), never silently.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use ripemd::{Digest, Ripemd160};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Seconds from the Unix epoch to Aerospike's (2010-01-01T00:00:00Z).
pub const CITRUSLEAF_EPOCH: u64 = 1_262_304_000;
pub const PARTITIONS: usize = 4096;
/// Largest message accepted (the server's default write-block is 1 MiB).
const MAX_MESSAGE: usize = 8 * 1024 * 1024;

// Message header flags.
const INFO1_READ: u8 = 1;
const INFO1_GET_ALL: u8 = 2;
const INFO1_NOBINDATA: u8 = 32;
const INFO2_WRITE: u8 = 1;
const INFO2_DELETE: u8 = 2;
const INFO2_GENERATION: u8 = 4;
const INFO2_GENERATION_GT: u8 = 8;
const INFO2_CREATE_ONLY: u8 = 32;
const INFO3_LAST: u8 = 1;
const INFO3_UPDATE_ONLY: u8 = 8;
const INFO3_CREATE_OR_REPLACE: u8 = 16;
const INFO3_REPLACE_ONLY: u8 = 32;

// Field types.
const FIELD_NAMESPACE: u8 = 0;
const FIELD_SET: u8 = 1;
const FIELD_KEY: u8 = 2;
const FIELD_DIGEST: u8 = 4;
const FIELD_PID_ARRAY: u8 = 11;
const FIELD_DIGEST_ARRAY: u8 = 12;
const FIELD_MAX_RECORDS: u8 = 13;
const FIELD_INDEX_RANGE: u8 = 22;
const INFO3_PARTITION_DONE: u8 = 4;
/// A scan's records are sent in frames of about this size.
const SCAN_FRAME: usize = 64 * 1024;

// Operations.
const OP_READ: u8 = 1;
const OP_WRITE: u8 = 2;
const OP_TOUCH: u8 = 11;
const OP_DELETE: u8 = 14;

/// Result codes, as the server sends them.
pub mod result {
    pub const OK: u8 = 0;
    pub const SERVER_ERROR: u8 = 1;
    pub const KEY_NOT_FOUND: u8 = 2;
    pub const GENERATION_ERROR: u8 = 3;
    pub const PARAMETER_ERROR: u8 = 4;
    pub const KEY_EXISTS: u8 = 5;
    pub const NAMESPACE_NOT_FOUND: u8 = 20;
    pub const UNSUPPORTED_FEATURE: u8 = 16;
}

/// A bin value: the particle types this stand-in stores.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Str(Vec<u8>),
    Blob(Vec<u8>),
}

const PARTICLE_NULL: u8 = 0;
const PARTICLE_INTEGER: u8 = 1;
const PARTICLE_FLOAT: u8 = 2;
const PARTICLE_STRING: u8 = 3;
const PARTICLE_BLOB: u8 = 4;

impl Value {
    fn particle(&self) -> u8 {
        match self {
            Self::Int(_) => PARTICLE_INTEGER,
            Self::Float(_) => PARTICLE_FLOAT,
            Self::Str(_) => PARTICLE_STRING,
            Self::Blob(_) => PARTICLE_BLOB,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Self::Int(i) => i.to_be_bytes().to_vec(),
            Self::Float(f) => f.to_bits().to_be_bytes().to_vec(),
            Self::Str(b) | Self::Blob(b) => b.clone(),
        }
    }

    /// `None` for a null particle (which deletes the bin on write).
    fn decode(particle: u8, data: &[u8]) -> Result<Option<Self>, u8> {
        Ok(Some(match particle {
            PARTICLE_NULL => return Ok(None),
            PARTICLE_INTEGER => Self::Int(i64::from_be_bytes(
                data.try_into().map_err(|_| result::PARAMETER_ERROR)?,
            )),
            PARTICLE_FLOAT => Self::Float(f64::from_bits(u64::from_be_bytes(
                data.try_into().map_err(|_| result::PARAMETER_ERROR)?,
            ))),
            PARTICLE_STRING => Self::Str(data.to_vec()),
            PARTICLE_BLOB => Self::Blob(data.to_vec()),
            _ => return Err(result::UNSUPPORTED_FEATURE),
        }))
    }
}

/// The digest the server computes for a user key: RIPEMD-160 of the set
/// name, the key's particle type and the key bytes (integers: 8 bytes BE).
pub fn digest(set: &[u8], key_particle: u8, key: &[u8]) -> [u8; 20] {
    let mut h = Ripemd160::new();
    h.update(set);
    h.update([key_particle]);
    h.update(key);
    h.finalize().into()
}

/// The partition of a digest (of 4096).
pub fn partition(digest: &[u8; 20]) -> usize {
    usize::from(u16::from_le_bytes([digest[0], digest[1]])) & (PARTITIONS - 1)
}

#[derive(Debug, Clone)]
struct Record {
    set: Vec<u8>,
    /// The user key (particle type, bytes), when a write sent it.
    key: Option<(u8, Vec<u8>)>,
    bins: BTreeMap<Vec<u8>, Value>,
    generation: u32,
    /// Seconds since the Aerospike epoch; 0 = never expires.
    void_time: u32,
}

/// Everything the node stores, by namespace and digest.
#[derive(Debug, Default)]
pub struct Store {
    namespaces: Vec<String>,
    records: Mutex<HashMap<(String, [u8; 20]), Record>>,
}

fn now_cl() -> u32 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(unix.saturating_sub(CITRUSLEAF_EPOCH)).unwrap_or(u32::MAX)
}

impl Store {
    pub fn new(namespaces: Vec<String>) -> Arc<Self> {
        Arc::new(Self {
            namespaces,
            records: Mutex::default(),
        })
    }

    /// Records alive now.
    pub fn len(&self) -> usize {
        let now = now_cl();
        self.records
            .lock()
            .map(|r| r.values().filter(|r| alive(r, now)).count())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn alive(r: &Record, now: u32) -> bool {
    r.void_time == 0 || r.void_time > now
}

/// Serves the protocol on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, store: Arc<Store>) {
    let port = listener.local_addr().map_or(3000, |a| a.port());
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &store, port).await {
                tracing::debug!(%peer, error = %e, "Connection ended.");
            }
        });
    }
}

async fn connection(mut stream: TcpStream, store: &Store, port: u16) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    loop {
        let mut header = [0u8; 8];
        if stream.read_exact(&mut header).await.is_err() {
            return Ok(());
        }
        let (version, kind) = (header[0], header[1]);
        let mut len_bytes = [0u8; 8];
        len_bytes[2..].copy_from_slice(&header[2..]);
        let len = usize::try_from(u64::from_be_bytes(len_bytes)).unwrap_or(usize::MAX);
        if version != 2 || len > MAX_MESSAGE {
            return Err(std::io::Error::other(format!(
                "bad proto header: version {version}, length {len}"
            )));
        }
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await?;
        let frames = match kind {
            1 => vec![info(&body, store, port)],
            3 => message(&body, store),
            other => {
                return Err(std::io::Error::other(format!(
                    "unsupported message type {other}"
                )));
            }
        };
        for reply in frames {
            let mut out = Vec::with_capacity(8 + reply.len());
            out.push(2);
            out.push(kind);
            out.extend_from_slice(&(reply.len() as u64).to_be_bytes()[2..]);
            out.extend_from_slice(&reply);
            stream.write_all(&out).await?;
        }
    }
}

fn info(body: &[u8], store: &Store, port: u16) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    let all_partitions = base64::engine::general_purpose::STANDARD.encode([0xFFu8; PARTITIONS / 8]);
    let mut out = String::new();
    for cmd in text.split('\n').filter(|c| !c.is_empty()) {
        let value = match cmd {
            "node" => "BB9STANDIN000001".to_owned(),
            "build" | "version" => "7.0.0.0".to_owned(),
            "edition" => "Aerospike Community Edition".to_owned(),
            "cluster-name" => "standin".to_owned(),
            "partition-generation" | "peers-generation" => "1".to_owned(),
            "peers-clear-std" | "peers-clear-alt" | "peers-tls-std" | "peers-tls-alt" => {
                format!("1,{port},[]")
            }
            "namespaces" => store.namespaces.join(";"),
            "features" => {
                "peers;replicas;pipelining;float;blob-bits;pscans;pquery;query-show".to_owned()
            }
            "replicas" | "replicas-all" | "replicas-master" => store
                .namespaces
                .iter()
                .map(|ns| format!("{ns}:0,1,{all_partitions}"))
                .collect::<Vec<_>>()
                .join(";"),
            "partitions" => "4096".to_owned(),
            _ => String::new(),
        };
        out.push_str(cmd);
        out.push('\t');
        out.push_str(&value);
        out.push('\n');
    }
    out.into_bytes()
}

/// A parsed request.
struct Request<'a> {
    info1: u8,
    info2: u8,
    info3: u8,
    generation: u32,
    ttl: u32,
    namespace: Option<&'a [u8]>,
    set: &'a [u8],
    key: Option<(u8, &'a [u8])>,
    digest: Option<[u8; 20]>,
    /// Scan fields: partitions wanted, partitions to resume after a digest,
    /// record limit, and whether an index filter was sent.
    pids: Option<&'a [u8]>,
    resume: Option<&'a [u8]>,
    max_records: u64,
    index_filter: bool,
    ops: Vec<(u8, u8, &'a [u8], &'a [u8])>,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn parse(body: &[u8]) -> Option<Request<'_>> {
    let header_sz = usize::from(*body.first()?);
    if header_sz < 22 {
        return None;
    }
    let mut req = Request {
        info1: body[1],
        info2: *body.get(2)?,
        info3: *body.get(3)?,
        generation: be32(body, 6)?,
        ttl: be32(body, 10)?,
        namespace: None,
        set: b"",
        key: None,
        digest: None,
        pids: None,
        resume: None,
        max_records: 0,
        index_filter: false,
        ops: Vec::new(),
    };
    let n_fields = be16(body, 18)?;
    let n_ops = be16(body, 20)?;
    let mut at = header_sz;
    for _ in 0..n_fields {
        let size = be32(body, at)? as usize;
        let kind = *body.get(at + 4)?;
        let data = body.get(at + 5..at + 4 + size)?;
        match kind {
            FIELD_NAMESPACE => req.namespace = Some(data),
            FIELD_SET => req.set = data,
            FIELD_KEY => req.key = Some((*data.first()?, data.get(1..)?)),
            FIELD_DIGEST => req.digest = Some(data.try_into().ok()?),
            FIELD_PID_ARRAY => req.pids = Some(data),
            FIELD_DIGEST_ARRAY => req.resume = Some(data),
            FIELD_MAX_RECORDS => {
                req.max_records = u64::from_be_bytes(data.try_into().ok()?);
            }
            FIELD_INDEX_RANGE => req.index_filter = true,
            _ => {}
        }
        at += 4 + size;
    }
    for _ in 0..n_ops {
        let size = be32(body, at)? as usize;
        let op = *body.get(at + 4)?;
        let particle = *body.get(at + 5)?;
        let name_len = usize::from(*body.get(at + 7)?);
        let name = body.get(at + 8..at + 8 + name_len)?;
        let value = body.get(at + 8 + name_len..at + 4 + size)?;
        req.ops.push((op, particle, name, value));
        at += 4 + size;
    }
    Some(req)
}

fn reply(code: u8, generation: u32, void_time: u32, bins: &[(&[u8], &Value)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(22 + bins.len() * 32);
    message_into(&mut out, INFO3_LAST, code, generation, void_time, &[], bins);
    out
}

/// Appends one message: header, fields `(type, data)`, then bins as read
/// operations.
fn message_into(
    out: &mut Vec<u8>,
    info3: u8,
    code: u8,
    generation: u32,
    void_time: u32,
    fields: &[(u8, &[u8])],
    bins: &[(&[u8], &Value)],
) {
    out.push(22);
    out.extend_from_slice(&[0, 0, info3, 0, code]);
    out.extend_from_slice(&generation.to_be_bytes());
    out.extend_from_slice(&void_time.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(
        &u16::try_from(fields.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(&u16::try_from(bins.len()).unwrap_or(u16::MAX).to_be_bytes());
    for (kind, data) in fields {
        out.extend_from_slice(
            &u32::try_from(data.len() + 1)
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.push(*kind);
        out.extend_from_slice(data);
    }
    for (name, value) in bins {
        let data = value.bytes();
        let size = 4 + name.len() + data.len();
        out.extend_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_be_bytes());
        out.push(OP_READ);
        out.push(value.particle());
        out.push(0);
        out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(name);
        out.extend_from_slice(&data);
    }
}

/// The bins a read asks for: all of them, or the named ones.
fn selected<'r>(req: &Request<'_>, r: &'r Record) -> Vec<(&'r [u8], &'r Value)> {
    if req.info1 & INFO1_GET_ALL != 0 || req.ops.is_empty() {
        r.bins.iter().map(|(k, v)| (k.as_slice(), v)).collect()
    } else {
        req.ops
            .iter()
            .filter(|(op, ..)| *op == OP_READ)
            .filter_map(|(_, _, name, _)| r.bins.get_key_value(*name))
            .map(|(k, v)| (k.as_slice(), v))
            .collect()
    }
}

/// Answers a scan: the frames to send, the last ending the stream.
fn scan(req: &Request<'_>, ns: &str, store: &Store) -> Vec<Vec<u8>> {
    if req.index_filter {
        return vec![reply(result::UNSUPPORTED_FEATURE, 0, 0, &[])];
    }
    // Partition → resume after this digest (None: from the start).
    let mut wanted: BTreeMap<usize, Option<[u8; 20]>> = BTreeMap::new();
    for pid in req.pids.unwrap_or_default().chunks(2) {
        let pid = match pid {
            [a, b] => usize::from(u16::from_le_bytes([*a, *b])),
            _ => PARTITIONS,
        };
        if pid >= PARTITIONS {
            return vec![reply(result::PARAMETER_ERROR, 0, 0, &[])];
        }
        wanted.insert(pid, None);
    }
    for d in req.resume.unwrap_or_default().chunks(20) {
        let Ok(d) = <[u8; 20]>::try_from(d) else {
            return vec![reply(result::PARAMETER_ERROR, 0, 0, &[])];
        };
        wanted.insert(partition(&d), Some(d));
    }
    if req.pids.is_none() && req.resume.is_none() {
        wanted.extend((0..PARTITIONS).map(|p| (p, None)));
    }
    let Ok(records) = store.records.lock() else {
        return vec![reply(result::SERVER_ERROR, 0, 0, &[])];
    };
    let now = now_cl();
    let mut by_partition: BTreeMap<usize, Vec<(&[u8; 20], &Record)>> = BTreeMap::new();
    for ((rns, d), r) in records.iter() {
        let pid = partition(d);
        let Some(after) = wanted.get(&pid) else {
            continue;
        };
        if rns == ns
            && alive(r, now)
            && (req.set.is_empty() || req.set == r.set.as_slice())
            && after.is_none_or(|a| *d > a)
        {
            by_partition.entry(pid).or_default().push((d, r));
        }
    }
    let with_bins = req.info1 & INFO1_NOBINDATA == 0;
    let mut frames = Vec::new();
    let mut frame = Vec::with_capacity(SCAN_FRAME + 1024);
    let mut sent = 0u64;
    'partitions: for &pid in wanted.keys() {
        let mut list = by_partition.remove(&pid).unwrap_or_default();
        list.sort_unstable_by_key(|(d, _)| **d);
        for (d, r) in list {
            if req.max_records > 0 && sent >= req.max_records {
                break 'partitions;
            }
            let key_field = r.key.as_ref().map(|(particle, bytes)| {
                let mut f = Vec::with_capacity(1 + bytes.len());
                f.push(*particle);
                f.extend_from_slice(bytes);
                f
            });
            let mut fields: Vec<(u8, &[u8])> = vec![
                (FIELD_NAMESPACE, ns.as_bytes()),
                (FIELD_SET, &r.set),
                (FIELD_DIGEST, d),
            ];
            if let Some(k) = &key_field {
                fields.push((FIELD_KEY, k));
            }
            let bins = if with_bins {
                selected(req, r)
            } else {
                Vec::new()
            };
            message_into(
                &mut frame,
                0,
                result::OK,
                r.generation,
                r.void_time,
                &fields,
                &bins,
            );
            sent += 1;
            if frame.len() >= SCAN_FRAME {
                frames.push(std::mem::replace(
                    &mut frame,
                    Vec::with_capacity(SCAN_FRAME + 1024),
                ));
            }
        }
        let generation = u32::try_from(pid).unwrap_or(0);
        message_into(
            &mut frame,
            INFO3_PARTITION_DONE,
            result::OK,
            generation,
            0,
            &[],
            &[],
        );
    }
    message_into(&mut frame, INFO3_LAST, result::OK, 0, 0, &[], &[]);
    frames.push(frame);
    frames
}

fn message(body: &[u8], store: &Store) -> Vec<Vec<u8>> {
    let Some(req) = parse(body) else {
        return vec![reply(result::PARAMETER_ERROR, 0, 0, &[])];
    };
    if req.digest.is_none() && req.key.is_none() && req.info1 & INFO1_READ != 0 {
        let ns = String::from_utf8_lossy(req.namespace.unwrap_or_default());
        if !store.namespaces.iter().any(|n| *n == ns) {
            return vec![reply(result::NAMESPACE_NOT_FOUND, 0, 0, &[])];
        }
        return scan(&req, &ns, store);
    }
    vec![single(&req, store)]
}

/// Answers a message about one record.
fn single(req: &Request<'_>, store: &Store) -> Vec<u8> {
    let Some(ns) = req
        .namespace
        .map(|n| String::from_utf8_lossy(n).into_owned())
    else {
        return reply(result::PARAMETER_ERROR, 0, 0, &[]);
    };
    if !store.namespaces.contains(&ns) {
        return reply(result::NAMESPACE_NOT_FOUND, 0, 0, &[]);
    }
    let digest = match (req.digest, req.key) {
        (Some(d), _) => d,
        (None, Some((particle, key))) => digest(req.set, particle, key),
        (None, None) => return reply(result::PARAMETER_ERROR, 0, 0, &[]),
    };
    let Ok(mut records) = store.records.lock() else {
        return reply(result::SERVER_ERROR, 0, 0, &[]);
    };
    let now = now_cl();
    let id = (ns, digest);
    if records.get(&id).is_some_and(|r| !alive(r, now)) {
        records.remove(&id);
    }
    if req.info2 & INFO2_WRITE != 0 {
        write(&mut records, id, req, now)
    } else if req.info1 & INFO1_READ != 0 {
        let Some(r) = records.get(&id) else {
            return reply(result::KEY_NOT_FOUND, 0, 0, &[]);
        };
        if req.info1 & INFO1_NOBINDATA != 0 {
            return reply(result::OK, r.generation, r.void_time, &[]);
        }
        let bins = selected(req, r);
        reply(result::OK, r.generation, r.void_time, &bins)
    } else {
        reply(result::PARAMETER_ERROR, 0, 0, &[])
    }
}

fn write(
    records: &mut HashMap<(String, [u8; 20]), Record>,
    id: (String, [u8; 20]),
    req: &Request<'_>,
    now: u32,
) -> Vec<u8> {
    let existing = records.get(&id);
    if req.info2 & INFO2_DELETE != 0 || req.ops.iter().any(|(op, ..)| *op == OP_DELETE) {
        return match records.remove(&id) {
            Some(_) => reply(result::OK, 0, 0, &[]),
            None => reply(result::KEY_NOT_FOUND, 0, 0, &[]),
        };
    }
    // Policies.
    if req.info2 & INFO2_CREATE_ONLY != 0 && existing.is_some() {
        return reply(result::KEY_EXISTS, 0, 0, &[]);
    }
    let touch_only = req.ops.iter().all(|(op, ..)| *op == OP_TOUCH);
    if (req.info3 & (INFO3_UPDATE_ONLY | INFO3_REPLACE_ONLY) != 0 || touch_only)
        && existing.is_none()
    {
        return reply(result::KEY_NOT_FOUND, 0, 0, &[]);
    }
    let current_gen = existing.map_or(0, |r| r.generation);
    if req.info2 & INFO2_GENERATION != 0 && req.generation != current_gen {
        return reply(result::GENERATION_ERROR, current_gen, 0, &[]);
    }
    if req.info2 & INFO2_GENERATION_GT != 0 && req.generation <= current_gen {
        return reply(result::GENERATION_ERROR, current_gen, 0, &[]);
    }
    let replace = req.info3 & (INFO3_CREATE_OR_REPLACE | INFO3_REPLACE_ONLY) != 0;
    let mut record = match existing {
        Some(r) if !replace => r.clone(),
        _ => Record {
            set: req.set.to_vec(),
            key: None,
            bins: BTreeMap::new(),
            generation: 0,
            void_time: 0,
        },
    };
    if let Some((particle, bytes)) = req.key {
        record.key = Some((particle, bytes.to_vec()));
    } else if replace && let Some(r) = existing {
        record.key.clone_from(&r.key);
    }
    for (op, particle, name, value) in &req.ops {
        match *op {
            OP_WRITE => match Value::decode(*particle, value) {
                Ok(Some(v)) => {
                    record.bins.insert(name.to_vec(), v);
                }
                Ok(None) => {
                    record.bins.remove(*name);
                }
                Err(code) => return reply(code, current_gen, 0, &[]),
            },
            OP_TOUCH => {}
            _ => return reply(result::UNSUPPORTED_FEATURE, current_gen, 0, &[]),
        }
    }
    // TTL: 0 = the namespace default (here: never), 0xFFFFFFFF (-1) = never,
    // 0xFFFFFFFE (-2) = keep the current void time.
    record.void_time = match req.ttl {
        0 | u32::MAX => 0,
        0xFFFF_FFFE => existing.map_or(0, |r| r.void_time),
        ttl => now.saturating_add(ttl),
    };
    record.generation = current_gen.wrapping_add(1).max(1);
    let (generation, void_time) = (record.generation, record.void_time);
    if record.bins.is_empty() {
        records.remove(&id);
    } else {
        records.insert(id, record);
    }
    reply(result::OK, generation, void_time, &[])
}

/// Binds `addr` and serves until the process ends (for the binary).
pub async fn run(addr: SocketAddr, namespaces: Vec<String>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, ?namespaces, "Aerospike stand-in listening.");
    serve(listener, Store::new(namespaces)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: [u8; 20]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Digests pinned from Aerospike's official Python client
    /// (`aerospike.calc_digest(namespace, set, key)`), for a string, an
    /// integer and a blob key.
    #[test]
    fn digests_match_the_official_client() {
        assert_eq!(
            hex(digest(b"short_sessions", PARTICLE_STRING, b"visitor-1")),
            "e3ce73679b079847ad45a1b3bbfec91fb4c86c54"
        );
        assert_eq!(
            hex(digest(b"demo", PARTICLE_INTEGER, &42i64.to_be_bytes())),
            "cf5a1365effa4dc53333f2166d103358f8711096"
        );
        assert_eq!(
            hex(digest(b"via", PARTICLE_BLOB, &[1, 2])),
            "02b98bc54a1a0f3d6ff7fb5f8761579602011cb8"
        );
    }
}
