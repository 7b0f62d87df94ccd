//! Disks by identity (the contract is `vm_proto::disks`): a Mount source or a container's
//! `rootfs_device` may name a disk as `disk:<ID>`, which is the virtio-blk serial the launcher
//! gave it. The guest finds it in `/sys/block/<name>/serial` and uses `/dev/<name>`, never the
//! probe order. A disk may appear a moment after it is asked for (hot-plug, a slow probe),
//! so a lookup waits a bounded time, as the kernel's `rootwait` does.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use vm_proto::disks::{self, SOURCE_PREFIX};

use crate::{info, warn};

pub const SYS_BLOCK: &str = "/sys/block";
/// How long a lookup waits for a disk to appear.
pub const WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);
/// The filesystems a `vm_tools` disk may hold, tried in order.
const VM_TOOLS_FSTYPES: [&str; 2] = ["ext4", "squashfs"];

#[derive(Debug, PartialEq, Eq)]
pub enum DiskError {
    /// `disk:` followed by something that is not a valid identity.
    BadIdentity(String),
    /// No disk carries this serial (after waiting `waited`).
    NotFound { id: String, waited: Duration },
}

impl DiskError {
    pub fn errno(&self) -> i32 {
        match self {
            Self::BadIdentity(_) => libc::EINVAL,
            Self::NotFound { .. } => libc::ENOENT,
        }
    }
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadIdentity(source) => write!(
                f,
                "{source} is not a disk identity (disk: then 1-20 of A-Z a-z 0-9 _ -)"
            ),
            Self::NotFound { id, waited } => write!(
                f,
                "no disk has the identity {id} (no /sys/block/*/serial reads {id} after {} ms)",
                waited.as_millis()
            ),
        }
    }
}

/// The block device (its name in `sys_block`, e.g. `vdb`) whose serial is `id`.
pub fn find(sys_block: &Path, id: &str) -> Option<String> {
    let entries = std::fs::read_dir(sys_block).ok()?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort(); // the same answer every time, should two disks ever share a serial
    names.into_iter().find(|name| {
        std::fs::read(sys_block.join(name).join("serial")).is_ok_and(|serial| {
            // virtio-blk pads nothing and adds no newline; other drivers may.
            let serial = String::from_utf8_lossy(&serial);
            serial.trim_end_matches(['\0', '\n', ' ']) == id
        })
    })
}

/// Where `source` is: a `disk:<ID>` becomes `/dev/<name>` of the disk with that serial
/// (waiting up to `wait` for it and its device node); anything else is returned as it is.
pub fn resolve(source: &str, wait: Duration) -> Result<String, DiskError> {
    resolve_in(Path::new(SYS_BLOCK), Path::new("/dev"), source, wait)
}

