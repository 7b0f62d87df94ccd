//! The QEMU (`qemu-system-x86_64`) command line (KVM or TCG: `accel` picks one).
//!
//! Keeping the token off `ps`: QEMU takes the kernel command line as `-append` only, but
//! `-append`, `-kernel` and `-initrd` are properties of the machine, and `-readconfig FILE`
//! with a `[machine]` group sets them. Verified on this host's QEMU 7.2: `append = "…"` in a
//! 0600 file given as `-readconfig` reaches the guest ("Command line: …" on the serial log)
//! while `/proc/PID/cmdline` holds only the file name; it merges with `-M q35,memory-backend=…`
//! from argv, and `-readconfig /dev/fd/N` works too. Limits of QEMU's config parser (measured):
//! a line is read into 1024 bytes and a value ends at the first `"`, so the command line must
//! hold no `"` and at most 1012 bytes (longer ones are cut and the rest parsed as a bogus
//! property); we allow [`READCONFIG_APPEND_MAX`]. The file can be removed once QEMU runs (it is
//! read during option parsing). The QMP socket can still read it back (`qom-get /machine
//! append`), so the control socket must live in the VM's private directory.
//!
//! Shares: `-fsdev local,security_model=none[,readonly=on]` plus a `virtio-9p-pci` device per
//! share. QEMU's local back-end resolves every guest path component by component with
//! `openat(…, O_NOFOLLOW)` under the shared directory (and `..` at its top stays there), so
//! neither `..` nor a symlink leads out of it: a symlink is only ever resolved by the guest,
//! inside the guest. `readonly=on` makes QEMU refuse every write (EROFS) whatever the guest
//! mounts. `none` (passthrough without failing on chown) keeps host files as they are: host
//! symlinks work in the guest, guest files get real modes on the host. Measured against
//! `mapped-xattr`, which keeps the guest's owners and modes in xattrs instead: there every
//! symlink made on the host reads as ELOOP in the guest (a source tree with links breaks),
//! and it needs user xattrs on the host filesystem (tmpfs only from Linux 6.6). The cost of
//! `none`, as with `docker run -v`: a read-write share gives the guest's root what QEMU's
//! user may do in that directory (chmod, set-uid bits when QEMU runs as root); `:ro` for
//! untrusted applications.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use vm_proto::disks::ROOTFS;

use super::{concat, HvCommand, Hypervisor, HypervisorError, PrivateFile, Stop, VmSpec};
use super::{Accel, Share, VsockBackend};

const NAME: &str = "qemu";
/// The longest command line we put in a `-readconfig` file (QEMU 7.2 reads up to 1012).
pub const READCONFIG_APPEND_MAX: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// PC with PCIe and ACPI: safe with any kernel, TCG or KVM.
    Q35,
    /// `microvm,acpi=off` with virtio-mmio devices (QEMU adds `virtio_mmio.device=` to the
    /// command line; the kernel needs VIRTIO_MMIO_CMDLINE_DEVICES). Under TCG a stock kernel
    /// may hang calibrating the TSC: put `tsc_early_khz=` on the command line. Disk probe
    /// order there follows QEMU's virtio-mmio slot assignment, not argv order (not measured
    /// here): guests find disks by serial, and `root=/dev/vda` may need `--params root=`.
    Microvm,
}

impl std::fmt::Display for Machine {
    /// The `-M` value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Machine::Q35 => "q35",
            Machine::Microvm => "microvm,acpi=off",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qemu {
    pub program: PathBuf,
    pub accel: Accel,
    pub machine: Machine,
    /// Pass the kernel command line in a 0600 `-readconfig` file instead of `-append`.
    pub hide_cmdline: bool,
}

impl Qemu {
    /// `qemu-system-x86_64` on q35, the command line hidden from `ps`.
    pub fn new(accel: Accel) -> Qemu {
        Qemu {
            program: "qemu-system-x86_64".into(),
            accel,
            machine: Machine::Q35,
            hide_cmdline: true,
        }
    }

    /// Where the hidden command line is written.
    pub fn readconfig_path(spec: &VmSpec) -> PathBuf {
        spec.private_dir.join(format!("{}.qemu.cfg", spec.name))
    }

    /// `pci` devices on q35, `device` (virtio-mmio) ones on microvm.
    fn device(&self, pci: &str) -> String {
        match self.machine {
            Machine::Q35 => pci.to_string(),
            Machine::Microvm => pci.replace("-pci", "-device"),
        }
    }

