//! Sessions and via records: how a visitor's state evolves with each event.
//!
//! A visitor has a short-TTL session, a long-TTL session and at most one
//! active via record. Every event renews both sessions (their TTLs run from
//! the visitor's latest event); a session whose TTL has run out is replaced by
//! a new id. A via record lives for its own TTL from the moment it was
//! recorded and is replaced by the next event that records a route.

use std::sync::Arc;
use std::time::Duration;

use crate::event::Via;
use crate::ids::{IdSource, SessionId};
use crate::time::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ttls {
    pub short: Duration,
    pub long: Duration,
    pub via: Duration,
}

/// One session as stored: its id and the time of its latest event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: SessionId,
    pub last_seen: Timestamp,
}

/// The route that brought a visitor in, and when it stops counting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViaRecord {
    pub via: Via,
    pub expires_at: Timestamp,
}

/// Everything stored about one visitor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VisitorState {
    pub short: Option<SessionRecord>,
    pub long: Option<SessionRecord>,
    pub via: Option<ViaRecord>,
}

/// Which parts of a visitor's state (e.g. the ones taken from another
/// store, or the ones an event minted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateParts {
    pub short: bool,
    pub long: bool,
    pub via: bool,
}

impl StateParts {
    pub fn any(self) -> bool {
        self.short || self.long || self.via
    }

    /// How many parts.
    pub fn count(self) -> usize {
        usize::from(self.short) + usize::from(self.long) + usize::from(self.via)
    }
}

impl VisitorState {
    /// Takes, part by part, `other`'s record where it is newer than this
    /// one's (or this one has none): a session by its latest event, the via
    /// record by its end (both stores use the same via TTL, so that is its
    /// recording order). On a tie this state's record stays. Returns the
    /// parts taken.
    pub fn merge_newer(&mut self, other: &VisitorState) -> StateParts {
        fn session(mine: &mut Option<SessionRecord>, theirs: &Option<SessionRecord>) -> bool {
            let newer = match (&*mine, theirs) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(m), Some(t)) => t.last_seen > m.last_seen,
            };
            if newer {
                mine.clone_from(theirs);
            }
            newer
        }
        let via = match (&self.via, &other.via) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(m), Some(t)) => t.expires_at > m.expires_at,
        };
        if via {
            self.via.clone_from(&other.via);
        }
        StateParts {
            short: session(&mut self.short, &other.short),
            long: session(&mut self.long, &other.long),
            via,
        }
    }
}

/// What one event learns about its visitor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sessions {
    pub short_id: SessionId,
    pub long_id: SessionId,
    pub short_new: bool,
    pub long_new: bool,
    pub via: Option<ViaRecord>,
}

/// The session rules with their TTLs and id source.
#[derive(Clone, Debug)]
pub struct SessionPolicy {
    ttls: Ttls,
    ids: Arc<dyn IdSource>,
}

impl SessionPolicy {
    pub fn new(ttls: Ttls, ids: Arc<dyn IdSource>) -> Self {
        Self { ttls, ids }
    }

    pub fn ttls(&self) -> Ttls {
        self.ttls
    }

    /// Applies one event at `now` (recording `via` when it carries one) to the
    /// visitor's previous state; returns what the event sees and the state to
    /// store. A record with a `last_seen` ahead of `now` (clock skew between
    /// pods) is alive and keeps its later timestamp.
    pub fn resolve(
        &self,
        prev: Option<&VisitorState>,
        now: Timestamp,
        via: Option<&Via>,
    ) -> (Sessions, VisitorState) {
        let prev = prev.cloned().unwrap_or_default();
        let (short, short_new) = self.renew(prev.short, self.ttls.short, now);
        let (long, long_new) = self.renew(prev.long, self.ttls.long, now);
        let via = match via {
            Some(v) => Some(ViaRecord {
                via: v.clone(),
                expires_at: now.saturating_add(self.ttls.via),
            }),
            None => prev.via.filter(|r| now < r.expires_at),
        };
        let sessions = Sessions {
            short_id: short.id.clone(),
            long_id: long.id.clone(),
            short_new,
            long_new,
            via: via.clone(),
        };
        let state = VisitorState {
            short: Some(short),
            long: Some(long),
            via,
        };
        (sessions, state)
    }

