//! The copy's progress on stderr, and its summary.
//!
//! The total is known up front: every (set, partition) unit not already in
//! the checkpoint (3 sets × 4096 partitions for a full copy). So:
//!
//! * On a terminal: an indicatif bar of partition scans done / total with
//!   elapsed time and ETA, and under it the records so far (copied, skipped,
//!   invalid, failed) and the average records/s. The copy only moves the
//!   bar's position, once per finished partition scan; the bar's own ticker
//!   thread redraws it a few times a second, reading the counters
//!   ([`Tally`]'s atomics) as it draws. Log lines are written with the bar
//!   cleared ([`ProgressBar::suspend`]), each on a line of its own above
//!   the bar — from every thread where [`TerminalLogs`] is the default
//!   dispatcher: the binary makes it so on its main and runtime threads.
//! * Otherwise (CI, a Kubernetes Job's logs): a `Copy progress.` log line
//!   every `--progress-interval`, and no escape codes.
//!
//! At the end a summary (`Copy complete.` or `Copy incomplete.`) is logged
//! and, on a terminal, also replaces the bar.

use std::cell::RefCell;
use std::fmt;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanCount, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tracing::dispatcher::DefaultGuard;
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Subscriber};

use super::{CopyReport, Tally};

/// The bar on show, which log lines written through [`TerminalLogs`] clear
/// and redraw.
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// How often the bar is redrawn.
const REDRAW: Duration = Duration::from_millis(200);

const BAR_TEMPLATE: &str =
    "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} partitions, ETA {left}\n  {counts}";

/// The copy's progress display, from its start to its summary.
#[derive(Debug)]
pub(super) struct Progress {
    tally: Arc<Tally>,
    /// Units to scan in this run.
    total: u64,
    from_checkpoint: u64,
    started: Instant,
    shown: Shown,
}

#[derive(Debug)]
enum Shown {
    Bar(ProgressBar),
    /// The task writing the periodic log lines.
    Log(tokio::task::JoinHandle<()>),
}

impl Progress {
    /// Starts showing progress (a bar when `terminal`, else log lines every
    /// `interval`, which must not be zero). Call within the runtime.
    pub(super) fn start(
        tally: Arc<Tally>,
        total: u64,
        from_checkpoint: u64,
        terminal: bool,
        interval: Duration,
    ) -> Self {
        let started = Instant::now();
        let shown = if terminal {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
                .with_style(bar_style(Arc::clone(&tally)));
            bar.enable_steady_tick(REDRAW);
            show(Some(bar.clone()));
            Shown::Bar(bar)
        } else {
            Shown::Log(tokio::spawn(log_lines(
                Arc::clone(&tally),
                total,
                started,
                interval,
            )))
        };
        Self {
            tally,
            total,
            from_checkpoint,
            started,
            shown,
        }
    }

    /// The bar, to advance by one per finished unit (none when logging).
    pub(super) fn bar(&self) -> Option<ProgressBar> {
        match &self.shown {
            Shown::Bar(bar) => Some(bar.clone()),
            Shown::Log(_) => None,
        }
    }

    /// Stops the display and reports: the summary is logged and, on a
    /// terminal, replaces the bar. `problem` is a failure outside the
    /// counts (the outcome is then `failed: …`).
    pub(super) fn finish(self, problem: Option<&anyhow::Error>) -> CopyReport {
        let report = self
            .tally
            .report(self.from_checkpoint, self.started.elapsed());
        let outcome = match problem {
            Some(e) => format!("failed: {e:#}"),
            None => outcome(&report),
        };
        let summary = Summary {
            report: &report,
            total: self.total,
            outcome: &outcome,
        };
        match self.shown {
            Shown::Bar(bar) => {
                bar.set_style(final_style());
                bar.finish_with_message(summary.to_string());
                show(None);
            }
            Shown::Log(ticker) => ticker.abort(),
        }
        summary.log();
        report
    }
}

/// `complete`, or what is missing.
fn outcome(r: &CopyReport) -> String {
    if r.complete() {
        "complete".to_owned()
    } else {
        format!(
            "incomplete: {} records failed, {} partition scans failed; a rerun retries them",
            r.failed, r.units_failed
        )
    }
}

fn bar_style(tally: Arc<Tally>) -> ProgressStyle {
    let counts = move |state: &ProgressState, w: &mut dyn fmt::Write| {
        let _ = write!(w, "{}", Counts(&tally.report(0, state.elapsed())));
    };
    // indicatif's ETA reads 0 until the first unit is done.
    let left = |state: &ProgressState, w: &mut dyn fmt::Write| {
        let _ = if state.pos() == 0 {
            w.write_str("?")
        } else {
            w.write_str(&hms(state.eta()))
        };
    };
    ProgressStyle::with_template(BAR_TEMPLATE)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
        .with_key("counts", counts)
        .with_key("left", left)
}

