//! Overload and readiness: when to tell the load balancer to send less.
//!
//! Shedding itself is immediate: past `TRACKING_MAX_INFLIGHT` a request gets
//! `503 Retry-After` at once. Readiness is slower on purpose. Each second is
//! judged *overloaded* when at least [`SHED_RATIO`] of the event requests that
//! arrived in it were shed. `/readyz` turns 503 only after `unready_after`
//! consecutive overloaded seconds, and comes back after `ready_after`
//! consecutive calm ones — or at the latest after `max_unready`, so that a
//! fleet that is overloaded as a whole never leaves the load balancer with no
//! pod at all for long. Each process stretches `unready_after` by a random
//! share (up to [`JITTER`]) so that pods under the same load do not all flip
//! in the same second.
//!
//! [`OverloadGuard::tick`] is called once a second by a task the server
//! starts; tests call it themselves.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::config::duration;

/// Share of requests shed that makes a second count as overloaded.
pub const SHED_RATIO: f64 = 0.05;
/// Largest random stretch of `unready_after`, as a share of it.
pub const JITTER: f64 = 0.5;

/// Thresholds, in whole seconds.
#[derive(Debug, Clone, Copy)]
pub struct OverloadPolicy {
    pub unready_after: Duration,
    pub ready_after: Duration,
    pub max_unready: Duration,
}

/// The readiness thresholds (`TRACKING_OVERLOAD_*`).
#[derive(Debug, Clone, clap::Args)]
pub struct OverloadArgs {
    /// Seconds in a row with at least 5% of event requests shed before
    /// /readyz answers 503 (stretched by a random 0-50% per process, so that
    /// pods do not all leave at once).
    #[arg(long, env = "TRACKING_OVERLOAD_UNREADY_AFTER", default_value = "10s", value_parser = duration, global = true)]
    pub overload_unready_after: Duration,

    /// Calm seconds in a row before /readyz answers 200 again.
    #[arg(long, env = "TRACKING_OVERLOAD_READY_AFTER", default_value = "5s", value_parser = duration, global = true)]
    pub overload_ready_after: Duration,

    /// Longest time overload keeps /readyz at 503; then it answers 200 until
    /// a new sustained period.
    #[arg(long, env = "TRACKING_OVERLOAD_MAX_UNREADY", default_value = "30s", value_parser = duration, global = true)]
    pub overload_max_unready: Duration,
}

impl OverloadArgs {
    pub fn policy(&self) -> OverloadPolicy {
        OverloadPolicy {
            unready_after: self.overload_unready_after,
            ready_after: self.overload_ready_after,
            max_unready: self.overload_max_unready,
        }
    }
}

#[derive(Debug, Default)]
struct Streaks {
    overloaded: u64,
    calm: u64,
    unready_for: u64,
}

#[derive(Debug)]
pub struct OverloadGuard {
    admitted: AtomicU64,
    shed: AtomicU64,
    unready: AtomicBool,
    flips: AtomicU64,
    unready_after_s: u64,
    ready_after_s: u64,
    max_unready_s: u64,
    streaks: Mutex<Streaks>,
}

impl OverloadGuard {
    /// `jitter` in `[0, 1)` picks this process's stretch of `unready_after`
    /// (a random draw in production, 0 in tests).
    pub fn new(policy: OverloadPolicy, jitter: f64) -> Self {
        let secs = |d: Duration| d.as_secs().max(1);
        let base = secs(policy.unready_after);
        let stretch = (base as f64 * JITTER * jitter.clamp(0.0, 1.0)).round() as u64;
        Self {
            admitted: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            unready: AtomicBool::new(false),
            flips: AtomicU64::new(0),
            unready_after_s: base + stretch,
            ready_after_s: secs(policy.ready_after),
            max_unready_s: secs(policy.max_unready),
            streaks: Mutex::new(Streaks::default()),
        }
    }

