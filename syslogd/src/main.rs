//! vm_syslog: serves /dev/log and reads /dev/kmsg in the guest, and forwards every record to
//! the host's LogCollector (see the library's `//!` for the parts). Started by maitred from
//! /etc/maitred/10-vm_syslog.conf.
//!
//! Exit status: 0 after SIGTERM or SIGINT (everything flushed), 1 on a runtime error, 2 on
//! a usage error.

use std::process::ExitCode;

use vm_syslog::config::{self, Command};
use vm_syslog::daemon;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match config::parse_args(&args) {
        Ok(Command::Help) => {
            println!("{}", config::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run(config)) => config,
        Err(e) => {
            vm_syslog::warn!("vm_syslog: {e}");
            return ExitCode::from(2);
        }
    };
    match daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            vm_syslog::warn!("vm_syslog: {e}");
            ExitCode::from(1)
        }
    }
}