    fn cmdline_args(&self, spec: &VmSpec, cmd: &mut HvCommand) -> Result<(), HypervisorError> {
        let cmdline = spec.cmdline_with_root(true);
        if !self.hide_cmdline {
            cmd.pair("-append", cmdline);
            return Ok(());
        }
        let bad = |why: &str| HypervisorError::bad_spec(NAME, "cmdline", why);
        if cmdline.contains('"') {
            return Err(bad(
                "QEMU's -readconfig cannot carry '\"'; drop the quotes or set hide_cmdline = false",
            ));
        }
        if cmdline.len() > READCONFIG_APPEND_MAX {
            let why = format!(
                "{} bytes; QEMU's -readconfig takes at most {READCONFIG_APPEND_MAX}: shorten it",
                cmdline.len()
            );
            return Err(bad(&why));
        }
        let path = Self::readconfig_path(spec);
        cmd.pair("-readconfig", &path);
        cmd.private_files.push(PrivateFile {
            path,
            contents: format!(
                "# vm_launcher: the guest kernel command line (holds a secret)\n[machine]\nappend = \"{cmdline}\"\n"
            ),
        });
        Ok(())
    }

    /// One virtio-9p share: the fsdev (the host directory) and its device with the mount tag.
    fn share_args(&self, share: &Share, cmd: &mut HvCommand) {
        let ro = if share.read_only { ",readonly=on" } else { "" };
        let id = format!("fs-{}", share.tag);
        let fsdev = format!(",security_model=none{ro}");
        cmd.pair(
            "-fsdev",
            concat(
                &format!("local,id={id},path="),
                &escape(&share.path),
                &fsdev,
            ),
        );
        let device = self.device("virtio-9p-pci");
        cmd.pair(
            "-device",
            format!("{device},fsdev={id},mount_tag={}", share.tag),
        );
    }

