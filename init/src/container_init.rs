//! The container's init, run as
//! `maitred --container-init ROOT HOSTNAME SHARE_NET READ_ONLY -- ARGV…` (flags are 0 or 1)
//! (maitred re-executes itself, so this runs as a fresh single-threaded process):
//!
//! 1. outer: unshare the mount, UTS, IPC, PID (and, unless shared, network) namespaces, fork
//!    the container's PID 1, forward signals to it, and end the way the application ended
//!    (same exit code, or killed by the same signal) so maitred reports it faithfully;
//! 2. container PID 1: build the root (`root`: fresh /proc, a minimal `nodev` /dev, bounded
//!    tmpfs, the VM's /dev/log read-only, masks over what leads to the token or the kernel),
//!    pivot_root into it, drop privileges (capabilities, no_new_privs, the `seccomp` filter
//!    against user namespaces), start the application and reap every orphan until the
//!    application ends.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::sys;

mod root;
mod seccomp;

pub const FLAG: &str = "--container-init";
/// The container could not be set up (its reason is on stderr).
pub const EXIT_SETUP_FAILED: i32 = 125;

/// Capabilities the application keeps: Docker's default set less SYS_CHROOT (it could undo
/// the chroot used on an initramfs root) and MKNOD (a device node reaches the VM's kernel
/// log or disks). SYSLOG was never in it: the kernel log holds the command line and so the
/// token. All others leave the bounding set, so not even root in the container can get
/// them back.
const KEPT_CAPS: &[u32] = &[
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    13, // NET_RAW
    29, // AUDIT_WRITE
    31, // SETFCAP
];

struct Args {
    root: PathBuf,
    hostname: String,
    share_network: bool,
    read_only: bool,
    argv: Vec<String>,
}

fn parse(args: &[String]) -> Option<Args> {
    match args {
        [root, hostname, share, ro, dashdash, argv @ ..]
            if dashdash == "--" && !argv.is_empty() =>
        {
            Some(Args {
                root: PathBuf::from(root),
                hostname: hostname.clone(),
                share_network: share == "1",
                read_only: ro == "1",
                argv: argv.to_vec(),
            })
        }
        _ => None,
    }
}

fn fail(message: &str) -> ! {
    eprintln!("container: {message}");
    std::process::exit(EXIT_SETUP_FAILED);
}

/// The signals a container's init (and `exec`'s) forwards to the process it runs; SIGCHLD
/// tells it that process ended.
pub(crate) fn forwarded() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(s);
    }
    set
}

/// Entry point of `maitred --container-init …` (the arguments after the flag).
pub fn main(args: &[String]) -> ! {
    let Some(args) = parse(args) else {
        fail("usage: maitred --container-init ROOT HOSTNAME SHARE_NET READ_ONLY -- ARGV...");
    };
    let signals = forwarded();
    if let Err(e) = signals.thread_block() {
        fail(&format!("blocking signals: {}", e.desc()));
    }
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID;
    if !args.share_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if let Err(e) = unshare(flags) {
        fail(&format!(
            "unshare: {}; does the kernel have namespaces?",
            e.desc()
        ));
    }
    let (status_r, status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .unwrap_or_else(|e| fail(&format!("pipe2: {}", e.desc())));
    // SAFETY: this process is single-threaded (freshly exec'd), so the child may run any code.
    match unsafe { nix::unistd::fork() } {
        Err(e) => fail(&format!("fork: {}", e.desc())),
        Ok(ForkResult::Child) => {
            drop(status_r);
            container_pid1(&args, signals, status_w)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(status_w);
            outer_wait(child, signals, status_r)
        }
    }
}

/// Outside the PID namespace: forward signals, then end like the application did.
fn outer_wait(child: Pid, signals: SigSet, status_r: OwnedFd) -> ! {
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => mirror(File::from(status_r), code),
                Ok(WaitStatus::Signaled(..)) => std::process::exit(EXIT_SETUP_FAILED),
                _ => {}
            },
            Ok(signal) => {
                let _ = kill(child, signal);
            }
            Err(_) => {}
        }
    }
}

