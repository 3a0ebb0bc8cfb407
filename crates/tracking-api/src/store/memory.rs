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

use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use indexmap::IndexMap;
use tracking_core::{
    BoxFuture, CallContext, ClientId, Clock, SessionPolicy, SessionStore, Sessions, StoreError,
    Timestamp, Via, VisitorState,
};

use crate::config::positive;

const SHARDS: usize = 64;
/// Entries compared when evicting for capacity.
pub const SAMPLE: usize = 5;
/// Random entries checked for expiry on each insertion.
const EXPIRY_PROBES: usize = 2;

/// The memory store's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct MemoryArgs {
    /// Most visitors the memory store keeps (about 0.5 KB each); beyond it the
    /// least recently seen of a random sample is evicted (counted in metrics).
    #[arg(long, env = "TRACKING_MEMORY_MAX_VISITORS", default_value = "200000", value_parser = positive, global = true)]
    pub memory_max_visitors: usize,
}

#[derive(Debug)]
struct Shard {
    map: IndexMap<ClientId, VisitorState>,
    rng: u64,
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
                    })
                })
                .collect(),
            hasher: Default::default(),
            policy,
            per_shard,
            evicted_expired: AtomicU64::new(0),
            evicted_capacity: AtomicU64::new(0),
        }
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
            shard.map.retain(|_, st| self.policy.expires_at(st) > now);
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
            if self.policy.expires_at(&shard.map[i]) <= now {
                shard.map.swap_remove_index(i);
                self.evicted_expired.fetch_add(1, Ordering::Relaxed);
            }
        }
        if shard.map.len() < self.per_shard {
            return;
        }
        let candidates: [usize; SAMPLE] = std::array::from_fn(|_| shard.next_index());
        let victim = candidates
            .into_iter()
            .min_by_key(|&i| self.policy.expires_at(&shard.map[i]));
        if let Some(i) = victim {
            shard.map.swap_remove_index(i);
            self.evicted_capacity.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The stored state of a visitor; for tests and diagnostics.
    pub fn get(&self, client_id: &ClientId) -> Option<VisitorState> {
        let shard = &self.shards[self.shard_of(client_id)];
        shard.lock().ok()?.map.get(client_id).cloned()
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
        let mut shard = self.shards[self.shard_of(client_id)].lock().map_err(|_| {
            StoreError::Corrupt("a memory store shard was poisoned by a panic".into())
        })?;
        if let Some(state) = shard.map.get_mut(client_id) {
            let (sessions, next) = self.policy.resolve(Some(state), now, via);
            *state = next;
            return Ok(sessions);
        }
        let (sessions, next) = self.policy.resolve(None, now, via);
        self.make_room(&mut shard, now);
        shard.map.insert(client_id.clone(), next);
        Ok(sessions)
    }
}

pub const VISITORS: &str = "tracking_memory_store_visitors";
pub const EVICTIONS: &str = "tracking_memory_store_evictions_total";

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
