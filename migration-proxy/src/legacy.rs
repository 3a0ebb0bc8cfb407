//! The legacy Aerospike layout: sets `short_sessions` and `long_sessions`
//! (bin `sid`) and `via` (bins `source`, `medium`, `campaign`), user key =
//! `client_id` (string), record TTL = remaining lifetime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aerospike::{
    Bin, Bins, Client, ClientPolicy, ErrorKind, Expiration, GenerationPolicy, Key, ReadPolicy,
    Record, RecordExistsAction, ResultCode, Value, WritePolicy,
};
use tracing::Instrument;
use tracking_core::{ClientId, LegacySession, LegacyVia, LegacyVisitor};

use crate::metrics::AerospikeMetrics;

pub const SHORT_SET: &str = "short_sessions";
pub const LONG_SET: &str = "long_sessions";
pub const VIA_SET: &str = "via";
pub const SID: &str = "sid";
pub const VIA_BINS: [&str; 3] = ["source", "medium", "campaign"];

/// Seconds from the Unix epoch to Aerospike's.
const AEROSPIKE_EPOCH: u64 = 1_262_304_000;

/// Why Aerospike could not answer.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("not connected to Aerospike yet")]
    NotConnected,
    #[error("Aerospike did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Aerospike failed: {0}")]
    Failed(String),
    /// The record exists but the client cannot decode it (a string bin that
    /// is not UTF-8).
    #[error("the record cannot be decoded: {0}")]
    Unreadable(String),
}

/// The session parts of a `PUT` to create rather than overwrite: a mint in
/// `legacy` mode. Such a part is written with Aerospike's `CREATE_ONLY`
/// policy, so of two processes minting a visitor's session at the same
/// moment exactly one writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Create {
    pub short: bool,
    pub long: bool,
}

impl Create {
    /// The `create` query parameter: `short`, `long` or `short,long`.
    pub fn parse(value: &str) -> Option<Self> {
        let mut create = Self::default();
        for part in value.split(',') {
            match part {
                "short" => create.short = true,
                "long" => create.long = true,
                _ => return None,
            }
        }
        Some(create)
    }
}

/// What a `put` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// Every part was written.
    Written,
    /// A part to create existed already (another writer created it); the
    /// other parts were written.
    Exists,
}

/// A record's end in ms since the Unix epoch; `None` when it never expires.
pub fn expires_at(record: &Record) -> Option<u64> {
    match record.expiration() {
        0 | u32::MAX => None,
        void => Some((AEROSPIKE_EPOCH + u64::from(void)) * 1000),
    }
}

