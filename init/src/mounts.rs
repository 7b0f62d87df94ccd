//! The guest's mount table, mounted in order at boot and unmounted in reverse at shutdown.
//!
//! On a read-only root (a rootfs disk, no initramfs) every directory the VM writes to is a
//! tmpfs: /tmp and /run always, /var (vm_syslog's and crash_collector's spool) and /mnt
//! (mount points for Mount) when they are not writable; /dev is the kernel's devtmpfs.
//!
//! Every tmpfs has a size limit (a share of the VM's memory), so no writer can fill memory
//! through one: the defaults (half the memory each) add up to more than the VM has.

use std::fmt;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Always,
    /// Only if the target is not already a mount point (the kernel may mount devtmpfs).
    NotMounted,
    /// Only if the target is not writable (a read-only root).
    NotWritable,
}

#[derive(Debug, Clone, Copy)]
pub struct MountEntry {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: &'static str,
    pub when: When,
    /// Essential: if it fails the VM cannot run; anything else is logged and skipped.
    pub essential: bool,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

pub const TABLE: &[MountEntry] = &[
    MountEntry {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "mode=0755",
        when: When::NotMounted,
        essential: true,
    },
    MountEntry {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        when: When::Always,
        essential: true,
    },
    MountEntry {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        when: When::Always,
        essential: true,
    },
    MountEntry {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "gid=5,mode=0620,ptmxmode=0666",
        when: When::Always,
        essential: false,
    },
    MountEntry {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "mode=1777,size=10%",
        when: When::Always,
        essential: false,
    },
    MountEntry {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777,size=25%",
        when: When::Always,
        essential: true,
    },
    MountEntry {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755,size=10%",
        when: When::Always,
        essential: true,
    },
    MountEntry {
        source: "tmpfs",
        target: "/var",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755,size=25%",
        when: When::NotWritable,
        essential: false,
    },
    MountEntry {
        source: "tmpfs",
        target: "/mnt",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "mode=0755,size=1%",
        when: When::NotWritable,
        essential: false,
    },
    MountEntry {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        when: When::Always,
        essential: false,
    },
];

#[derive(Debug)]
pub struct MountError {
    pub target: &'static str,
    pub fstype: &'static str,
    pub errno: Errno,
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mounting {} on {} failed: {}",
            self.fstype,
            self.target,
            self.errno.desc()
        )
    }
}

/// Is `path` a mount point? (Its device differs from its parent's.)
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev() || a.ino() == b.ino(),
        _ => false,
    }
}

fn is_writable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// Should `entry` be mounted now?
pub fn wanted(entry: &MountEntry) -> bool {
    let target = Path::new(entry.target);
    match entry.when {
        When::Always => true,
        When::NotMounted => !is_mount_point(target),
        When::NotWritable => !is_writable(target),
    }
}

/// Mounts one entry (creating its target). ENODEV (the kernel lacks the filesystem) of a
/// non-essential entry is reported like any other failure; the caller decides.
pub fn mount_entry(entry: &MountEntry) -> Result<(), MountError> {
    let err = |errno| MountError {
        target: entry.target,
        fstype: entry.fstype,
        errno,
    };
    if let Err(e) = std::fs::create_dir_all(entry.target) {
        return Err(err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))));
    }
    let data = (!entry.data.is_empty()).then_some(entry.data);
    mount(
        Some(entry.source),
        entry.target,
        Some(entry.fstype),
        entry.flags,
        data,
    )
    .map_err(err)
}

/// Mount points to unmount at shutdown, innermost first, from /proc/mounts' text; never
/// `/`, `/proc`, `/sys` or `/dev` themselves (they go away with the power).
pub fn unmount_order(proc_mounts: &str) -> Vec<String> {
    let keep = ["/", "/proc", "/sys", "/dev"];
    let mut targets: Vec<String> = proc_mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(unescape_mount_path)
        .filter(|t| !keep.contains(&t.as_str()))
        .collect();
    targets.reverse();
    targets
}

/// /proc/mounts escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(value)) => {
                out.push(value);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts every target in order; a busy one is detached instead.
pub fn unmount_all(targets: &[String]) -> Vec<(String, Errno)> {
    let mut failures = Vec::new();
    for target in targets {
        if let Err(errno) = umount2(target.as_str(), MntFlags::empty()) {
            if let Err(errno) = umount2(target.as_str(), MntFlags::MNT_DETACH).map_err(|_| errno) {
                failures.push((target.clone(), errno));
            }
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_mounts_parents_before_children() {
        for (i, entry) in TABLE.iter().enumerate() {
            for later in &TABLE[i + 1..] {
                assert!(
                    !entry.target.starts_with(&format!("{}/", later.target)),
                    "{} is mounted before its parent {}",
                    entry.target,
                    later.target
                );
            }
        }
    }

    #[test]
    fn table_has_the_essentials_with_safe_flags() {
        let find = |t: &str| TABLE.iter().find(|e| e.target == t).unwrap();
        for t in ["/dev", "/proc", "/sys", "/tmp", "/run"] {
            assert!(find(t).essential, "{t}");
        }
        assert!(find("/proc").flags.contains(NOSUID_NODEV_NOEXEC));
        assert!(find("/dev").flags.contains(MsFlags::MS_NOSUID));
        assert!(
            !find("/dev").flags.contains(MsFlags::MS_NODEV),
            "/dev needs device nodes"
        );
        assert_eq!(find("/dev/pts").data, "gid=5,mode=0620,ptmxmode=0666");
        assert_eq!(find("/var").when, When::NotWritable);
        assert_eq!(find("/mnt").when, When::NotWritable);
        assert_eq!(find("/dev").when, When::NotMounted);
        assert!(!find("/sys/fs/cgroup").essential);
    }

    #[test]
    fn every_tmpfs_is_bounded_and_together_they_leave_the_vm_memory() {
        let mut percent = 0;
        for entry in TABLE.iter().filter(|e| e.fstype == "tmpfs") {
            let size = entry
                .data
                .split(',')
                .find_map(|o| o.strip_prefix("size="))
                .unwrap_or_else(|| panic!("{} has no size limit", entry.target));
            percent += size.strip_suffix('%').unwrap().parse::<u32>().unwrap();
        }
        assert!(percent < 100, "tmpfs limits add up to {percent}% of memory");
    }

    #[test]
    fn unmount_order_is_reverse_and_keeps_the_core() {
        let mounts = "rootfs / rootfs rw 0 0\n\
                      devtmpfs /dev devtmpfs rw 0 0\n\
                      proc /proc proc rw 0 0\n\
                      sysfs /sys sysfs rw 0 0\n\
                      tmpfs /tmp tmpfs rw 0 0\n\
                      cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n\
                      /dev/vda /mnt/my\\040disk ext4 rw 0 0\n";
        assert_eq!(
            unmount_order(mounts),
            vec!["/mnt/my disk", "/sys/fs/cgroup", "/tmp"]
        );
    }

    #[test]
    fn unescape_leaves_other_backslashes() {
        assert_eq!(unescape_mount_path("a\\134b\\x"), "a\\b\\x");
        assert_eq!(unescape_mount_path("end\\04"), "end\\04");
    }
}
