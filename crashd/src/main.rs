//! The `crash_collector` binary: the guest image's /sbin/crash_collector (built without the
//! `grpc` feature) and what the host tests run. The program is the library's `program`.
//!
//! Exit codes: 0 report sent (or written with --output), 1 kept in the guest spool for a later
//! run, 2 usage error, 3 the report could be neither sent nor kept.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    crash_collector::run_main(&args)
}
