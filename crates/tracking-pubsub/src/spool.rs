//! The disk spool: events that could not be published yet, kept in
//! append-only segment files and handed back, oldest first, for replay.
//!
//! Layout of the spool directory:
//!
//! ```text
//! seg-00000000000000000001.spool   append-only segments, oldest first
//! seg-00000000000000000002.spool
//! cursor                           "<segment> <offset>": where replay resumes
//! ```
//!
//! Record framing: `len: u32 LE | crc32(payload): u32 LE | payload`, where
//! `payload = accepted_at_ms: u64 LE | type_len: u16 LE | type | data`. The
//! event id is not framed (an earlier version could not read the spool back
//! after a rollback): a replayed record takes it from its event JSON.
//!
//! Durability: [`Spool::append`] writes a whole batch with one `write` and
//! then `fdatasync`s it (group commit); a batch counts as spooled only after
//! that. The cursor is replaced atomically (write + rename) after each
//! replayed chunk, without fsync: after a machine crash replay may resume a
//! little early and publish some events twice (at-least-once), never skip.
//!
//! Damage: every process starts a fresh segment and never appends to an older
//! one, so a record torn by a crash mid-write sits at the end of an old
//! segment. [`Spool::open`] checks every record's length and checksum; from
//! the first bad record on, the rest of that segment is reported as a
//! [`Damage`] and cut off (framing cannot resynchronise inside a segment).
//! Intact records before it, and all other segments, are kept.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// Bytes of framing before each payload.
const HEADER: u64 = 8;
/// Bytes of the payload before the event type.
const PAYLOAD_FIXED: usize = 10;
/// Largest record accepted on read; anything larger is damage.
const MAX_RECORD: u32 = 64 * 1024 * 1024;
/// Longest type kept (longer ones are cut: never in practice, the event
/// rules bound it far below).
const MAX_KIND: usize = u16::MAX as usize;

/// The `event_id` of an enriched event's JSON (a record read back from the
/// spool); empty when it has none.
fn id_of(data: &[u8]) -> Box<str> {
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        event_id: std::borrow::Cow<'a, str>,
    }
    serde_json::from_slice::<Id<'_>>(data).map_or_else(|_| "".into(), |i| i.event_id.into())
}

/// One event waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When the API accepted it (ms since the epoch): the start of the
    /// delivery-latency measurement, kept across restarts.
    pub accepted_at_ms: u64,
    /// The event type (the message's `type` attribute).
    pub kind: Box<str>,
    /// The event's id (the message's `event_id` attribute).
    pub event_id: Box<str>,
    /// The enriched event JSON (the message data).
    pub data: Bytes,
}

impl Record {
    /// Bytes the record takes on disk.
    pub fn spooled_len(&self) -> u64 {
        HEADER + (PAYLOAD_FIXED + self.kind.len().min(MAX_KIND) + self.data.len()) as u64
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        let kind = &self.kind.as_bytes()[..self.kind.len().min(MAX_KIND)];
        let len = PAYLOAD_FIXED + kind.len() + self.data.len();
        let start = out.len();
        out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.accepted_at_ms.to_le_bytes());
        out.extend_from_slice(&u16::try_from(kind.len()).unwrap_or(0).to_le_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(&self.data);
        let crc = crc32fast::hash(&out[start + 8..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    fn decode(payload: &[u8]) -> Option<Self> {
        let accepted_at_ms = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
        let kind_len = usize::from(u16::from_le_bytes(payload.get(8..10)?.try_into().ok()?));
        let kind = std::str::from_utf8(payload.get(10..10 + kind_len)?).ok()?;
        let data = Bytes::copy_from_slice(payload.get(10 + kind_len..)?);
        Some(Self {
            accepted_at_ms,
            kind: kind.into(),
            event_id: id_of(&data),
            data,
        })
    }
}

/// Where a record ends: replay commits up to such a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub segment: u64,
    pub offset: u64,
}

/// A damaged stretch found when opening the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub segment: PathBuf,
    /// Offset of the first bad record.
    pub offset: u64,
    /// Bytes cut off from there to the end of the segment.
    pub bytes: u64,
    pub reason: String,
}

/// What [`Spool::open`] found.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// Intact records waiting for replay.
    pub records: u64,
    pub bytes: u64,
    pub damage: Vec<Damage>,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    /// Bytes of intact records.
    len: u64,
}

