//! Rate-limited logging for conditions a guest can repeat at will.
//!
//! Everything a guest writes is untrusted, and a driver that keeps
//! submitting a faulting request, or keeps toggling a register whose
//! handling fails on the host, must not be able to fill the host's log.
//! Every such site therefore goes through a [`LogLimiter`]: the first
//! occurrence is logged in full, later ones are only counted, and the next
//! occurrence after [`PERIOD`] is logged with a summary of how many were
//! left out since the previous line.
//!
//! Two kinds of site use it:
//! - the guest's doing (a malformed request, a DMA fault, a bad address):
//!   [`guest_warn!`](crate::guest_warn), at `warn` level, prefixed with
//!   `guest:` so an operator sees who to blame;
//! - the VMM's or host's own failures that a guest can trigger over and
//!   over (a KVM route update, a VFIO ioctl, a host I/O error):
//!   [`host_log!`](crate::host_log), at the level the caller picks
//!   (`error` for the VMM's own failures).
//!
//! Each macro call site owns one limiter (a `static`), so one noisy site
//! cannot hide the first occurrence of another.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::Level;

/// At most one line per site and period: often enough to see that a
/// condition persists, rarely enough that a guest looping on it adds a
/// handful of lines a minute, whatever its rate.
pub const PERIOD: Duration = Duration::from_secs(10);

/// Who caused what is being logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The guest (its driver wrote something invalid): `warn`, `guest:`.
    Guest,
    /// The VMM or the host failed; the guest may trigger it repeatedly.
    Host(Level),
}

/// What one occurrence amounts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` occurrences were left out since the last line
    /// (`since` ago).
    Emit { suppressed: u64, since: Duration },
    /// Only counted.
    Suppressed,
}

#[derive(Debug, Default)]
struct Window {
    /// When the last line was logged (None: never).
    last_line: Option<Instant>,
    /// Occurrences counted but not logged since then.
    suppressed: u64,
}

/// Counts the occurrences of one condition and decides which are logged.
#[derive(Debug)]
pub struct LogLimiter {
    origin: Origin,
    period: Duration,
    total: AtomicU64,
    window: Mutex<Window>,
}

impl LogLimiter {
    /// A limiter for a condition the guest caused.
    pub const fn guest() -> Self {
        Self::with_period(Origin::Guest, PERIOD)
    }

    /// A limiter for a VMM or host failure logged at `level`.
    pub const fn host(level: Level) -> Self {
        Self::with_period(Origin::Host(level), PERIOD)
    }

    pub const fn with_period(origin: Origin, period: Duration) -> Self {
        LogLimiter {
            origin,
            period,
            total: AtomicU64::new(0),
            window: Mutex::new(Window {
                last_line: None,
                suppressed: 0,
            }),
        }
    }

    /// Occurrences so far, logged or not.
    pub fn count(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn level(&self) -> Level {
        match self.origin {
            Origin::Guest => Level::Warn,
            Origin::Host(level) => level,
        }
    }

    /// Counts one occurrence at `now` and says whether to log it.
    pub fn record(&self, now: Instant) -> Verdict {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let due = match w.last_line {
            None => true,
            Some(t) => now.saturating_duration_since(t) >= self.period,
        };
        if !due {
            w.suppressed = w.suppressed.saturating_add(1);
            return Verdict::Suppressed;
        }
        let since = w
            .last_line
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let suppressed = std::mem::take(&mut w.suppressed);
        w.last_line = Some(now);
        Verdict::Emit { suppressed, since }
    }

    /// The line for an occurrence with `verdict`, or None when it is only
    /// counted. The message is formatted only when it is logged.
    pub fn line(&self, verdict: Verdict, msg: fmt::Arguments<'_>) -> Option<String> {
        let Verdict::Emit { suppressed, since } = verdict else {
            return None;
        };
        let prefix = match self.origin {
            Origin::Guest => "guest: ",
            Origin::Host(_) => "",
        };
        let mut line = format!("{prefix}{msg}");
        if suppressed > 0 {
            line.push_str(&format!(
                " ({suppressed} more since {}s ago)",
                since.as_secs()
            ));
        }
        Some(line)
    }

    /// Counts one occurrence and logs it unless it is rate-limited.
    pub fn log(&self, msg: fmt::Arguments<'_>) {
        let level = self.level();
        // The count is kept even when the level is filtered out.
        let verdict = self.record(Instant::now());
        if !log::log_enabled!(level) {
            return;
        }
        if let Some(line) = self.line(verdict, msg) {
            log::log!(level, "{line}");
        }
    }
}

/// Logs a condition the guest caused, rate-limited per call site (see the
/// module documentation).
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::guest_log::LogLimiter = $crate::guest_log::LogLimiter::guest();
        LIMIT.log(format_args!($($arg)+));
    }};
}

