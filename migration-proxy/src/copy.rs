//! `migration-proxy copy`: the legacy sets into Bigtable, one (set,
//! partition) unit at a time.
//!
//! Each unit is a partition scan of one set. Every record is compared with
//! the visitor's Bigtable row (latest cells): a part Bigtable already has at
//! the same or a later time is left alone (`skipped_newer` / `unchanged`),
//! an expired one is not written, anything else is written as cells at the
//! legacy part's own timestamps — so even a race with live traffic cannot
//! hide a newer session (reads take the newest cell). A unit whose records
//! all succeeded is appended to the checkpoint file; a rerun skips it. A
//! rerun without the checkpoint writes nothing new either: every part is
//! then `unchanged`.
//!
//! Progress goes to stderr ([`progress`]): a bar on a terminal, a log line
//! per `--progress-interval` otherwise, and a summary at the end.

mod progress;

pub use progress::TerminalLogs;

use std::collections::HashSet;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aerospike::{Bins, PartitionFilter, QueryPolicy, Record, Statement, Value};
use anyhow::Context;
use futures_util::StreamExt;
use indicatif::ProgressBar;
use tokio::sync::Mutex;
use tracking_bigtable::{BigtableConfig, BigtableSessionStore};
use tracking_core::{
    ClientId, Clock, LegacyVisitor, RandomIds, SessionPolicy, SystemClock, Timestamp, Ttls,
    VisitorState,
};

use crate::config::{AerospikeArgs, CopyArgs};
use crate::legacy::{LONG_SET, Legacy, SHORT_SET, VIA_SET, session_of, via_of};

pub const SETS: [&str; 3] = [SHORT_SET, LONG_SET, VIA_SET];

/// What a copy did, by record (and by unit).
#[derive(Debug, Default)]
pub struct CopyReport {
    pub copied: u64,
    pub skipped_newer: u64,
    pub unchanged: u64,
    pub expired: u64,
    /// Records that cannot be copied: no stored user key, a key that is not
    /// a valid client id, unreadable bins.
    pub invalid: u64,
    pub failed: u64,
    pub units_done: u64,
    pub units_from_checkpoint: u64,
    pub units_failed: u64,
    pub elapsed: Duration,
}

impl CopyReport {
    pub fn records(&self) -> u64 {
        self.copied
            + self.skipped_newer
            + self.unchanged
            + self.expired
            + self.invalid
            + self.failed
    }

    /// Records left as they were: Bigtable had them (newer or the same),
    /// or they had expired.
    pub fn skipped(&self) -> u64 {
        self.skipped_newer + self.unchanged + self.expired
    }

    /// Every record read and none failed, every unit scanned to the end.
    /// Otherwise the copy is incomplete (exit status 1): a rerun retries
    /// the units not in the checkpoint.
    pub fn complete(&self) -> bool {
        self.failed == 0 && self.units_failed == 0
    }

    /// Records per second, on average.
    pub fn rate(&self) -> f64 {
        self.records() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for CopyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "copy report")?;
        writeln!(f, "  copied         {}", self.copied)?;
        writeln!(f, "  skipped-newer  {}", self.skipped_newer)?;
        writeln!(f, "  unchanged      {}", self.unchanged)?;
        writeln!(f, "  expired        {}", self.expired)?;
        writeln!(f, "  invalid        {}", self.invalid)?;
        writeln!(f, "  failed         {}", self.failed)?;
        writeln!(
            f,
            "  units          {} done, {} already in the checkpoint, {} failed (set x partition)",
            self.units_done, self.units_from_checkpoint, self.units_failed
        )?;
        write!(
            f,
            "  elapsed        {:.1} s, {:.0} records/s",
            self.elapsed.as_secs_f64(),
            self.rate()
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Copied,
    SkippedNewer,
    Unchanged,
    Expired,
    Invalid,
    Failed,
}

impl Outcome {
    /// Variants, the last being `Failed`.
    const COUNT: usize = Outcome::Failed as usize + 1;
}

#[derive(Debug, Default)]
struct Tally {
    /// Records by [`Outcome`].
    outcomes: [AtomicU64; Outcome::COUNT],
    units_done: AtomicU64,
    units_failed: AtomicU64,
}

impl Tally {
    fn count(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome as usize].load(Ordering::Relaxed)
    }

