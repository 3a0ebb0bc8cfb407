//! `MemorySessionStore`: the embedded default. Sessions live in this process
//! only (lost on restart), in a fixed number of shards, each behind its own
//! mutex, holding at most `max_visitors` visitors in all.
//!
//! Bounded memory: when a new visitor arrives at a full shard, the one whose
//! state expires first among a random sample of [`SAMPLE`] (an approximation
//! of least recently seen) is evicted; before that, a couple of random entries
//! are checked and dropped if fully expired, and [`MemorySessionStore::sweep`]
//! (run periodically by the binary) removes every expired visitor. A touch is
//! atomic per visitor: concurrent events of one visitor never mint two
//! different sessions.
//!
//! Deduplication (`TRACKING_DEDUP_WINDOW`): a visitor's entry also holds the
//! client-given ids of its recent events, as 64-bit hashes with the time
//! each was accepted: at most [`MAX_IDS_PER_VISITOR`] per visitor (the
//! oldest go first; the largest batch the API takes fits) and
//! [`AVERAGE_IDS_PER_VISITOR`] per visitor on average over a shard (past
//! it, the sampled visitor holding most ids loses its older half, counted,
//! and its list shrinks to fit): 16 bytes an id, and a list holds at most
//! twice what it uses.

use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use indexmap::IndexMap;
use tracking_core::{
    BoxFuture, CallContext, ClientId, Clock, IdCheck, SessionPolicy, SessionStore, Sessions,
    StoreError, Timestamp, Touched, Via, VisitorState,
};

use crate::config::positive;

const SHARDS: usize = 64;
/// Entries compared when evicting for capacity.
pub const SAMPLE: usize = 5;
/// Random entries checked for expiry on each insertion.
const EXPIRY_PROBES: usize = 2;
/// Recent event ids one visitor keeps at most: a whole retried batch of
/// the largest size the API takes by default.
pub const MAX_IDS_PER_VISITOR: usize = 512;
/// Recent event ids a shard keeps, per visitor it may hold.
pub const AVERAGE_IDS_PER_VISITOR: usize = 8;
/// Sampled visitors one trim halves at most.
const MAX_TRIM_ROUNDS: usize = 512;

/// The memory store's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct MemoryArgs {
    /// Most visitors the memory store keeps (about 0.5 KB each); beyond it the
    /// least recently seen of a random sample is evicted (counted in metrics).
    #[arg(long, env = "TRACKING_MEMORY_MAX_VISITORS", default_value = "200000", value_parser = positive, global = true)]
    pub memory_max_visitors: usize,
}

/// One visitor: its sessions and the hashes of its recent event ids, in
/// the order they were accepted, with when.
#[derive(Debug)]
struct Entry {
    state: VisitorState,
    ids: Vec<(u64, Timestamp)>,
}

#[derive(Debug)]
struct Shard {
    map: IndexMap<ClientId, Entry>,
    rng: u64,
    /// Ids held by all entries.
    ids: usize,
}

impl Shard {
    fn next_index(&mut self) -> usize {
        // xorshift64*: plenty for picking eviction candidates.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as usize % self.map.len().max(1)
    }
}

#[derive(Debug)]
pub struct MemorySessionStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    policy: SessionPolicy,
    per_shard: usize,
    evicted_expired: AtomicU64,
    evicted_capacity: AtomicU64,
    /// The dedup window; `None`: ids are neither checked nor kept.
    window: Option<std::time::Duration>,
    /// Ids dropped to keep a shard within its share.
    ids_dropped: AtomicU64,
}

