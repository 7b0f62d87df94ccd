//! The container's init, run as
//! `maitred --container-init ROOT HOSTNAME SHARE_NET READ_ONLY -- ARGV…` (flags are 0 or 1)
//! (maitred re-executes itself, so this runs as a fresh single-threaded process):
//!
//! 1. outer: unshare the mount, UTS, IPC, PID (and, unless shared, network) namespaces, fork
//!    the container's PID 1, forward signals to it, and end the way the application ended
//!    (same exit code, or killed by the same signal) so maitred reports it faithfully;
//! 2. container PID 1: build the root (fresh /proc, a minimal /dev, /tmp, the VM's /dev/log,
//!    masks over what leads to the token or the kernel), pivot_root into it, drop privileges,
//!    start the application and reap every orphan until the application ends.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::sys;

pub const FLAG: &str = "--container-init";
/// The container could not be set up (its reason is on stderr).
pub const EXIT_SETUP_FAILED: i32 = 125;

/// Capabilities the application keeps (Docker's default set less SYS_CHROOT, which could
/// undo the chroot used on an initramfs root); all others leave the bounding set, so not
/// even root in the container can get them back.
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
    27, // MKNOD
    29, // AUDIT_WRITE
    31, // SETFCAP
];

/// Files in the container's /proc that would show the kernel command line (the token) or
/// reach into the kernel: /dev/null is bound over each.
const MASKED: &[&str] = &[
    "proc/cmdline",
    "proc/kcore",
    "proc/sysrq-trigger",
    "proc/kallsyms",
    "proc/keys",
    "proc/timer_list",
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

fn forwarded() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
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
        let signal = libc::WTERMSIG(status);
        // Die of the same signal, without a second core dump of our own.
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
        sys::die_by_signal(signal);
    }
    std::process::exit(libc::WEXITSTATUS(status));
}