    pub fn record_admitted(&self) {
        self.admitted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether overload currently makes `/readyz` answer 503.
    pub fn unready(&self) -> bool {
        self.unready.load(Ordering::Relaxed)
    }

    /// Times readiness changed because of overload (both directions).
    pub fn flips(&self) -> u64 {
        self.flips.load(Ordering::Relaxed)
    }

    /// Seconds of sustained overload after which this process turns unready.
    pub fn unready_after_secs(&self) -> u64 {
        self.unready_after_s
    }

    /// Closes the current one-second window and updates readiness.
    pub fn tick(&self) {
        let admitted = self.admitted.swap(0, Ordering::Relaxed);
        let shed = self.shed.swap(0, Ordering::Relaxed);
        let total = admitted + shed;
        let overloaded = total > 0 && shed as f64 >= SHED_RATIO * total as f64;
        let Ok(mut s) = self.streaks.lock() else {
            return;
        };
        if overloaded {
            s.overloaded += 1;
            s.calm = 0;
        } else {
            s.calm += 1;
            s.overloaded = 0;
        }
        let unready = self.unready();
        if unready {
            s.unready_for += 1;
        }
        let flip = if unready {
            s.calm >= self.ready_after_s || s.unready_for >= self.max_unready_s
        } else {
            s.overloaded >= self.unready_after_s
        };
        if flip {
            self.unready.store(!unready, Ordering::Relaxed);
            self.flips.fetch_add(1, Ordering::Relaxed);
            // A fresh count either way: after a forced return the pod needs
            // a whole new sustained period before it may leave again.
            *s = Streaks::default();
            if unready {
                tracing::info!(
                    "Overload over (or unready for its longest): /readyz answers 200 again."
                );
            } else {
                tracing::warn!(
                    seconds = self.unready_after_s,
                    "Sustained overload: /readyz answers 503 until it eases."
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> OverloadGuard {
        OverloadGuard::new(
            OverloadPolicy {
                unready_after: Duration::from_secs(10),
                ready_after: Duration::from_secs(5),
                max_unready: Duration::from_secs(30),
            },
            0.0,
        )
    }

    fn second(g: &OverloadGuard, admitted: u64, shed: u64) {
        for _ in 0..admitted {
            g.record_admitted();
        }
        for _ in 0..shed {
            g.record_shed();
        }
        g.tick();
    }

    #[test]
    fn flips_only_after_sustained_overload_and_back_after_calm() {
        let g = guard();
        for _ in 0..9 {
            second(&g, 100, 20);
        }
        assert!(!g.unready(), "nine overloaded seconds are not enough");
        second(&g, 100, 4); // under 5%: the streak starts again
        for _ in 0..9 {
            second(&g, 100, 20);
        }
        assert!(!g.unready());
        second(&g, 100, 20);
        assert!(g.unready(), "ten in a row");
        for _ in 0..4 {
            second(&g, 10, 0);
        }
        assert!(g.unready(), "four calm seconds are not enough");
        second(&g, 10, 0);
        assert!(!g.unready(), "five are");
        assert_eq!(g.flips(), 2);
    }

    #[test]
    fn never_unready_for_longer_than_the_maximum() {
        let g = guard();
        for _ in 0..10 {
            second(&g, 100, 50);
        }
        assert!(g.unready());
        for _ in 0..29 {
            second(&g, 100, 50);
        }
        assert!(g.unready());
        second(&g, 100, 50);
        assert!(!g.unready(), "back after 30 s despite the overload");
        for _ in 0..9 {
            second(&g, 100, 50);
        }
        assert!(
            !g.unready(),
            "and it takes a whole new sustained period to leave"
        );
        second(&g, 100, 50);
        assert!(g.unready());
    }

    #[test]
    fn an_idle_second_is_calm_and_jitter_stretches_the_threshold() {
        let g = guard();
        second(&g, 0, 0);
        assert!(!g.unready());
        let stretched = OverloadGuard::new(
            OverloadPolicy {
                unready_after: Duration::from_secs(10),
                ready_after: Duration::from_secs(5),
                max_unready: Duration::from_secs(30),
            },
            0.99,
        );
        assert_eq!(stretched.unready_after_secs(), 15);
    }
}
