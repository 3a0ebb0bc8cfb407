//! Ordering within one process. `InFlight`: the renewals a process has sent
//! and not seen land yet, which a visitor's next event takes into account
//! (no event waits for another's write). `VisitorLocks`: striped locks for
//! tools that write a visitor's row outside the request path (the bulk
//! copy).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};
use tracking_core::{ClientId, Timestamp, VisitorState};

use crate::schema::key_hash;

const STRIPES: usize = 4096;

/// 4,096 striped async locks, picked by the row-key hash (visitors sharing a
/// stripe wait for each other; nothing else does).
#[derive(Debug)]
pub struct VisitorLocks {
    stripes: Vec<Arc<Mutex<()>>>,
}

impl Default for VisitorLocks {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Arc::new(Mutex::new(()))).collect(),
        }
    }
}

impl VisitorLocks {
    /// The lock of the visitor whose [`key_hash`] is `hash`; the guard may be
    /// moved into the task that finishes the visitor's write.
    pub async fn lock_hash(&self, hash: u64) -> OwnedMutexGuard<()> {
        Arc::clone(&self.stripes[(hash % STRIPES as u64) as usize])
            .lock_owned()
            .await
    }

    pub async fn lock(&self, client_id: &ClientId) -> OwnedMutexGuard<()> {
        self.lock_hash(key_hash(client_id)).await
    }
}

/// Shards of [`InFlight`].
const IN_FLIGHT_SHARDS: usize = 64;

/// The renewals this process has sent and not yet seen land, per visitor:
/// what a read of the store may not show yet. A visitor's next event merges
/// them into what it read, so that in this process it always sees its
/// previous event's renewal (a batch behaves like events sent one by one)
/// without waiting for that write. Entries live as long as their writes
/// are in flight, so the table holds at most one entry per renewal in
/// flight.
#[derive(Debug)]
pub struct InFlight {
    shards: Box<[std::sync::Mutex<HashMap<ClientId, Pending>>]>,
}

/// Event ids one visitor's entry holds at most.
const MAX_PENDING_IDS: usize = 256;

#[derive(Debug)]
struct Pending {
    /// The newest of the renewals in flight, part by part.
    state: VisitorState,
    /// The event ids they record (deduplication), with when accepted.
    ids: Vec<(Box<str>, Timestamp)>,
    writes: u32,
}

impl Default for InFlight {
    fn default() -> Self {
        Self {
            shards: (0..IN_FLIGHT_SHARDS).map(|_| Default::default()).collect(),
        }
    }
}

impl InFlight {
    fn shard(&self, hash: u64) -> &std::sync::Mutex<HashMap<ClientId, Pending>> {
        &self.shards[(hash % IN_FLIGHT_SHARDS as u64) as usize]
    }

    /// The renewals of the visitor (whose [`key_hash`] is `hash`) in flight
    /// now, merged. Take it before reading the store: a renewal that lands
    /// in between is then either here or in what the read returns.
    pub fn snapshot(&self, hash: u64, client_id: &ClientId) -> Option<VisitorState> {
        self.snapshot_with(hash, client_id, None)
            .map(|(state, _)| state)
    }

    /// [`snapshot`](Self::snapshot), and when the event id `id` was
    /// accepted, if a renewal in flight records it.
    pub fn snapshot_with(
        &self,
        hash: u64,
        client_id: &ClientId,
        id: Option<&str>,
    ) -> Option<(VisitorState, Option<Timestamp>)> {
        let shard = self.shard(hash).lock().ok()?;
        shard.get(client_id).map(|p| {
            let accepted = id.and_then(|id| {
                p.ids
                    .iter()
                    .filter(|(i, _)| &**i == id)
                    .map(|(_, at)| *at)
                    .max()
            });
            (p.state.clone(), accepted)
        })
    }

    /// Records a renewal of `state` about to be sent; the returned
    /// [`Landing`] is dropped once the write has landed or been given up.
    pub fn begin(
        self: &Arc<Self>,
        hash: u64,
        client_id: &ClientId,
        state: &VisitorState,
    ) -> Landing {
        self.begin_with(hash, client_id, state, &[])
    }

    /// [`begin`](Self::begin) for a write that also records event ids
    /// accepted at the given times.
    pub fn begin_with(
        self: &Arc<Self>,
        hash: u64,
        client_id: &ClientId,
        state: &VisitorState,
        ids: &[(&str, Timestamp)],
    ) -> Landing {
        let ids = ids.iter().map(|&(id, at)| (Box::from(id), at));
        if let Ok(mut shard) = self.shard(hash).lock() {
            match shard.get_mut(client_id) {
                Some(p) => {
                    p.state.merge_newer(state);
                    p.ids.extend(ids);
                    // A visitor whose writes overlap without end keeps its
                    // entry: its oldest ids have landed long since.
                    if p.ids.len() > MAX_PENDING_IDS {
                        p.ids.drain(..p.ids.len() - MAX_PENDING_IDS);
                    }
                    p.writes += 1;
                }
                None => {
                    shard.insert(
                        client_id.clone(),
                        Pending {
                            state: state.clone(),
                            ids: ids.collect(),
                            writes: 1,
                        },
                    );
                }
            }
        }
        Landing {
            owner: Arc::clone(self),
            hash,
            client_id: client_id.clone(),
        }
    }

    /// Visitors with renewals in flight.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One renewal in flight; dropping it takes it out of its [`InFlight`].
#[derive(Debug)]
pub struct Landing {
    owner: Arc<InFlight>,
    hash: u64,
    client_id: ClientId,
}

impl Drop for Landing {
    fn drop(&mut self) {
        if let Ok(mut shard) = self.owner.shard(self.hash).lock()
            && let Some(p) = shard.get_mut(&self.client_id)
        {
            p.writes -= 1;
            if p.writes == 0 {
                shard.remove(&self.client_id);
            }
        }
    }
}