/// PID 1 of the new PID namespace.
fn container_pid1(args: &Args, signals: SigSet, status_w: OwnedFd) -> ! {
    if let Err(e) = build_root(&args.root, &args.hostname, args.read_only) {
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

fn at(root: &Path, rel: &str) -> PathBuf {
    root.join(rel)
}

fn mount_err(what: &str, target: &Path, e: nix::Error) -> String {
    format!("mounting {what} on {}: {}", target.display(), e.desc())
}

fn mnt(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    what: &str,
) -> Result<(), String> {
    mount(source, target, fstype, flags, data).map_err(|e| mount_err(what, target, e))
}

/// Builds the container's root under `root` and pivots into it.
fn build_root(root: &Path, hostname: &str, read_only: bool) -> Result<(), String> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // Nothing we mount here may leak back into the VM's mount namespace.
    mnt(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
        "private /",
    )?;
    nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname: {}", e.desc()))?;
    // pivot_root needs the new root to be a mount point.
    mnt(
        Some(root),
        root,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
        "the root",
    )?;
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if read_only {
        mnt(None, root, None, ro, None, "the root read-only")?;
    }
    for dir in ["proc", "dev", "tmp"] {
        if !at(root, dir).is_dir() {
            return Err(format!("the container image has no /{dir} directory"));
        }
    }
    let proc_dir = at(root, "proc");
    mnt(
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        nosuid_nodev_noexec,
        None,
        "proc",
    )?;
    let dev = at(root, "dev");
    mnt(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=1m"),
        "/dev",
    )?;
    build_dev(&dev)?;
    let tmp = at(root, "tmp");
    mnt(
        Some(Path::new("tmpfs")),
        &tmp,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
        "/tmp",
    )?;
    for masked in MASKED {
        let target = at(root, masked);
        if target.exists() {
            mnt(
                Some(&at(root, "dev/null")),
                &target,
                None,
                MsFlags::MS_BIND,
                None,
                "a mask",
            )?;
        }
    }
    let sys_dir = at(root, "proc/sys");
    mnt(
        Some(&sys_dir),
        &sys_dir,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
        "/proc/sys",
    )?;
    mnt(
        None,
        &sys_dir,
        None,
        ro | nosuid_nodev_noexec,
        None,
        "/proc/sys read-only",
    )?;

    std::env::set_current_dir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => umount2(".", MntFlags::MNT_DETACH)
            .map_err(|e| format!("detaching the old root: {}", e.desc()))?,
        // The VM's root is the initramfs, which pivot_root refuses (EINVAL): move the new
        // root over / and chroot instead, as runc does. CAP_SYS_CHROOT is not kept (see
        // KEPT_CAPS), so the application cannot chroot its way back out.
        Err(nix::errno::Errno::EINVAL) => {
            let here = Path::new(".");
            mnt(
                Some(here),
                Path::new("/"),
                None,
                MsFlags::MS_MOVE,
                None,
                "the root over /",
            )?;
            nix::unistd::chroot(".").map_err(|e| format!("chroot: {}", e.desc()))?;
        }
        Err(e) => return Err(format!("pivot_root: {}", e.desc())),
    }
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// A minimal /dev: the usual nodes, pts, shm, the standard links, and the VM's console and
/// /dev/log bound in.
fn build_dev(dev: &Path) -> Result<(), String> {
    let nodes = [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ];
    let rw = Mode::from_bits_truncate(0o666);
    for (name, major, minor) in nodes {
        let path = dev.join(name);
        mknod(&path, SFlag::S_IFCHR, rw, makedev(major, minor))
            .map_err(|e| format!("mknod {}: {}", path.display(), e.desc()))?;
        // mknod honours the umask; the nodes must be world-usable.
        let _ = nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &path,
            rw,
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        );
    }
    for dir in ["pts", "shm"] {
        std::fs::create_dir(dev.join(dir)).map_err(|e| format!("mkdir /dev/{dir}: {e}"))?;
    }
    mnt(
        Some(Path::new("devpts")),
        &dev.join("pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,gid=5,mode=0620,ptmxmode=0666"),
        "/dev/pts",
    )?;
    mnt(
        Some(Path::new("tmpfs")),
        &dev.join("shm"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777"),
        "/dev/shm",
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(|e| format!("symlink /dev/{link}: {e}"))?;
    }
    // The VM's syslog socket: its directory, so a socket created (or re-created) later is
    // reached too; in host mode, whatever /dev/log is.
    let syslog_dir = Path::new(crate::pid1::SYSLOG_DIR);
    if syslog_dir.is_dir() {
        let inside = dev.join(".syslog");
        std::fs::create_dir(&inside).map_err(|e| format!("mkdir /dev/.syslog: {e}"))?;
        mnt(
            Some(syslog_dir),
            &inside,
            None,
            MsFlags::MS_BIND,
            None,
            "the syslog directory",
        )?;
        std::os::unix::fs::symlink(".syslog/log", dev.join("log"))
            .map_err(|e| format!("symlink /dev/log: {e}"))?;
    }
    // The VM's console, and /dev/log where it is not linked yet.
    for name in ["console", "log"] {
        if std::fs::symlink_metadata(dev.join(name)).is_ok() {
            continue;
        }
        let outside = Path::new("/dev").join(name);
        if std::fs::symlink_metadata(&outside).is_ok() {
            let inside = dev.join(name);
            File::create(&inside).map_err(|e| format!("creating {}: {e}", inside.display()))?;
            mnt(
                Some(&outside),
                &inside,
                None,
                MsFlags::MS_BIND,
                None,
                "a /dev entry",
            )?;
        }
    }
    Ok(())
}

/// No new privileges through exec, and only [`KEPT_CAPS`] left in the bounding set.
fn drop_privileges() -> Result<(), String> {
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {}", e.desc()))?;
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    for cap in (0..=last).filter(|c| !KEPT_CAPS.contains(c)) {
        sys::drop_bounding_cap(cap)
            .map_err(|e| format!("dropping capability {cap}: {}", e.desc()))?;
    }
    Ok(())
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
    fn kept_caps_exclude_sys_admin_and_module_loading() {
        for forbidden in [
            12, // NET_ADMIN
            16, // SYS_MODULE
            18, // SYS_CHROOT
            21, // SYS_ADMIN
            22, // SYS_BOOT
        ] {
            assert!(!KEPT_CAPS.contains(&forbidden));
        }
    }
}
