//! vm_syslog, the guest's syslog daemon: /dev/log and /dev/kmsg to the host's LogCollector,
//! with nothing lost while its buffer has room.
//!
//! - `record`: one record; `time`: RFC 3164 / RFC 3339 timestamps.
//! - `syslog_format`: parses /dev/log datagrams; `kmsg_format`: parses /dev/kmsg records.
//! - `buffer`: the bounded buffer (drops the oldest, counts them); `sender`: batches,
//!   retries with backoff, reports drops; `kmsg_state`: the delivered kmsg position.
//! - With the `daemon` feature: `config` (flags), `devlog` and `kmsg_reader` (the reader
//!   threads), `grpc_collector` (the host calls) and `daemon` (the wiring).
//!
//! Without the `daemon` feature only the pure parts build (no gRPC): the fuzz targets.

/// One line on stderr, never a panic: `eprintln!` panics when stderr is closed, and a
/// reader thread that panicked would leave /dev/log undrained.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod buffer;
pub mod kmsg_format;
pub mod kmsg_state;
pub mod record;
pub mod sender;
pub mod syslog_format;
pub mod time;

#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "daemon")]
pub mod devlog;
#[cfg(feature = "daemon")]
pub mod grpc_collector;
#[cfg(feature = "daemon")]
pub mod kmsg_reader;
