//! The standalone `maitred` binary (host-mode tests and demos run it). All of maitred is the
//! library (see its `//!`); in the guest image the same code runs from the multi-call
//! `vm_tools_guest` binary as /init.
//!
//! Exit status: 0 after `--help` or an orderly host-mode shutdown, 2 on a usage error. As
//! PID 1 it never exits (it powers the VM off).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    maitred::run_main(&args)
}
