//! The container's root, built in its new mount namespace and then pivoted into:
//!
//! - the image: bound on itself, `nosuid,nodev` (read-only unless asked);
//! - a fresh /proc with what leads to the token or into the kernel masked (Docker's list);
//! - /dev: a small `nodev` tmpfs. Its device nodes are the VM's own, each bind-mounted over
//!   an empty file (a bind keeps its source mount's flags, so they open, while a node the
//!   application creates on this tmpfs would not; it cannot create one anyway: no
//!   CAP_MKNOD); a private devpts, a bounded /dev/shm, the VM's console and, read-only, the
//!   directory holding vm_syslog's socket;
//! - bounded tmpfs on /tmp and (if the image has one) /run.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Sizes of the container's tmpfs mounts (`%` is of the VM's memory). Together they stay
/// well under the VM's memory, so a container that fills them leaves the VM running.
pub const TMP_SIZE: &str = "25%";
pub const RUN_SIZE: &str = "10%";
pub const SHM_SIZE: &str = "64m";
pub const DEV_SIZE: &str = "1m";

/// Files in the container's /proc that show the kernel command line (the token), the
/// kernel log, or reach into the kernel: /dev/null is bound over each.
pub const MASKED_FILES: &[&str] = &[
    "proc/cmdline",
    "proc/kcore",
    "proc/kmsg",
    "proc/sysrq-trigger",
    "proc/kallsyms",
    "proc/keys",
    "proc/timer_list",
    "proc/latency_stats",
    "proc/sched_debug",
];

/// Directories in the container's /proc hidden under an empty read-only tmpfs.
pub const MASKED_DIRS: &[&str] = &[
    "proc/irq",
    "proc/bus",
    "proc/acpi",
    "proc/asound",
    "proc/scsi",
];

/// Device nodes of the VM bound into the container's /dev.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);
const REMOUNT_BIND: MsFlags = MsFlags::MS_BIND.union(MsFlags::MS_REMOUNT);

fn at(root: &Path, rel: &str) -> PathBuf {
    root.join(rel)
}

fn mnt(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    what: &str,
) -> Result<(), String> {
    mount(source, target, fstype, flags, data)
        .map_err(|e| format!("mounting {what} on {}: {}", target.display(), e.desc()))
}

fn tmpfs(target: &Path, flags: MsFlags, data: &str, what: &str) -> Result<(), String> {
    mnt(
        Some(Path::new("tmpfs")),
        target,
        Some("tmpfs"),
        flags,
        Some(data),
        what,
    )
}

/// Binds `source` on `target`, then remounts the bind with `flags` (a bind ignores them).
fn bind(source: &Path, target: &Path, flags: MsFlags, what: &str) -> Result<(), String> {
    mnt(Some(source), target, None, MsFlags::MS_BIND, None, what)?;
    if flags.is_empty() {
        return Ok(());
    }
    mnt(None, target, None, REMOUNT_BIND | flags, None, what)
}

