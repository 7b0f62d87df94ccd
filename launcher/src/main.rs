//! vm_launcher: boots a VM and serves it for its whole life.
//!
//! - `cli`: the command line; `commands`: run, start, exec, stop, list.
//! - `attach`, `stream_client`, `terminal`: a guest process's stdio, terminal and signals;
//!   `exec_broker`: how `exec` gets a stream without the token.
//! - `pool`: per-VM resources leased across launchers; `hypervisor`: command lines.
//! - `backend`: per-back-end wiring; `vm`: one VM's life from lease to teardown.
//! - `host_services`, `log_forward`, `crash_spool`: what the guest calls on the host.

use std::process::ExitCode;

use vm_launcher::cli::{self, Cli};
use vm_launcher::commands;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match cli::parse(&args) {
        Ok(Cli::Help(text)) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Cli::Run(run)) => commands::run(run),
        Ok(Cli::Start(run)) => commands::start(run),
        Ok(Cli::Stop {
            ids,
            all,
            runtime_dir,
        }) => commands::stop(ids, all, runtime_dir),
        Ok(Cli::Exec(exec)) => commands::exec(exec),
        Ok(Cli::List { runtime_dir, json }) => commands::list(runtime_dir, json),
        Ok(Cli::CrashUpload(args)) => commands::crash_upload(args),
        Err(e) => {
            eprintln!("vm_launcher: {e}");
            ExitCode::from(2)
        }
    }
}
