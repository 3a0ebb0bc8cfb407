//! Time as the domain sees it: milliseconds since the Unix epoch, read through
//! an injected [`Clock`] so TTL rules are tested without sleeping.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (UTC). Serialized as RFC 3339 with
/// millisecond precision, e.g. `2026-11-22T02:27:07.123Z`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// 9999-12-31T23:59:59.999Z, the latest time RFC 3339 can write.
    pub const LATEST: Self = Self(253_402_300_799_999);

    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at the end of time.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(duration_millis(d)))
    }

    /// Whether a record last touched at `self` is still alive at `now` for
    /// `ttl`: alive while `now < self + ttl`. At exactly `self + ttl` it has
    /// expired. A record from the future (another pod's clock ahead of ours)
    /// is alive.
    pub fn alive_at(self, ttl: Duration, now: Timestamp) -> bool {
        now < self.saturating_add(ttl)
    }
}

fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Timestamp {
    /// RFC 3339, UTC, milliseconds (`2026-11-22T02:27:07.123Z`), written
    /// digit by digit: every enriched event carries several, and the
    /// formatter's machinery costs more than the digits.
    pub fn rfc3339(self) -> Rfc3339 {
        let ms = self.0 % 1000;
        let secs = self.0 / 1000;
        let (y, m, d) = civil_from_days(secs / 86_400);
        let rem = secs % 86_400;
        let mut b = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut v: u64| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, y);
        put(5, 2, m);
        put(8, 2, d);
        put(11, 2, rem / 3600);
        put(14, 2, (rem % 3600) / 60);
        put(17, 2, rem % 60);
        put(20, 3, ms);
        Rfc3339(b)
    }
}

/// A [`Timestamp`]'s RFC 3339 text (years 0–9999; later ones wrap, as no
/// clock reads them).
#[derive(Clone, Copy, Debug)]
pub struct Rfc3339([u8; 24]);

impl Rfc3339 {
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators were written.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339, UTC, milliseconds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.rfc3339().as_str())
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.rfc3339().as_str())
    }
}

impl Timestamp {
    /// Parses an RFC 3339 / ISO 8601 date-time with a UTC offset, as the
    /// Segment SDKs write it: `2026-12-07T11:20:18.123Z`,
    /// `2026-12-07T11:20:18.123456+00:00`, `2026-12-07 11:20:18+0900`.
    /// Fractions beyond milliseconds are cut; a time without an offset is
    /// UTC (as JavaScript reads it). A time before 1970 (a device clock
    /// reset to the epoch in a zone east of UTC) is the epoch, and one past
    /// [`Timestamp::LATEST`] (year 9999 with a negative offset) is that:
    /// every time parsed can be written back.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        let num = |range: std::ops::Range<usize>| -> Option<u64> {
            let digits = b.get(range)?;
            digits.iter().try_fold(0u64, |n, &d| {
                d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
            })
        };
        if b.len() < 19
            || b[4] != b'-'
            || b[7] != b'-'
            || !matches!(b[10], b'T' | b't' | b' ')
            || b[13] != b':'
            || b[16] != b':'
        {
            return None;
        }
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&month)
            || day == 0
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 60
        {
            return None;
        }
        let mut i = 19;
        let mut millis = 0;
        if b.get(i) == Some(&b'.') {
            let start = i + 1;
            i = start;
            while i < b.len() && b[i].is_ascii_digit() {
                if i - start < 3 {
                    millis = millis * 10 + u64::from(b[i] - b'0');
                }
                i += 1;
            }
            if i == start {
                return None;
            }
            for _ in (i - start)..3 {
                millis *= 10;
            }
        }
        let offset_secs: i64 = match b.get(i..)? {
            [] | [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), rest @ ..] => {
                let (h, m) = match rest {
                    [_, _, b':', _, _] => (num(i + 1..i + 3)?, num(i + 4..i + 6)?),
                    [_, _, _, _] => (num(i + 1..i + 3)?, num(i + 3..i + 5)?),
                    [_, _] => (num(i + 1..i + 3)?, 0),
                    _ => return None,
                };
                if h > 23 || m > 59 {
                    return None;
                }
                let secs = i64::try_from(h * 3600 + m * 60).ok()?;
                if *sign == b'+' { secs } else { -secs }
            }
            _ => return None,
        };
        if year == 0 {
            return None;
        }
        let days = days_from_civil(year, month, day)?;
        let local = days * 86_400 + i64::try_from(hour * 3600 + minute * 60 + second).ok()?;
        let utc = local - offset_secs;
        if utc < 0 {
            return Some(Self(0));
        }
        let ms = u64::try_from(utc)
            .ok()?
            .checked_mul(1000)?
            .checked_add(millis)?;
        Some(Self(ms.min(Self::LATEST.0)))
    }
}

fn is_leap(year: u64) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A proleptic Gregorian date to days since 1970-01-01 (H. Hinnant's
/// algorithm); `None` before year 1.
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<i64> {
    let y = i64::try_from(year).ok()? - i64::from(month <= 2);
    let m = i64::try_from(month).ok()?;
    let d = i64::try_from(day).ok()?;
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Where "now" comes from.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp(duration_millis(since))
    }
}

/// Lets a repeated warning through at most once per wall-clock second:
/// [`OncePerSecond::allow`] is true for the first call in each second.
#[derive(Debug, Default)]
pub struct OncePerSecond(AtomicU64);

