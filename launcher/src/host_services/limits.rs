//! What one VM may ask of its host services, all in one place, and the token bucket that
//! enforces the rates. A guest is not trusted: whatever it sends beyond these is dropped
//! (logs), refused (crash reports, calls while a queue is full) or skipped (reporter runs),
//! and counted; never queued without bound.
//!
//! Why these defaults:
//! - Logs: vm_syslog buffers up to 8 MiB (its `DEFAULT_BUFFER_BYTES`) while the host is
//!   away and then sends it all at once, so the burst holds that backlog (8 MiB, ~100k
//!   records at ~80 bytes each) and no honest guest loses a record after an outage. The
//!   sustained rate, 2,000 records/s and 1 MiB/s, is several times a busy server's syslog
//!   (journald's default is 10,000 messages per 30 s per service) while keeping one VM from
//!   filling the host's log at disk speed.
//! - Crash reports: 20 a minute (burst 20). A report can be 16 MiB, so this caps spool writes
//!   at ~5 MiB/s sustained; a crash loop in the guest keeps its reports in its own spool.
//! - Crash reporter runs: 2 at once (the machine class has 2 cores; the reporter is usually
//!   network-bound), 16 waiting, each killed after 5 minutes.
//! - Queues between gRPC threads and our workers: 8 log requests, 4 crash reports (≤ 64 MiB
//!   of reports in memory).
//! - Dropped-log notices: one line per VM per 10 s.

use std::time::{Duration, Instant};

/// `amount` per `every`, sustained, with up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub amount: f64,
    pub every: Duration,
    pub burst: f64,
}

impl Rate {
    pub fn per_second(amount: f64, burst: f64) -> Rate {
        Rate {
            amount,
            every: Duration::from_secs(1),
            burst,
        }
    }

    pub fn per_minute(amount: f64, burst: f64) -> Rate {
        Rate {
            amount,
            every: Duration::from_secs(60),
            burst,
        }
    }
}

pub const LOG_RECORDS: Rate = Rate {
    amount: 2_000.0,
    every: Duration::from_secs(1),
    burst: 100_000.0,
};
pub const LOG_BYTES: Rate = Rate {
    amount: (1 << 20) as f64,
    every: Duration::from_secs(1),
    burst: (8 << 20) as f64,
};
pub const LOG_NOTICE_EVERY: Duration = Duration::from_secs(10);
pub const LOG_QUEUE: usize = 8;
pub const CRASH_REPORTS: Rate = Rate {
    amount: 20.0,
    every: Duration::from_secs(60),
    burst: 20.0,
};
pub const CRASH_STORE_QUEUE: usize = 4;
pub const REPORTER_WORKERS: usize = 2;
pub const REPORTER_QUEUE: usize = 16;
pub const REPORTER_TIMEOUT: Duration = Duration::from_secs(300);

/// One VM's limits; [`Limits::default`] is what the launcher uses (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Log records a VM may send.
    pub log_records: Rate,
    /// Log bytes (content and app name) a VM may send.
    pub log_bytes: Rate,
    /// Dropped log records are reported in one line at most this often.
    pub log_notice_every: Duration,
    /// Log requests waiting for the log writer; beyond it, calls fail UNAVAILABLE.
    pub log_queue: usize,
    /// Crash reports a VM may send; beyond it, calls fail RESOURCE_EXHAUSTED.
    pub crash_reports: Rate,
    /// Crash reports waiting to be written; beyond it, calls fail UNAVAILABLE.
    pub crash_store_queue: usize,
    /// Crash reporter processes running at once.
    pub reporter_workers: usize,
    /// Stored reports waiting for a reporter; beyond it, the run is skipped.
    pub reporter_queue: usize,
    /// A reporter still running after this is killed.
    pub reporter_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            log_records: LOG_RECORDS,
            log_bytes: LOG_BYTES,
            log_notice_every: LOG_NOTICE_EVERY,
            log_queue: LOG_QUEUE,
            crash_reports: CRASH_REPORTS,
            crash_store_queue: CRASH_STORE_QUEUE,
            reporter_workers: REPORTER_WORKERS,
            reporter_queue: REPORTER_QUEUE,
            reporter_timeout: REPORTER_TIMEOUT,
        }
    }
}

/// A token bucket: starts full (`burst`), refills at the rate, never above `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            tokens: rate.burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at);
        self.at = now.max(self.at);
        let per_sec = self.rate.amount / self.rate.every.as_secs_f64().max(1e-9);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * per_sec).min(self.rate.burst);
    }

    /// Whether `n` tokens are there now (refilling first); takes nothing.
    pub fn has(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= n
    }

    /// Takes `n` tokens if they are there.
    pub fn take(&mut self, n: f64, now: Instant) -> bool {
        let ok = self.has(n, now);
        if ok {
            self.tokens -= n;
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_full_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::per_second(10.0, 5.0), t0);
        assert_eq!((0..8).filter(|_| b.take(1.0, t0)).count(), 5);
        assert!(!b.take(1.0, t0 + Duration::from_millis(50)));
        assert!(b.take(1.0, t0 + Duration::from_millis(100)));
        // Never above the burst, however long it waited.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..8).filter(|_| b.take(1.0, later)).count(), 5);
    }

    #[test]
    fn token_bucket_per_minute_and_sizes() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::per_minute(20.0, 20.0), t0);
        assert!(b.take(20.0, t0));
        assert!(!b.has(1.0, t0 + Duration::from_secs(2)));
        assert!(b.take(1.0, t0 + Duration::from_secs(3)));
        // A clock that goes backwards refills nothing.
        assert!(!b.take(1.0, t0));
    }

    #[test]
    fn token_bucket_refuses_what_is_larger_than_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::per_second(100.0, 100.0), t0);
        assert!(!b.take(101.0, t0));
        assert!(b.take(100.0, t0));
    }
}
