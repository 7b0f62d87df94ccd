//! vm_tools_guest: the guest image's gRPC binary. maitred, vm_syslog and crash_sender are
//! libraries linked here once (one gRPC C-core instead of three), and the name the binary
//! is run under picks the program, busybox style. The image links /init, /sbin/maitred,
//! /sbin/vm_syslog and /sbin/crash_sender to it (scripts/build-image). crash_collector is
//! not here: it is a small static binary of its own without gRPC (the C-core's start-up
//! would be paid on every crash) that becomes /sbin/crash_sender once it has a report.
//!
//! - argv[0] `init` or `maitred` → maitred; `vm_syslog` → vm_syslog; `crash_sender` →
//!   crash_sender (only the last path component counts).
//! - `vm_tools_guest PROGRAM ARGS…` runs PROGRAM with ARGS, for trying it out by hand.
//! - PID 1 is always maitred, and so is maitred's re-execution of itself
//!   (`--container-init`, `--container-enter`), whatever name it came under.
//! - Any other name: one usage line, exit status 2.
//!
//! Each program then behaves exactly as its standalone binary: its own `--help`, flags and
//! exit codes.

use std::process::ExitCode;

const USAGE: &str = "usage: vm_tools_guest PROGRAM [ARGS...], or run it as a link named \
PROGRAM; PROGRAM is one of: init, maitred, vm_syslog, crash_sender";

#[derive(Debug, PartialEq, Eq)]
enum Program {
    Maitred,
    VmSyslog,
    CrashSender,
}

#[derive(Debug, PartialEq, Eq)]
enum Dispatch {
    /// Run this program with the arguments from this index of argv on.
    Run(Program, usize),
    /// `vm_tools_guest --help`.
    Help,
    /// Not a name this binary answers to (the name, for the message).
    Unknown(String),
}

fn program_named(name: &str) -> Option<Program> {
    match name {
        "init" | "maitred" => Some(Program::Maitred),
        "vm_syslog" => Some(Program::VmSyslog),
        "crash_sender" => Some(Program::CrashSender),
        _ => None,
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Which program `argv` asks for; `pid1` is whether this process is the VM's init.
fn dispatch(argv: &[String], pid1: bool) -> Dispatch {
    let name = argv.first().map_or("", |a| basename(a));
    let first = argv.get(1).map(String::as_str);
    if pid1 || first.is_some_and(|a| maitred::REEXEC_FLAGS.contains(&a)) {
        return Dispatch::Run(Program::Maitred, 1);
    }
    if let Some(program) = program_named(name) {
        return Dispatch::Run(program, 1);
    }
    if name == env!("CARGO_PKG_NAME") {
        return match first {
            Some(sub) => match program_named(basename(sub)) {
                Some(program) => Dispatch::Run(program, 2),
                None if sub == "--help" || sub == "-h" => Dispatch::Help,
                None => Dispatch::Unknown(sub.to_string()),
            },
            None => Dispatch::Unknown(String::new()),
        };
    }
    Dispatch::Unknown(name.to_string())
}

fn main() -> ExitCode {
    // Lossy on purpose: a program name or flag that is not UTF-8 is a usage error in each
    // program anyway, and `std::env::args` would panic on it.
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match dispatch(&argv, std::process::id() == 1) {
        Dispatch::Run(Program::Maitred, from) => maitred::run_main(&argv[from..]),
        Dispatch::Run(Program::VmSyslog, from) => vm_syslog::run_main(&argv[from..]),
        Dispatch::Run(Program::CrashSender, from) => {
            crash_collector::sender::run_main(&argv[from..])
        }
        Dispatch::Help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Dispatch::Unknown(name) => {
            eprintln!("vm_tools_guest: unknown program {name:?}; {USAGE}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn dispatch_link_names_pick_their_program() {
        for (name, want) in [
            ("/init", Program::Maitred),
            ("/sbin/init", Program::Maitred),
            ("/sbin/maitred", Program::Maitred),
            ("maitred", Program::Maitred),
            ("/sbin/vm_syslog", Program::VmSyslog),
            ("/sbin/crash_sender", Program::CrashSender),
        ] {
            assert_eq!(
                dispatch(&argv(&[name, "--help"]), false),
                Dispatch::Run(want, 1),
                "{name}"
            );
        }
    }

    #[test]
    fn dispatch_own_name_takes_program_from_first_argument() {
        assert_eq!(
            dispatch(&argv(&["/x/vm_tools_guest", "vm_syslog", "--help"]), false),
            Dispatch::Run(Program::VmSyslog, 2)
        );
        assert_eq!(
            dispatch(&argv(&["vm_tools_guest", "--help"]), false),
            Dispatch::Help
        );
        assert_eq!(
            dispatch(&argv(&["vm_tools_guest", "sh"]), false),
            Dispatch::Unknown("sh".into())
        );
        assert_eq!(
            dispatch(&argv(&["vm_tools_guest"]), false),
            Dispatch::Unknown(String::new())
        );
    }

    #[test]
    fn dispatch_unknown_name_is_refused() {
        assert_eq!(
            dispatch(&argv(&["/bin/evil", "--help"]), false),
            Dispatch::Unknown("evil".into())
        );
        assert_eq!(dispatch(&[], false), Dispatch::Unknown(String::new()));
    }

    #[test]
    fn dispatch_pid1_and_reexec_flags_are_maitred_under_any_name() {
        assert_eq!(
            dispatch(&argv(&["/sbin/vm_syslog"]), true),
            Dispatch::Run(Program::Maitred, 1)
        );
        for flag in maitred::REEXEC_FLAGS {
            assert_eq!(
                dispatch(&argv(&["/proc/self/exe", flag, "1"]), false),
                Dispatch::Run(Program::Maitred, 1),
                "{flag}"
            );
        }
    }
}