/// Builds the container's root under `root` and pivots into it.
pub fn build(root: &Path, hostname: &str, read_only: bool) -> Result<(), String> {
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
    // pivot_root needs the new root to be a mount point. A directory of the VM carries the
    // flags of the VM's root: no device node or set-uid file of the image takes effect.
    mnt(
        Some(root),
        root,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
        "the root",
    )?;
    let mut root_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if read_only {
        root_flags |= MsFlags::MS_RDONLY;
    }
    mnt(
        None,
        root,
        None,
        REMOUNT_BIND | root_flags,
        None,
        "the root",
    )?;
    for dir in ["proc", "dev", "tmp"] {
        if !at(root, dir).is_dir() {
            return Err(format!("the container image has no /{dir} directory"));
        }
    }
    let dev = at(root, "dev");
    tmpfs(
        &dev,
        NOSUID_NODEV_NOEXEC,
        &format!("mode=0755,size={DEV_SIZE}"),
        "/dev",
    )?;
    build_dev(&dev)?;
    tmpfs(
        &at(root, "tmp"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        &format!("mode=1777,size={TMP_SIZE}"),
        "/tmp",
    )?;
    if at(root, "run").is_dir() {
        tmpfs(
            &at(root, "run"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            &format!("mode=0755,size={RUN_SIZE}"),
            "/run",
        )?;
    }
    build_proc(root)?;

    std::env::set_current_dir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => umount2(".", MntFlags::MNT_DETACH)
            .map_err(|e| format!("detaching the old root: {}", e.desc()))?,
        // The VM's root is the initramfs, which pivot_root refuses (EINVAL): move the new
        // root over / and chroot instead, as runc does. CAP_SYS_CHROOT is not kept (see
        // KEPT_CAPS), so the application cannot chroot its way back out.
        Err(nix::errno::Errno::EINVAL) => {
            mnt(
                Some(Path::new(".")),
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

/// A fresh /proc with the masks, and /proc/sys read-only.
fn build_proc(root: &Path) -> Result<(), String> {
    let proc_dir = at(root, "proc");
    mnt(
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        NOSUID_NODEV_NOEXEC,
        None,
        "proc",
    )?;
    let null = at(root, "dev/null");
    for masked in MASKED_FILES {
        let target = at(root, masked);
        if target.exists() {
            bind(&null, &target, MsFlags::empty(), "a mask")?;
        }
    }
    for masked in MASKED_DIRS {
        let target = at(root, masked);
        if target.is_dir() {
            tmpfs(
                &target,
                MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC,
                "mode=0555,size=4k",
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
        REMOUNT_BIND | MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC,
        None,
        "/proc/sys read-only",
    )
}

/// The VM's `/dev/NAME` bound over an empty file at `inside`.
fn bind_vm_node(name: &str, inside: &Path) -> Result<(), String> {
    let outside = Path::new("/dev").join(name);
    File::create(inside).map_err(|e| format!("creating {}: {e}", inside.display()))?;
    bind(&outside, inside, MsFlags::empty(), "a /dev entry")
}

/// A minimal /dev: the VM's usual nodes, pts, shm, the standard links, the VM's console and
/// /dev/log.
fn build_dev(dev: &Path) -> Result<(), String> {
    for name in DEVICES {
        bind_vm_node(name, &dev.join(name))?;
    }
    for dir in ["pts", "shm"] {
        std::fs::create_dir(dev.join(dir)).map_err(|e| format!("mkdir /dev/{dir}: {e}"))?;
    }
    // devpts holds only pseudo-terminals, which must open: no nodev here.
    mnt(
        Some(Path::new("devpts")),
        &dev.join("pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,gid=5,mode=0620,ptmxmode=0666"),
        "/dev/pts",
    )?;
    tmpfs(
        &dev.join("shm"),
        NOSUID_NODEV_NOEXEC,
        &format!("mode=1777,size={SHM_SIZE}"),
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
    // The VM's syslog socket: its directory, so a socket vm_syslog re-creates later is
    // reached too. Read-only: connecting to a socket needs no write access to the mount,
    // while removing or replacing the VM's socket would.
    let syslog_dir = Path::new(crate::pid1::SYSLOG_DIR);
    if syslog_dir.is_dir() {
        let inside = dev.join(".syslog");
        std::fs::create_dir(&inside).map_err(|e| format!("mkdir /dev/.syslog: {e}"))?;
        bind(
            syslog_dir,
            &inside,
            MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC,
            "the syslog directory",
        )?;
        for name in ["log", "log-stream"] {
            std::os::unix::fs::symlink(format!(".syslog/{name}"), dev.join(name))
                .map_err(|e| format!("symlink /dev/{name}: {e}"))?;
        }
    }
    // The VM's console, and (host mode) /dev/log where it is not linked yet.
    for name in ["console", "log"] {
        let inside = dev.join(name);
        if std::fs::symlink_metadata(&inside).is_ok() {
            continue;
        }
        if std::fs::symlink_metadata(Path::new("/dev").join(name)).is_ok() {
            bind_vm_node(name, &inside)?;
        }
    }
    Ok(())
}
