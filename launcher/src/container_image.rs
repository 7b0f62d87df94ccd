//! `--container ROOTFS`: the container's root filesystem as a disk for the VM. An ext4 image
//! is used as it is; a directory becomes an ext4 image with `mke2fs -d` (e2fsprogs, part of
//! every Debian system), sized at the directory's size plus half again and 16 MiB.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Bytes under `dir`, not following symlinks.
fn tree_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        total += meta.len();
        if meta.is_dir() {
            total += tree_size(&entry.path())?;
        }
    }
    Ok(total)
}

/// Builds `out` (ext4) from the directory `dir`.
pub fn image_from_dir(dir: &Path, out: &Path) -> Result<(), String> {
    let bytes = tree_size(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let kib = (bytes + bytes / 2) / 1024 + 16 * 1024;
    let result = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(dir)
        .arg(out)
        .arg(format!("{kib}k"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run mke2fs (install e2fsprogs): {e}"))?;
    if !result.status.success() {
        return Err(format!(
            "mke2fs -d {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&result.stderr).trim()
        ));
    }
    Ok(())
}

/// The disk image for `rootfs`: itself if it is a file, else a fresh image at `scratch`.
/// The second value tells whether the caller should delete the image afterwards.
pub fn disk_for(rootfs: &Path, scratch: PathBuf) -> Result<(PathBuf, bool), String> {
    let meta =
        std::fs::metadata(rootfs).map_err(|e| format!("--container {}: {e}", rootfs.display()))?;
    if meta.is_dir() {
        image_from_dir(rootfs, &scratch)?;
        Ok((scratch, true))
    } else {
        Ok((rootfs.to_path_buf(), false))
    }
}
