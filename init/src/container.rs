//! LaunchProcess in a container, maitred's half: check the request, mount the container's
//! root filesystem (a device path, or a disk by identity: `disk:<ID>`, see `disks`), check
//! the program is in it, and turn the process into
//! `maitred --container-init …` (see `container_init`), which builds the namespaces. The
//! VM's volumes are bound under the root first (see `volumes`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::mount::MsFlags;
use vm_proto::protos::guest::{ContainerSpec, ContainerSpec_oneof_rootfs};

use crate::container_init;
use crate::disks::{self, DiskError};
use crate::spawn::{ProcessSpec, DEFAULT_PATH};

/// Where container root filesystems are mounted in the VM.
pub const MOUNT_BASE: &str = "/run/maitred/containers";

static NEXT: AtomicU32 = AtomicU32::new(1);

#[derive(Debug, PartialEq, Eq)]
pub enum ContainerError {
    NoRootfs,
    BadRootfs(String),
    Disk(DiskError),
    Mount {
        device: String,
        errno: nix::errno::Errno,
    },
    ProgramMissing {
        program: String,
        root: PathBuf,
    },
    NoSelf(String),
    Volume(crate::volumes::BindError),
}

impl ContainerError {
    pub fn errno(&self) -> i32 {
        match self {
            Self::Mount { errno, .. } => *errno as i32,
            Self::Disk(e) => e.errno(),
            Self::ProgramMissing { .. } | Self::BadRootfs(_) => libc::ENOENT,
            Self::NoRootfs | Self::NoSelf(_) => libc::EINVAL,
            Self::Volume(e) => e.errno as i32,
        }
    }
}

impl fmt::Display for ContainerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRootfs => write!(f, "container: rootfs_device or rootfs_dir is required"),
            Self::BadRootfs(path) => write!(f, "container: rootfs {path} is not a directory"),
            Self::Disk(e) => write!(f, "container: root filesystem: {e}"),
            Self::Mount { device, errno } => write!(
                f,
                "container: cannot mount the root filesystem {device}: {}",
                errno.desc()
            ),
            Self::ProgramMissing { program, root } => write!(
                f,
                "container: {program} is not in the container's root filesystem ({})",
                root.display()
            ),
            Self::NoSelf(e) => write!(f, "container: cannot find maitred's own binary: {e}"),
            Self::Volume(e) => write!(f, "container: {e}"),
        }
    }
}

/// Is `program` in the root at `root`, as execvp would find it with `path_var`? Symlinks
/// are not followed: an absolute link points into the container, not into the VM.
pub fn program_in_root(root: &Path, program: &str, path_var: &str) -> bool {
    let present = |p: PathBuf| std::fs::symlink_metadata(p).is_ok();
    if program.contains('/') {
        return present(root.join(program.trim_start_matches('/')));
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .any(|dir| present(root.join(dir.trim_start_matches('/')).join(program)))
}

fn mount_rootfs(source: &str, spec: &ContainerSpec) -> Result<PathBuf, ContainerError> {
    let resolved = disks::resolve(source, disks::WAIT).map_err(ContainerError::Disk)?;
    // Errors name the disk as asked for and as found.
    let label = if resolved == source {
        resolved.clone()
    } else {
        format!("{resolved} ({source})")
    };
    let target = Path::new(MOUNT_BASE).join(NEXT.fetch_add(1, Ordering::SeqCst).to_string());
    let err = |errno| ContainerError::Mount {
        device: label.clone(),
        errno,
    };
    std::fs::create_dir_all(&target).map_err(|e| {
        err(nix::errno::Errno::from_raw(
            e.raw_os_error().unwrap_or(libc::EIO),
        ))
    })?;
    let fstype = match spec.get_fstype() {
        "" => "ext4",
        other => other,
    };
    let mut flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    if !spec.get_writable() {
        flags |= MsFlags::MS_RDONLY;
    }
    nix::mount::mount(
        Some(resolved.as_str()),
        &target,
        Some(fstype),
        flags,
        None::<&str>,
    )
    .map_err(err)?;
    Ok(target)
}

/// Rewrites `process` to run in the container `spec`; mounts its root filesystem first.
pub fn wrap(
    spec: &ContainerSpec,
    vm_id: &str,
    mut process: ProcessSpec,
) -> Result<ProcessSpec, ContainerError> {
    let root = match &spec.rootfs {
        Some(ContainerSpec_oneof_rootfs::rootfs_device(dev)) if !dev.is_empty() => {
            mount_rootfs(dev, spec)?
        }
        Some(ContainerSpec_oneof_rootfs::rootfs_dir(dir)) if !dir.is_empty() => {
            if !Path::new(dir).is_dir() {
                return Err(ContainerError::BadRootfs(dir.clone()));
            }
            PathBuf::from(dir)
        }
        _ => return Err(ContainerError::NoRootfs),
    };
    let path_var = process
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    if !program_in_root(&root, &process.argv[0], path_var) {
        return Err(ContainerError::ProgramMissing {
            program: process.argv[0].clone(),
            root,
        });
    }
    // The VM's volumes at the same paths inside (container_init binds the root recursively).
    crate::volumes::bind_into(&root).map_err(ContainerError::Volume)?;
    let me = std::env::current_exe().map_err(|e| ContainerError::NoSelf(e.to_string()))?;
    let hostname = match spec.get_hostname() {
        "" => vm_id,
        name => name,
    };
    let flag = |on: bool| if on { "1" } else { "0" };
    let mut argv = vec![
        me.to_string_lossy().into_owned(),
        container_init::FLAG.to_string(),
        root.to_string_lossy().into_owned(),
        hostname.to_string(),
        flag(spec.get_share_network()).to_string(),
        flag(!spec.get_writable()).to_string(),
        "--".to_string(),
    ];
    argv.append(&mut process.argv);
    process.argv = argv;
    // The application's working directory is inside the container; init starts at its root.
    process.cwd = None;
    Ok(process)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_in_root_searches_path_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::os::unix::fs::symlink("/bin/busybox", dir.path().join("bin/sh")).unwrap();
        assert!(program_in_root(dir.path(), "sh", "/usr/bin:/bin"));
        assert!(program_in_root(dir.path(), "/bin/sh", "/usr/bin"));
        assert!(!program_in_root(dir.path(), "ls", "/usr/bin:/bin"));
        assert!(!program_in_root(dir.path(), "/usr/bin/sh", "/bin"));
    }
}
