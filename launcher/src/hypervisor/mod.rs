//! Hypervisor command lines: one [`VmSpec`] and one [`Hypervisor`] trait shared by every
//! back-end, one module per back-end (`qemu`, `crosvm`, `lkvm`); `accel` picks QEMU's KVM or TCG.
//!
//! Everything here is a pure function from a spec to an inspectable [`HvCommand`] (program,
//! argv, private files to write first): nothing starts a hypervisor, so every
//! argument is unit-tested. The guest kernel command line carries the VM's secret token:
//! `Debug`/`Display` of these types redact it, and QEMU can keep it off `ps` altogether (see
//! `qemu`). crosvm and kvmtool take it on argv only.
//!
//! Disks: the root disk is attached first, so it is `/dev/vda` on every back-end, then
//! [`VmSpec::disks`] in their order (container, vm_tools, disk0…disk9). Each disk carries its
//! identity from `vm_proto::disks` as a virtio-blk serial where the back-end can set one
//! (QEMU `serial=`, crosvm `id=`); kvmtool cannot, so its guests see probe order only.
//!
//! Shares (`--volume`): host directories over virtio-9p, one device per [`Share`], found in
//! the guest by its mount tag (`vm_proto::volumes`). QEMU enforces a read-only share itself
//! (`readonly=on`); crosvm's `--shared-dir` and kvmtool's `--9p` have no read-only mode, so
//! they refuse one rather than leave it to the guest's mount flag.

pub mod accel;
pub mod crosvm;
pub mod lkvm;
pub mod qemu;
#[cfg(test)]
mod test_utils;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use accel::Accel;
pub use crosvm::{Crosvm, CrosvmFlags};
pub use lkvm::Lkvm;
pub use qemu::{Machine, Qemu};

use crate::pool::MacAddr;

/// How the guest's virtio-vsock device is backed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VsockBackend {
    /// The host kernel's /dev/vhost-vsock; the hypervisor sets the guest CID.
    Vhost { cid: u32 },
    /// A vhost-user back-end (vhost-device-vsock) listening on `socket`; the CID is set there.
    VhostUser { socket: PathBuf },
}

/// A virtio-net device on an existing host tap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    pub tap: String,
    pub mac: MacAddr,
    /// The host (gateway) end of the VM's /30.
    pub host_ip: Ipv4Addr,
    pub netmask: Ipv4Addr,
}

/// What the root disk holds, as far as the kernel's `rootfstype=` needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsType {
    /// ext2/3/4 (the magic 0xEF53 at byte 1080): the kernel's default guess, no `rootfstype=`.
    Ext4,
    /// squashfs (`hsqs` at byte 0), as Termina's rootfs.
    Squashfs,
    /// Anything else: no `rootfstype=`, the kernel tries every filesystem it has.
    Unknown,
}

impl FsType {
    /// The `rootfstype=` value this type needs, if any.
    pub fn rootfstype(self) -> Option<&'static str> {
        match self {
            FsType::Squashfs => Some("squashfs"),
            FsType::Ext4 | FsType::Unknown => None,
        }
    }
}

/// The root filesystem disk: attached first (`/dev/vda`), serial `vm_proto::disks::ROOTFS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rootfs {
    /// A raw disk image.
    pub path: PathBuf,
    pub read_only: bool,
    pub fs_type: FsType,
}

/// A disk besides the root one, named by its identity (see `vm_proto::disks`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// The virtio-blk serial: `container`, `vm_tools`, `disk0`…
    pub id: String,
    /// A raw disk image.
    pub path: PathBuf,
    pub read_only: bool,
}

/// A host directory shared with the guest over virtio-9p (`--volume`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// The 9p mount tag the guest mounts it by (`vm_proto::volumes::tag`).
    pub tag: String,
    /// A directory (canonical).
    pub path: PathBuf,
    /// Refused by the host side: writes fail with EROFS whatever the guest mounts.
    pub read_only: bool,
}

/// The root disk's device: it is always attached first.
pub const ROOT_DEVICE: &str = "/dev/vda";

/// Everything a back-end needs to build one VM's command line.
#[derive(Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The VM id (kvmtool's `--name`; names the private files).
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub rootfs: Option<Rootfs>,
    /// Further disks, attached after the root disk in this order.
    pub disks: Vec<Disk>,
    /// Host directories shared over virtio-9p.
    pub shares: Vec<Share>,
    pub mem_mib: u32,
    pub cpus: u32,
    /// The guest kernel command line without the root disk's parameters (each back-end adds
    /// those, see [`VmSpec::cmdline_with_root`]). Holds the secret token.
    pub cmdline: String,
    /// QEMU's QMP socket or crosvm's control socket (kvmtool picks its own from `name`).
    pub control_socket: PathBuf,
    pub vsock: VsockBackend,
    pub net: Option<NetSpec>,
    /// A 0700 directory of this VM's own, for files that must not be world-readable.
    pub private_dir: PathBuf,
}

