//! `VisitorLocks`: one visitor's events applied one after another within a
//! process. Stores hold a visitor's lock from the read until the renewal
//! write has landed, so two events of one visitor never mint two sessions
//! here.

use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};
use tracking_core::ClientId;

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
