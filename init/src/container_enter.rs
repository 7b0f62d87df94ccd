//! `exec` into the running application's container, as `docker exec` does, run as
//! `maitred --container-enter PID CWD -- ARGV…` (a fresh single-threaded process): wait
//! until the container whose init is PID is complete, join the namespaces of its PID 1
//! (mount, UTS, IPC, network, and its PID namespace for our child), give up the same
//! privileges the application gave up, start ARGV in the container, and end the way it
//! ended so maitred reports it faithfully.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::container_init::{self, EXIT_SETUP_FAILED};
use crate::spawn::ProcessSpec;
use crate::sys;

pub const FLAG: &str = "--container-enter";

/// The namespaces joined, in order; the mount namespace last (after it, /proc is the
/// container's).
const NAMESPACES: &[(&str, CloneFlags)] = &[
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];
/// How long a container that is still being set up may take before `exec` gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The parent pid in a /proc/PID/stat line (the field after the state, which follows the
/// last ')': the command name may hold anything).
fn parent_of(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| parent_of(&stat))
                == Some(pid)
        })
        .collect()
}

/// The container's PID 1, once the container is complete: its init builds the root and only
/// then starts the application, so "its PID 1 has a child" means namespaces and root are
/// all in place. `outer` is the init maitred started (outside the PID namespace).
fn wait_until_ready(outer: i32) -> Result<i32, String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(inner) = children_of(outer).first() {
            if !children_of(*inner).is_empty() {
                return Ok(*inner);
            }
        }
        if !Path::new(&format!("/proc/{outer}")).exists() {
            return Err("the application's container has ended".into());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the application's container was not ready within {}s",
                READY_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

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
    let pid1 = wait_until_ready(args.pid).unwrap_or_else(|e| fail(&e));
    // Open every namespace first: after joining the mount namespace, /proc is another one.
    let mut namespaces = Vec::new();
    for (name, flag) in NAMESPACES {
        let path = format!("/proc/{pid1}/ns/{name}");
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
    fn parent_of_reads_past_any_command_name() {
        assert_eq!(parent_of("7 (sh) S 1 7 7 0"), Some(1));
        assert_eq!(parent_of("9 (a) (b c) R 42 9 9"), Some(42));
        assert_eq!(parent_of("garbage"), None);
        assert_eq!(parent_of("1 (x)"), None);
    }

    #[test]
    fn children_of_finds_our_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = children_of(std::process::id() as i32).contains(&(child.id() as i32));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found);
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