fn final_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// The records so far, for the bar: counts and the average rate.
struct Counts<'a>(&'a CopyReport);

impl fmt::Display for Counts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        write!(
            f,
            "{} records, {} copied, {} skipped, {} invalid, {} failed",
            HumanCount(r.records()),
            HumanCount(r.copied),
            HumanCount(r.skipped()),
            HumanCount(r.invalid),
            HumanCount(r.failed),
        )?;
        if r.units_failed > 0 {
            write!(f, " ({} partition scans failed)", r.units_failed)?;
        }
        write!(f, ", {} records/s", HumanCount(r.rate().round() as u64))
    }
}

/// The final line: on a terminal in the bar's place, and logged.
struct Summary<'a> {
    report: &'a CopyReport,
    total: u64,
    outcome: &'a str,
}

impl Summary<'_> {
    fn log(&self) {
        let r = self.report;
        macro_rules! summary {
            ($level:ident, $message:literal) => {
                tracing::$level!(
                    outcome = self.outcome,
                    partitions_done = r.units_done + r.units_failed,
                    partitions_total = self.total,
                    partitions_failed = r.units_failed,
                    partitions_from_checkpoint = r.units_from_checkpoint,
                    records = r.records(),
                    copied = r.copied,
                    skipped_newer = r.skipped_newer,
                    unchanged = r.unchanged,
                    expired = r.expired,
                    invalid = r.invalid,
                    failed = r.failed,
                    elapsed = hms(r.elapsed),
                    elapsed_secs = r.elapsed.as_secs_f64(),
                    records_per_sec = r.rate().round() as u64,
                    $message
                )
            };
        }
        if self.outcome == "complete" {
            summary!(info, "Copy complete.");
        } else {
            summary!(warn, "Copy incomplete.");
        }
    }
}

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.report;
        write!(
            f,
            "Copy {}. {}/{} partitions",
            self.outcome,
            r.units_done + r.units_failed,
            self.total
        )?;
        if r.units_from_checkpoint > 0 {
            write!(f, " (+{} from the checkpoint)", r.units_from_checkpoint)?;
        }
        write!(
            f,
            ", {} records in {} ({} records/s): {} copied, {} skipped, {} invalid, {} failed",
            HumanCount(r.records()),
            hms(r.elapsed),
            HumanCount(r.rate().round() as u64),
            HumanCount(r.copied),
            HumanCount(r.skipped()),
            HumanCount(r.invalid),
            HumanCount(r.failed),
        )
    }
}

/// `1h02m03s`.
fn hms(d: Duration) -> String {
    let s = d.as_secs_f64().round() as u64;
    format!("{}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60)
}

/// A `Copy progress.` line every `interval` (the first after one interval).
async fn log_lines(tally: Arc<Tally>, total: u64, started: Instant, interval: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let r = tally.report(0, started.elapsed());
        let done = r.units_done + r.units_failed;
        // The average pace of this run's partition scans so far.
        let eta = if done == 0 {
            "?".to_owned()
        } else {
            hms(r
                .elapsed
                .mul_f64(total.saturating_sub(done) as f64 / done as f64))
        };
        tracing::info!(
            partitions_done = done,
            partitions_total = total,
            partitions_failed = r.units_failed,
            records = r.records(),
            copied = r.copied,
            skipped = r.skipped(),
            invalid = r.invalid,
            failed = r.failed,
            records_per_sec = r.rate().round() as u64,
            eta,
            "Copy progress."
        );
    }
}

fn show(bar: Option<ProgressBar>) {
    if let Ok(mut shown) = SHOWN.lock() {
        *shown = bar;
    }
}

/// On a terminal, the dispatcher that writes log lines above the copy's
/// bar: the current default (the service's log layers) with each event
/// written inside [`ProgressBar::suspend`] while a bar is shown. A thread
/// whose default it is not (not the binary's) writes across the bar.
#[derive(Debug, Clone)]
pub struct TerminalLogs(Dispatch);

thread_local! {
    static THREAD_LOGS: RefCell<Option<DefaultGuard>> = const { RefCell::new(None) };
}