impl fmt::Debug for VmSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmSpec")
            .field("name", &self.name)
            .field("kernel", &self.kernel)
            .field("initrd", &self.initrd)
            .field("rootfs", &self.rootfs)
            .field("disks", &self.disks)
            .field("shares", &self.shares)
            .field("mem_mib", &self.mem_mib)
            .field("cpus", &self.cpus)
            .field("cmdline", &redact(&self.cmdline))
            .field("control_socket", &self.control_socket)
            .field("vsock", &self.vsock)
            .field("net", &self.net)
            .field("private_dir", &self.private_dir)
            .finish()
    }
}

impl VmSpec {
    /// The checks every back-end needs.
    fn check(&self, hypervisor: &'static str) -> Result<(), HypervisorError> {
        let bad = |field, why: &str| HypervisorError::bad_spec(hypervisor, field, why);
        if self.mem_mib == 0 {
            return Err(bad("mem_mib", "the VM needs some memory"));
        }
        if self.cpus == 0 {
            return Err(bad("cpus", "the VM needs at least one vCPU"));
        }
        if let VsockBackend::Vhost { cid } = self.vsock {
            if cid < 3 || cid == u32::MAX {
                return Err(bad("vsock cid", "CIDs 0-2 and 4294967295 are reserved"));
            }
        }
        if self.cmdline.contains(['\n', '\0']) {
            return Err(bad("cmdline", "the kernel command line is one line"));
        }
        if self.initrd.is_none() && self.rootfs.is_none() {
            return Err(bad("rootfs", "the guest needs an initrd or a root disk"));
        }
        let mut seen = vec![vm_proto::disks::ROOTFS];
        for disk in &self.disks {
            let source = format!("{}{}", vm_proto::disks::SOURCE_PREFIX, disk.id);
            if vm_proto::disks::identity(&source).is_none() {
                let why = format!("{:?}: use 1 to 20 of A-Z a-z 0-9 _ -", disk.id);
                return Err(HypervisorError::BadSpec {
                    hypervisor,
                    field: "disk id",
                    why,
                });
            }
            if seen.contains(&disk.id.as_str()) {
                let why = format!("{:?} names two disks", disk.id);
                return Err(HypervisorError::BadSpec {
                    hypervisor,
                    field: "disk id",
                    why,
                });
            }
            seen.push(&disk.id);
        }
        self.check_shares(hypervisor)
    }

    /// Share tags are valid and distinct; each share is a path without NUL.
    fn check_shares(&self, hypervisor: &'static str) -> Result<(), HypervisorError> {
        let bad = |field, why: String| HypervisorError::BadSpec {
            hypervisor,
            field,
            why,
        };
        for (i, share) in self.shares.iter().enumerate() {
            let tag_ok = vm_proto::volumes::valid_tag(&share.tag);
            if !tag_ok {
                let why = format!("{:?}: use 1 to 31 of A-Z a-z 0-9 _ -", share.tag);
                return Err(bad("share tag", why));
            }
            if self.shares[..i].iter().any(|s| s.tag == share.tag) {
                return Err(bad(
                    "share tag",
                    format!("{:?} names two shares", share.tag),
                ));
            }
            if share.path.as_os_str().as_bytes().contains(&0) {
                return Err(bad("share", format!("{:?} holds a NUL", share.path)));
            }
        }
        Ok(())
    }

    /// Refuses read-only shares on a back-end that cannot enforce them on the host side.
    fn no_read_only_shares(&self, hypervisor: &'static str) -> Result<(), HypervisorError> {
        if self.shares.iter().any(|s| s.read_only) {
            return Err(HypervisorError::Unsupported {
                hypervisor,
                feature: "read-only volumes (its 9p device has no read-only mode, and a guest mount flag alone is no protection)",
                hint: "use --hypervisor qemu or a read-write volume",
            });
        }
        Ok(())
    }

    /// The kernel command line with the root disk's parameters in front (so `--params` can
    /// still override them): `root=/dev/vda ro|rw` when `name_root` (crosvm's `root=true`
    /// writes those itself), then `rootwait` and `rootfstype=` when the image is not ext4.
    pub fn cmdline_with_root(&self, name_root: bool) -> String {
        let Some(root) = &self.rootfs else {
            return self.cmdline.clone();
        };
        let mut words = Vec::new();
        if name_root {
            words.push(format!("root={ROOT_DEVICE}"));
            words.push(if root.read_only { "ro" } else { "rw" }.to_string());
        }
        words.push("rootwait".to_string());
        if let Some(fs) = root.fs_type.rootfstype() {
            words.push(format!("rootfstype={fs}"));
        }
        words.push(self.cmdline.clone());
        words.join(" ")
    }
}

/// A file the command reads at start-up; written with mode 0600 (it may hold the token).
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateFile {
    pub path: PathBuf,
    pub contents: String,
}

impl fmt::Debug for PrivateFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PrivateFile({}, {})",
            self.path.display(),
            redact(&self.contents)
        )
    }
}

/// A hypervisor invocation, inspectable before it runs.
#[derive(Clone, PartialEq, Eq)]
pub struct HvCommand {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Write these (see [`HvCommand::write_private_files`]) before spawning.
    pub private_files: Vec<PrivateFile>,
}

