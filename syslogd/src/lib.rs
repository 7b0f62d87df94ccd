//! vm_syslog, the guest's syslog daemon: /dev/log and /dev/kmsg to the host's LogCollector,
//! with nothing lost while its buffer has room.
//!
//! - `record`: one record; `time`: RFC 3164 / RFC 3339 timestamps.
//! - `syslog_format`: parses /dev/log datagrams; `kmsg_format`: parses /dev/kmsg records;
//!   `stream_frame`: cuts the stream socket's bytes into messages.
//! - `buffer`: the bounded buffer (drops the oldest, counts them); `sender`: batches,
//!   retries with backoff, reports drops; `delivery_state`: the delivered kmsg position
//!   and the batch numbering (exactly-once), kept across restarts.
//! - With the `daemon` feature: `config` (flags), `devlog`, `devlog_stream` and
//!   `kmsg_reader` (the reader
//!   threads), `grpc_collector` (the host calls) and `daemon` (the wiring).
//!
//! Without the `daemon` feature only the pure parts build (no gRPC): the fuzz targets.
//!
//! [`run_main`] is the whole program: `main.rs` (the standalone `vm_syslog`) and the guest's
//! multi-call binary (`vm_tools_guest`, as /sbin/vm_syslog) both call it.

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
pub mod delivery_state;
pub mod kmsg_format;
pub mod record;
pub mod sender;
pub mod stream_frame;
pub mod syslog_format;
pub mod time;

#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "daemon")]
pub mod devlog;
#[cfg(feature = "daemon")]
pub mod devlog_stream;
#[cfg(feature = "daemon")]
pub mod grpc_collector;
#[cfg(feature = "daemon")]
pub mod kmsg_reader;

/// vm_syslog's `main`, given its arguments after argv[0].
///
/// Exit status: 0 after SIGTERM or SIGINT (everything flushed) or `--help`, 1 on a runtime
/// error, 2 on a usage error.
#[cfg(feature = "daemon")]
pub fn run_main(args: &[String]) -> std::process::ExitCode {
    use std::process::ExitCode;

    let config = match config::parse_args(args) {
        Ok(config::Command::Help) => {
            println!("{}", config::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(config::Command::Run(config)) => config,
        Err(e) => {
            warn!("vm_syslog: {e}");
            return ExitCode::from(2);
        }
    };
    match daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            warn!("vm_syslog: {e}");
            ExitCode::from(1)
        }
    }
}