/// The spool. Not shared: one owner does all appends and reads.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    /// The segment this process appends to (always the last of `segments`).
    tail: Option<File>,
    next_seq: u64,
    /// Replay has published everything before this.
    cursor: Pos,
    /// Bytes not replayed yet.
    bytes: u64,
    /// Keep appending to a fully replayed tail segment until it is full,
    /// instead of removing it at once (the write-ahead log, whose every
    /// event is replayed moments after it is appended).
    reuse_tail: bool,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("seg-{seq:020}.spool"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?
        .strip_suffix(".spool")?
        .parse()
        .ok()
}

fn context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

impl Spool {
    /// Opens (creating when missing) the spool in `dir`, checking every
    /// record. Segments roll over at `segment_bytes`.
    pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<(Self, OpenReport)> {
        fs::create_dir_all(dir).map_err(|e| context(e, "cannot create spool directory", dir))?;
        let mut seqs = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| context(e, "cannot list", dir))? {
            let entry = entry?;
            if let Some(seq) = entry.file_name().to_str().and_then(parse_segment_name) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let cursor = read_cursor(dir).unwrap_or(Pos {
            segment: 0,
            offset: 0,
        });
        // New segments are numbered past the persisted cursor too: a cursor
        // left by an earlier run whose segments are all gone must not make
        // the next open remove (or skip into) a segment this run writes.
        let persisted_segment = cursor.segment;
        let mut report = OpenReport::default();
        let mut segments = VecDeque::new();
        for seq in &seqs {
            let path = segment_path(dir, *seq);
            if *seq < cursor.segment {
                fs::remove_file(&path).map_err(|e| context(e, "cannot remove", &path))?;
                continue;
            }
            let scan = scan_segment(&path)?;
            if let Some(d) = scan.damage {
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(scan.len).and_then(|()| f.sync_all()))
                    .map_err(|e| context(e, "cannot cut the damaged tail of", &path))?;
                report.damage.push(d);
            }
            let skip = if *seq == cursor.segment {
                cursor.offset.min(scan.len)
            } else {
                0
            };
            report.records += scan.offsets.iter().filter(|&&o| o >= skip).count() as u64;
            report.bytes += scan.len - skip;
            segments.push_back(Segment {
                seq: *seq,
                len: scan.len,
            });
        }
        let cursor = match segments.front() {
            Some(first) if first.seq == cursor.segment => Pos {
                segment: first.seq,
                offset: cursor.offset.min(first.len),
            },
            Some(first) => Pos {
                segment: first.seq,
                offset: 0,
            },
            None => Pos {
                segment: 0,
                offset: 0,
            },
        };
        let next_seq = seqs.last().map_or(1, |s| s + 1).max(persisted_segment + 1);
        let spool = Self {
            dir: dir.to_owned(),
            segment_bytes: segment_bytes.max(4096),
            segments,
            tail: None,
            next_seq,
            cursor,
            bytes: report.bytes,
            reuse_tail: false,
        };
        Ok((spool, report))
    }

    /// See `reuse_tail`: for a log that is drained continually.
    pub fn reuse_tail(&mut self) {
        self.reuse_tail = true;
    }

    /// Bytes waiting for replay.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Appends `records` and makes them durable (one write, one fdatasync);
    /// returns where the first of them starts (a batch never spans two
    /// segments: record `i` ends at that offset plus the `spooled_len` of
    /// records `0..=i`). On failure nothing of the batch counts as spooled:
    /// the write is cut off again (a failed fdatasync may have left the page
    /// cache without it), and if even that fails this segment takes no more
    /// appends.
    pub fn append<'a>(&mut self, records: impl IntoIterator<Item = &'a Record>) -> io::Result<Pos> {
        let mut buf = Vec::new();
        for r in records {
            r.encode_into(&mut buf);
        }
        if buf.is_empty() {
            return Ok(self.end());
        }
        let roll = match (&self.tail, self.segments.back()) {
            (Some(_), Some(seg)) => seg.len >= self.segment_bytes,
            _ => true,
        };
        if roll {
            let seq = self.next_seq;
            let path = segment_path(&self.dir, seq);
            // Past this number whatever happens: a file left by a failed
            // attempt must not block every later one.
            self.next_seq += 1;
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|e| context(e, "cannot create spool segment", &path))?;
            // The new segment's name must survive a crash too.
            if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
                let _ = fs::remove_file(&path);
                return Err(context(e, "cannot sync the spool directory", &self.dir));
            }
            self.tail = Some(file);
            self.segments.push_back(Segment { seq, len: 0 });
            if self.segments.len() == 1 {
                self.cursor = Pos {
                    segment: seq,
                    offset: 0,
                };
            }
        }
        let (Some(file), Some(seg)) = (self.tail.as_mut(), self.segments.back_mut()) else {
            return Err(io::Error::other("spool has no tail segment"));
        };
        let written = file.write_all(&buf).and_then(|()| file.sync_data());
        if let Err(e) = written {
            // Cut a partial write off so the segment stays well-formed; if
            // that fails too, stop appending to this segment.
            if file.set_len(seg.len).is_err() {
                self.tail = None;
            }
            return Err(e);
        }
        let start = Pos {
            segment: seg.seq,
            offset: seg.len,
        };
        seg.len += buf.len() as u64;
        self.bytes += buf.len() as u64;
        Ok(start)
    }

    /// Where the next append's records would start, if it does not roll
    /// over: the end of what is spooled.
    pub fn end(&self) -> Pos {
        self.segments.back().map_or(self.cursor, |seg| Pos {
            segment: seg.seq,
            offset: seg.len,
        })
    }

    /// Whether the spool's disk takes writes again after a failure: writes
    /// and fdatasyncs a probe file of `bytes` next to the segments, then
    /// removes it.
    pub fn probe(&self, bytes: usize) -> io::Result<()> {
        let path = self.dir.join("probe.tmp");
        let tried = File::create(&path)
            .and_then(|mut f| f.write_all(&vec![0u8; bytes]).and_then(|()| f.sync_data()))
            .map_err(|e| context(e, "cannot write the probe file", &path));
        let _ = fs::remove_file(&path);
        tried
    }

    /// Up to `max` records from the cursor on, and no more than `max_bytes`
    /// of event data (but at least one record), each with the position just
    /// after it. Does not move the cursor: see [`Spool::commit`].
    pub fn peek(&self, max: usize, max_bytes: usize) -> io::Result<Vec<(Record, Pos)>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for seg in self
            .segments
            .iter()
            .filter(|s| s.seq >= self.cursor.segment)
        {
            let start = if seg.seq == self.cursor.segment {
                self.cursor.offset
            } else {
                0
            };
            if start >= seg.len {
                continue;
            }
            let path = segment_path(&self.dir, seg.seq);
            let mut file = File::open(&path).map_err(|e| context(e, "cannot open", &path))?;
            file.seek(SeekFrom::Start(start))?;
            let mut reader = BufReader::with_capacity(256 * 1024, file.take(seg.len - start));
            let mut offset = start;
            while offset < seg.len && out.len() < max && bytes < max_bytes {
                let (record, len) = read_record(&mut reader)
                    .map_err(|e| context(e, "cannot read spooled record from", &path))?
                    .map_err(|reason| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{} at {offset}: {reason}", path.display()),
                        )
                    })?;
                offset += len;
                bytes += record.data.len();
                out.push((
                    record,
                    Pos {
                        segment: seg.seq,
                        offset,
                    },
                ));
            }
            if out.len() >= max || bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// Marks everything before `pos` as replayed: persists the cursor and
    /// removes segments that are fully replayed.
    pub fn commit(&mut self, pos: Pos) -> io::Result<()> {
        self.advance(pos)?;
        self.persist_cursor()
    }

    /// Persists the cursor (not fsynced: after a machine crash replay may
    /// start a little early, never late).
    pub fn persist_cursor(&self) -> io::Result<()> {
        write_cursor(&self.dir, self.cursor)
    }

    /// Like [`Spool::commit`], but the cursor is only persisted by a later
    /// [`Spool::persist_cursor`] (or commit): removes the segments before
    /// `pos` at once. A crash in between replays from the older cursor.
    pub fn advance(&mut self, pos: Pos) -> io::Result<()> {
        if pos <= self.cursor {
            return Ok(());
        }
        self.cursor = pos;
        let removed = self.remove_replayed(pos);
        // Counted from what is listed: a segment whose removal failed is
        // still listed (and removed later), and must not be freed twice.
        self.bytes = self.unreplayed_bytes();
        removed
    }

    /// Bytes after the cursor in the listed segments.
    fn unreplayed_bytes(&self) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.seq >= self.cursor.segment)
            .map(|s| {
                s.len
                    - if s.seq == self.cursor.segment {
                        self.cursor.offset.min(s.len)
                    } else {
                        0
                    }
            })
            .sum()
    }

    /// Removes the segments fully before `pos`.
    fn remove_replayed(&mut self, pos: Pos) -> io::Result<()> {
        while let Some(seg) = self.segments.front() {
            let done = seg.seq < pos.segment;
            // The tail is kept while this process appends to it, unless it is
            // fully replayed: then it is closed and removed, and the next
            // append starts a new segment.
            let drained_tail = self.segments.len() == 1
                && seg.seq == pos.segment
                && pos.offset >= seg.len
                && !(self.reuse_tail && self.tail.is_some() && seg.len < self.segment_bytes);
            if !(done || drained_tail) {
                break;
            }
            let path = segment_path(&self.dir, seg.seq);
            if drained_tail {
                self.tail = None;
            }
            fs::remove_file(&path).map_err(|e| context(e, "cannot remove", &path))?;
            self.segments.pop_front();
        }
        Ok(())
    }
}