fn string_bin(record: &Record, name: &str) -> Option<String> {
    match record.bins.get(name) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

/// The session in a `short_sessions`/`long_sessions` record.
pub fn session_of(record: &Record) -> Option<LegacySession> {
    Some(LegacySession {
        id: string_bin(record, SID)?,
        expires_at: expires_at(record),
    })
}

/// The via in a `via` record (`None` when it has no field).
pub fn via_of(record: &Record) -> Option<LegacyVia> {
    let [source, medium, campaign] = VIA_BINS.map(|b| string_bin(record, b));
    if source.is_none() && medium.is_none() && campaign.is_none() {
        return None;
    }
    Some(LegacyVia {
        source,
        medium,
        campaign,
        expires_at: expires_at(record),
    })
}

/// One record as read: absent, present and decoded, or present but not
/// decodable.
enum Stored {
    Absent,
    Record(Box<Record>),
    Unreadable,
}

impl Stored {
    fn readable(&self) -> Option<&Record> {
        match self {
            Self::Record(r) => Some(r),
            Self::Absent | Self::Unreadable => None,
        }
    }
}

/// A part's read: an undecodable record is there but unreadable, not an
/// error of the whole lookup.
fn stored(read: Result<Option<Record>, LegacyError>) -> Result<Stored, LegacyError> {
    match read {
        Ok(Some(r)) => Ok(Stored::Record(Box::new(r))),
        Ok(None) => Ok(Stored::Absent),
        Err(LegacyError::Unreadable(_)) => Ok(Stored::Unreadable),
        Err(e) => Err(e),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The Aerospike client, connected in the background (a proxy that starts
/// before Aerospike is reachable serves 503s until it is).
pub struct Legacy {
    client: OnceLock<Arc<Client>>,
    namespace: String,
    timeout: Duration,
    metrics: AerospikeMetrics,
    invalid: AtomicU64,
}

impl std::fmt::Debug for Legacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Legacy")
            .field("namespace", &self.namespace)
            .field("timeout", &self.timeout)
            .field("connected", &self.connected())
            .finish_non_exhaustive()
    }
}

impl service_kit::prom::Collect for Legacy {
    fn collect(&self, out: &mut String) {
        self.metrics
            .render(out, self.invalid_records(), self.connected());
    }
}

impl Legacy {
    pub fn new(namespace: String, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            client: OnceLock::new(),
            namespace,
            timeout,
            metrics: AerospikeMetrics::default(),
            invalid: AtomicU64::new(0),
        })
    }

    /// Connects to `hosts` (comma-separated `host:port`), retrying every
    /// second until it succeeds.
    pub async fn connect_forever(self: Arc<Self>, hosts: String) {
        let policy = ClientPolicy {
            timeout: 1000,
            ..ClientPolicy::default()
        };
        let mut warned = false;
        loop {
            match Client::new(&policy, &hosts).await {
                Ok(client) => {
                    tracing::info!(%hosts, "Connected to Aerospike.");
                    let _ = self.client.set(Arc::new(client));
                    return;
                }
                Err(error) => {
                    if !warned {
                        tracing::warn!(%hosts, %error, "Cannot reach Aerospike yet; retrying every second.");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Connects once (for `copy`, which has nothing to do without Aerospike).
    pub async fn connect_once(&self, hosts: &str) -> Result<(), LegacyError> {
        let client = Client::new(&ClientPolicy::default(), &hosts)
            .await
            .map_err(|e| LegacyError::Failed(e.to_string()))?;
        let _ = self.client.set(Arc::new(client));
        Ok(())
    }

    pub fn client(&self) -> Result<&Arc<Client>, LegacyError> {
        self.client.get().ok_or(LegacyError::NotConnected)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn connected(&self) -> bool {
        self.client.get().is_some_and(|c| c.is_connected())
    }

    /// Records with unreadable bins, seen since start.
    pub fn invalid_records(&self) -> u64 {
        self.invalid.load(Ordering::Relaxed)
    }

    fn key(&self, set: &str, client_id: &ClientId) -> Result<Key, LegacyError> {
        Key::new(
            self.namespace.as_str(),
            set,
            Value::from(client_id.as_str()),
        )
        .map_err(|e| LegacyError::Failed(e.to_string()))
    }

    fn read_policy(&self) -> ReadPolicy {
        let mut p = ReadPolicy::default();
        let ms = u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX);
        p.base_policy.total_timeout = ms;
        p.base_policy.socket_timeout = ms;
        p
    }

    fn write_policy(&self, ttl_secs: u32) -> WritePolicy {
        let mut p = WritePolicy {
            send_key: true,
            expiration: Expiration::Seconds(ttl_secs),
            ..WritePolicy::default()
        };
        let ms = u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX);
        p.base_policy.total_timeout = ms;
        p.base_policy.socket_timeout = ms;
        // A write that timed out is in doubt; the next renewal repeats it.
        p.base_policy.max_retries = 0;
        p
    }

    /// Runs one Aerospike call (`op` = `get` or `put`) within the deadline,
    /// in its own span, and counts its outcome. A missing record, or an
    /// existing one for a create-only put, is `Ok(None)`.
    async fn call<T>(
        &self,
        op: &'static str,
        set: &'static str,
        call: impl Future<Output = aerospike::Result<T>>,
    ) -> Result<Option<T>, LegacyError> {
        let started = std::time::Instant::now();
        let span = tracing::debug_span!(
            "aerospike",
            otel.name = if op == "get" {
                "aerospike.get"
            } else {
                "aerospike.put"
            },
            otel.kind = "client",
            set,
            outcome = tracing::field::Empty
        );
        let result = tokio::time::timeout(self.timeout, call)
            .instrument(span.clone())
            .await;
        let (outcome, value) = match result {
            Ok(Ok(v)) => ("ok", Ok(Some(v))),
            Ok(Err(e)) if e.matches(&[ResultCode::KeyNotFoundError]) => ("not_found", Ok(None)),
            // A create-only write found the record, or a generation-checked
            // one found it changed.
            Ok(Err(e)) if e.matches(&[ResultCode::KeyExistsError, ResultCode::GenerationError]) => {
                ("exists", Ok(None))
            }
            Ok(Err(e)) if e.is_client_timeout() || e.matches(&[ResultCode::Timeout]) => {
                ("timeout", Err(LegacyError::Timeout(self.timeout)))
            }
            Ok(Err(e)) if matches!(e.kind(), ErrorKind::InvalidUtf8(_)) => {
                ("unreadable", Err(LegacyError::Unreadable(e.to_string())))
            }
            Ok(Err(e)) => ("error", Err(LegacyError::Failed(e.to_string()))),
            Err(_) => ("timeout", Err(LegacyError::Timeout(self.timeout))),
        };
        span.record("outcome", outcome);
        if value.is_err() {
            service_kit::telemetry::set_error(&span, outcome);
        }
        self.metrics.record(op, set, outcome, started.elapsed());
        value
    }

    async fn get_one(
        &self,
        set: &'static str,
        client_id: &ClientId,
    ) -> Result<Option<Record>, LegacyError> {
        let client = self.client()?;
        let key = self.key(set, client_id)?;
        self.call("get", set, client.get(&self.read_policy(), &key, Bins::All))
            .await
    }

    /// Whether an existing record of a session part cannot be read as a
    /// session, and its generation then: such a record is overwritten by a
    /// create-only write (it would never be created otherwise), but only at
    /// that generation, so a record another writer put meanwhile stays.
    async fn unreadable_generation(
        &self,
        set: &'static str,
        client_id: &ClientId,
    ) -> Result<Option<u32>, LegacyError> {
        let client = self.client()?;
        let key = self.key(set, client_id)?;
        // The header first (it decodes no bin), then the bins: a record
        // written between the two reads is readable or has another generation.
        let Some(header) = self
            .call(
                "get",
                set,
                client.get(&self.read_policy(), &key, Bins::None),
            )
            .await?
        else {
            return Ok(None);
        };
        match self.get_one(set, client_id).await {
            Ok(Some(record)) if session_of(&record).is_some() => Ok(None),
            Ok(None) => Ok(None),
            Ok(Some(_)) | Err(LegacyError::Unreadable(_)) => Ok(Some(header.generation)),
            Err(e) => Err(e),
        }
    }

    /// The visitor's three records, read concurrently; `None` when Aerospike
    /// has none of them.
    pub async fn get(&self, client_id: &ClientId) -> Result<Option<LegacyVisitor>, LegacyError> {
        let (short, long, via) = tokio::join!(
            self.get_one(SHORT_SET, client_id),
            self.get_one(LONG_SET, client_id),
            self.get_one(VIA_SET, client_id),
        );
        let (short, long, via) = (stored(short)?, stored(long)?, stored(via)?);
        if [&short, &long, &via]
            .iter()
            .all(|p| matches!(p, Stored::Absent))
        {
            return Ok(None);
        }
        let mut invalid = 0;
        let mut read = |part: Stored, f: fn(&Record) -> Option<LegacySession>| {
            let s = part.readable().and_then(f);
            invalid += u64::from(s.is_none() && !matches!(part, Stored::Absent));
            s
        };
        let short = read(short, session_of);
        let long = read(long, session_of);
        let via_read = via.readable().and_then(via_of);
        invalid += u64::from(via_read.is_none() && !matches!(via, Stored::Absent));
        let visitor = LegacyVisitor {
            short,
            long,
            via: via_read,
        };
        if invalid > 0 {
            self.invalid.fetch_add(invalid, Ordering::Relaxed);
        }
        Ok(Some(visitor))
    }

    /// Writes one record; `Ok(false)` when `create_only` and it existed.
    async fn put_one(
        &self,
        set: &'static str,
        client_id: &ClientId,
        expires_at: Option<u64>,
        bins: Vec<Bin>,
        create_only: bool,
    ) -> Result<bool, LegacyError> {
        let ttl_secs = match expires_at {
            // Aerospike counts whole seconds from its own clock's current
            // second: one more second than the rounded-up rest keeps the
            // legacy record from ending before ours (it ends at most 2 s
            // later).
            Some(end) => match end.checked_sub(now_ms()) {
                Some(left) if left > 0 => {
                    u32::try_from(left.div_ceil(1000) + 1).unwrap_or(u32::MAX - 2)
                }
                _ => return Ok(true), // already over: nothing to renew
            },
            None => u32::MAX,
        };
        let client = self.client()?;
        let key = self.key(set, client_id)?;
        let mut policy = self.write_policy(ttl_secs);
        if expires_at.is_none() {
            policy.expiration = Expiration::Never;
        }
        if create_only {
            policy.record_exists_action = RecordExistsAction::CreateOnly;
        }
        match self
            .call("put", set, client.put(&policy, &key, &bins))
            .await?
        {
            Some(()) => Ok(true),
            None if create_only => {
                let Some(generation) = self.unreadable_generation(set, client_id).await? else {
                    return Ok(false);
                };
                self.invalid.fetch_add(1, Ordering::Relaxed);
                policy.record_exists_action = RecordExistsAction::Update;
                policy.generation_policy = GenerationPolicy::ExpectGenEqual;
                policy.generation = generation;
                match self
                    .call("put", set, client.put(&policy, &key, &bins))
                    .await
                {
                    Ok(Some(())) => Ok(true),
                    // Another writer changed it meanwhile (or it expired).
                    Ok(None) => Ok(false),
                    Err(e) => Err(e),
                }
            }
            // A plain put creates a missing record; "not found" or "exists"
            // would be server answers this layout does not expect.
            None => Err(LegacyError::Failed(
                "Aerospike refused a plain put (key not found or exists)".into(),
            )),
        }
    }

    /// Writes (renews) the parts of `visitor` that are present, concurrently;
    /// the session parts `create` names only if their record does not exist
    /// ([`Put::Exists`] when one did). A part whose end has passed is left
    /// alone.
    pub async fn put(
        &self,
        client_id: &ClientId,
        visitor: &LegacyVisitor,
        create: Create,
    ) -> Result<Put, LegacyError> {
        let session = |s: &Option<LegacySession>, set: &'static str, create_only: bool| {
            let s = s.clone();
            async move {
                match s {
                    Some(s) => {
                        self.put_one(
                            set,
                            client_id,
                            s.expires_at,
                            vec![Bin::new(SID.to_owned(), Value::from(s.id))],
                            create_only,
                        )
                        .await
                    }
                    None => Ok(true),
                }
            }
        };
        let via = async {
            match &visitor.via {
                Some(v) => {
                    // Absent fields are written as nil: the bin is removed.
                    let bins = [&v.source, &v.medium, &v.campaign]
                        .into_iter()
                        .zip(VIA_BINS)
                        .map(|(value, name)| {
                            Bin::new(
                                name.to_owned(),
                                value.as_deref().map_or(Value::Nil, Value::from),
                            )
                        })
                        .collect();
                    self.put_one(VIA_SET, client_id, v.expires_at, bins, false)
                        .await
                }
                None => Ok(true),
            }
        };
        let (a, b, c) = tokio::join!(
            session(&visitor.short, SHORT_SET, create.short),
            session(&visitor.long, LONG_SET, create.long),
            via
        );
        let written = [a?, b?, c?];
        Ok(if written.iter().all(|w| *w) {
            Put::Written
        } else {
            Put::Exists
        })
    }
}
