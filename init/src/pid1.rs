//! What only the VM's init does, before anything else: valid stdio, the mounts, kernel log
//! output, the kernel's secrets kept from unprivileged readers (the token is on the kernel
//! command line: see SECURITY.md), limits, the console, the hostname, lo, the core dump
//! pipe, and the `vm_tools` disk.
//!
//! The root may be an initramfs (writable) or a rootfs disk the kernel mounted read-only
//! (no initramfs at all): nothing here writes outside the mount table's tmpfs mounts and
//! devtmpfs (see `mounts`), so both boot the same way.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::resource::{setrlimit, Resource};

use crate::mounts::{self, TABLE};
use crate::{info, log, network, sys, warn};

pub const CRASH_COLLECTOR: &str = "/sbin/crash_collector";
/// vm_syslog's socket is `log` in this directory and /dev/log links to it: a container binds
/// the directory, so it keeps reaching the socket vm_syslog re-creates after a restart.
pub const SYSLOG_DIR: &str = "/run/syslog";
/// `%P`: the pid in the initial namespace, so /proc lookups work for containers too. The
/// values follow `--`, so no process name (`%e`, chosen by the process) can act as a flag.
pub const CORE_PATTERN: &str = "|/sbin/crash_collector -- %P %s %t %e";
/// Root's copy of the kernel command line, bound over /proc/cmdline (see [`hide_cmdline`]).
pub const PRIVATE_DIR: &str = "/run/maitred";
pub const CMDLINE_COPY: &str = "/run/maitred/cmdline";
/// Kernel settings made before any other process runs. dmesg_restrict: the kernel log holds
/// "Kernel command line: … maitred.token=…", so reading it (dmesg, syslog(2), /dev/kmsg)
/// needs CAP_SYSLOG. kptr_restrict: kernel addresses only for CAP_SYSLOG, too.
pub const SYSCTLS: &[(&str, &str)] = &[
    ("/proc/sys/kernel/dmesg_restrict", "1"),
    ("/proc/sys/kernel/kptr_restrict", "1"),
];
/// /proc/PID stays readable while crash_collector streams the dump, for this many dumps.
pub const CORE_PIPE_LIMIT: &str = "4";
/// Directories made at boot (after the mounts and [`hide_cmdline`], which makes
/// /run/maitred root's alone), with their modes: containers' root filesystems, and
/// crash_collector's spool (`crashd::spool::DEFAULT_DIR`; reports are private).
pub const BOOT_DIRS: &[(&str, u32)] = &[
    (crate::container::MOUNT_BASE, 0o700),
    ("/var/spool/crash", 0o700),
];

/// Makes fds 0-2 valid, opening the console (or /dev/null) for any that is closed.
fn ensure_stdio() {
    let closed = |fd: i32| {
        // SAFETY: the fd is only borrowed for this one fcntl; if it is not open, F_GETFD
        // fails with EBADF, which is the answer we want.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err()
    };
    if !(0..3).any(closed) {
        return;
    }
    let open = |p: &str| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .ok()
            .map(OwnedFd::from)
    };
    if let Some(fd) = open("/dev/console").or_else(|| open("/dev/null")) {
        // A failed dup leaves that fd closed; nothing better to do this early.
        if closed(0) {
            let _ = nix::unistd::dup2_stdin(&fd);
        }
        if closed(1) {
            let _ = nix::unistd::dup2_stdout(&fd);
        }
        if closed(2) {
            let _ = nix::unistd::dup2_stderr(&fd);
        }
        if fd.as_raw_fd() < 3 {
            std::mem::forget(fd); // it *is* one of 0-2 now
        }
    }
}

/// Everything before the command line is read. An essential mount that fails is fatal.
pub fn early_setup() -> Result<(), String> {
    ensure_stdio();
    for entry in TABLE {
        if !mounts::wanted(entry) {
            continue;
        }
        match mounts::mount_entry(entry) {
            Ok(()) => {}
            Err(e) if entry.essential => return Err(e.to_string()),
            Err(e) => warn!("{e}; continuing without it"),
        }
        if entry.target == "/dev" {
            log::use_kmsg();
            ensure_stdio(); // /dev/console exists now, if it did not before
        }
    }
    log::use_kmsg();
    restrict_kernel();
    if let Err(e) = hide_cmdline() {
        // The token would be readable by every user: not a VM to run anything in.
        return Err(e.to_string());
    }
    make_boot_dirs();
    set_limits();
    take_console();
    if let Err(e) = network::loopback_up() {
        warn!("{e}");
    }
    setup_core_pattern();
    link_dev_log();
    // glibc's syslog() blocks once this many datagrams wait in /dev/log (default 10);
    // vm_syslog drains fast, but a burst during its restart should not stall senders.
    if let Err(e) = std::fs::write("/proc/sys/net/unix/max_dgram_qlen", "512") {
        warn!("cannot raise net.unix.max_dgram_qlen: {e}");
    }
    crate::disks::mount_vm_tools();
    Ok(())
}