    /// The counts so far.
    fn report(&self, units_from_checkpoint: u64, elapsed: Duration) -> CopyReport {
        CopyReport {
            copied: self.get(Outcome::Copied),
            skipped_newer: self.get(Outcome::SkippedNewer),
            unchanged: self.get(Outcome::Unchanged),
            expired: self.get(Outcome::Expired),
            invalid: self.get(Outcome::Invalid),
            failed: self.get(Outcome::Failed),
            units_done: self.units_done.load(Ordering::Relaxed),
            units_from_checkpoint,
            units_failed: self.units_failed.load(Ordering::Relaxed),
            elapsed,
        }
    }
}

/// Spaces records `1/rate` apart (0: no limit).
#[derive(Debug)]
struct Pacer {
    gap: Option<Duration>,
    next: Mutex<tokio::time::Instant>,
}

impl Pacer {
    fn new(rate: u32) -> Self {
        Self {
            gap: (rate > 0).then(|| Duration::from_secs(1) / rate),
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    async fn wait(&self) {
        let Some(gap) = self.gap else { return };
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + gap;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// The finished units, read from and appended to the checkpoint file.
#[derive(Debug)]
struct Checkpoint {
    done: HashSet<(String, u16)>,
    file: std::sync::Mutex<std::fs::File>,
}

impl Checkpoint {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut done = HashSet::new();
        for (n, line) in text.lines().enumerate() {
            // A torn last line (killed mid-write) is ignored: that unit reruns.
            let parsed = line
                .split_once(' ')
                .and_then(|(set, pid)| Some((set.to_owned(), pid.parse::<u16>().ok()?)));
            match parsed {
                Some(unit) if SETS.contains(&unit.0.as_str()) => {
                    done.insert(unit);
                }
                _ => tracing::warn!(line = n + 1, "Unreadable checkpoint line ignored."),
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // Start on a fresh line if the last one was torn.
        if !text.is_empty() && !text.ends_with('\n') {
            writeln!(&file)?;
        }
        Ok(Self {
            done,
            file: std::sync::Mutex::new(file),
        })
    }

    fn record(&self, set: &str, pid: u16) -> std::io::Result<()> {
        let mut file = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("checkpoint lock poisoned"))?;
        // One write per line: a kill leaves whole lines or one torn tail.
        file.write_all(format!("{set} {pid}\n").as_bytes())
    }

    fn sync(&self) -> std::io::Result<()> {
        match self.file.lock() {
            Ok(f) => f.sync_data(),
            Err(_) => Err(std::io::Error::other("checkpoint lock poisoned")),
        }
    }
}

struct Copier {
    legacy: Arc<Legacy>,
    store: BigtableSessionStore,
    ttls: Ttls,
    pacer: Pacer,
    tally: Arc<Tally>,
    /// Advanced once per finished unit, when a bar is shown.
    bar: Option<ProgressBar>,
    checkpoint: Checkpoint,
    concurrency: usize,
}

impl Copier {
    /// The legacy part a record holds, as a partial cloud state (plus the
    /// via recording time), or why it cannot be copied.
    fn part(
        &self,
        set: &str,
        record: &Record,
        now: Timestamp,
    ) -> Result<(ClientId, VisitorState, Option<Timestamp>), Outcome> {
        let client_id = match record.key.as_ref().and_then(|k| k.user_key()) {
            Some(Value::String(s)) => ClientId::parse(s).ok_or(Outcome::Invalid)?,
            _ => return Err(Outcome::Invalid),
        };
        let mut legacy = LegacyVisitor::default();
        let end = match set {
            SHORT_SET => {
                legacy.short = Some(session_of(record).ok_or(Outcome::Invalid)?);
                legacy.short.as_ref().and_then(|s| s.expires_at)
            }
            LONG_SET => {
                legacy.long = Some(session_of(record).ok_or(Outcome::Invalid)?);
                legacy.long.as_ref().and_then(|s| s.expires_at)
            }
            _ => {
                legacy.via = Some(via_of(record).ok_or(Outcome::Invalid)?);
                legacy.via.as_ref().and_then(|v| v.expires_at)
            }
        };
        if end.is_some_and(|e| e <= now.as_millis()) {
            return Err(Outcome::Expired);
        }
        let (state, invalid) = legacy.to_state(self.ttls, now);
        if invalid.any() {
            return Err(Outcome::Invalid);
        }
        let via_recorded = state
            .via
            .as_ref()
            .map(|v| LegacyVisitor::via_recorded_at(v.expires_at, self.ttls));
        Ok((client_id, state, via_recorded))
    }

    async fn copy_record(&self, set: &str, record: Record) -> Outcome {
        let now = SystemClock.now();
        let (client_id, state, via_recorded) = match self.part(set, &record, now) {
            Ok(p) => p,
            Err(outcome) => return outcome,
        };
        let Ok(stored) = self.store.read_state(&client_id).await else {
            return Outcome::Failed;
        };
        // Same or later in Bigtable: leave it.
        let verdict = match set {
            SHORT_SET => compare_session(stored.short.as_ref(), state.short.as_ref()),
            LONG_SET => compare_session(stored.long.as_ref(), state.long.as_ref()),
            _ => match (&stored.via, &state.via) {
                (Some(s), Some(l)) if s == l => Some(Outcome::Unchanged),
                (Some(s), Some(l)) if s.expires_at >= l.expires_at => Some(Outcome::SkippedNewer),
                _ => None,
            },
        };
        if let Some(v) = verdict {
            return v;
        }
        if self
            .store
            .write_state(&client_id, &state, via_recorded)
            .await
        {
            Outcome::Copied
        } else {
            Outcome::Failed
        }
    }

    /// Copies one (set, partition); checkpoints it when nothing failed.
    async fn unit(&self, set: &'static str, pid: u16) {
        let ok = match self.scan(set, pid).await {
            Ok(failed) => failed == 0,
            Err(error) => {
                tracing::warn!(set, pid, %error, "Partition scan failed; it will be retried by the next run.");
                false
            }
        };
        if ok {
            if let Err(error) = self.checkpoint.record(set, pid) {
                tracing::warn!(set, pid, %error, "Cannot write the checkpoint; this unit will be redone.");
            }
            self.tally.units_done.fetch_add(1, Ordering::Relaxed);
        } else {
            self.tally.units_failed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// Returns the number of records that failed.
    async fn scan(&self, set: &'static str, pid: u16) -> anyhow::Result<u64> {
        let client = self.legacy.client()?;
        let mut policy = QueryPolicy::default();
        policy.base_policy.socket_timeout = 30_000;
        policy.base_policy.total_timeout = 0;
        let stmt = Statement::new(self.legacy.namespace(), set, Bins::All);
        let records = client
            .query(&policy, PartitionFilter::by_id(usize::from(pid)), stmt)
            .await?
            .into_stream();
        let failed = AtomicU64::new(0);
        let scan_error = std::sync::Mutex::new(None);
        records
            .for_each_concurrent(self.concurrency, |record| {
                let failed = &failed;
                let scan_error = &scan_error;
                async move {
                    match record {
                        Ok(record) => {
                            self.pacer.wait().await;
                            let outcome = self.copy_record(set, record).await;
                            if outcome == Outcome::Failed {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            self.tally.count(outcome);
                        }
                        Err(e) => {
                            if let Ok(mut slot) = scan_error.lock() {
                                slot.get_or_insert(e.to_string());
                            }
                        }
                    }
                }
            })
            .await;
        if let Some(e) = scan_error.into_inner().ok().flatten() {
            anyhow::bail!("scan of {set} partition {pid}: {e}");
        }
        Ok(failed.load(Ordering::Relaxed))
    }
}

fn compare_session(
    stored: Option<&tracking_core::SessionRecord>,
    legacy: Option<&tracking_core::SessionRecord>,
) -> Option<Outcome> {
    match (stored, legacy) {
        (Some(s), Some(l)) if s == l => Some(Outcome::Unchanged),
        (Some(s), Some(l)) if s.last_seen >= l.last_seen => Some(Outcome::SkippedNewer),
        _ => None,
    }
}

/// Runs the copy to the end and reports.
pub async fn run(
    aerospike: &AerospikeArgs,
    args: &CopyArgs,
    legacy: &Arc<Legacy>,
) -> anyhow::Result<CopyReport> {
    let range = args.partition_range().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        args.concurrency > 0 && args.partition_workers > 0,
        "--concurrency and --partition-workers must be at least 1"
    );
    anyhow::ensure!(
        !args.progress_interval.is_zero(),
        "--progress-interval must be more than 0"
    );
    legacy
        .connect_once(&aerospike.aerospike_hosts)
        .await
        .with_context(|| {
            format!(
                "cannot connect to Aerospike at {}",
                aerospike.aerospike_hosts
            )
        })?;
    let ttls = Ttls {
        short: args.short_ttl,
        long: args.long_ttl,
        via: args.via_ttl,
    };
    let store = BigtableSessionStore::connect(
        BigtableConfig {
            project: args.bigtable_project.clone(),
            instance: args.bigtable_instance.clone(),
            table: args.bigtable_table.clone(),
            emulator_host: args.bigtable_emulator_host.clone(),
            channels: 4,
            attempt_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(10),
            max_queued_renewals: tracking_bigtable::MAX_QUEUED_RENEWALS,
        },
        SessionPolicy::new(ttls, Arc::new(RandomIds)),
    )
    .await?;
    let checkpoint = Checkpoint::open(&args.checkpoint)?;
    let units: Vec<(&'static str, u16)> = SETS
        .iter()
        .flat_map(|set| range.clone().map(move |pid| (*set, pid)))
        .filter(|(set, pid)| !checkpoint.done.contains(&((*set).to_owned(), *pid)))
        .collect();
    let from_checkpoint = (SETS.len() * range.len()) as u64 - units.len() as u64;
    tracing::info!(
        units = units.len(),
        from_checkpoint,
        namespace = legacy.namespace(),
        table = %args.bigtable_table,
        rate = args.rate,
        "Copying the legacy sets into Bigtable."
    );
    let per_worker = args.concurrency.div_ceil(args.partition_workers);
    let tally = Arc::new(Tally::default());
    let progress = progress::Progress::start(
        Arc::clone(&tally),
        units.len() as u64,
        from_checkpoint,
        std::io::stderr().is_terminal(),
        args.progress_interval,
    );
    let copier = Arc::new(Copier {
        legacy: Arc::clone(legacy),
        store,
        ttls,
        pacer: Pacer::new(args.rate),
        tally,
        bar: progress.bar(),
        checkpoint,
        concurrency: per_worker,
    });
    futures_util::stream::iter(units)
        .for_each_concurrent(args.partition_workers, |(set, pid)| {
            let copier = Arc::clone(&copier);
            async move { copier.unit(set, pid).await }
        })
        .await;
    match copier
        .checkpoint
        .sync()
        .context("cannot sync the checkpoint")
    {
        Ok(()) => Ok(progress.finish(None)),
        Err(e) => {
            progress.finish(Some(&e));
            Err(e)
        }
    }
}
