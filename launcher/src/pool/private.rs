//! Private host directories: the runtime dir, lease dirs, run dirs and the crash spool are
//! 0700 and owned by the launcher's effective user, whatever the umask.
//!
//! An existing directory is used only if it is a real directory (not a symlink) owned by the
//! effective uid and not writable by group or others; read or search bits for others (a
//! directory from an older launcher, 0755) are removed. Anything else is refused, for root
//! too: a directory another user owns can be rearranged by that user under the launcher's
//! feet (lock files swapped, symlinks planted), so root does not trust it either.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every private directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in one.
pub const FILE_MODE: u32 = 0o600;

/// Why a directory is not private enough to use.
#[derive(Debug)]
pub enum PrivateDirError {
    Io {
        op: &'static str,
        source: io::Error,
    },
    /// Owned by another user, or writable by group/others, or a symlink.
    Unsafe {
        owner: u32,
        mode: u32,
        why: &'static str,
    },
}

impl fmt::Display for PrivateDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { op, source } => write!(f, "cannot {op}: {source}"),
            Self::Unsafe { owner, mode, why } => {
                let me = nix::unistd::geteuid();
                write!(f, "{why} (owner uid {owner}, mode {mode:04o}; vm_launcher runs as uid {me} and needs a directory of its own, mode 0700)")
            }
        }
    }
}

impl std::error::Error for PrivateDirError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Unsafe { .. } => None,
        }
    }
}

impl From<PrivateDirError> for io::Error {
    fn from(err: PrivateDirError) -> io::Error {
        match err {
            PrivateDirError::Io { source, .. } => source,
            unsafe_dir => io::Error::new(io::ErrorKind::PermissionDenied, unsafe_dir.to_string()),
        }
    }
}

/// Creates `path` mode 0700 (its missing parents too if `parents`, mode 0755), or
/// checks and tightens the existing one; see the module doc.
pub fn ensure_dir(path: &Path, parents: bool) -> Result<(), PrivateDirError> {
    let io = |op| move |source| PrivateDirError::Io { op, source };
    let mut builder = fs::DirBuilder::new();
    builder.mode(DIR_MODE);
    match builder.create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound && parents => {
            if let Some(parent) = path.parent() {
                // Parents are not private, but never more open than 0755 whatever the umask.
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(io("create its parent directories"))?;
            }
            match builder.create(path) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(io("create directory")(e))
                }
                _ => {}
            }
        }
        Err(e) => return Err(io("create directory")(e)),
    }
    // Checked through an fd opened without following a symlink: the checks and the chmod
    // apply to the very directory, not to whatever a path points at meanwhile.
    let dir = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(dir) => dir,
        // A symlink gives ENOTDIR (O_DIRECTORY is checked first) or ELOOP.
        Err(e) => match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(PrivateDirError::Unsafe {
                    owner: meta.uid(),
                    mode: meta.mode() & 0o7777,
                    why: "is a symbolic link, not a directory",
                })
            }
            _ => return Err(io("open directory")(e)),
        },
    };
    secure_open_dir(&dir)
}

fn secure_open_dir(dir: &File) -> Result<(), PrivateDirError> {
    let io = |op| move |source| PrivateDirError::Io { op, source };
    let meta = dir.metadata().map_err(io("inspect directory"))?;
    let (owner, mode) = (meta.uid(), meta.mode() & 0o7777);
    if owner != nix::unistd::geteuid().as_raw() {
        let why = "is owned by another user";
        return Err(PrivateDirError::Unsafe { owner, mode, why });
    }
    if mode & 0o022 != 0 {
        let why = "is writable by group or others";
        return Err(PrivateDirError::Unsafe { owner, mode, why });
    }
    if mode != DIR_MODE {
        dir.set_permissions(fs::Permissions::from_mode(DIR_MODE))
            .map_err(io("set mode 0700 on directory"))?;
    }
    Ok(())
}

/// Opens `path` for writing as a new file, mode 0600, failing if anything exists there
/// (a symlink included).
pub fn create_new_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}