fn make_boot_dirs() {
    use std::os::unix::fs::DirBuilderExt;
    for (dir, mode) in BOOT_DIRS {
        // The parents with the usual mode, the directory itself with its own.
        let parent = Path::new(dir).parent().unwrap_or(Path::new("/"));
        let made = std::fs::create_dir_all(parent)
            .and_then(|()| std::fs::DirBuilder::new().mode(*mode).create(dir))
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            });
        if let Err(e) = made {
            warn!("cannot create {dir}: {e}");
        }
    }
}

fn restrict_kernel() {
    for (path, value) in SYSCTLS {
        if let Err(e) = std::fs::write(path, value) {
            warn!("cannot write {path}: {e}");
        }
    }
}

#[derive(Debug)]
pub struct HideCmdlineError {
    step: &'static str,
    path: &'static str,
    cause: String,
}

impl std::fmt::Display for HideCmdlineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot hide the kernel command line: {} {}: {}",
            self.step, self.path, self.cause
        )
    }
}

/// /proc/cmdline (mode 0444, the token included) becomes root's alone, VM-wide: a copy
/// owned by root with mode 0400 is bound over it, read-only. Root's readers (maitred,
/// vm_syslog, crash_collector) keep reading /proc/cmdline as before; anyone else gets
/// EACCES. A container mounts its own /proc, where it is masked entirely.
pub fn hide_cmdline() -> Result<(), HideCmdlineError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let err = |step, path, cause: &dyn std::fmt::Display| HideCmdlineError {
        step,
        path,
        cause: cause.to_string(),
    };
    let text = std::fs::read("/proc/cmdline").map_err(|e| err("reading", "/proc/cmdline", &e))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(PRIVATE_DIR)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })
        .map_err(|e| err("creating", PRIVATE_DIR, &e))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(CMDLINE_COPY)
        .map_err(|e| err("creating", CMDLINE_COPY, &e))?;
    std::io::Write::write_all(&mut file, &text).map_err(|e| err("writing", CMDLINE_COPY, &e))?;
    drop(file);
    let bind = |flags: MsFlags, step| {
        mount(
            Some(CMDLINE_COPY),
            "/proc/cmdline",
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(|e| err(step, "/proc/cmdline", &e.desc()))
    };
    bind(MsFlags::MS_BIND, "binding over")?;
    let read_only = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    bind(read_only, "remounting read-only")
}

fn set_limits() {
    let limits = [
        (Resource::RLIMIT_NOFILE, 65_536, 65_536),
        (
            Resource::RLIMIT_CORE,
            libc::RLIM_INFINITY,
            libc::RLIM_INFINITY,
        ),
    ];
    for (resource, soft, hard) in limits {
        if let Err(e) = setrlimit(resource, soft, hard) {
            warn!("setrlimit {resource:?}: {}", e.desc());
        }
    }
}

/// A new session with the console as controlling terminal.
fn take_console() {
    let _ = nix::unistd::setsid();
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        Ok(file) => {
            let fd = OwnedFd::from(file);
            if let Err(e) = sys::set_controlling_tty(&fd) {
                warn!(
                    "cannot make /dev/console the controlling terminal: {}",
                    e.desc()
                );
            }
        }
        Err(e) => warn!("cannot open /dev/console: {e}"),
    }
}

fn setup_core_pattern() {
    if !Path::new(CRASH_COLLECTOR).exists() {
        info!("{CRASH_COLLECTOR} is not in the image; core dumps stay with the kernel default");
        return;
    }
    for (path, value) in [
        ("/proc/sys/kernel/core_pattern", CORE_PATTERN),
        ("/proc/sys/kernel/core_pipe_limit", CORE_PIPE_LIMIT),
    ] {
        if let Err(e) = std::fs::write(path, value) {
            warn!("cannot write {path}: {e}");
        }
    }
}

/// The syslog sockets' directory (see [`SYSLOG_DIR`]), /dev/log pointing to vm_syslog's
/// datagram socket in it and /dev/log-stream to its SOCK_STREAM socket.
fn link_dev_log() {
    if let Err(e) = std::fs::create_dir_all(SYSLOG_DIR) {
        warn!("cannot make {SYSLOG_DIR}: {e}");
        return;
    }
    for (link, socket) in [("/dev/log", "log"), ("/dev/log-stream", "log-stream")] {
        let socket = Path::new(SYSLOG_DIR).join(socket);
        if let Err(e) = std::os::unix::fs::symlink(&socket, link) {
            warn!("cannot link {link} to {}: {e}", socket.display());
        }
    }
}

pub fn set_hostname(vm_id: &str) {
    if let Err(e) = nix::unistd::sethostname(vm_id) {
        warn!("cannot set the hostname to {vm_id}: {}", e.desc());
    }
}
