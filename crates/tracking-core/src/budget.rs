//! A counted capacity shared by producers and one consumer: a queue bounded
//! by a `Budget` is bounded whatever channel carries it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Budget({}/{})", self.used(), self.limit)
    }
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` units, or nothing when fewer than `n` are free.
    pub fn try_acquire(self: &Arc<Self>, n: usize) -> Option<Admission> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let next = used.checked_add(n).filter(|&next| next <= self.limit)?;
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Some(Admission {
                        budget: Arc::clone(self),
                        n,
                    });
                }
                Err(actual) => used = actual,
            }
        }
    }
}

/// Units taken from a [`Budget`]; given back when dropped.
#[must_use = "dropping an Admission gives its capacity back at once"]
pub struct Admission {
    budget: Arc<Budget>,
    n: usize,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Admission({})", self.n)
    }
}

impl Admission {
    pub fn units(&self) -> usize {
        self.n
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_gives_back_on_drop() {
        let b = Budget::new(10);
        let a = b.try_acquire(6).expect("6 of 10");
        assert!(b.try_acquire(5).is_none());
        let c = b.try_acquire(4).expect("4 more");
        assert_eq!(b.used(), 10);
        assert!(b.try_acquire(1).is_none());
        drop(a);
        assert_eq!(b.used(), 4);
        assert!(b.try_acquire(6).is_some());
        drop(c);
        assert_eq!(b.used(), 0);
        assert!(b.try_acquire(11).is_none());
        assert!(b.try_acquire(usize::MAX).is_none());
    }
}
