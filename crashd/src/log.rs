//! The collector's log: one line per event on stderr, written with a single write, because
//! stderr is /dev/kmsg when the kernel starts the collector (see `sys::ensure_stdio`) and each
//! write there is one kernel log record. A crash produces a handful of lines at most.

use std::fmt;
use std::io::Write;

/// Writes `crash_collector: <message>` as one line.
pub fn line(message: impl fmt::Display) {
    let text = format!("crash_collector: {message}\n");
    let _ = std::io::stderr().write_all(text.as_bytes());
}
