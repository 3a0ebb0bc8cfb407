//! `legacy` mode's session store.

use std::sync::Arc;

use tokio_util::task::TaskTracker;
use tracking_core::{
    BoxFuture, CallContext, ClientId, LegacyLookup, LegacySessions, LegacyVisitor, SessionId,
    SessionPolicy, SessionStore, Sessions, StateParts, StoreError, Timestamp, Via, VisitorState,
};

use super::{MigrationClient, Minted};

/// Conditional writes one event may lose before it gives up.
const CREATE_ROUNDS: u32 = 4;

/// `legacy` mode's store: sessions read and renewed through migration-proxy
/// only. A renewal is a `PUT` off the request path; the visitor's next
/// event in this process sees it (`InFlight`) until it lands. A mint is a
/// create-only `PUT` that the event waits for: of two processes minting a
/// visitor's session at the same moment, one creates it and the other
/// adopts it from the conflict answer, in its own output.
#[derive(Debug)]
pub struct LegacySessionStore {
    client: Arc<MigrationClient>,
    policy: SessionPolicy,
    in_flight: Arc<tracking_bigtable::InFlight>,
    writes: TaskTracker,
}

impl LegacySessionStore {
    pub fn new(client: Arc<MigrationClient>, policy: SessionPolicy) -> Self {
        Self {
            client,
            policy,
            in_flight: Arc::default(),
            writes: TaskTracker::new(),
        }
    }
}

impl SessionStore for LegacySessionStore {
    fn touch<'a>(
        &'a self,
        client_id: &'a ClientId,
        now: Timestamp,
        via: Option<&'a Via>,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Sessions, StoreError>> {
        Box::pin(async move {
            let hash = tracking_bigtable::schema::key_hash(client_id);
            // Before the lookup: a renewal landing in between is then in
            // one of the two.
            let pending = self.in_flight.snapshot(hash, client_id);
            let (lookup, mut unreadable) = self.client.get(client_id, now, ctx).await;
            // The caller's `session` span, when traced.
            let label = match lookup {
                LegacyLookup::Found(_) => "hit",
                _ => "miss",
            };
            tracing::Span::current().record("lookup", label);
            let mut stored = match lookup {
                LegacyLookup::Found(state) => state,
                LegacyLookup::Missing => VisitorState::default(),
                LegacyLookup::Unavailable => {
                    return Err(StoreError::Unavailable(
                        "migration-proxy did not answer".into(),
                    ));
                }
            };
            let ttls = self.policy.ttls();
            // The ids this event tried to create, to know its own records in
            // a conflict answer.
            let mut minted: Vec<SessionId> = Vec::new();
            for _ in 0..CREATE_ROUNDS {
                let mut prev = stored;
                if let Some(p) = &pending {
                    prev.merge_newer(p);
                }
                let (mut sessions, next) = self.policy.resolve(Some(&prev), now, via);
                // A part the legacy store holds but that cannot be read is
                // overwritten: created only-if-absent it would never be.
                let create = StateParts {
                    short: sessions.short_new && !unreadable.short,
                    long: sessions.long_new && !unreadable.long,
                    via: false,
                };
                let minting = sessions.short_new || sessions.long_new;
                sessions.short_new |= minted.contains(&sessions.short_id);
                sessions.long_new |= minted.contains(&sessions.long_id);
                let body = LegacyVisitor::from_state(&next, ttls);
                if !minting {
                    let landing = self.in_flight.begin(hash, client_id, &next);
                    let client = Arc::clone(&self.client);
                    let (id, headers) = (client_id.clone(), ctx.headers.clone());
                    let span = tracing::Span::current();
                    self.writes.spawn(async move {
                        client.put(&span, &id, &body, &headers).await;
                        drop(landing);
                    });
                    return Ok(sessions);
                }
                if sessions.short_new {
                    minted.push(sessions.short_id.clone());
                }
                if sessions.long_new {
                    minted.push(sessions.long_id.clone());
                }
                match self.client.create(client_id, &body, create, ctx).await {
                    Minted::Created => return Ok(sessions),
                    Minted::Taken(current) => {
                        (stored, unreadable) = self.client.convert(&current, now);
                    }
                    Minted::Unavailable => {
                        return Err(StoreError::Unavailable(
                            "migration-proxy did not answer the mint".into(),
                        ));
                    }
                }
            }
            Err(StoreError::Unavailable(format!(
                "other writers won {CREATE_ROUNDS} create-only writes in a row"
            )))
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.writes.close();
            self.writes.wait().await;
            LegacySessions::close(&*self.client).await;
        })
    }
}