impl HvCommand {
    fn new(program: impl Into<OsString>) -> HvCommand {
        HvCommand {
            program: program.into(),
            args: Vec::new(),
            private_files: Vec::new(),
        }
    }

    fn arg(&mut self, arg: impl Into<OsString>) -> &mut HvCommand {
        self.args.push(arg.into());
        self
    }

    fn pair(&mut self, flag: &str, value: impl Into<OsString>) -> &mut HvCommand {
        self.arg(flag).arg(value)
    }

    /// The arguments as text (lossy), e.g. for tests.
    pub fn args_lossy(&self) -> Vec<String> {
        self.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// Writes the private files, each created afresh with mode 0600.
    pub fn write_private_files(&self) -> Result<(), HypervisorError> {
        for file in &self.private_files {
            let fail = |source| HypervisorError::PrivateFile {
                path: file.path.clone(),
                source,
            };
            match fs::remove_file(&file.path) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(fail(err)),
                _ => {}
            }
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&file.path)
                .and_then(|mut out| out.write_all(file.contents.as_bytes()))
                .map_err(fail)?;
        }
        Ok(())
    }

    /// Removes the private files (once the hypervisor has read them, or on failure).
    pub fn remove_private_files(&self) {
        for file in &self.private_files {
            let _ = fs::remove_file(&file.path);
        }
    }

    /// A `std::process::Command` for this invocation; its stdio is the caller's.
    pub fn to_command(&self) -> std::process::Command {
        let mut command = std::process::Command::new(&self.program);
        command.args(&self.args);
        command
    }
}

/// The program and its arguments, shell-like, with the token redacted.
impl fmt::Display for HvCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.program.to_string_lossy())?;
        for arg in &self.args {
            write!(f, " {:?}", redact(&arg.to_string_lossy()))?;
        }
        Ok(())
    }
}

impl fmt::Debug for HvCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HvCommand({self}, files: {:?})", self.private_files)
    }
}

/// How to ask a running VM to stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Run this command.
    Command(HvCommand),
    /// Connect to this QMP socket, send `{"execute":"qmp_capabilities"}`, then
    /// `{"execute":"quit"}`.
    QmpQuit { socket: PathBuf },
}

pub trait Hypervisor {
    /// The command that starts the VM described by `spec`.
    fn command(&self, spec: &VmSpec) -> Result<HvCommand, HypervisorError>;
    /// How to stop it again.
    fn stop(&self, spec: &VmSpec) -> Stop;
}

#[derive(Debug)]
pub enum HypervisorError {
    BadSpec {
        hypervisor: &'static str,
        field: &'static str,
        why: String,
    },
    Unsupported {
        hypervisor: &'static str,
        feature: &'static str,
        hint: &'static str,
    },
    PrivateFile {
        path: PathBuf,
        source: io::Error,
    },
}

impl HypervisorError {
    fn bad_spec(hypervisor: &'static str, field: &'static str, why: &str) -> HypervisorError {
        let why = why.to_string();
        HypervisorError::BadSpec {
            hypervisor,
            field,
            why,
        }
    }
}

impl fmt::Display for HypervisorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadSpec { hypervisor, field, why } => {
                write!(f, "cannot build the {hypervisor} command line: {field}: {why}")
            }
            Self::Unsupported { hypervisor, feature, hint } => {
                write!(f, "{hypervisor} does not support {feature}; {hint}")
            }
            Self::PrivateFile { path, source } => write!(
                f,
                "cannot write the private hypervisor file {}: {source}; is the VM's private directory writable?",
                path.display()
            ),
        }
    }
}

impl std::error::Error for HypervisorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::PrivateFile { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The token hidden (`vm_proto::redact`, the one rule every program uses).
pub fn redact(text: &str) -> String {
    vm_proto::redact::redact_token(text)
}

/// `prefix` + `path` + `suffix` as one argument, without a UTF-8 round trip.
fn concat(prefix: &str, path: &OsStr, suffix: &str) -> OsString {
    let mut arg = OsString::from(prefix);
    arg.push(path);
    arg.push(suffix);
    arg
}

/// Refuses a path that a `key=value,key=value` option would split.
fn no_comma<'a>(
    hypervisor: &'static str,
    field: &'static str,
    path: &'a Path,
) -> Result<&'a OsStr, HypervisorError> {
    no_separator(hypervisor, field, path, b',')
}

/// Refuses a path holding `separator`, which the option syntax would split on.
fn no_separator<'a>(
    hypervisor: &'static str,
    field: &'static str,
    path: &'a Path,
    separator: u8,
) -> Result<&'a OsStr, HypervisorError> {
    if path.as_os_str().as_bytes().contains(&separator) {
        let why = format!(
            "{:?} holds a '{}', which this option syntax cannot carry; rename it",
            path, separator as char
        );
        return Err(HypervisorError::BadSpec {
            hypervisor,
            field,
            why,
        });
    }
    Ok(path.as_os_str())
}

#[cfg(test)]
mod tests;