pub fn resolve_in(
    sys_block: &Path,
    dev: &Path,
    source: &str,
    wait: Duration,
) -> Result<String, DiskError> {
    if !source.starts_with(SOURCE_PREFIX) {
        return Ok(source.to_string());
    }
    let id = disks::identity(source).ok_or_else(|| DiskError::BadIdentity(source.to_string()))?;
    let start = Instant::now();
    loop {
        if let Some(node) = find(sys_block, id)
            .map(|name| dev.join(name))
            .filter(|node| node.exists())
        {
            return Ok(node.to_string_lossy().into_owned());
        }
        if start.elapsed() >= wait {
            return Err(DiskError::NotFound {
                id: id.to_string(),
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// At boot: the `vm_tools` disk, if the launcher attached one, read-only at
/// `VM_TOOLS_MOUNT`. No wait: disks present at boot are probed before init runs, and a VM
/// without the disk must not pay for looking.
pub fn mount_vm_tools() {
    let Some(name) = find(Path::new(SYS_BLOCK), disks::VM_TOOLS) else {
        return;
    };
    let device = PathBuf::from("/dev").join(name);
    let target = disks::VM_TOOLS_MOUNT;
    if let Err(e) = std::fs::create_dir_all(target) {
        warn!("cannot create {target} for the vm_tools disk: {e}");
        return;
    }
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    let mut failures = Vec::new();
    for fstype in VM_TOOLS_FSTYPES {
        match nix::mount::mount(Some(&device), target, Some(fstype), flags, None::<&str>) {
            Ok(()) => {
                info!(
                    "mounted the vm_tools disk {} ({fstype}) read-only on {target}",
                    device.display()
                );
                return;
            }
            Err(errno) => failures.push(format!("{fstype}: {}", errno.desc())),
        }
    }
    warn!(
        "cannot mount the vm_tools disk {} on {target} ({})",
        device.display(),
        failures.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /sys/block and /dev: (name, serial or None, node exists).
    fn fake(disks: &[(&str, Option<&str>, bool)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("block")).unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        for (name, serial, node) in disks {
            let block = dir.path().join("block").join(name);
            std::fs::create_dir_all(&block).unwrap();
            if let Some(serial) = serial {
                std::fs::write(block.join("serial"), serial).unwrap();
            }
            if *node {
                std::fs::write(dir.path().join("dev").join(name), "").unwrap();
            }
        }
        dir
    }

    fn resolve_fake(dir: &Path, source: &str, wait: Duration) -> Result<String, DiskError> {
        resolve_in(&dir.join("block"), &dir.join("dev"), source, wait)
    }

    #[test]
    fn resolve_finds_the_disk_by_serial_not_by_order() {
        let dir = fake(&[
            ("vda", Some("rootfs"), true),
            ("vdb", Some("disk2"), true),
            ("vdc", Some("disk0"), true),
            ("vdd", Some("disk1\n"), true),
            ("loop0", None, true),
        ]);
        let dev = dir.path().join("dev");
        for (source, name) in [
            ("disk:disk0", "vdc"),
            ("disk:disk1", "vdd"),
            ("disk:disk2", "vdb"),
            ("disk:rootfs", "vda"),
        ] {
            let found = resolve_fake(dir.path(), source, Duration::ZERO).unwrap();
            assert_eq!(found, dev.join(name).to_str().unwrap(), "{source}");
        }
    }

    #[test]
    fn resolve_passes_plain_paths_through() {
        let dir = fake(&[]);
        assert_eq!(
            resolve_fake(dir.path(), "/dev/vdb", Duration::ZERO).unwrap(),
            "/dev/vdb"
        );
        assert_eq!(
            resolve_fake(dir.path(), "tmpfs", Duration::ZERO).unwrap(),
            "tmpfs"
        );
    }

    #[test]
    fn resolve_rejects_bad_identities_and_missing_disks() {
        let dir = fake(&[("vda", Some("rootfs"), true), ("vdb", Some("disk0"), false)]);
        assert_eq!(
            resolve_fake(dir.path(), "disk:../vda", Duration::ZERO),
            Err(DiskError::BadIdentity("disk:../vda".into()))
        );
        let wait = Duration::from_millis(60);
        let start = Instant::now();
        let err = resolve_fake(dir.path(), "disk:disk5", wait).unwrap_err();
        assert!(start.elapsed() >= wait, "it waited for the disk");
        assert!(matches!(&err, DiskError::NotFound { id, .. } if id == "disk5"));
        assert_eq!(err.errno(), libc::ENOENT);
        assert!(err.to_string().contains("no disk has the identity disk5"));
        // The serial is there but not yet its device node: not found either.
        assert!(resolve_fake(dir.path(), "disk:disk0", Duration::ZERO).is_err());
    }

    #[test]
    fn resolve_waits_for_a_disk_that_appears_late() {
        let dir = fake(&[]);
        let block = dir.path().join("block/vdc");
        let node = dir.path().join("dev/vdc");
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::create_dir_all(&block).unwrap();
            std::fs::write(block.join("serial"), "container").unwrap();
            std::fs::write(node, "").unwrap();
        });
        let found = resolve_fake(dir.path(), "disk:container", Duration::from_secs(5)).unwrap();
        late.join().unwrap();
        assert!(found.ends_with("/dev/vdc"), "{found}");
    }
}