struct Scan {
    len: u64,
    /// Start offset of each intact record.
    offsets: Vec<u64>,
    damage: Option<Damage>,
}

fn scan_segment(path: &Path) -> io::Result<Scan> {
    let file = File::open(path).map_err(|e| context(e, "cannot open", path))?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut offsets = Vec::new();
    let mut offset = 0;
    while offset < file_len {
        match read_record(&mut reader)? {
            Ok((_, len)) => {
                offsets.push(offset);
                offset += len;
            }
            Err(reason) => {
                return Ok(Scan {
                    len: offset,
                    offsets,
                    damage: Some(Damage {
                        segment: path.to_owned(),
                        offset,
                        bytes: file_len - offset,
                        reason,
                    }),
                });
            }
        }
    }
    Ok(Scan {
        len: offset,
        offsets,
        damage: None,
    })
}

/// Reads one record: `Ok(Err(reason))` for damage (short or bad record),
/// `Err` for I/O failures.
fn read_record(r: &mut impl Read) -> io::Result<Result<(Record, u64), String>> {
    let mut header = [0u8; HEADER as usize];
    if let Err(e) = r.read_exact(&mut header) {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => Ok(Err("truncated record header".into())),
            _ => Err(e),
        };
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_RECORD || (len as usize) < PAYLOAD_FIXED {
        return Ok(Err(format!("impossible record length {len}")));
    }
    let mut payload = vec![0u8; len as usize];
    if let Err(e) = r.read_exact(&mut payload) {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => Ok(Err("truncated record".into())),
            _ => Err(e),
        };
    }
    if crc32fast::hash(&payload) != crc {
        return Ok(Err("checksum mismatch".into()));
    }
    Ok(Record::decode(&payload)
        .map(|rec| (rec, HEADER + u64::from(len)))
        .ok_or_else(|| "malformed record payload".to_owned()))
}

