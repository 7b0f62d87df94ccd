//! `exec` into the running application's container, as `docker exec` does, run as
//! `maitred --container-enter PID CWD -- ARGV…` (a fresh single-threaded process): join the
//! namespaces of the container process PID (mount, UTS, IPC, network, and its PID namespace
//! for our child), give up the same privileges the application gave up, start ARGV in the
//! container, and end the way it ended so maitred reports it faithfully.

use std::fs::File;
use std::path::PathBuf;

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::container_init::{self, EXIT_SETUP_FAILED};
use crate::spawn::ProcessSpec;
use crate::sys;

pub const FLAG: &str = "--container-enter";

/// The namespaces joined, in order; the mount namespace last (after it, /proc is the
/// container's). `pid_for_children`: the namespace the container's processes live in.
const NAMESPACES: &[(&str, CloneFlags)] = &[
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid_for_children", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Rewrites `process` to run inside the container whose outer init is `pid`.
pub fn wrap(pid: i32, mut process: ProcessSpec) -> ProcessSpec {
    let me = std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "/proc/self/exe".into());
    let cwd = process
        .cwd
        .take()
        .map_or_else(|| "/".to_string(), |c| c.to_string_lossy().into_owned());
    let mut argv = vec![me, FLAG.to_string(), pid.to_string(), cwd, "--".to_string()];
    argv.append(&mut process.argv);
    process.argv = argv;
    process
}

fn fail(message: &str) -> ! {
    eprintln!("container: {message}");
    std::process::exit(EXIT_SETUP_FAILED);
}

struct Args {
    pid: i32,
    cwd: PathBuf,
    argv: Vec<String>,
}

fn parse(args: &[String]) -> Option<Args> {
    match args {
        [pid, cwd, dashdash, argv @ ..] if dashdash == "--" && !argv.is_empty() => Some(Args {
            pid: pid.parse().ok().filter(|p| *p > 0)?,
            cwd: PathBuf::from(cwd),
            argv: argv.to_vec(),
        }),
        _ => None,
    }
}


/// Entry point of `maitred --container-enter …` (the arguments after the flag).
pub fn main(args: &[String]) -> ! {
    let Some(args) = parse(args) else {
        fail("usage: maitred --container-enter PID CWD -- ARGV...");
    };
    let signals = container_init::forwarded();
    if let Err(e) = signals.thread_block() {
        fail(&format!("blocking signals: {}", e.desc()));
    }
    // Open every namespace first: after joining the mount namespace, /proc is another one.
    let mut namespaces = Vec::new();
    for (name, flag) in NAMESPACES {
        let path = format!("/proc/{}/ns/{name}", args.pid);
        match File::open(&path) {
            Ok(file) => namespaces.push((file, *flag, path)),
            Err(e) => fail(&format!("{path}: {e}; has the container ended?")),
        }
    }
    for (file, flag, path) in &namespaces {
        if let Err(e) = setns(file, *flag) {
            fail(&format!("joining {path}: {}", e.desc()));
        }
    }
    if let Err(e) = std::env::set_current_dir(&args.cwd) {
        fail(&format!(
            "chdir {} in the container: {e}",
            args.cwd.display()
        ));
    }
    if let Err(e) = container_init::drop_privileges() {
        fail(&e);
    }
    // SAFETY: this process is single-threaded (freshly exec'd), so the child may run any code.
    match unsafe { nix::unistd::fork() } {
        Err(e) => fail(&format!("fork: {}", e.desc())),
        Ok(ForkResult::Child) => {
            sys::take_terminal_foreground();
            let _ = signals.thread_unblock();
            let argv: Vec<std::ffi::CString> = args
                .argv
                .iter()
                .filter_map(|a| std::ffi::CString::new(a.as_bytes()).ok())
                .collect();
            let err = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
            eprintln!("container: cannot execute {}: {}", args.argv[0], err.desc());
            std::process::exit(if err == nix::errno::Errno::ENOENT {
                127
            } else {
                126
            });
        }
        Ok(ForkResult::Parent { child }) => wait_and_mirror(child, signals),
    }
}

/// Forwards signals to `child` and ends like it did.
fn wait_and_mirror(child: Pid, signals: SigSet) -> ! {
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => sys::die_by_signal(signal as i32),
                _ => {}
            },
            Ok(signal) => {
                let _ = kill(child, signal);
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn wrap_then_parse_round_trips() {
        let spec = ProcessSpec {
            argv: strings(&["sh", "-c", "echo hi"]),
            env: vec![],
            cwd: Some("/srv".into()),
            stdio: crate::spawn::Stdio::Null,
        };
        let wrapped = wrap(42, spec);
        assert_eq!(wrapped.argv[1], FLAG);
        assert_eq!(wrapped.cwd, None);
        let args = parse(&wrapped.argv[2..]).unwrap();
        assert_eq!((args.pid, args.cwd), (42, PathBuf::from("/srv")));
        assert_eq!(args.argv, strings(&["sh", "-c", "echo hi"]));
    }

    #[test]
    fn parse_rejects_bad_pids_and_missing_argv() {
        assert!(parse(&strings(&["0", "/", "--", "sh"])).is_none());
        assert!(parse(&strings(&["-1", "/", "--", "sh"])).is_none());
        assert!(parse(&strings(&["x", "/", "--", "sh"])).is_none());
        assert!(parse(&strings(&["7", "/", "--"])).is_none());
        assert!(parse(&strings(&["7", "/", "sh"])).is_none());
    }
}
