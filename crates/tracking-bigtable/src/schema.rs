//! How a visitor's state is laid out in a Bigtable row.

use bigtable_rs::bigtable::RowCell;
use bigtable_rs::google::bigtable::v2::mutation::{DeleteFromColumn, Mutation as Kind, SetCell};
use bigtable_rs::google::bigtable::v2::row_filter::{Chain, Filter, Interleave};
use bigtable_rs::google::bigtable::v2::{
    Mutation, ReadRowsRequest, RowFilter, RowSet, TimestampRange,
};
use serde::{Deserialize, Serialize};
use tracking_core::{ClientId, SessionId, SessionRecord, Timestamp, Via, ViaRecord, VisitorState};
use uuid::Uuid;

/// Short session: value = the id ([`id_bytes`]), cell timestamp = latest
/// event.
pub const SHORT: &str = "s";
/// Long session: same shape.
pub const LONG: &str = "l";
/// Via record: value = JSON with its own expiry, cell timestamp = when recorded.
pub const VIA: &str = "v";
/// Recent events' client-given ids (deduplication), in rows of their own
/// ([`id_row_key`]): column [`ACCEPTED`], empty value, cell timestamp = when
/// the event was accepted. Garbage collection (max age = the dedup window)
/// removes them; a read asks only for the id row of its event.
pub const EVENTS: &str = "e";
pub const ACCEPTED: &[u8] = b"a";
pub const ID: &[u8] = b"id";
pub const ROUTE: &[u8] = b"r";

/// `xxxx#<client_id>`: the prefix spreads visitors over 65,536 key ranges so
/// that no monotonically growing or popular prefix concentrates load. The
/// hash (FNV-1a, then murmur3's 64-bit finalizer so that ids differing only
/// in their last characters still land far apart) is fixed forever: changing
/// it would orphan every stored row.
pub fn row_key(client_id: &ClientId) -> Vec<u8> {
    row_key_with(key_hash(client_id), client_id)
}