    /// One virtio-blk disk whose serial is its identity: `-drive if=none` plus a device (PCI
    /// on q35, virtio-mmio on microvm). On q35 the devices take PCI slots in argv order, so
    /// the first disk given is `/dev/vda`.
    fn disk_args(&self, id: &str, path: &Path, read_only: bool, cmd: &mut HvCommand) {
        let ro = if read_only { ",readonly=on" } else { "" };
        let drive = format!(",if=none,id=blk-{id},format=raw{ro}");
        cmd.pair("-drive", concat("file=", &escape(path), &drive));
        let device = self.device("virtio-blk-pci");
        cmd.pair("-device", format!("{device},drive=blk-{id},serial={id}"));
    }
}

/// QEMU option values escape a comma by doubling it.
fn escape(path: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &byte in path.as_os_str().as_bytes() {
        out.push(byte);
        if byte == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

impl Hypervisor for Qemu {
    fn command(&self, spec: &VmSpec) -> Result<HvCommand, HypervisorError> {
        spec.check(NAME)?;
        let mut cmd = HvCommand::new(&self.program);
        let vhost_user = matches!(spec.vsock, VsockBackend::VhostUser { .. });
        let mut machine = self.machine.to_string();
        if vhost_user {
            // vhost-user needs guest memory the back-end can map: a shared memfd.
            machine.push_str(",memory-backend=mem");
        }
        cmd.pair("-M", machine)
            .pair("-accel", self.accel.to_string());
        if self.accel == Accel::Kvm {
            cmd.pair("-cpu", "host");
        }
        cmd.pair("-m", format!("{}M", spec.mem_mib));
        cmd.pair("-smp", spec.cpus.to_string());
        // Never -nographic: with -serial stdio it fails ("cannot use stdio by multiple
        // character devices").
        cmd.arg("-nodefaults")
            .arg("-no-reboot")
            .pair("-display", "none");
        // The serial console on stdout: the launcher reads it from a pipe.
        cmd.pair("-serial", "stdio");
        let qmp = escape(&spec.control_socket);
        cmd.pair("-qmp", concat("unix:", &qmp, ",server=on,wait=off"));
        cmd.pair("-kernel", &spec.kernel);
        if let Some(initrd) = &spec.initrd {
            cmd.pair("-initrd", initrd);
        }
        self.cmdline_args(spec, &mut cmd)?;
        if let Some(root) = &spec.rootfs {
            self.disk_args(ROOTFS, &root.path, root.read_only, &mut cmd);
        }
        for disk in &spec.disks {
            self.disk_args(&disk.id, &disk.path, disk.read_only, &mut cmd);
        }
        for share in &spec.shares {
            self.share_args(share, &mut cmd);
        }
        match &spec.vsock {
            VsockBackend::Vhost { cid } => {
                let device = self.device("vhost-vsock-pci");
                cmd.pair("-device", format!("{device},guest-cid={cid}"));
            }
            VsockBackend::VhostUser { socket } => {
                // The back-end size must equal -m.
                let mem = format!(
                    "memory-backend-memfd,id=mem,size={}M,share=on",
                    spec.mem_mib
                );
                cmd.pair("-object", mem);
                let path = escape(socket);
                cmd.pair("-chardev", concat("socket,id=vsock0,path=", &path, ""));
                let device = self.device("vhost-user-vsock-pci");
                cmd.pair("-device", format!("{device},chardev=vsock0"));
            }
        }
        // Entropy for the guest: without it getrandom(2) blocks until the guest's crng is
        // seeded (measured: ~1 s after init starts under TCG), and gRPC waits on it.
        cmd.pair("-device", self.device("virtio-rng-pci"));
        if let Some(net) = &spec.net {
            if net.tap.contains(',') {
                return Err(HypervisorError::bad_spec(
                    NAME,
                    "net tap",
                    "tap names hold no commas",
                ));
            }
            let tap = format!("tap,id=net0,ifname={},script=no,downscript=no", net.tap);
            cmd.pair("-netdev", tap);
            let device = self.device("virtio-net-pci");
            cmd.pair("-device", format!("{device},netdev=net0,mac={}", net.mac));
        }
        Ok(cmd)
    }

    fn stop(&self, spec: &VmSpec) -> Stop {
        Stop::QmpQuit {
            socket: spec.control_socket.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_utils::*;
    use super::super::FsType;
    use super::*;

    fn args(qemu: &Qemu, spec: &VmSpec) -> Vec<String> {
        qemu.command(spec).unwrap().args_lossy()
    }

    #[test]
    fn command_q35_tcg_full_spec_sets_every_field() {
        let spec = full_spec();
        let cmd = Qemu::new(Accel::Tcg).command(&spec).unwrap();
        let a = cmd.args_lossy();
        assert_eq!(cmd.program, "qemu-system-x86_64");
        assert_eq!(value_of(&a, "-M"), Some("q35"));
        assert_eq!(value_of(&a, "-accel"), Some("tcg"));
        assert_eq!(value_of(&a, "-cpu"), None);
        assert_eq!(value_of(&a, "-m"), Some("512M"));
        assert_eq!(value_of(&a, "-smp"), Some("2"));
        for flag in ["-nodefaults", "-no-reboot"] {
            assert!(a.iter().any(|x| x == flag), "{flag}");
        }
        assert!(!a.iter().any(|x| x == "-nographic" || x == "-append"));
        assert_eq!(value_of(&a, "-display"), Some("none"));
        assert_eq!(value_of(&a, "-serial"), Some("stdio"));
        let qmp = "unix:/run/vm/vm-1/control.sock,server=on,wait=off";
        assert_eq!(value_of(&a, "-qmp"), Some(qmp));
        assert_eq!(value_of(&a, "-kernel"), Some("/k/bzImage"));
        assert_eq!(value_of(&a, "-initrd"), Some("/k/initrd.cpio"));
        assert_eq!(
            value_of(&a, "-readconfig"),
            Some("/run/vm/vm-1/vm-1.qemu.cfg")
        );
        let drives = [
            "file=/img/root.raw,if=none,id=blk-rootfs,format=raw,readonly=on",
            "file=/img/ctr.raw,if=none,id=blk-container,format=raw,readonly=on",
            "file=/img/data.raw,if=none,id=blk-disk0,format=raw",
        ];
        assert_eq!(values_of(&a, "-drive"), drives);
        let tap = "tap,id=net0,ifname=vmtap5,script=no,downscript=no";
        assert_eq!(value_of(&a, "-netdev"), Some(tap));
        let fsdev = "local,id=fs-vmvol0,path=/h/src,security_model=none";
        assert_eq!(values_of(&a, "-fsdev"), [fsdev]);
        let nic = "virtio-net-pci,netdev=net0,mac=02:00:5e:10:00:01";
        assert_eq!(
            values_of(&a, "-device"),
            [
                "virtio-blk-pci,drive=blk-rootfs,serial=rootfs",
                "virtio-blk-pci,drive=blk-container,serial=container",
                "virtio-blk-pci,drive=blk-disk0,serial=disk0",
                "virtio-9p-pci,fsdev=fs-vmvol0,mount_tag=vmvol0",
                "vhost-vsock-pci,guest-cid=5",
                "virtio-rng-pci",
                nic
            ]
        );
        assert_eq!(value_of(&a, "-object"), None);
    }

    #[test]
    fn command_read_only_share_is_refused_by_qemu_itself() {
        let mut spec = full_spec();
        spec.shares.push(ro_share());
        spec.shares[0].path = "/h/a,b".into();
        let a = args(&Qemu::new(Accel::Tcg), &spec);
        assert_eq!(
            values_of(&a, "-fsdev"),
            [
                "local,id=fs-vmvol0,path=/h/a,,b,security_model=none",
                "local,id=fs-vmvol1,path=/h/data,security_model=none,readonly=on",
            ]
        );
        let devices = values_of(&a, "-device");
        assert!(devices.contains(&"virtio-9p-pci,fsdev=fs-vmvol1,mount_tag=vmvol1"));
        let microvm = Qemu {
            machine: Machine::Microvm,
            ..Qemu::new(Accel::Tcg)
        };
        let a = args(&microvm, &spec);
        let devices = values_of(&a, "-device");
        assert!(devices.contains(&"virtio-9p-device,fsdev=fs-vmvol0,mount_tag=vmvol0"));
    }

    #[test]
    fn command_kvm_uses_host_cpu() {
        let a = args(&Qemu::new(Accel::Kvm), &full_spec());
        assert_eq!(value_of(&a, "-accel"), Some("kvm"));
        assert_eq!(value_of(&a, "-cpu"), Some("host"));
    }

    #[test]
    fn command_vhost_user_shares_memory_of_the_same_size() {
        let mut spec = full_spec();
        spec.vsock = VsockBackend::VhostUser {
            socket: "/run/vm/vm-1/vhost.sock".into(),
        };
        let a = args(&Qemu::new(Accel::Tcg), &spec);
        assert_eq!(value_of(&a, "-M"), Some("q35,memory-backend=mem"));
        let mem = "memory-backend-memfd,id=mem,size=512M,share=on";
        assert_eq!(value_of(&a, "-object"), Some(mem));
        assert_eq!(value_of(&a, "-m"), Some("512M"));
        let chardev = "socket,id=vsock0,path=/run/vm/vm-1/vhost.sock";
        assert_eq!(value_of(&a, "-chardev"), Some(chardev));
        assert_eq!(
            values_of(&a, "-device")[4],
            "vhost-user-vsock-pci,chardev=vsock0"
        );
        assert!(!a.iter().any(|x| x.contains("guest-cid")));
    }

    #[test]
    fn command_bare_spec_has_no_optional_devices() {
        let a = args(&Qemu::new(Accel::Tcg), &bare_spec());
        for flag in ["-drive", "-netdev", "-fsdev"] {
            assert_eq!(value_of(&a, flag), None, "{flag}");
        }
        assert_eq!(value_of(&a, "-serial"), Some("stdio"));
        assert_eq!(
            values_of(&a, "-device"),
            ["vhost-vsock-pci,guest-cid=5", "virtio-rng-pci"]
        );
    }

    #[test]
    fn command_readconfig_keeps_token_off_argv() {
        let spec = full_spec();
        let cmd = Qemu::new(Accel::Tcg).command(&spec).unwrap();
        assert!(cmd.args_lossy().iter().all(|a| !a.contains(&token_hex())));
        assert_eq!(cmd.private_files.len(), 1);
        let file = &cmd.private_files[0];
        assert_eq!(file.path, Qemu::readconfig_path(&spec));
        let line = format!(
            "\n[machine]\nappend = \"root=/dev/vda ro rootwait {}\"\n",
            spec.cmdline
        );
        assert!(file.contents.contains(&line), "{}", file.contents);
        assert!(file.contents.contains(&token_hex()));
    }

    #[test]
    fn command_not_hidden_uses_append() {
        let qemu = Qemu {
            hide_cmdline: false,
            ..Qemu::new(Accel::Tcg)
        };
        let spec = full_spec();
        let cmd = qemu.command(&spec).unwrap();
        let append = format!("root=/dev/vda ro rootwait {}", spec.cmdline);
        assert_eq!(
            value_of(&cmd.args_lossy(), "-append"),
            Some(append.as_str())
        );
        assert!(cmd.private_files.is_empty());
    }

    #[test]
    fn command_root_params_follow_the_rootfs() {
        let qemu = Qemu {
            hide_cmdline: false,
            ..Qemu::new(Accel::Tcg)
        };
        let mut spec = full_spec();
        spec.initrd = None;
        let root = spec.rootfs.as_mut().unwrap();
        root.read_only = false;
        root.fs_type = FsType::Squashfs;
        let a = args(&qemu, &spec);
        let append = format!(
            "root=/dev/vda rw rootwait rootfstype=squashfs {}",
            spec.cmdline
        );
        assert_eq!(value_of(&a, "-append"), Some(append.as_str()));
        assert_eq!(value_of(&a, "-initrd"), None);
        let drive = "file=/img/root.raw,if=none,id=blk-rootfs,format=raw";
        assert_eq!(value_of(&a, "-drive"), Some(drive));

        spec.rootfs = None;
        let a = args(&qemu, &bare_spec());
        assert_eq!(value_of(&a, "-append"), Some(bare_spec().cmdline.as_str()));
    }

    #[test]
    fn command_without_initrd_or_rootfs_is_refused() {
        let mut spec = bare_spec();
        spec.initrd = None;
        let err = Qemu::new(Accel::Tcg)
            .command(&spec)
            .unwrap_err()
            .to_string();
        assert!(err.contains("initrd or a root disk"), "{err}");
    }

    #[test]
    fn command_readconfig_refuses_quotes_and_long_lines() {
        let qemu = Qemu::new(Accel::Tcg);
        let mut spec = full_spec();
        spec.cmdline.push_str(" x=\"a b\"");
        let err = qemu.command(&spec).unwrap_err().to_string();
        assert!(
            err.contains("cmdline") && err.contains("readconfig"),
            "{err}"
        );
        spec.cmdline = "x".repeat(READCONFIG_APPEND_MAX + 1);
        let err = qemu.command(&spec).unwrap_err().to_string();
        assert!(err.contains("1027 bytes"), "{err}");
        // The root disk's parameters count too.
        let root = "root=/dev/vda ro rootwait ".len();
        spec.cmdline = "x".repeat(READCONFIG_APPEND_MAX - root);
        assert!(qemu.command(&spec).is_ok());
        spec.cmdline.push('x');
        assert!(qemu.command(&spec).is_err());
    }

    #[test]
    fn command_microvm_uses_mmio_devices() {
        let qemu = Qemu {
            machine: Machine::Microvm,
            ..Qemu::new(Accel::Tcg)
        };
        let a = args(&qemu, &full_spec());
        assert_eq!(value_of(&a, "-M"), Some("microvm,acpi=off"));
        let drive = "file=/img/root.raw,if=none,id=blk-rootfs,format=raw,readonly=on";
        assert_eq!(value_of(&a, "-drive"), Some(drive));
        let nic = "virtio-net-device,netdev=net0,mac=02:00:5e:10:00:01";
        let devices = [
            "virtio-blk-device,drive=blk-rootfs,serial=rootfs",
            "virtio-blk-device,drive=blk-container,serial=container",
            "virtio-blk-device,drive=blk-disk0,serial=disk0",
            "virtio-9p-device,fsdev=fs-vmvol0,mount_tag=vmvol0",
            "vhost-vsock-device,guest-cid=5",
            "virtio-rng-device",
            nic,
        ];
        assert_eq!(values_of(&a, "-device"), devices);
    }

    #[test]
    fn command_doubles_commas_in_paths() {
        let mut spec = full_spec();
        spec.rootfs.as_mut().unwrap().path = "/img/a,b.raw".into();
        spec.disks[1].path = "/img/c,d.raw".into();
        let a = args(&Qemu::new(Accel::Tcg), &spec);
        let drives = values_of(&a, "-drive");
        assert_eq!(
            drives[0],
            "file=/img/a,,b.raw,if=none,id=blk-rootfs,format=raw,readonly=on"
        );
        assert_eq!(
            drives[2],
            "file=/img/c,,d.raw,if=none,id=blk-disk0,format=raw"
        );
    }

    #[test]
    fn stop_is_qmp_quit_on_the_control_socket() {
        let spec = full_spec();
        let socket = spec.control_socket.clone();
        assert_eq!(Qemu::new(Accel::Tcg).stop(&spec), Stop::QmpQuit { socket });
    }
}
