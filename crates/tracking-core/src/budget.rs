//! A capacity counted in events and in bytes, shared by producers and one
//! consumer: a queue bounded by a `Budget` is bounded whatever channel
//! carries it, in count and in memory.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Budget {
    limit: usize,
    limit_bytes: usize,
    used: AtomicUsize,
    used_bytes: AtomicUsize,
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Budget({}/{} events, {}/{} bytes)",
            self.used(),
            self.limit,
            self.used_bytes(),
            self.limit_bytes
        )
    }
}

/// Adds `n` to `counter` unless that passes `limit`.
fn try_add(counter: &AtomicUsize, n: usize, limit: usize) -> bool {
    let mut used = counter.load(Ordering::Relaxed);
    loop {
        let Some(next) = used.checked_add(n).filter(|&next| next <= limit) else {
            return false;
        };
        match counter.compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(actual) => used = actual,
        }
    }
}

impl Budget {
    /// At most `limit` units (events) and `limit_bytes` bytes.
    pub fn new(limit: usize, limit_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            limit_bytes,
            used: AtomicUsize::new(0),
            used_bytes: AtomicUsize::new(0),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn used_bytes(&self) -> usize {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// Takes `n` units and `bytes` bytes, or nothing when either would pass
    /// its limit.
    pub fn try_acquire(self: &Arc<Self>, n: usize, bytes: usize) -> Option<Admission> {
        if !try_add(&self.used, n, self.limit) {
            return None;
        }
        if !try_add(&self.used_bytes, bytes, self.limit_bytes) {
            self.used.fetch_sub(n, Ordering::AcqRel);
            return None;
        }
        Some(Admission {
            budget: Arc::clone(self),
            n,
            bytes,
        })
    }
}

/// Units and bytes taken from a [`Budget`]; given back when dropped.
#[must_use = "dropping an Admission gives its capacity back at once"]
pub struct Admission {
    budget: Arc<Budget>,
    n: usize,
    bytes: usize,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Admission({}, {} B)", self.n, self.bytes)
    }
}

impl Admission {
    pub fn units(&self) -> usize {
        self.n
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Sets the bytes this admission holds to what the admitted data really
    /// takes, once that is known (admission reserves an estimate). Never
    /// fails: growing past the limit is allowed here, because the data
    /// already exists; later admissions wait until it is given back.
    pub fn set_bytes(&mut self, bytes: usize) {
        if bytes > self.bytes {
            self.budget
                .used_bytes
                .fetch_add(bytes - self.bytes, Ordering::AcqRel);
        } else {
            self.budget
                .used_bytes
                .fetch_sub(self.bytes - bytes, Ordering::AcqRel);
        }
        self.bytes = bytes;
    }

    /// Moves up to `n` units and `bytes` bytes of this admission into a new
    /// one, so that parts of what was admitted can be given back separately.
    pub fn split(&mut self, n: usize, bytes: usize) -> Admission {
        let (n, bytes) = (n.min(self.n), bytes.min(self.bytes));
        self.n -= n;
        self.bytes -= bytes;
        Admission {
            budget: Arc::clone(&self.budget),
            n,
            bytes,
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
        self.budget
            .used_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_gives_back_on_drop() {
        let b = Budget::new(10, usize::MAX);
        let a = b.try_acquire(6, 0).expect("6 of 10");
        assert!(b.try_acquire(5, 0).is_none());
        let c = b.try_acquire(4, 0).expect("4 more");
        assert_eq!(b.used(), 10);
        assert!(b.try_acquire(1, 0).is_none());
        drop(a);
        assert_eq!(b.used(), 4);
        assert!(b.try_acquire(6, 0).is_some());
        drop(c);
        assert_eq!(b.used(), 0);
        assert!(b.try_acquire(11, 0).is_none());
        assert!(b.try_acquire(usize::MAX, 0).is_none());
    }

    #[test]
    fn bytes_bound_too_and_a_refusal_takes_nothing() {
        let b = Budget::new(100, 1000);
        let mut a = b.try_acquire(1, 900).expect("900 of 1000 bytes");
        assert!(b.try_acquire(1, 101).is_none());
        assert_eq!(
            (b.used(), b.used_bytes()),
            (1, 900),
            "the refusal took nothing"
        );
        // The real size replaces the estimate, past the limit if need be.
        a.set_bytes(1200);
        assert_eq!(b.used_bytes(), 1200);
        assert!(
            b.try_acquire(1, 0).is_none(),
            "over the byte limit, nothing more"
        );
        a.set_bytes(300);
        let part = a.split(1, 200);
        assert_eq!((a.units(), a.bytes()), (0, 100));
        assert_eq!((part.units(), part.bytes()), (1, 200));
        assert_eq!((b.used(), b.used_bytes()), (1, 300));
        drop(part);
        assert_eq!((b.used(), b.used_bytes()), (0, 100));
        drop(a);
        assert_eq!((b.used(), b.used_bytes()), (0, 0));
    }
}