/// The fixed 64-bit hash behind the row-key prefix (also usable to pick a
/// lock stripe without hashing again).
pub fn key_hash(client_id: &ClientId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in client_id.as_str().bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The row key of `client_id` given its [`key_hash`].
pub fn row_key_with(hash: u64, client_id: &ClientId) -> Vec<u8> {
    format!("{:04x}#{}", (hash >> 48) as u16, client_id.as_str()).into_bytes()
}

/// The read of one visitor's row that the store sends: latest cells only;
/// when the event has a client-given id to check, in the same call, that
/// id's own row ([`id_row_key`]) — one cell, whatever the visitor's rate.
pub fn read_visitor(table_name: &str, key: &[u8], event_id: Option<&str>) -> ReadRowsRequest {
    let sessions = latest_cells_filter();
    let (row_keys, filter) = match event_id {
        None => (vec![key.to_vec()], sessions),
        Some(id) => (
            vec![key.to_vec(), id_row_key(key, id)],
            RowFilter {
                filter: Some(Filter::Interleave(Interleave {
                    filters: vec![
                        sessions,
                        RowFilter {
                            filter: Some(Filter::Chain(Chain {
                                filters: [
                                    Filter::FamilyNameRegexFilter(format!("^{EVENTS}$")),
                                    Filter::CellsPerColumnLimitFilter(1),
                                ]
                                .into_iter()
                                .map(|f| RowFilter { filter: Some(f) })
                                .collect(),
                            })),
                        },
                    ],
                })),
            },
        ),
    };
    let rows_limit = row_keys.len() as i64;
    ReadRowsRequest {
        table_name: table_name.to_owned(),
        rows: Some(RowSet {
            row_keys,
            row_ranges: vec![],
        }),
        filter: Some(filter),
        rows_limit,
        ..ReadRowsRequest::default()
    }
}

/// The row of one accepted event id of the visitor whose row is
/// `visitor_key`: `xxxx#<client_id>#e#<event_id>` (`#` is in no client id,
/// so no visitor's row is another's id row). A row of its own, not a column
/// of the visitor's row: a visitor sending an event a second would hold
/// 86,400 cells a day, and a read of its sessions scans them (on the
/// emulator, 124 ms at 5,000 against 0.4 ms).
pub fn id_row_key(visitor_key: &[u8], id: &str) -> Vec<u8> {
    [visitor_key, b"#e#", id.as_bytes()].concat()
}

/// When the event id of an id row ([`id_row_key`]) was accepted, from that
/// row's cells.
pub fn accepted_at(cells: &[RowCell]) -> Option<Timestamp> {
    cells
        .iter()
        .filter(|c| c.family_name == EVENTS)
        .map(|c| millis(c.timestamp_micros))
        .max()
}

/// Records an event id (its row's one cell) as accepted at `at`. Written
/// again (a retried write), it sets the same cell.
pub fn record_id(at: Timestamp) -> Vec<Mutation> {
    vec![Mutation {
        mutation: Some(Kind::SetCell(SetCell {
            family_name: EVENTS.to_owned(),
            column_qualifier: ACCEPTED.to_vec(),
            timestamp_micros: micros(at),
            value: Vec::new(),
        })),
    }]
}

/// Only our families, and only the latest cell of each column. Without the
/// limit, every version Bigtable has not garbage-collected yet (production
/// GC is lazy: days) would be read.
pub fn latest_cells_filter() -> RowFilter {
    RowFilter {
        filter: Some(Filter::Chain(Chain {
            filters: vec![
                RowFilter {
                    filter: Some(Filter::FamilyNameRegexFilter(format!(
                        "^[{SHORT}{LONG}{VIA}]$"
                    ))),
                },
                RowFilter {
                    filter: Some(Filter::CellsPerColumnLimitFilter(1)),
                },
            ],
        })),
    }
}

/// The predicate of a conditional write (`CheckAndMutateRow`): matches when,
/// for any `(family, from)` given, the family's latest session cell is
/// timestamped at or after `from` — a session alive at the writer's time
/// (`from` = now − TTL + 1 ms), or a cell newer than the one read
/// (`from` = its time + 1 ms).
pub fn latest_since(parts: &[(&str, Timestamp)]) -> RowFilter {
    let mut filters: Vec<RowFilter> = parts
        .iter()
        .map(|(family, from)| RowFilter {
            filter: Some(Filter::Chain(Chain {
                filters: [
                    Filter::FamilyNameRegexFilter(format!("^{family}$")),
                    Filter::ColumnQualifierRegexFilter([b"^", ID, b"$"].concat()),
                    Filter::CellsPerColumnLimitFilter(1),
                    Filter::TimestampRangeFilter(TimestampRange {
                        start_timestamp_micros: micros(*from),
                        end_timestamp_micros: 0,
                    }),
                ]
                .into_iter()
                .map(|f| RowFilter { filter: Some(f) })
                .collect(),
            })),
        })
        .collect();
    if filters.len() == 1 {
        return filters.remove(0);
    }
    RowFilter {
        filter: Some(Filter::Interleave(Interleave { filters })),
    }
}

#[derive(Serialize, Deserialize)]
struct StoredVia {
    source: Option<String>,
    medium: Option<String>,
    campaign: Option<String>,
    expires_at: u64,
}

/// Whether every byte is printable ASCII (0x20–0x7E), the alphabet of
/// session ids.
fn printable(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| (0x20..=0x7e).contains(b))
}

/// A session id as a cell value. Two encodings, told apart without a tag:
///
/// * 16 bytes that are not all printable ASCII: a binary UUID, the id being
///   its canonical lowercase text. Every id the releases before opaque ids
///   wrote is of this kind (an RFC 4122 UUID has byte 8 in 0x80–0xBF), so
///   their rows read as the same ids.
/// * Anything else: the id's text, verbatim (printable ASCII, at most
///   `MAX_SESSION_ID_BYTES`; a 16-character text id is all printable, so it
///   is never mistaken for a UUID).
///
/// A UUID is written in binary unless its 16 bytes happen to be all
/// printable (a non-RFC UUID from the legacy store could be): that one is
/// written as text, as it would otherwise read back as a different id.
pub fn id_bytes(id: &SessionId) -> Vec<u8> {
    match id.as_uuid() {
        Some(u) if !printable(u.as_bytes()) => u.as_bytes().to_vec(),
        _ => id.with_str(|t| t.as_bytes().to_vec()),
    }
}

