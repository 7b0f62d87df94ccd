//! The VM's files from the command line, resolved and checked before anything starts.
//!
//! `--vm-path DIR` is a Chromium OS component directory: `DIR/vm_kernel` is the kernel,
//! `DIR/vm_rootfs.img` the root disk and an optional `DIR/vm_tools.img` a read-only disk the
//! guest mounts at `vm_proto::disks::VM_TOOLS_MOUNT`; `--kernel`, `--initrd` and `--rootfs`
//! override the matching file. Disks are attached in a fixed order: root, container,
//! vm_tools, then `--disk` disks as disk0…disk9 in command-line order (identities from
//! `vm_proto::disks`). Each problem is one line naming the flag and the path: a file that is
//! missing, a directory, unreadable (or, for a writable disk, unwritable), or one file
//! attached twice (compared by canonical path).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use vm_proto::disks;

use crate::cli::{HypervisorName, RunArgs};
use crate::hypervisor::{Disk, FsType, Rootfs};

/// The kernel of a component directory.
pub const VM_KERNEL: &str = "vm_kernel";
/// The root disk of a component directory.
pub const VM_ROOTFS: &str = "vm_rootfs.img";
/// The optional tools disk of a component directory.
pub const VM_TOOLS_IMG: &str = "vm_tools.img";

/// One `--disk PATH[:ro|rw]`: read-only unless `:rw` (crosvm's `--disk` / `--rwdisk`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskArg {
    pub path: PathBuf,
    pub read_only: bool,
}

impl DiskArg {
    /// `PATH`, `PATH:ro` or `PATH:rw`; any other `:` belongs to the path.
    pub fn parse(text: &str) -> Result<DiskArg, String> {
        let (path, read_only) = match text.rsplit_once(':') {
            Some((path, "ro")) => (path, true),
            Some((path, "rw")) => (path, false),
            _ => (text, true),
        };
        if path.is_empty() {
            return Err(format!("--disk {text:?}: no path; expected PATH[:ro|rw]"));
        }
        Ok(DiskArg {
            path: path.into(),
            read_only,
        })
    }
}

/// A file the VM needs that it cannot use, or one file given as two disks.
#[derive(Debug, PartialEq, Eq)]
pub enum DiskError {
    File {
        flag: &'static str,
        path: PathBuf,
        why: String,
    },
    Twice {
        first: (&'static str, PathBuf),
        second: (&'static str, PathBuf),
        canonical: PathBuf,
    },
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { flag, path, why } => write!(f, "{flag} {}: {why}", path.display()),
            Self::Twice {
                first,
                second,
                canonical,
            } => write!(
                f,
                "{} {} is the same file as {} {} ({}); attach a file once",
                second.0,
                second.1.display(),
                first.0,
                first.1.display(),
                canonical.display()
            ),
        }
    }
}

impl std::error::Error for DiskError {}

/// What the VM boots from and attaches, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmFiles {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub rootfs: Option<Rootfs>,
    /// In attach order after the root disk: container, vm_tools, disk0…
    pub disks: Vec<Disk>,
}

impl VmFiles {
    /// The container's disk; it comes right after the root disk.
    pub fn add_container(&mut self, path: PathBuf, read_only: bool) {
        let disk = Disk {
            id: disks::CONTAINER.to_string(),
            path,
            read_only,
        };
        self.disks.insert(0, disk);
    }
}

/// The type of the filesystem image at `path`, from its magic numbers.
pub fn detect_fs_type(path: &Path) -> io::Result<FsType> {
    let mut head = Vec::with_capacity(1082);
    File::open(path)?.take(1082).read_to_end(&mut head)?;
    Ok(fs_type_of(&head))
}

/// squashfs: `hsqs` at byte 0; ext2/3/4: 0xEF53 (little-endian) at byte 1080.
pub fn fs_type_of(head: &[u8]) -> FsType {
    if head.starts_with(b"hsqs") {
        FsType::Squashfs
    } else if head.get(1080..1082) == Some(&[0x53, 0xEF][..]) {
        FsType::Ext4
    } else {
        FsType::Unknown
    }
}

/// `path` is a file (or block device) this user can read, and write when `write`.
fn check_file(flag: &'static str, path: &Path, write: bool) -> Result<(), DiskError> {
    let bad = |why: String| DiskError::File {
        flag,
        path: path.to_path_buf(),
        why,
    };
    let why = |e: io::Error| match e.kind() {
        io::ErrorKind::NotFound => "no such file".to_string(),
        io::ErrorKind::PermissionDenied if write => {
            "not writable by this user (it is attached read-write)".to_string()
        }
        io::ErrorKind::PermissionDenied => "not readable by this user".to_string(),
        _ => e.to_string(),
    };
    let meta = fs::metadata(path).map_err(|e| bad(why(e)))?;
    if meta.is_dir() {
        return Err(bad("is a directory, not a file".into()));
    }
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map(drop)
        .map_err(|e| bad(why(e)))
}