/// Ends with the application's status that the container's PID 1 sent, or `fallback`.
fn mirror(mut status_r: File, fallback: i32) -> ! {
    let mut raw = [0u8; 4];
    if status_r.read_exact(&mut raw).is_err() {
        std::process::exit(fallback);
    }
    let status = i32::from_ne_bytes(raw);
    if libc::WIFSIGNALED(status) {
        sys::die_by_signal(libc::WTERMSIG(status));
    }
    std::process::exit(libc::WEXITSTATUS(status));
}

/// PID 1 of the new PID namespace.
fn container_pid1(args: &Args, signals: SigSet, status_w: OwnedFd) -> ! {
    if let Err(e) = root::build(&args.root, &args.hostname, args.read_only) {
        fail(&e);
    }
    if !args.share_network {
        if let Err(e) = crate::network::loopback_up() {
            eprintln!("container: {e}");
        }
    }
    if let Err(e) = drop_privileges() {
        fail(&e);
    }
    let argv: Vec<CString> = args
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    // SAFETY: still single-threaded; the child only resets its signal state and execs.
    let app = match unsafe { nix::unistd::fork() } {
        Err(e) => fail(&format!("fork: {}", e.desc())),
        Ok(ForkResult::Child) => {
            // With a terminal, its Ctrl-C reaches the application once, not through us too.
            sys::take_terminal_foreground();
            let _ = signals.thread_unblock();
            let err = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
            eprintln!("container: cannot execute {}: {}", args.argv[0], err.desc());
            std::process::exit(127);
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    let mut status_w = File::from(status_w);
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => loop {
                // Reap everything: orphans in the container are ours.
                let mut raw = 0;
                // SAFETY: waitpid writes the status into a local integer.
                let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
                if pid <= 0 {
                    break;
                }
                if pid == app.as_raw() {
                    let _ = status_w.write_all(&raw.to_ne_bytes());
                    // Our exit ends every other process in the namespace.
                    std::process::exit(0);
                }
            },
            Ok(signal) => {
                let _ = kill(app, signal);
            }
            Err(_) => {}
        }
    }
}

/// No new privileges through exec, only [`KEPT_CAPS`] left in the bounding set, and no user
/// namespaces (see `seccomp`). For any process about to run the application's code inside
/// a container; irreversible for the caller and everything it starts.
pub(crate) fn drop_privileges() -> Result<(), String> {
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {}", e.desc()))?;
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    for cap in (0..=last).filter(|c| !KEPT_CAPS.contains(c)) {
        sys::drop_bounding_cap(cap)
            .map_err(|e| format!("dropping capability {cap}: {}", e.desc()))?;
    }
    seccomp::install().map_err(|e| {
        format!(
            "installing the seccomp filter: {}; does the kernel have SECCOMP_FILTER?",
            e.desc()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parse_needs_root_hostname_share_and_argv() {
        let a = parse(&strings(&["/r", "h", "1", "0", "--", "sh", "-c", "x"])).unwrap();
        assert_eq!((a.root, a.hostname.as_str()), (PathBuf::from("/r"), "h"));
        assert!(a.share_network && !a.read_only);
        assert_eq!(a.argv, strings(&["sh", "-c", "x"]));
        assert!(parse(&strings(&["/r", "h", "0", "1", "--"])).is_none());
        assert!(parse(&strings(&["/r", "h", "0", "1", "sh"])).is_none());
    }

    #[test]
    fn kept_caps_exclude_admin_module_loading_mknod_and_syslog() {
        for forbidden in [
            12, // NET_ADMIN
            16, // SYS_MODULE
            18, // SYS_CHROOT
            21, // SYS_ADMIN
            22, // SYS_BOOT
            27, // MKNOD
            34, // SYSLOG
        ] {
            assert!(!KEPT_CAPS.contains(&forbidden));
        }
    }
}