/// The session id in a cell value written by [`id_bytes`] (or by a release
/// before opaque ids); `None` when it is neither encoding.
pub fn id_of(value: &[u8]) -> Option<SessionId> {
    if value.len() == 16 && !printable(value) {
        return Uuid::from_slice(value).ok().map(SessionId::from);
    }
    std::str::from_utf8(value).ok().and_then(SessionId::parse)
}

fn micros(t: Timestamp) -> i64 {
    i64::try_from(t.as_millis().saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn millis(micros: i64) -> Timestamp {
    Timestamp::from_millis(u64::try_from(micros / 1000).unwrap_or(0))
}

/// The latest cells [`decode`] could not read: they count as absent, and
/// a session cell's time is kept so that a conditional write can tell it
/// from a cell written after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unreadable {
    pub short: Option<Timestamp>,
    pub long: Option<Timestamp>,
    pub via: bool,
}

impl Unreadable {
    pub fn count(&self) -> usize {
        usize::from(self.short.is_some()) + usize::from(self.long.is_some()) + usize::from(self.via)
    }
}

/// The state in a row's cells. Unreadable cells count as absent (and are
/// reported), so one bad cell cannot lock a visitor out.
pub fn decode(cells: &[RowCell]) -> (VisitorState, Unreadable) {
    let mut state = VisitorState::default();
    let mut corrupt = Unreadable::default();
    // Newest first per column even if the filter were missing.
    let newest = |family: &str, qualifier: &[u8]| {
        cells
            .iter()
            .filter(|c| c.family_name == family && c.qualifier == qualifier)
            .max_by_key(|c| c.timestamp_micros)
    };
    for (family, slot, bad) in [
        (SHORT, &mut state.short, &mut corrupt.short),
        (LONG, &mut state.long, &mut corrupt.long),
    ] {
        if let Some(c) = newest(family, ID) {
            let last_seen = millis(c.timestamp_micros);
            match id_of(&c.value) {
                Some(id) => *slot = Some(SessionRecord { id, last_seen }),
                None => *bad = Some(last_seen),
            }
        }
    }
    if let Some(c) = newest(VIA, ROUTE) {
        match serde_json::from_slice::<StoredVia>(&c.value) {
            Ok(v) => {
                state.via = Via::new(
                    v.source.as_deref(),
                    v.medium.as_deref(),
                    v.campaign.as_deref(),
                )
                .map(|via| ViaRecord {
                    via,
                    expires_at: Timestamp::from_millis(v.expires_at),
                });
            }
            Err(_) => corrupt.via = true,
        }
    }
    (state, corrupt)
}

/// The cells a mutation list sets (each also carries the delete of its
/// column's older versions).
pub fn cells_set(mutations: &[Mutation]) -> usize {
    mutations
        .iter()
        .filter(|m| matches!(m.mutation, Some(Kind::SetCell(_))))
        .count()
}

/// Writes the cell at `at` and deletes the column's older versions, in the
/// same mutation: a row keeps one version per column however often it is
/// renewed. Without the delete, every renewal adds a version until garbage
/// collection removes it (lazily in Bigtable; never in the emulator, whose
/// collector does not run for a table created with its families), so a
/// busy visitor's row grows with each event and so does each read of it.
/// Only versions older than `at` go: a newer cell another writer made
/// meanwhile stays the latest.
fn set(out: &mut Vec<Mutation>, family: &str, qualifier: &[u8], at: Timestamp, value: Vec<u8>) {
    let at = micros(at);
    if at > 0 {
        out.push(Mutation {
            mutation: Some(Kind::DeleteFromColumn(DeleteFromColumn {
                family_name: family.to_owned(),
                column_qualifier: qualifier.to_vec(),
                time_range: Some(TimestampRange {
                    start_timestamp_micros: 0,
                    end_timestamp_micros: at,
                }),
            })),
        });
    }
    out.push(Mutation {
        mutation: Some(Kind::SetCell(SetCell {
            family_name: family.to_owned(),
            column_qualifier: qualifier.to_vec(),
            timestamp_micros: at,
            value,
        })),
    });
}

/// The cells that renew `next` at `now`: both sessions always (a new cell,
/// timestamped with the latest event, in whole milliseconds), the via record
/// only when this event recorded one.
pub fn encode(next: &VisitorState, via_recorded: bool, now: Timestamp) -> Vec<Mutation> {
    let mut out = Vec::with_capacity(6);
    for (family, rec) in [(SHORT, &next.short), (LONG, &next.long)] {
        if let Some(r) = rec {
            set(&mut out, family, ID, r.last_seen, id_bytes(&r.id));
        }
    }
    if via_recorded && let Some(v) = &next.via {
        let stored = StoredVia {
            source: v.via.source.as_deref().map(str::to_owned),
            medium: v.via.medium.as_deref().map(str::to_owned),
            campaign: v.via.campaign.as_deref().map(str::to_owned),
            expires_at: v.expires_at.as_millis(),
        };
        if let Ok(json) = serde_json::to_vec(&stored) {
            set(&mut out, VIA, ROUTE, now, json);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STABLE_KEY: &str = "fc1f#visitor-1";

    fn cell(family: &str, qualifier: &[u8], ts_ms: i64, value: Vec<u8>) -> RowCell {
        RowCell {
            family_name: family.into(),
            qualifier: qualifier.to_vec(),
            value,
            timestamp_micros: ts_ms * 1000,
            labels: vec![],
        }
    }

    #[test]
    fn row_keys_are_spread_and_stable() {
        let key =
            |s: &str| String::from_utf8(row_key(&ClientId::parse(s).expect("id"))).expect("utf8");
        assert_eq!(key("visitor-1"), key("visitor-1"));
        assert!(key("visitor-1").ends_with("#visitor-1"));
        assert_eq!(key("visitor-1").len(), "xxxx#visitor-1".len());
        // Sequential ids land far apart.
        let prefixes: std::collections::HashSet<_> = (0..1000)
            .map(|i| key(&format!("v{i}"))[..4].to_owned())
            .collect();
        // 1,000 ids over 65,536 prefixes: ~992 distinct expected if uniform.
        assert!(prefixes.len() > 980, "{} distinct prefixes", prefixes.len());
        // Pinned: the key of a stored row must never change.
        assert_eq!(key("visitor-1"), STABLE_KEY);
    }

    #[test]
    fn round_trip_and_newest_cell_wins() {
        let a = SessionId::from(Uuid::from_u128(1));
        let b = SessionId::parse("legacy.Sid:0042").expect("id");
        let via = ViaRecord {
            via: Via::new(Some("ad"), None, Some("c")).expect("via"),
            expires_at: Timestamp::from_millis(9_000),
        };
        let state = VisitorState {
            short: Some(SessionRecord {
                id: a,
                last_seen: Timestamp::from_millis(5_000),
            }),
            long: Some(SessionRecord {
                id: b,
                last_seen: Timestamp::from_millis(5_000),
            }),
            via: Some(via.clone()),
        };
        let muts = encode(&state, true, Timestamp::from_millis(5_000));
        // Each cell: the column's older versions deleted, then the cell.
        assert_eq!(muts.len(), 6);
        for pair in muts.chunks(2) {
            match (&pair[0].mutation, &pair[1].mutation) {
                (Some(Kind::DeleteFromColumn(d)), Some(Kind::SetCell(s))) => {
                    assert_eq!(
                        (&d.family_name, &d.column_qualifier),
                        (&s.family_name, &s.column_qualifier)
                    );
                    let range = d.time_range.as_ref().expect("a time range");
                    assert_eq!(
                        (range.start_timestamp_micros, range.end_timestamp_micros),
                        (0, s.timestamp_micros),
                        "only older versions"
                    );
                }
                other => panic!("not a delete-then-set pair: {other:?}"),
            }
        }
        assert_eq!(
            encode(&state, false, Timestamp::from_millis(5_000)).len(),
            4
        );
        let as_cells = |muts: &[Mutation]| -> Vec<RowCell> {
            muts.iter()
                .filter_map(|m| match &m.mutation {
                    Some(Kind::SetCell(s)) => Some(RowCell {
                        family_name: s.family_name.clone(),
                        qualifier: s.column_qualifier.clone(),
                        value: s.value.clone(),
                        timestamp_micros: s.timestamp_micros,
                        labels: vec![],
                    }),
                    _ => None,
                })
                .collect()
        };
        let cells = as_cells(&muts);
        assert_eq!(decode(&cells), (state.clone(), Unreadable::default()));

        // Older versions present (no filter, lazy GC): the newest wins.
        let mut many = as_cells(&muts);
        many.push(cell(
            SHORT,
            ID,
            4_000,
            Uuid::from_u128(7).as_bytes().to_vec(),
        ));
        many.insert(
            0,
            cell(SHORT, ID, 1_000, Uuid::from_u128(8).as_bytes().to_vec()),
        );
        assert_eq!(decode(&many).0.short, state.short);
        assert_eq!(decode(&many).0.long, state.long);

        // Corrupt cells count as absent.
        let bad = vec![
            cell(SHORT, ID, 1, b"sh\x01rt".to_vec()),
            cell(VIA, ROUTE, 1, b"{".to_vec()),
        ];
        let (s, corrupt) = decode(&bad);
        let bad_short_and_via = Unreadable {
            short: Some(Timestamp::from_millis(1)),
            long: None,
            via: true,
        };
        assert_eq!((s, corrupt), (VisitorState::default(), bad_short_and_via));
    }

    /// A cell value → the id it reads as (`None`: unreadable), and back: the
    /// value the id is written as.
    fn check(value: &[u8], expected: Option<&str>, written: Option<&[u8]>) {
        let got = id_of(value);
        assert_eq!(
            got.as_ref().map(ToString::to_string).as_deref(),
            expected,
            "{value:?}"
        );
        if let Some(id) = got {
            assert_eq!(Some(id_bytes(&id).as_slice()), written, "{value:?}");
        }
    }

    #[test]
    fn session_id_cells_old_and_new() {
        // Pinned: what releases before opaque ids wrote, a 16-byte UUIDv7,
        // reads as its canonical text and is written the same way again.
        let old: [u8; 16] = [
            0x01, 0x92, 0xf5, 0xa4, 0x7b, 0x3c, 0x7d, 0x2e, 0x9f, 0x10, 0x1a, 0x2b, 0x3c, 0x4d,
            0x5e, 0x6f,
        ];
        check(
            &old,
            Some("0192f5a4-7b3c-7d2e-9f10-1a2b3c4d5e6f"),
            Some(&old),
        );
        // Its text (say, from the legacy store) is the same id: binary.
        check(
            b"0192f5a4-7b3c-7d2e-9f10-1a2b3c4d5e6f",
            Some("0192f5a4-7b3c-7d2e-9f10-1a2b3c4d5e6f"),
            Some(&old),
        );
        // Text ids stay verbatim, a 16-character one included.
        for text in [
            "0123456789ABCDEF",
            "0192F5A4-7B3C-7D2E-9F10-1A2B3C4D5E6F",
            "dGhpcyBpcyBiYXNlNjR1cmw_-w",
            "node-3:1554131000.42",
            "x",
        ] {
            check(text.as_bytes(), Some(text), Some(text.as_bytes()));
        }
        let longest = "k".repeat(tracking_core::MAX_SESSION_ID_BYTES);
        check(longest.as_bytes(), Some(&longest), Some(longest.as_bytes()));
        // A UUID whose 16 bytes are all printable is written as its text,
        // so it cannot read back as a 16-character id.
        let printable = Uuid::from_bytes(*b"AAAAAAAAAAAAAAAA");
        let text = printable.to_string();
        check(text.as_bytes(), Some(&text), Some(text.as_bytes()));
        check(
            b"AAAAAAAAAAAAAAAA",
            Some("AAAAAAAAAAAAAAAA"),
            Some(b"AAAAAAAAAAAAAAAA"),
        );
        // Unreadable: empty, control characters, too long, not UTF-8 text.
        check(b"", None, None);
        check(b"tab\there", None, None);
        check(
            "k".repeat(tracking_core::MAX_SESSION_ID_BYTES + 1)
                .as_bytes(),
            None,
            None,
        );
        check(&[0xff; 15], None, None);
    }
}