impl MemorySessionStore {
    pub fn new(policy: SessionPolicy, max_visitors: usize) -> Self {
        let per_shard = max_visitors.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS)
                .map(|i| {
                    Mutex::new(Shard {
                        map: IndexMap::new(),
                        rng: 0x9e37_79b9_7f4a_7c15
                            ^ (i as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9),
                        ids: 0,
                    })
                })
                .collect(),
            hasher: Default::default(),
            policy,
            per_shard,
            evicted_expired: AtomicU64::new(0),
            evicted_capacity: AtomicU64::new(0),
            window: None,
            ids_dropped: AtomicU64::new(0),
        }
    }

    /// Checks client-given event ids against the visitor's ids accepted
    /// within `window` (`TRACKING_DEDUP_WINDOW`), and keeps them that long.
    #[must_use]
    pub fn with_dedup(mut self, window: std::time::Duration) -> Self {
        self.window = Some(window).filter(|w| !w.is_zero());
        self
    }

    /// Event ids held, and ids dropped so far to stay within the bound.
    pub fn ids(&self) -> (usize, u64) {
        let held = self
            .shards
            .iter()
            .map(|s| s.lock().map(|s| s.ids).unwrap_or(0))
            .sum();
        (held, self.ids_dropped.load(Ordering::Relaxed))
    }

    /// Most visitors held at once.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.map.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Visitors removed so far: (expired, for capacity).
    pub fn evictions(&self) -> (u64, u64) {
        (
            self.evicted_expired.load(Ordering::Relaxed),
            self.evicted_capacity.load(Ordering::Relaxed),
        )
    }

    /// Sweeps expired visitors once a minute, on the current runtime, for as
    /// long as the store lives.
    pub fn spawn_sweeper(self: &std::sync::Arc<Self>, clock: std::sync::Arc<dyn Clock>) {
        let store = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(store) = store.upgrade() else { break };
                let removed = store.sweep(clock.now());
                tracing::debug!(removed, "Swept expired visitors.");
            }
        });
    }

    /// Removes every visitor whose whole state has expired at `now`.
    pub fn sweep(&self, now: Timestamp) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let Ok(mut shard) = shard.lock() else {
                continue;
            };
            let before = shard.map.len();
            let window = self.window;
            let mut ids = 0;
            shard.map.retain(|_, e| {
                if let Some(w) = window {
                    e.ids.retain(|(_, at)| at.alive_at(w, now));
                    if e.ids.capacity() > 2 * e.ids.len() {
                        e.ids.shrink_to_fit();
                    }
                }
                let keep = self.policy.expires_at(&e.state) > now;
                if keep {
                    ids += e.ids.len();
                }
                keep
            });
            shard.ids = ids;
            removed += before - shard.map.len();
        }
        self.evicted_expired
            .fetch_add(removed as u64, Ordering::Relaxed);
        removed
    }

    fn make_room(&self, shard: &mut Shard, now: Timestamp) {
        for _ in 0..EXPIRY_PROBES {
            if shard.map.is_empty() {
                return;
            }
            let i = shard.next_index();
            if self.policy.expires_at(&shard.map[i].state) <= now {
                Self::remove(shard, i);
                self.evicted_expired.fetch_add(1, Ordering::Relaxed);
            }
        }
        if shard.map.len() < self.per_shard {
            return;
        }
        let candidates: [usize; SAMPLE] = std::array::from_fn(|_| shard.next_index());
        let victim = candidates
            .into_iter()
            .min_by_key(|&i| self.policy.expires_at(&shard.map[i].state));
        if let Some(i) = victim {
            Self::remove(shard, i);
            self.evicted_capacity.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn remove(shard: &mut Shard, i: usize) {
        if let Some((_, e)) = shard.map.swap_remove_index(i) {
            shard.ids -= e.ids.len();
        }
    }

    /// Keeps the shard's ids within its share after `current` (at index
    /// `current` of the map) recorded some: once over, the sampled visitor
    /// holding most loses its older half, until the shard is at seven
    /// eighths of its share (bounded work); then, if the shard is still
    /// over, `current` loses its oldest (it brought the excess).
    fn trim_ids(&self, shard: &mut Shard, current: usize) {
        let budget = self.per_shard * AVERAGE_IDS_PER_VISITOR;
        if shard.ids <= budget {
            return;
        }
        // Down to seven eighths at once: a full shard trims once every
        // eighth of its budget of new ids, not on every one.
        let target = budget - budget / 8;
        for _ in 0..MAX_TRIM_ROUNDS {
            if shard.ids <= target || shard.map.is_empty() {
                return;
            }
            let candidates: [usize; SAMPLE] = std::array::from_fn(|_| shard.next_index());
            let Some(i) = candidates
                .into_iter()
                .max_by_key(|&i| shard.map[i].ids.len())
            else {
                return;
            };
            let ids = &mut shard.map[i].ids;
            let drop = ids.len().div_ceil(2);
            self.drop_oldest(ids, drop);
            shard.ids -= drop;
        }
        if shard.ids > budget
            && let Some((_, entry)) = shard.map.get_index_mut(current)
        {
            let drop = (shard.ids - budget).min(entry.ids.len());
            self.drop_oldest(&mut entry.ids, drop);
            shard.ids -= drop;
        }
    }

    fn drop_oldest(&self, ids: &mut Vec<(u64, Timestamp)>, n: usize) {
        ids.drain(..n);
        if ids.capacity() > 2 * ids.len() {
            ids.shrink_to_fit();
        }
        self.ids_dropped.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Adds `hash` (accepted at `at`) to a visitor's ids, dropping the ones
    /// older than the window and the oldest past the bound; returns the
    /// change in the count.
    fn record(
        ids: &mut Vec<(u64, Timestamp)>,
        hash: u64,
        at: Timestamp,
        window: std::time::Duration,
    ) -> isize {
        let before = ids.len();
        ids.retain(|(_, t)| t.alive_at(window, at));
        if ids.len() >= MAX_IDS_PER_VISITOR {
            ids.drain(..=ids.len() - MAX_IDS_PER_VISITOR);
        }
        ids.push((hash, at));
        ids.len() as isize - before as isize
    }

    fn id_hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The stored state of a visitor; for tests and diagnostics.
    pub fn get(&self, client_id: &ClientId) -> Option<VisitorState> {
        let shard = &self.shards[self.shard_of(client_id)];
        shard
            .lock()
            .ok()?
            .map
            .get(client_id)
            .map(|e| e.state.clone())
    }

    fn shard_of(&self, client_id: &ClientId) -> usize {
        (self.hasher.hash_one(client_id) as usize) % SHARDS
    }

    fn touch_now(
        &self,
        client_id: &ClientId,
        now: Timestamp,
        via: Option<&Via>,
    ) -> Result<Sessions, StoreError> {
        match self.touch_event_now(client_id, now, via, IdCheck::Skip)? {
            Touched::Sessions(s) => Ok(s),
            Touched::Duplicate { .. } => unreachable!("no id was checked"),
        }
    }

    fn lock(&self, client_id: &ClientId) -> Result<std::sync::MutexGuard<'_, Shard>, StoreError> {
        self.shards[self.shard_of(client_id)]
            .lock()
            .map_err(|_| StoreError::Corrupt("a memory store shard was poisoned by a panic".into()))
    }

    fn touch_event_now(
        &self,
        client_id: &ClientId,
        now: Timestamp,
        via: Option<&Via>,
        check: IdCheck<'_>,
    ) -> Result<Touched, StoreError> {
        let dedup = self.window.zip(check.id().map(|id| self.id_hash(id)));
        let mut shard = self.lock(client_id)?;
        let shard = &mut *shard;
        if let Some(entry) = shard.map.get_mut(client_id) {
            if let Some((window, hash)) = dedup
                && let Some(&(_, accepted_at)) = entry
                    .ids
                    .iter()
                    .find(|(h, at)| *h == hash && at.alive_at(window, now))
            {
                return Ok(Touched::Duplicate { accepted_at });
            }
            let (sessions, next) = self.policy.resolve(Some(&entry.state), now, via);
            entry.state = next;
            return Ok(Touched::Sessions(sessions));
        }
        let (sessions, next) = self.policy.resolve(None, now, via);
        self.make_room(shard, now);
        shard.map.insert(
            client_id.clone(),
            Entry {
                state: next,
                ids: Vec::new(),
            },
        );
        Ok(Touched::Sessions(sessions))
    }
}

pub const VISITORS: &str = "tracking_memory_store_visitors";
pub const EVICTIONS: &str = "tracking_memory_store_evictions_total";
pub const DEDUP_IDS: &str = "tracking_memory_store_dedup_ids";
pub const DEDUP_IDS_DROPPED: &str = "tracking_memory_store_dedup_ids_dropped_total";

impl service_kit::prom::Collect for MemorySessionStore {
    fn collect(&self, out: &mut String) {
        use std::fmt::Write;
        service_kit::prom::gauge(
            out,
            VISITORS,
            "Visitors held by the memory session store.",
            self.len() as f64,
        );
        service_kit::prom::header(
            out,
            EVICTIONS,
            "counter",
            "Visitors removed from the memory store, by reason.",
        );
        let (expired, capacity) = self.evictions();
        let _ = writeln!(out, "{EVICTIONS}{{reason=\"expired\"}} {expired}");
        let _ = writeln!(out, "{EVICTIONS}{{reason=\"capacity\"}} {capacity}");
        if self.window.is_some() {
            let (held, dropped) = self.ids();
            service_kit::prom::gauge(
                out,
                DEDUP_IDS,
                "Client-given event ids the memory store holds for deduplication.",
                held as f64,
            );
            service_kit::prom::counter(
                out,
                DEDUP_IDS_DROPPED,
                "Event ids dropped before their window ended, to keep the memory store within its bound.",
                dropped,
            );
        }
    }
}

impl SessionStore for MemorySessionStore {
    fn touch<'a>(
        &'a self,
        client_id: &'a ClientId,
        now: Timestamp,
        via: Option<&'a Via>,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Sessions, StoreError>> {
        Box::pin(std::future::ready(self.touch_now(client_id, now, via)))
    }

    fn touch_event<'a>(
        &'a self,
        client_id: &'a ClientId,
        now: Timestamp,
        via: Option<&'a Via>,
        check: IdCheck<'a>,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Touched, StoreError>> {
        Box::pin(std::future::ready(
            self.touch_event_now(client_id, now, via, check),
        ))
    }

    fn remember(&self, client_id: &ClientId, ids: &[&str], at: Timestamp) {
        let Some(window) = self.window else { return };
        let Ok(mut shard) = self.lock(client_id) else {
            return;
        };
        let shard = &mut *shard;
        // A visitor evicted meanwhile has no entry to hold them.
        let Some((current, _, entry)) = shard.map.get_full_mut(client_id) else {
            return;
        };
        for id in ids {
            let added = Self::record(&mut entry.ids, self.id_hash(id), at, window);
            shard.ids = shard.ids.saturating_add_signed(added);
        }
        self.trim_ids(shard, current);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tracking_core::{RandomIds, Ttls};

    use super::*;

    fn store(max: usize) -> MemorySessionStore {
        let ttls = Ttls {
            short: Duration::from_secs(60),
            long: Duration::from_secs(3600),
            via: Duration::from_secs(600),
        };
        MemorySessionStore::new(SessionPolicy::new(ttls, Arc::new(RandomIds)), max)
    }

    fn id(i: usize) -> ClientId {
        ClientId::parse(&format!("v{i}")).expect("id")
    }

    #[test]
    fn keeps_sessions_per_visitor() {
        let s = store(1000);
        let t = Timestamp::from_millis(1_000_000);
        let a = s.touch_now(&id(1), t, None).expect("touch");
        let b = s
            .touch_now(&id(1), t.saturating_add(Duration::from_secs(59)), None)
            .expect("touch");
        let c = s.touch_now(&id(2), t, None).expect("touch");
        assert_eq!(a.short_id, b.short_id);
        assert!(a.short_new && !b.short_new);
        assert_ne!(a.long_id, c.long_id);
    }

    #[test]
    fn never_exceeds_capacity_and_prefers_evicting_the_oldest() {
        let s = store(640);
        let t0 = Timestamp::from_millis(10_000_000);
        for i in 0..100_000 {
            s.touch_now(
                &id(i),
                t0.saturating_add(Duration::from_millis(i as u64)),
                None,
            )
            .expect("touch");
            assert!(s.len() <= s.capacity());
        }
        assert!(
            s.len() > s.capacity() * 9 / 10,
            "stays nearly full: {}",
            s.len()
        );
        assert_eq!(s.evictions().1, 100_000 - s.len() as u64);
        // Approximate LRU: survivors are mostly recent visitors.
        let recent = (99_000..100_000)
            .filter(|&i| s.get(&id(i)).is_some())
            .count();
        let old = (0..1_000).filter(|&i| s.get(&id(i)).is_some()).count();
        assert!(recent > old * 10, "recent {recent} vs old {old}");
    }

    #[test]
    fn expired_visitors_are_removed() {
        let s = store(10_000);
        let t0 = Timestamp::from_millis(10_000_000);
        for i in 0..1_000 {
            s.touch_now(&id(i), t0, None).expect("touch");
        }
        assert_eq!(s.sweep(t0.saturating_add(Duration::from_secs(3599))), 0);
        assert_eq!(s.sweep(t0.saturating_add(Duration::from_secs(3600))), 1_000);
        assert!(s.is_empty());
        // Lazy expiry on insertion also reclaims space without a sweep.
        for i in 0..1_000 {
            s.touch_now(&id(i), t0, None).expect("touch");
        }
        let later = t0.saturating_add(Duration::from_secs(7200));
        for i in 1_000..3_000 {
            s.touch_now(&id(i), later, None).expect("touch");
        }
        assert!(
            s.len() < 3_000 - 200,
            "probes removed expired entries: {}",
            s.len()
        );
    }

    /// Ids held and the memory their lists take stay within the bound
    /// however they arrive: many visitors each given the most ids one may
    /// hold.
    #[test]
    fn dedup_ids_stay_within_their_bound() {
        let s = store(640).with_dedup(Duration::from_secs(86_400));
        let t = Timestamp::from_millis(1_000_000);
        for v in 0..640 {
            s.touch_now(&id(v), t, None).expect("touch");
            let ids: Vec<String> = (0..MAX_IDS_PER_VISITOR)
                .map(|i| format!("{v}-{i}"))
                .collect();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            s.remember(&id(v), &ids, t);
        }
        let (held, dropped) = s.ids();
        let budget = s.capacity() * AVERAGE_IDS_PER_VISITOR;
        assert!(held <= budget, "{held} ids held, bound {budget}");
        assert!(dropped > 0);
        let capacity: usize = s
            .shards
            .iter()
            .map(|sh| {
                sh.lock()
                    .unwrap()
                    .map
                    .values()
                    .map(|e| e.ids.capacity())
                    .sum::<usize>()
            })
            .sum();
        assert!(
            capacity <= 2 * budget + MAX_IDS_PER_VISITOR * SHARDS,
            "lists hold room for {capacity} ids, bound {budget}"
        );
    }

    #[test]
    fn concurrent_touches_of_one_visitor_share_a_session() {
        let s = Arc::new(store(1000));
        let t = Timestamp::from_millis(1_000_000);
        let ids: Vec<_> = (0..8)
            .map(|_| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    (0..200)
                        .map(|_| s.touch_now(&id(7), t, None).expect("touch").short_id)
                        .collect::<Vec<_>>()
                })
            })
            .flat_map(|h| h.join().expect("thread"))
            .collect();
        assert!(ids.windows(2).all(|w| w[0] == w[1]));
    }
}