/// `DIR/name` of a component directory, or the flag's override.
fn component(
    dir: Option<&Path>,
    name: &str,
    given: Option<&PathBuf>,
    flag: &'static str,
) -> Result<Option<(&'static str, PathBuf)>, DiskError> {
    if let Some(path) = given {
        return Ok(Some((flag, path.clone())));
    }
    let Some(dir) = dir else {
        return Ok(None);
    };
    let path = dir.join(name);
    if !path.exists() {
        let why = format!("no such file in the component directory; give {flag}");
        return Err(DiskError::File {
            flag: "--vm-path",
            path,
            why,
        });
    }
    Ok(Some(("--vm-path", path)))
}

/// The VM's files from `args`, each checked; the process back-end has none.
pub fn resolve(args: &RunArgs) -> Result<VmFiles, DiskError> {
    if args.hypervisor == HypervisorName::Process {
        return Ok(VmFiles::default());
    }
    let dir = args.vm_path.as_deref();
    if let Some(dir) = dir {
        if !dir.is_dir() {
            return Err(DiskError::File {
                flag: "--vm-path",
                path: dir.to_path_buf(),
                why: "not a directory".into(),
            });
        }
    }
    let kernel = component(dir, VM_KERNEL, args.kernel.as_ref(), "--kernel")?;
    let rootfs = component(dir, VM_ROOTFS, args.rootfs.as_ref(), "--rootfs")?;
    let tools = dir
        .map(|d| d.join(VM_TOOLS_IMG))
        .filter(|p| p.exists())
        .map(|p| ("--vm-path", p));

    // (flag, path, writable) of every disk, in attach order; the container only if it is
    // an image already (a directory becomes a fresh one).
    let mut attached: Vec<(&'static str, PathBuf, bool)> = Vec::new();
    if let Some((flag, path)) = &rootfs {
        attached.push((flag, path.clone(), args.rootfs_rw));
    }
    if let Some(container) = &args.container {
        match fs::metadata(container) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => attached.push(("--container", container.clone(), args.container_rw)),
            Err(e) => {
                return Err(DiskError::File {
                    flag: "--container",
                    path: container.clone(),
                    why: e.to_string(),
                })
            }
        }
    }
    if let Some((flag, path)) = &tools {
        attached.push((flag, path.clone(), false));
    }
    for disk in &args.disks {
        attached.push(("--disk", disk.path.clone(), !disk.read_only));
    }

    if let Some((flag, path)) = &kernel {
        check_file(flag, path, false)?;
    }
    if let Some(initrd) = &args.initrd {
        check_file("--initrd", initrd, false)?;
    }
    let mut seen: Vec<(PathBuf, &'static str, &PathBuf)> = Vec::new();
    for (flag, path, write) in &attached {
        check_file(flag, path, *write)?;
        let canonical = fs::canonicalize(path).map_err(|e| DiskError::File {
            flag,
            path: path.clone(),
            why: e.to_string(),
        })?;
        if let Some((_, first_flag, first)) = seen.iter().find(|(c, ..)| *c == canonical) {
            return Err(DiskError::Twice {
                first: (first_flag, first.to_path_buf()),
                second: (flag, path.clone()),
                canonical,
            });
        }
        seen.push((canonical, flag, path));
    }

    let rootfs = match rootfs {
        Some((flag, path)) => {
            let fs_type = detect_fs_type(&path).map_err(|e| DiskError::File {
                flag,
                path: path.clone(),
                why: e.to_string(),
            })?;
            Some(Rootfs {
                path,
                read_only: !args.rootfs_rw,
                fs_type,
            })
        }
        None => None,
    };
    let mut disks: Vec<Disk> = tools
        .into_iter()
        .map(|(_, path)| Disk {
            id: disks::VM_TOOLS.to_string(),
            path,
            read_only: true,
        })
        .collect();
    disks.extend(args.disks.iter().enumerate().map(|(i, d)| Disk {
        id: disks::extra(i),
        path: d.path.clone(),
        read_only: d.read_only,
    }));
    Ok(VmFiles {
        kernel: kernel.map(|(_, path)| path),
        initrd: args.initrd.clone(),
        rootfs,
        disks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{self, Cli};

    /// `vm_launcher run ARGS -- x`, parsed.
    fn run_args(a: &[&str]) -> RunArgs {
        let mut all = vec!["run".to_string()];
        all.extend(a.iter().map(|s| s.to_string()));
        all.extend(["--".to_string(), "x".to_string()]);
        match cli::parse(&all) {
            Ok(Cli::Run(run)) => run,
            other => panic!("{a:?}: {other:?}"),
        }
    }

    /// An image of `len` zero bytes with `magic` written at `offset`.
    fn image(path: &Path, offset: usize, magic: &[u8], len: usize) {
        let mut bytes = vec![0u8; len];
        bytes[offset..offset + magic.len()].copy_from_slice(magic);
        fs::write(path, bytes).unwrap();
    }

    fn ext4(path: &Path) {
        image(path, 1080, &[0x53, 0xEF], 4096);
    }

    /// A component directory with vm_kernel, an ext4 vm_rootfs.img and, if `tools`,
    /// vm_tools.img.
    fn component_dir(tools: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(VM_KERNEL), b"kernel").unwrap();
        ext4(&dir.path().join(VM_ROOTFS));
        if tools {
            ext4(&dir.path().join(VM_TOOLS_IMG));
        }
        dir
    }

    fn s(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    #[test]
    fn disk_arg_parses_mode_suffix_else_read_only() {
        let arg = |t: &str| DiskArg::parse(t).map(|d| (d.path, d.read_only));
        assert_eq!(arg("/a.img"), Ok(("/a.img".into(), true)));
        assert_eq!(arg("/a.img:ro"), Ok(("/a.img".into(), true)));
        assert_eq!(arg("/a.img:rw"), Ok(("/a.img".into(), false)));
        assert_eq!(arg("/a:b.img"), Ok(("/a:b.img".into(), true)));
        assert_eq!(arg("/a:rw:ro"), Ok(("/a:rw".into(), true)));
        for bad in ["", ":ro", ":rw"] {
            let err = DiskArg::parse(bad).unwrap_err();
            assert!(err.contains("no path; expected PATH[:ro|rw]"), "{err}");
        }
    }

    #[test]
    fn detect_fs_type_reads_the_magic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        image(&path, 0, b"hsqs", 4096);
        assert_eq!(detect_fs_type(&path).unwrap(), FsType::Squashfs);
        ext4(&path);
        assert_eq!(detect_fs_type(&path).unwrap(), FsType::Ext4);
        image(&path, 1080, &[0xEF, 0x53], 4096);
        assert_eq!(detect_fs_type(&path).unwrap(), FsType::Unknown);
        image(&path, 1080, &[0x53, 0xEF], 1082);
        assert_eq!(detect_fs_type(&path).unwrap(), FsType::Ext4);
        fs::write(&path, b"hsq").unwrap();
        assert_eq!(detect_fs_type(&path).unwrap(), FsType::Unknown);
        fs::write(&path, b"").unwrap();
        assert_eq!(detect_fs_type(&path).unwrap(), FsType::Unknown);
        assert!(detect_fs_type(&dir.path().join("missing")).is_err());
        assert_eq!(FsType::Squashfs.rootfstype(), Some("squashfs"));
        assert_eq!(FsType::Ext4.rootfstype(), None);
    }

    #[test]
    fn resolve_vm_path_gives_kernel_rootfs_and_vm_tools_then_disks_in_order() {
        let dir = component_dir(true);
        let d = dir.path();
        let (a, b) = (d.join("a.img"), d.join("b.img"));
        fs::write(&a, b"a").unwrap();
        fs::write(&b, b"b").unwrap();
        let rw = format!("{}:rw", s(&b));
        let args = run_args(&["--vm-path", s(d), "--disk", s(&a), "--disk", &rw]);
        let files = resolve(&args).unwrap();
        assert_eq!(files.kernel, Some(d.join(VM_KERNEL)));
        assert_eq!(files.initrd, None);
        let root = files.rootfs.unwrap();
        assert_eq!(root.path, d.join(VM_ROOTFS));
        assert_eq!((root.read_only, root.fs_type), (true, FsType::Ext4));
        let disks: Vec<(&str, PathBuf, bool)> = files
            .disks
            .iter()
            .map(|x| (x.id.as_str(), x.path.clone(), x.read_only))
            .collect();
        assert_eq!(
            disks,
            [
                (disks::VM_TOOLS, d.join(VM_TOOLS_IMG), true),
                ("disk0", a, true),
                ("disk1", b, false),
            ]
        );
    }

    #[test]
    fn resolve_flags_override_component_files() {
        let dir = component_dir(false);
        let d = dir.path();
        let (kernel, initrd, root) = (d.join("k"), d.join("i"), d.join("sq.img"));
        fs::write(&kernel, b"k").unwrap();
        fs::write(&initrd, b"i").unwrap();
        image(&root, 0, b"hsqs", 4096);
        let args = run_args(&[
            "--vm-path",
            s(d),
            "--kernel",
            s(&kernel),
            "--initrd",
            s(&initrd),
            "--rootfs",
            s(&root),
            "--rootfs-rw",
        ]);
        let files = resolve(&args).unwrap();
        assert_eq!((files.kernel, files.initrd), (Some(kernel), Some(initrd)));
        let rootfs = files.rootfs.unwrap();
        assert_eq!(rootfs.path, root);
        assert_eq!(
            (rootfs.read_only, rootfs.fs_type),
            (false, FsType::Squashfs)
        );
        assert!(files.disks.is_empty(), "no vm_tools.img, no vm_tools disk");
        // An override also stands in for a component file that is missing.
        fs::remove_file(d.join(VM_KERNEL)).unwrap();
        assert!(resolve(&run_args(&[
            "--vm-path",
            s(d),
            "--kernel",
            s(d.join("k").as_path())
        ]))
        .is_ok());
    }

    #[test]
    fn resolve_bad_files_are_one_clear_line_each() {
        let dir = component_dir(true);
        let d = dir.path();
        let good = d.join("good.img");
        fs::write(&good, b"g").unwrap();
        let missing = d.join("missing.img");
        let empty = tempfile::tempdir().unwrap();
        let root = d.join(VM_ROOTFS);
        let link = d.join("link.img");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        let (m, e, g, r, l) = (s(&missing), s(empty.path()), s(&good), s(&root), s(&link));
        let ctr = d.join("ctr");
        fs::create_dir(&ctr).unwrap();
        let c = s(&ctr);
        let k = s(&good);
        let tools = format!("{}/vm_tools.img", s(d));
        let cases: Vec<(Vec<&str>, String)> = vec![
            (
                vec!["--kernel", m, "--initrd", g],
                format!("--kernel {m}: no such file"),
            ),
            (
                vec!["--kernel", g, "--initrd", m],
                format!("--initrd {m}: no such file"),
            ),
            (
                vec!["--kernel", k, "--initrd", e],
                format!("--initrd {e}: is a directory, not a file"),
            ),
            (
                vec!["--kernel", k, "--rootfs", m],
                format!("--rootfs {m}: no such file"),
            ),
            (
                vec!["--vm-path", s(d), "--disk", m],
                format!("--disk {m}: no such file"),
            ),
            (
                vec!["--vm-path", s(d), "--disk", e],
                format!("--disk {e}: is a directory, not a file"),
            ),
            (
                vec!["--vm-path", m],
                format!("--vm-path {m}: not a directory"),
            ),
            (
                vec!["--vm-path", e],
                format!(
                    "--vm-path {e}/vm_kernel: no such file in the component directory; give --kernel"
                ),
            ),
            (
                vec!["--vm-path", e, "--kernel", k],
                format!(
                    "--vm-path {e}/vm_rootfs.img: no such file in the component directory; give --rootfs"
                ),
            ),
            (
                vec!["--kernel", k, "--initrd", g, "--container", m],
                format!("--container {m}: No such file or directory (os error 2)"),
            ),
            (
                vec!["--vm-path", s(d), "--disk", l],
                format!("--disk {l} is the same file as --vm-path {r} ({r}); attach a file once"),
            ),
            (
                vec!["--kernel", k, "--rootfs", g, "--disk", g],
                format!("--disk {g} is the same file as --rootfs {g} ({g}); attach a file once"),
            ),
            (
                vec!["--kernel", k, "--initrd", g, "--disk", g, "--disk", l, "--disk", g],
                format!("--disk {g} is the same file as --disk {g} ({g}); attach a file once"),
            ),
            (
                vec!["--kernel", k, "--rootfs", r, "--container", l],
                format!("--container {l} is the same file as --rootfs {r} ({r}); attach a file once"),
            ),
            (
                vec!["--vm-path", s(d), "--disk", &tools],
                format!(
                    "--disk {}/vm_tools.img is the same file as --vm-path {}/vm_tools.img ({}/vm_tools.img); attach a file once",
                    s(d), s(d), s(d)
                ),
            ),
        ];
        for (a, want) in cases {
            let err = resolve(&run_args(&a)).unwrap_err().to_string();
            assert_eq!(err, want, "{a:?}");
        }
        // A container directory becomes a fresh image: never a duplicate, never checked here.
        assert!(resolve(&run_args(&["--vm-path", s(d), "--container", c])).is_ok());
    }

    #[test]
    fn resolve_process_backend_has_no_files() {
        let args = run_args(&["--hypervisor", "process", "--kernel", "/nonexistent"]);
        assert_eq!(resolve(&args), Ok(VmFiles::default()));
    }

    #[test]
    fn add_container_comes_right_after_the_root_disk() {
        let dir = component_dir(true);
        let args = run_args(&[
            "--vm-path",
            s(dir.path()),
            "--disk",
            s(&dir.path().join(VM_KERNEL)),
        ]);
        let mut files = resolve(&args).unwrap();
        files.add_container("/ctr.img".into(), false);
        let ids: Vec<&str> = files.disks.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, [disks::CONTAINER, disks::VM_TOOLS, "disk0"]);
        assert!(!files.disks[0].read_only);
    }
}
