//! Volumes (`vm_launcher --volume`): the host directories the launcher attached as virtio-9p
//! shares, mounted at boot where `maitred.volumes` on the kernel command line says
//! (`vm_proto::volumes`), and bound into the application's container at the same paths.
//!
//! At boot ([`mount_all`], PID 1 only, before any service or application starts): each
//! share is mounted `9p` (`trans=virtio,version=9p2000.L`, `nosuid,nodev`, and `ro` when
//! read-only; the host refuses writes to a read-only share anyway). A share the user asked
//! for that cannot be mounted stops the boot with one line naming it: the application must
//! not run without its files.
//!
//! In a container ([`bind_into`]): before `container_init` builds the container's root, each
//! volume is bound onto the same path under that root, in the VM's mount namespace;
//! `container_init` binds the root recursively, so the volumes come along. No component
//! of the path inside the image may be a symlink: mount(2) would follow it out of the image
//! and cover a directory of the VM instead.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use vm_proto::volumes::{self, GuestVolume, VolumeError};

use crate::info;

/// The volumes mounted at boot, for [`bind_into`]. Empty in host mode.
static MOUNTED: OnceLock<Vec<GuestVolume>> = OnceLock::new();

const FLAGS: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

#[derive(Debug, PartialEq, Eq)]
pub enum VolumeMountError {
    Cmdline {
        path: PathBuf,
        why: String,
    },
    Parse(VolumeError),
    MountPoint {
        path: String,
        why: String,
    },
    Mount {
        tag: String,
        path: String,
        errno: Errno,
    },
}

impl fmt::Display for VolumeMountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cmdline { path, why } => {
                write!(f, "volumes: cannot read {}: {why}", path.display())
            }
            Self::Parse(e) => write!(f, "volumes: {e}"),
            Self::MountPoint { path, why } => {
                write!(f, "volume {path}: cannot create the mount point: {why}")
            }
            Self::Mount { tag, path, errno } => write!(
                f,
                "volume {path}: cannot mount the 9p share {tag}: {}; does the guest kernel have 9P_FS and NET_9P_VIRTIO?",
                errno.desc()
            ),
        }
    }
}

/// The 9p mount options: the kernel's virtio transport, 9P2000.L, [`volumes::MSIZE`].
pub fn mount_data() -> String {
    format!("trans=virtio,version=9p2000.L,msize={}", volumes::MSIZE)
}

/// Mounts every volume named on the kernel command line at `cmdline` (PID 1, at boot).
pub fn mount_all(cmdline: &Path) -> Result<(), VolumeMountError> {
    let text = std::fs::read(cmdline).map_err(|e| VolumeMountError::Cmdline {
        path: cmdline.to_path_buf(),
        why: e.to_string(),
    })?;
    let list =
        volumes::from_cmdline(&String::from_utf8_lossy(&text)).map_err(VolumeMountError::Parse)?;
    let data = mount_data();
    for volume in &list {
        mount_one(volume, &data)?;
        let mode = if volume.read_only { "ro" } else { "rw" };
        info!("mounted volume {} at {} ({mode})", volume.tag, volume.path);
    }
    let _ = MOUNTED.set(list);
    Ok(())
}

fn mount_one(volume: &GuestVolume, data: &str) -> Result<(), VolumeMountError> {
    std::fs::create_dir_all(&volume.path).map_err(|e| VolumeMountError::MountPoint {
        path: volume.path.clone(),
        why: e.to_string(),
    })?;
    let mut flags = FLAGS;
    if volume.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(
        Some(volume.tag.as_str()),
        volume.path.as_str(),
        Some("9p"),
        flags,
        Some(data),
    )
    .map_err(|errno| VolumeMountError::Mount {
        tag: volume.tag.clone(),
        path: volume.path.clone(),
        errno,
    })
}

/// A volume that could not be bound into a container's root.
#[derive(Debug, PartialEq, Eq)]
pub struct BindError {
    pub path: String,
    pub why: String,
    pub errno: Errno,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "volume {}: {}", self.path, self.why)
    }
}

/// Binds every volume mounted at boot onto the same path under `root` (a container's root
/// filesystem, in the VM's mount namespace).
pub fn bind_into(root: &Path) -> Result<(), BindError> {
    for volume in MOUNTED.get().map(Vec::as_slice).unwrap_or_default() {
        let target = mount_point_in(root, &volume.path)?;
        let fail = |what: &str, errno: Errno| BindError {
            path: volume.path.clone(),
            why: format!("{what}: {}", errno.desc()),
            errno,
        };
        mount(
            Some(volume.path.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| fail("binding it into the container", e))?;
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | FLAGS;
        if volume.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        mount(None::<&str>, &target, None::<&str>, flags, None::<&str>)
            .map_err(|e| fail("remounting its bind", e))?;
    }
    Ok(())
}

/// `root` + `guest_path`, each directory on the way created if missing and none of them a
/// symlink (the image is the application's; a link could point anywhere in the VM).
pub fn mount_point_in(root: &Path, guest_path: &str) -> Result<PathBuf, BindError> {
    let mut at = root.to_path_buf();
    for component in guest_path.split('/').filter(|c| !c.is_empty()) {
        at.push(component);
        let fail = |why: String, errno: Errno| BindError {
            path: guest_path.to_string(),
            why,
            errno,
        };
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(fail(
                    format!("/{component} on its path is a symlink in the container image"),
                    Errno::ELOOP,
                ))
            }
            Ok(meta) if !meta.is_dir() => {
                return Err(fail(
                    format!("/{component} on its path is not a directory in the container image"),
                    Errno::ENOTDIR,
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&at).map_err(|e| {
                    let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
                    let hint = if errno == Errno::EROFS {
                        " (the image is read-only: create the directory in it, or use --container-rw)"
                    } else {
                        ""
                    };
                    fail(format!("cannot create its mount point in the container: {e}{hint}"), errno)
                })?;
            }
            Err(e) => {
                let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
                return Err(fail(e.to_string(), errno));
            }
        }
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_data_names_the_virtio_transport_and_msize() {
        assert_eq!(
            mount_data(),
            format!("trans=virtio,version=9p2000.L,msize={}", volumes::MSIZE)
        );
    }

    #[test]
    fn mount_point_in_creates_missing_directories_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("srv")).unwrap();
        let at = mount_point_in(root.path(), "/srv/a/b").unwrap();
        assert_eq!(at, root.path().join("srv/a/b"));
        assert!(at.is_dir());
        // Already there: fine.
        assert_eq!(mount_point_in(root.path(), "/srv/a/b").unwrap(), at);
    }

    #[test]
    fn mount_point_in_refuses_symlinks_and_files_on_the_path() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("data")).unwrap();
        std::os::unix::fs::symlink("/", root.path().join("up")).unwrap();
        std::fs::write(root.path().join("file"), "x").unwrap();
        for (path, want) in [
            ("/data", "symlink"),
            ("/data/x", "symlink"),
            ("/up/etc", "symlink"),
            ("/file/x", "not a directory"),
        ] {
            let err = mount_point_in(root.path(), path).unwrap_err();
            assert!(err.to_string().contains(want), "{path}: {err}");
        }
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }

    #[test]
    fn mount_all_without_the_key_mounts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cmdline = dir.path().join("cmdline");
        std::fs::write(&cmdline, "console=ttyS0 maitred.vm_id=x").unwrap();
        assert_eq!(mount_all(&cmdline), Ok(()));
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "maitred.volumes=vmvol0:rw:/proc").unwrap();
        let err = mount_all(&bad).unwrap_err().to_string();
        assert!(err.contains("/proc"), "{err}");
        let err = mount_all(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}
