//! `RetryBudget`: retries allowed as a share of calls, so that retries
//! cannot multiply the load on a Bigtable that is already too slow.
//!
//! Without it, every read attempt that passes its deadline under overload
//! is sent again (the abandoned one still costs the server its work), and
//! every renewal that fails is retried: the store then asks up to three
//! times what it needs exactly when the server has least to give, and the
//! overload sustains itself after the load that caused it is gone. With it,
//! each call earns a tenth of a retry and each retry spends one, with at
//! most `CAP` saved up: a sporadic failure is still retried at once, and
//! under overload at most one call in ten is a retry.

use std::sync::atomic::{AtomicU64, Ordering};

/// Thousandths of a retry earned per call.
const EARN: u64 = 100;
/// One retry, in thousandths.
const ONE: u64 = 1000;
/// Retries that may be saved up (and the budget at start).
const CAP: u64 = 100;

#[derive(Debug)]
pub struct RetryBudget {
    /// Retries available, in thousandths.
    milli: AtomicU64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            milli: AtomicU64::new(CAP * ONE),
        }
    }
}

impl RetryBudget {
    /// Records a call (a first attempt): earns a tenth of a retry.
    pub fn earn(&self) {
        let _ = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                (m < CAP * ONE).then(|| (m + EARN).min(CAP * ONE))
            });
    }

    /// Takes one retry; `false` when none is left (then do not retry).
    pub fn spend(&self) -> bool {
        self.milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| m.checked_sub(ONE))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_tenth_of_calls_once_the_savings_are_spent() {
        let budget = RetryBudget::default();
        let saved = (0..).take_while(|_| budget.spend()).count();
        assert_eq!(saved, CAP as usize);
        let mut retries = 0;
        for _ in 0..1000 {
            budget.earn();
            if budget.spend() {
                retries += 1;
            }
        }
        assert_eq!(retries, 100);
        // Savings never pass the cap.
        for _ in 0..100_000 {
            budget.earn();
        }
        assert_eq!((0..).take_while(|_| budget.spend()).count(), CAP as usize);
    }
}