/// Logs a VMM or host failure a guest can trigger repeatedly, at `level`,
/// rate-limited per call site.
#[macro_export]
macro_rules! host_log {
    ($level:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::guest_log::LogLimiter = $crate::guest_log::LogLimiter::host($level);
        LIMIT.log(format_args!($($arg)+));
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(l: &LogLimiter, times: &[Instant]) -> Vec<String> {
        times
            .iter()
            .enumerate()
            .filter_map(|(i, &t)| l.line(l.record(t), format_args!("fault {i}")))
            .collect()
    }

    #[test]
    fn a_burst_is_one_line_then_a_summary() {
        let l = LogLimiter::guest();
        let t0 = Instant::now();
        let mut times = vec![t0; 1000];
        // Still inside the period: counted only.
        times.push(t0 + PERIOD - Duration::from_millis(1));
        // The first occurrence after the period carries the summary.
        times.push(t0 + PERIOD);
        let out = lines(&l, &times);
        assert_eq!(
            out,
            vec![
                "guest: fault 0".to_string(),
                format!(
                    "guest: fault 1001 (1000 more since {}s ago)",
                    PERIOD.as_secs()
                ),
            ]
        );
        assert_eq!(l.count(), 1002);
        assert_eq!(l.level(), Level::Warn);
    }

    #[test]
    fn quiet_periods_log_each_occurrence_without_summary() {
        let l = LogLimiter::host(Level::Error);
        let t0 = Instant::now();
        let out = lines(&l, &[t0, t0 + PERIOD, t0 + PERIOD * 3]);
        assert_eq!(out, vec!["fault 0", "fault 1", "fault 2"]);
        assert_eq!(l.level(), Level::Error);
    }

    #[test]
    fn a_clock_going_backwards_does_not_reopen_the_window() {
        let l = LogLimiter::guest();
        let t0 = Instant::now() + PERIOD;
        assert!(matches!(l.record(t0), Verdict::Emit { .. }));
        assert_eq!(l.record(t0 - PERIOD), Verdict::Suppressed);
    }

    #[test]
    fn logged_lines_are_one_per_burst_with_a_summary() {
        let l = LogLimiter::with_period(Origin::Guest, Duration::from_millis(50));
        let lines = crate::test_log::capture(|| {
            for i in 0..100 {
                l.log(format_args!("bad request {i}"));
            }
            std::thread::sleep(Duration::from_millis(60));
            l.log(format_args!("bad request 100"));
        });
        assert_eq!(
            lines,
            vec![
                (Level::Warn, "guest: bad request 0".to_string()),
                (
                    Level::Warn,
                    "guest: bad request 100 (99 more since 0s ago)".to_string()
                ),
            ]
        );
        assert_eq!(l.count(), 101);
    }

    #[test]
    fn the_macros_count_per_call_site() {
        // Only checks they expand and run; the policy is tested above.
        for i in 0..3 {
            crate::guest_warn!("test event {i}");
            crate::host_log!(Level::Error, "test failure {i}");
        }
    }
}