fn read_cursor(dir: &Path) -> Option<Pos> {
    let text = fs::read_to_string(dir.join("cursor")).ok()?;
    let (segment, offset) = text.trim().split_once(' ')?;
    Some(Pos {
        segment: segment.parse().ok()?,
        offset: offset.parse().ok()?,
    })
}

fn write_cursor(dir: &Path, pos: Pos) -> io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    fs::write(&tmp, format!("{} {}\n", pos.segment, pos.offset))
        .map_err(|e| context(e, "cannot write", &tmp))?;
    fs::rename(&tmp, dir.join("cursor")).map_err(|e| context(e, "cannot replace cursor in", dir))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rec(i: u64) -> Record {
        Record {
            accepted_at_ms: 1_700_000_000_000 + i,
            kind: "page_view".into(),
            event_id: format!("e{i}").into(),
            data: Bytes::from(format!("{{\"event_id\":\"e{i}\"}}")),
        }
    }

    fn ids(records: &[(Record, Pos)]) -> Vec<u64> {
        records
            .iter()
            .map(|(r, _)| r.accepted_at_ms - 1_700_000_000_000)
            .collect()
    }

    fn drain(spool: &mut Spool) -> Vec<u64> {
        let mut all = Vec::new();
        loop {
            let batch = spool.peek(7, usize::MAX).unwrap();
            let Some((_, pos)) = batch.last() else { break };
            let pos = *pos;
            all.extend(ids(&batch));
            spool.commit(pos).unwrap();
        }
        all
    }

    #[test]
    fn appends_and_replays_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, report) = Spool::open(dir.path(), 4096).unwrap();
        assert_eq!(report.records, 0);
        for chunk in (0..300).collect::<Vec<_>>().chunks(10) {
            spool
                .append(&chunk.iter().map(|&i| rec(i)).collect::<Vec<_>>())
                .unwrap();
        }
        let total = spool.bytes();
        assert!(spool.segments.len() > 1, "rolled over");
        // Replay half, then "restart".
        let first = spool.peek(120, usize::MAX).unwrap();
        spool.commit(first.last().unwrap().1).unwrap();
        assert!(spool.bytes() < total);
        drop(spool);
        let (mut spool, report) = Spool::open(dir.path(), 4096).unwrap();
        assert_eq!(report.records, 180);
        assert!(report.damage.is_empty());
        // New appends go after the old ones.
        spool.append(&[rec(300)]).unwrap();
        assert_eq!(drain(&mut spool), (120..=300).collect::<Vec<_>>());
        assert!(spool.is_empty());
        assert_eq!(spool.bytes(), 0);
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_owned))
            .filter(|n| n.ends_with(".spool"))
            .collect();
        assert!(left.is_empty(), "replayed segments removed: {left:?}");
        // And it keeps working after being emptied.
        spool.append(&[rec(301)]).unwrap();
        assert_eq!(drain(&mut spool), vec![301]);
    }

    #[test]
    fn a_cursor_left_by_an_earlier_run_never_hides_a_later_runs_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 4096).unwrap();
        for chunk in (0..200).collect::<Vec<_>>().chunks(10) {
            spool
                .append(&chunk.iter().map(|&i| rec(i)).collect::<Vec<_>>())
                .unwrap();
        }
        // Everything replayed: no segment left, only the cursor.
        assert_eq!(drain(&mut spool).len(), 200);
        drop(spool);
        assert!(read_cursor(dir.path()).unwrap().segment > 1);
        // A later run appends and dies before its cursor is persisted.
        let (mut spool, _) = Spool::open(dir.path(), 4096).unwrap();
        spool.append(&[rec(500), rec(501), rec(502)]).unwrap();
        drop(spool);
        let (mut spool, report) = Spool::open(dir.path(), 4096).unwrap();
        assert_eq!(report.records, 3);
        assert_eq!(drain(&mut spool), vec![500, 501, 502]);
    }

    #[test]
    fn a_torn_tail_is_reported_and_the_records_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&(0..50).map(rec).collect::<Vec<_>>()).unwrap();
        drop(spool);
        let seg = segment_path(dir.path(), 1);
        let len = fs::metadata(&seg).unwrap().len();
        let one = rec(49).spooled_len();
        let intact: u64 = (0..49).map(|i| rec(i).spooled_len()).sum();
        // Cut the last record in half, as a crash mid-write would.
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - one / 2)
            .unwrap();
        let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(report.records, 49);
        assert_eq!(report.damage.len(), 1);
        assert_eq!(report.damage[0].offset, intact);
        assert_eq!(report.damage[0].bytes, one - one / 2);
        assert_eq!(drain(&mut spool), (0..49).collect::<Vec<_>>());
    }

    #[test]
    fn a_record_read_back_has_its_event_id_and_the_framing_is_unchanged() {
        let r = rec(7);
        let mut buf = Vec::new();
        r.encode_into(&mut buf);
        assert_eq!(buf.len() as u64, r.spooled_len());
        let (back, len) = read_record(&mut &buf[..]).unwrap().unwrap();
        assert_eq!((back, len), (r.clone(), r.spooled_len()));
        // The framing every version reads: type length, type, data.
        let payload = &buf[HEADER as usize..];
        assert_eq!(&payload[8..10], &9u16.to_le_bytes());
        assert_eq!(&payload[10..19], b"page_view");
        assert_eq!(&payload[19..], &r.data[..]);
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&(0..10).map(rec).collect::<Vec<_>>()).unwrap();
        drop(spool);
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        let at = (rec(0).spooled_len() * 6 + 20) as usize;
        bytes[at] ^= 0x40;
        fs::write(&seg, bytes).unwrap();
        let (mut spool, report) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(report.damage[0].reason, "checksum mismatch");
        assert_eq!(drain(&mut spool), (0..6).collect::<Vec<_>>());
    }
}