    fn renew(
        &self,
        prev: Option<SessionRecord>,
        ttl: Duration,
        now: Timestamp,
    ) -> (SessionRecord, bool) {
        match prev {
            Some(r) if r.last_seen.alive_at(ttl, now) => (
                SessionRecord {
                    id: r.id,
                    last_seen: r.last_seen.max(now),
                },
                false,
            ),
            _ => (
                SessionRecord {
                    id: SessionId::from(self.ids.new_id(now)),
                    last_seen: now,
                },
                true,
            ),
        }
    }

    /// Whether both sessions in `state` are alive at `now` (otherwise the
    /// event mints one, and the parallel run asks the legacy store first).
    pub fn both_alive(&self, state: &VisitorState, now: Timestamp) -> bool {
        state
            .short
            .as_ref()
            .is_some_and(|r| r.last_seen.alive_at(self.ttls.short, now))
            && state
                .long
                .as_ref()
                .is_some_and(|r| r.last_seen.alive_at(self.ttls.long, now))
    }

    /// When nothing in `state` is alive any more: the state may be dropped
    /// from then on without changing any answer.
    pub fn expires_at(&self, state: &VisitorState) -> Timestamp {
        let short = state
            .short
            .as_ref()
            .map(|r| r.last_seen.saturating_add(self.ttls.short));
        let long = state
            .long
            .as_ref()
            .map(|r| r.last_seen.saturating_add(self.ttls.long));
        let via = state.via.as_ref().map(|r| r.expires_at);
        [short, long, via]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SequentialIds;
    use uuid::Uuid;

    const MIN: u64 = 60_000;

    fn policy() -> SessionPolicy {
        SessionPolicy::new(
            Ttls {
                short: Duration::from_millis(30 * MIN),
                long: Duration::from_millis(90 * 24 * 60 * MIN),
                via: Duration::from_millis(60 * MIN),
            },
            Arc::new(SequentialIds::default()),
        )
    }

    fn via(source: &str) -> Via {
        Via::new(Some(source), None, None).expect("non-empty")
    }

    /// Feeds events `(minute, via)` through one policy and compares, per
    /// event, `(short id #, long id #, short_new, long_new, via source)`, where
    /// `id #` is the sequence number of the id (1 = first id minted).
    fn check(events: &[(u64, Option<&str>)], expected: &[(u128, u128, bool, bool, Option<&str>)]) {
        let policy = policy();
        let mut state = None;
        let mut got = Vec::new();
        for (minute, v) in events {
            let v = v.map(via);
            let (s, next) = policy.resolve(
                state.as_ref(),
                Timestamp::from_millis(minute * MIN),
                v.as_ref(),
            );
            let seq = |id: SessionId| id.as_uuid().expect("minted").as_u128() & 0xffff_ffff_ffff;
            got.push((
                seq(s.short_id),
                seq(s.long_id),
                s.short_new,
                s.long_new,
                s.via.map(|r| r.via.source.unwrap_or_default().to_string()),
            ));
            state = Some(next);
        }
        let expected: Vec<_> = expected
            .iter()
            .map(|(a, b, c, d, e)| (*a, *b, *c, *d, e.map(str::to_owned)))
            .collect();
        assert_eq!(got, expected, "{events:?}");
    }

    #[test]
    fn sessions_and_via() {
        // First event: both sessions new.
        check(&[(0, None)], &[(1, 2, true, true, None)]);
        // 29 minutes later the short session continues; at exactly 30 minutes after
        // the latest event it has expired, the long one continues.
        check(
            &[(0, None), (29, None), (59, None)],
            &[
                (1, 2, true, true, None),
                (1, 2, false, false, None),
                (3, 2, true, false, None),
            ],
        );
        check(
            &[(0, None), (30, None)],
            &[(1, 2, true, true, None), (3, 2, true, false, None)],
        );
        // Each event renews: 20-minute gaps never end the session.
        check(
            &[(0, None), (20, None), (40, None), (60, None)],
            &[
                (1, 2, true, true, None),
                (1, 2, false, false, None),
                (1, 2, false, false, None),
                (1, 2, false, false, None),
            ],
        );
        // After the long TTL both are new.
        check(
            &[(0, None), (90 * 24 * 60, None)],
            &[(1, 2, true, true, None), (3, 4, true, true, None)],
        );
        // Via is attached to the recording event and later ones until its TTL
        // (60 min from recording, not renewed by events without via).
        check(
            &[(0, Some("ad")), (20, None), (59, None), (60, None)],
            &[
                (1, 2, true, true, Some("ad")),
                (1, 2, false, false, Some("ad")),
                (3, 2, true, false, Some("ad")),
                (3, 2, false, false, None),
            ],
        );
        // A new route replaces the old one (last touch) and restarts its TTL.
        check(
            &[(0, Some("ad")), (10, Some("mail")), (65, None)],
            &[
                (1, 2, true, true, Some("ad")),
                (1, 2, false, false, Some("mail")),
                (3, 2, true, false, Some("mail")),
            ],
        );
    }

    #[test]
    fn future_records_stay_alive_and_keep_their_time() {
        let policy = policy();
        let (_, state) = policy.resolve(None, Timestamp::from_millis(100 * MIN), None);
        let (s, next) = policy.resolve(Some(&state), Timestamp::from_millis(90 * MIN), None);
        assert!(!s.short_new && !s.long_new);
        assert_eq!(
            next.short.map(|r| r.last_seen),
            Some(Timestamp::from_millis(100 * MIN))
        );
    }

    #[test]
    fn merging_takes_the_newer_record_per_part() {
        let rec = |id: u128, at: u64| {
            Some(SessionRecord {
                id: SessionId::from(Uuid::from_u128(id)),
                last_seen: Timestamp::from_millis(at),
            })
        };
        let via = |source: &str, end: u64| {
            Some(ViaRecord {
                via: super::tests::via(source),
                expires_at: Timestamp::from_millis(end),
            })
        };
        // (mine, theirs) → (merged, parts taken)
        let check =
            |mine: VisitorState, theirs: VisitorState, merged: VisitorState, taken: StateParts| {
                let mut got = mine.clone();
                assert_eq!(got.merge_newer(&theirs), taken, "{mine:?} ← {theirs:?}");
                assert_eq!(got, merged, "{mine:?} ← {theirs:?}");
            };
        let a = VisitorState {
            short: rec(1, 10),
            long: rec(2, 10),
            via: via("ad", 50),
        };
        // Nothing there: mine stays.
        check(
            a.clone(),
            VisitorState::default(),
            a.clone(),
            StateParts::default(),
        );
        // Newer short, older long, same-time via: only the short is taken.
        let b = VisitorState {
            short: rec(3, 20),
            long: rec(4, 5),
            via: via("mail", 50),
        };
        check(
            a.clone(),
            b.clone(),
            VisitorState {
                short: rec(3, 20),
                ..a.clone()
            },
            StateParts {
                short: true,
                ..StateParts::default()
            },
        );
        // A tie keeps mine.
        check(
            a.clone(),
            VisitorState {
                short: rec(9, 10),
                ..VisitorState::default()
            },
            a.clone(),
            StateParts::default(),
        );
        // Missing parts are filled in; a later via wins.
        check(
            VisitorState {
                long: rec(2, 10),
                ..VisitorState::default()
            },
            b.clone(),
            VisitorState {
                short: rec(3, 20),
                long: rec(2, 10),
                via: via("mail", 50),
            },
            StateParts {
                short: true,
                long: false,
                via: true,
            },
        );
        check(
            a.clone(),
            VisitorState {
                via: via("mail", 51),
                ..VisitorState::default()
            },
            VisitorState {
                via: via("mail", 51),
                ..a.clone()
            },
            StateParts {
                via: true,
                ..StateParts::default()
            },
        );
    }

    #[test]
    fn expiry_of_a_whole_state() {
        let policy = policy();
        let (_, state) = policy.resolve(None, Timestamp::from_millis(0), Some(&via("ad")));
        assert_eq!(
            policy.expires_at(&state),
            Timestamp::from_millis(90 * 24 * 60 * MIN)
        );
        assert_eq!(
            policy.expires_at(&VisitorState::default()),
            Timestamp::default()
        );
    }
}
