//! The standalone `crash_collector` binary (the host tests run it); the program itself is
//! the library's `program` module, which the guest image runs from the multi-call
//! `vm_tools_guest` as /sbin/crash_collector.
//!
//! Exit codes: 0 report sent (or written with --output), 1 kept in the guest spool for a later
//! run, 2 usage error, 3 the report could be neither sent nor kept.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    crash_collector::run_main(&args)
}
