//! vm_syslog: serves /dev/log and reads /dev/kmsg in the guest, and forwards every record to
//! the host's LogCollector (see the library's `//!` for the parts). Started by maitred from
//! /etc/maitred/10-vm_syslog.conf. This standalone binary is what the host tests run; the
//! guest image runs the same [`vm_syslog::run_main`] from the multi-call `vm_tools_guest`.
//!
//! Exit status: 0 after SIGTERM or SIGINT (everything flushed), 1 on a runtime error, 2 on
//! a usage error.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    vm_syslog::run_main(&args)
}
