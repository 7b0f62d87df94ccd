//! The standalone `crash_sender` binary (the host tests run it beside crash_collector); the
//! guest image runs the same program from the multi-call `vm_tools_guest` as /sbin/crash_sender.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    crash_collector::sender::run_main(&args)
}