impl TerminalLogs {
    /// `None` when stderr is not a terminal: no bar, nothing to avoid.
    pub fn new() -> Option<Self> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        Some(tracing::dispatcher::get_default(|inner| {
            Self(Dispatch::new(AboveTheBar {
                inner: inner.clone(),
                max_level: LevelFilter::current(),
            }))
        }))
    }

    /// Makes it the default of this thread until the thread ends (for a
    /// runtime's `on_thread_start`).
    pub fn install_on_this_thread(&self) {
        let guard = tracing::dispatcher::set_default(&self.0);
        THREAD_LOGS.with(|slot| *slot.borrow_mut() = Some(guard));
    }

    /// Makes it the default of this thread until the guard is dropped.
    pub fn set_default(&self) -> DefaultGuard {
        tracing::dispatcher::set_default(&self.0)
    }
}

/// Forwards everything to `inner`; events inside [`ProgressBar::suspend`]
/// of the bar on show.
///
/// Under it `tracing::Span::current()` is unknown and `inner` cannot be
/// downcast to (`current_span` and `downcast_raw` are not forwarded: the
/// first's type is not re-exported by `tracing`, the second is `unsafe`);
/// the copy uses neither, and the log layers find spans their own way.
struct AboveTheBar {
    inner: Dispatch,
    max_level: LevelFilter,
}

impl Subscriber for AboveTheBar {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.inner.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max_level)
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.inner.new_span(span)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        self.inner.record(span, values);
    }

    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.inner.record_follows_from(span, follows);
    }

    fn event(&self, event: &Event<'_>) {
        let shown = SHOWN.lock().ok().and_then(|b| b.clone());
        match shown {
            Some(bar) => bar.suspend(|| self.inner.event(event)),
            None => self.inner.event(event),
        }
    }

    fn enter(&self, span: &Id) {
        self.inner.enter(span);
    }

    fn exit(&self, span: &Id) {
        self.inner.exit(span);
    }

    fn clone_span(&self, id: &Id) -> Id {
        self.inner.clone_span(id)
    }

    fn try_close(&self, id: Id) -> bool {
        self.inner.try_close(id)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::*;

    #[test]
    fn the_templates_parse() {
        assert!(ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
        assert!(ProgressStyle::with_template("{msg}").is_ok());
    }

    #[test]
    fn durations_read_as_hours_minutes_seconds() {
        assert_eq!(hms(Duration::from_secs(0)), "0h00m00s");
        assert_eq!(hms(Duration::from_millis(83_600)), "0h01m24s");
        assert_eq!(hms(Duration::from_secs(26 * 3600 + 61)), "26h01m01s");
    }

    #[test]
    fn the_summary_names_the_outcome_and_the_totals() {
        let report = CopyReport {
            copied: 1234,
            skipped_newer: 1,
            unchanged: 2,
            expired: 3,
            invalid: 4,
            failed: 5,
            units_done: 10,
            units_from_checkpoint: 7,
            units_failed: 2,
            elapsed: Duration::from_secs(2),
        };
        let outcome = outcome(&report);
        assert_eq!(
            outcome,
            "incomplete: 5 records failed, 2 partition scans failed; a rerun retries them"
        );
        let line = Summary {
            report: &report,
            total: 12,
            outcome: &outcome,
        }
        .to_string();
        assert_eq!(
            line,
            "Copy incomplete: 5 records failed, 2 partition scans failed; a rerun retries them. \
             12/12 partitions (+7 from the checkpoint), 1,249 records in 0h00m02s (625 records/s): \
             1,234 copied, 6 skipped, 4 invalid, 5 failed"
        );
        assert_eq!(
            Counts(&report).to_string(),
            "1,249 records, 1,234 copied, 6 skipped, 4 invalid, 5 failed \
             (2 partition scans failed), 625 records/s"
        );
    }

    /// A log line emitted above the bar still reaches the log layers.
    #[test]
    fn log_lines_above_the_bar_are_written() {
        #[derive(Clone, Default)]
        struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let logs = Dispatch::new(
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish(),
        );
        tracing::dispatcher::with_default(&logs, || {
            let wrapped = Dispatch::new(AboveTheBar {
                inner: logs.clone(),
                max_level: LevelFilter::INFO,
            });
            show(Some(ProgressBar::hidden()));
            tracing::dispatcher::with_default(&wrapped, || {
                let span = tracing::info_span!("unit", set = "via");
                let _entered = span.enter();
                tracing::warn!(pid = 7, "Partition scan failed.");
                tracing::debug!("not enabled");
            });
            show(None);
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("WARN"), "{text}");
        assert!(
            text.contains("unit{set=\"via\"}: migration_proxy::copy::progress::tests: Partition scan failed. pid=7"),
            "{text}"
        );
        assert!(!text.contains("not enabled"), "{text}");
    }
}
