//! The circuit breaker in front of migration-proxy.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

/// Stops calls while migration-proxy is failing: opens after N consecutive
/// failures, lets one probe through after the cooldown, closes on its success.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<BreakerState>,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            state: Mutex::default(),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    /// Whether a call may go out now.
    pub fn allow(&self) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return true;
        };
        match s.open_until {
            None => true,
            Some(t) if Instant::now() < t => false,
            Some(_) if s.probing => false,
            Some(_) => {
                s.probing = true;
                true
            }
        }
    }

    pub fn is_open(&self) -> bool {
        self.state.lock().is_ok_and(|s| s.open_until.is_some())
    }

    pub(super) fn success(&self) {
        if let Ok(mut s) = self.state.lock() {
            if s.open_until.is_some() {
                tracing::info!("migration-proxy answers again; circuit closed.");
            }
            *s = BreakerState::default();
        }
    }

    /// Returns true when this failure opened the circuit.
    pub(super) fn failure(&self) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        s.failures = s.failures.saturating_add(1);
        let reopen = s.probing || (s.open_until.is_none() && s.failures >= self.threshold);
        s.probing = false;
        if reopen {
            s.open_until = Some(Instant::now() + self.cooldown);
        }
        reopen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_the_threshold_probes_once_and_closes() {
        let b = Breaker::new(3, Duration::from_millis(50));
        assert!(b.allow());
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(b.failure(), "the third failure opens it");
        assert!(!b.allow() && b.is_open());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow(), "one probe after the cooldown");
        assert!(!b.allow(), "only one");
        assert!(b.failure(), "a failed probe reopens it");
        assert!(!b.allow());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow());
        b.success();
        assert!(!b.is_open() && b.allow() && b.allow());
    }
}