impl OncePerSecond {
    pub fn allow(&self, now: Timestamp) -> bool {
        let second = now.as_millis() / 1000;
        self.0.swap(second, Ordering::Relaxed) != second
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        Self(AtomicU64::new(start.0))
    }

    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(duration_millis(d), Ordering::SeqCst);
    }

    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// Parses the durations operators write: a whole number followed by one of
/// `ms`, `s`, `m`, `h`, `d` (e.g. `500ms`, `30s`, `30m`, `90d`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit: write e.g. 500ms, 30s, 30m, 12h or 90d"))?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number"))?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use ms, s, m, h or d)"
            ));
        }
    };
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too long a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_second_lets_the_first_call_of_each_second_through() {
        let gate = OncePerSecond::default();
        assert!(gate.allow(Timestamp::from_millis(5_000)));
        assert!(!gate.allow(Timestamp::from_millis(5_999)));
        assert!(gate.allow(Timestamp::from_millis(6_000)));
        assert!(!gate.allow(Timestamp::from_millis(6_001)));
    }

    fn check_format(ms: u64, expected: &str) {
        assert_eq!(Timestamp::from_millis(ms).to_string(), expected, "{ms}");
    }

    #[test]
    fn formats_rfc3339_millis() {
        for (ms, expected) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_700_000_000_123, "2023-11-14T22:13:20.123Z"),
            (1_798_761_599_999, "2026-12-31T23:59:59.999Z"),
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
        ] {
            check_format(ms, expected);
        }
    }

    fn check_parse(text: &str, expected: Option<u64>) {
        assert_eq!(
            Timestamp::parse_rfc3339(text).map(Timestamp::as_millis),
            expected,
            "{text}"
        );
    }

    #[test]
    fn parses_rfc3339() {
        for (text, expected) in [
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2023-11-14T22:13:20.123Z", Some(1_700_000_000_123)),
            ("2023-11-14T22:13:20.123456+00:00", Some(1_700_000_000_123)),
            ("2023-11-14T22:13:20.1Z", Some(1_700_000_000_100)),
            ("2023-11-15T07:13:20.123+09:00", Some(1_700_000_000_123)),
            ("2023-11-14T21:13:20.123-0100", Some(1_700_000_000_123)),
            ("2023-11-14 22:13:20.123+00", Some(1_700_000_000_123)),
            ("2023-11-14t22:13:20.123z", Some(1_700_000_000_123)),
            ("2000-02-29T00:00:00.000Z", Some(951_782_400_000)),
            ("2100-03-01T00:00:00Z", Some(4_107_542_400_000)),
            ("2001-02-29T00:00:00Z", None),
            ("2023-11-14T22:13:20", Some(1_700_000_000_000)),
            ("2023-11-14T22:13:20.5", Some(1_700_000_000_500)),
            ("2023-11-14T22:13:20.Z", None),
            ("2023-11-14T24:00:00Z", None),
            ("2023-13-01T00:00:00Z", None),
            ("2023-11-14T22:13:20+25:00", None),
            ("2023-11-14T22:13:20Zjunk", None),
            ("1969-12-31T23:59:59Z", Some(0)),
            ("1970-01-01T00:30:00+01:00", Some(0)),
            ("0001-01-01T00:00:00Z", Some(0)),
            ("0000-01-01T00:00:00Z", None),
            ("9999-12-31T23:59:59.999Z", Some(253_402_300_799_999)),
            ("9999-12-31T23:59:59-14:00", Some(253_402_300_799_999)),
            ("2023-11-14", None),
            ("", None),
            ("2023-11-14T22:13:2\u{e9}Z", None),
        ] {
            check_parse(text, expected);
        }
        // Whatever it formats, it reads back.
        for ms in [
            0,
            951_782_400_000,
            1_700_000_000_123,
            4_107_542_400_000,
            Timestamp::LATEST.as_millis(),
        ] {
            check_parse(&Timestamp::from_millis(ms).to_string(), Some(ms));
        }
    }

    fn check_duration(input: &str, expected: Result<u64, ()>) {
        let got = parse_duration(input)
            .map(|d| d.as_millis() as u64)
            .map_err(|_| ());
        assert_eq!(got, expected, "{input}");
    }

    #[test]
    fn parses_durations() {
        for (input, expected) in [
            ("500ms", Ok(500)),
            ("30s", Ok(30_000)),
            ("30m", Ok(1_800_000)),
            ("12h", Ok(43_200_000)),
            ("90d", Ok(7_776_000_000)),
            ("0s", Ok(0)),
            ("30", Err(())),
            ("m", Err(())),
            ("1.5s", Err(())),
            ("-1s", Err(())),
            ("10w", Err(())),
            ("99999999999999999999d", Err(())),
        ] {
            check_duration(input, expected);
        }
    }

    #[test]
    fn alive_until_exactly_the_ttl() {
        let t = Timestamp::from_millis(1_000);
        let ttl = Duration::from_millis(100);
        assert!(t.alive_at(ttl, Timestamp::from_millis(1_099)));
        assert!(!t.alive_at(ttl, Timestamp::from_millis(1_100)));
        assert!(
            t.alive_at(ttl, Timestamp::from_millis(500)),
            "future records are alive"
        );
    }
}
