//! When each request is meant to be sent: absolute offsets from the start,
//! fixed before the run and independent of how the target answers.
//!
//! The rate is piecewise linear: a list of stages, each moving linearly from
//! the previous stage's rate to its own over its duration (a ramp is a stage
//! from 0). Request `u` (a count of expected arrivals; constant pacing uses
//! 0, 1, 2, …, Poisson pacing adds exponential increments) is due at the time
//! `t` where the integral of the rate from 0 to `t` equals `u`.

use std::time::Duration;

/// One stage: reach `rate` (requests/s) linearly over `duration`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage {
    pub duration: Duration,
    pub rate: f64,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    /// (start time s, start rate, end rate, duration s, arrivals before it)
    segments: Vec<(f64, f64, f64, f64, f64)>,
    total: f64,
    end: Duration,
}

impl Schedule {
    /// `start_rate` is the rate before the first stage (0 for a ramp).
    pub fn new(start_rate: f64, stages: &[Stage]) -> Self {
        let mut segments = Vec::with_capacity(stages.len());
        let (mut t, mut r0, mut before) = (0.0, start_rate, 0.0);
        for s in stages {
            let d = s.duration.as_secs_f64();
            segments.push((t, r0, s.rate, d, before));
            before += (r0 + s.rate) / 2.0 * d;
            t += d;
            r0 = s.rate;
        }
        Self {
            segments,
            total: before,
            end: Duration::from_secs_f64(t),
        }
    }

    /// A constant rate for `duration`, optionally after a linear ramp from 0.
    pub fn constant(rate: f64, duration: Duration, ramp: Duration) -> Self {
        let mut stages = Vec::new();
        if !ramp.is_zero() {
            stages.push(Stage {
                duration: ramp,
                rate,
            });
        }
        stages.push(Stage { duration, rate });
        Self::new(if ramp.is_zero() { rate } else { 0.0 }, &stages)
    }

    /// Expected number of requests in the whole schedule.
    pub fn expected(&self) -> f64 {
        self.total
    }

    pub fn end(&self) -> Duration {
        self.end
    }

    /// Mean rate over the whole schedule.
    pub fn mean_rate(&self) -> f64 {
        let secs = self.end.as_secs_f64();
        if secs > 0.0 { self.total / secs } else { 0.0 }
    }

    /// When arrival `u` is due, or `None` past the end of the schedule.
    pub fn time_at(&self, u: f64) -> Option<Duration> {
        if !(0.0..self.total).contains(&u) {
            return None;
        }
        let &(t0, r0, r1, d, before) =
            self.segments.iter().rev().find(|s| s.4 <= u && s.3 > 0.0)?;
        let n = u - before;
        let a = (r1 - r0) / (2.0 * d);
        // Solve a·x² + r0·x = n for x in [0, d].
        let x = if a.abs() < 1e-12 {
            n / r0
        } else {
            (-r0 + (r0 * r0 + 4.0 * a * n).max(0.0).sqrt()) / (2.0 * a)
        };
        Some(Duration::from_secs_f64(t0 + x.clamp(0.0, d)))
    }
}

/// Parses `10s:1000,30s:5000` into stages.
pub fn parse_stages(text: &str) -> Result<Vec<Stage>, String> {
    text.split(',')
        .map(|part| {
            let (d, r) = part
                .trim()
                .split_once(':')
                .ok_or_else(|| format!("stage `{part}` is not DURATION:RATE (e.g. 30s:5000)"))?;
            let duration = tracking_core::parse_duration(d)?;
            let rate: f64 = r
                .parse()
                .map_err(|_| format!("stage `{part}`: `{r}` is not a rate"))?;
            if !(rate >= 0.0 && rate.is_finite()) || duration.is_zero() {
                return Err(format!(
                    "stage `{part}`: needs a positive duration and a rate ≥ 0"
                ));
            }
            Ok(Stage { duration, rate })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Option<Duration>) -> Option<f64> {
        d.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
    }

    #[test]
    fn constant_rate_times_are_exact() {
        let s = Schedule::constant(1000.0, Duration::from_secs(2), Duration::ZERO);
        assert_eq!(s.expected(), 2000.0);
        for (u, expected) in [
            (0.0, Some(0.0)),
            (1.0, Some(1.0)),
            (999.0, Some(999.0)),
            (1999.0, Some(1999.0)),
            (2000.0, None),
        ] {
            assert_eq!(ms(s.time_at(u)), expected, "u={u}");
        }
    }

    #[test]
    fn a_ramp_accelerates_then_holds() {
        // 0 → 100/s over 10 s (500 arrivals), then 100/s for 10 s (1000 more).
        let s = Schedule::constant(100.0, Duration::from_secs(10), Duration::from_secs(10));
        assert_eq!(s.expected(), 1500.0);
        // Under a ramp, arrival n is at sqrt(2·n·10/100) s.
        assert_eq!(ms(s.time_at(50.0)), Some(3162.278));
        assert_eq!(ms(s.time_at(500.0)), Some(10_000.0));
        assert_eq!(ms(s.time_at(600.0)), Some(11_000.0));
        assert_eq!(ms(s.time_at(1499.0)), Some(19_990.0));
    }

    #[test]
    fn stages_move_linearly_between_rates() {
        let stages = parse_stages("2s:100,2s:300").unwrap_or_default();
        let s = Schedule::new(100.0, &stages);
        // 200 arrivals in stage 1, then (100+300)/2·2 = 400 in stage 2.
        assert_eq!(s.expected(), 600.0);
        assert_eq!(ms(s.time_at(200.0)), Some(2000.0));
        // 150 into stage 2: 100x + 50x² = 150 → x = 1 s.
        assert_eq!(ms(s.time_at(350.0)), Some(3000.0));
        assert!(parse_stages("2s").is_err());
        assert!(parse_stages("2s:x").is_err());
        assert!(parse_stages("0s:5").is_err());
    }

    #[test]
    fn times_never_go_backwards() {
        let s = Schedule::new(
            0.0,
            &[
                Stage {
                    duration: Duration::from_secs(3),
                    rate: 1000.0,
                },
                Stage {
                    duration: Duration::from_secs(2),
                    rate: 10.0,
                },
            ],
        );
        let mut last = Duration::ZERO;
        let mut u = 0.0;
        while let Some(t) = s.time_at(u) {
            assert!(t >= last);
            last = t;
            u += 1.0;
        }
        assert_eq!(u, s.expected().ceil());
    }
}
