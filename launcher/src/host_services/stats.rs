//! What one VM's host services refused, dropped or skipped, counted exactly.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of [`Counters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Log records (and their bytes) dropped over the rate limits.
    pub log_records_dropped: u64,
    pub log_bytes_dropped: u64,
    /// Log requests refused because the log writer's queue was full.
    pub log_requests_busy: u64,
    /// Crash reports refused over the per-minute limit.
    pub crash_reports_refused: u64,
    /// Crash reports refused because the spool writer's queue was full.
    pub crash_reports_busy: u64,
    /// Crash reports written to the spool.
    pub crash_reports_stored: u64,
    /// Stored reports whose reporter run was skipped (its queue was full).
    pub reporter_runs_skipped: u64,
    /// Reporter runs that ended (however they ended).
    pub reporter_runs_finished: u64,
    /// Reporter runs killed at the time limit.
    pub reporter_runs_killed: u64,
    /// ApplicationExited calls refused (none expected, or a second one).
    pub app_exits_refused: u64,
    /// Handler and worker panics caught (each call answered INTERNAL or its job dropped).
    pub panics: u64,
}

#[derive(Default)]
pub struct Counters {
    pub log_records_dropped: AtomicU64,
    pub log_bytes_dropped: AtomicU64,
    pub log_requests_busy: AtomicU64,
    pub crash_reports_refused: AtomicU64,
    pub crash_reports_busy: AtomicU64,
    pub crash_reports_stored: AtomicU64,
    pub reporter_runs_skipped: AtomicU64,
    pub reporter_runs_finished: AtomicU64,
    pub reporter_runs_killed: AtomicU64,
    pub app_exits_refused: AtomicU64,
    pub panics: AtomicU64,
}

/// Adds one; returns the new count.
pub fn bump(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed) + 1
}

impl Counters {
    pub fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            log_records_dropped: get(&self.log_records_dropped),
            log_bytes_dropped: get(&self.log_bytes_dropped),
            log_requests_busy: get(&self.log_requests_busy),
            crash_reports_refused: get(&self.crash_reports_refused),
            crash_reports_busy: get(&self.crash_reports_busy),
            crash_reports_stored: get(&self.crash_reports_stored),
            reporter_runs_skipped: get(&self.reporter_runs_skipped),
            reporter_runs_finished: get(&self.reporter_runs_finished),
            reporter_runs_killed: get(&self.reporter_runs_killed),
            app_exits_refused: get(&self.app_exits_refused),
            panics: get(&self.panics),
        }
    }
}
