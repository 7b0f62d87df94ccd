//! The crosvm command line (`crosvm run …`, `crosvm stop SOCKET`).
//!
//! Flags follow crosvm's `src/crosvm/cmdline.rs` (the `RunCommand` argh struct, checked in
//! 2023–24 sources): `--cpus num-cores=N`, `--mem size=MIB`, `--vsock cid=CID`,
//! `--block path=P,root=true,ro=B`, `--net tap-name=T,mac=M`, `--serial type=…`, `--params`,
//! `--initrd`, `--socket`, the kernel last. Every disk's identity is its `id=` (crosvm's
//! DiskOption: "the block device identifier … up to 20 characters", the virtio-blk serial),
//! in both flag sets; the root disk keeps crosvm's own `root=true` (`--root` when legacy),
//! which puts `root=/dev/vdX ro|rw` on the command line itself. [`CrosvmFlags::Legacy`] gives the older, now
//! deprecated spellings (`--cpus N`, `--mem N`, `--cid`, `--root`/`--rwroot` and
//! `--disk`/`--rwdisk` with `PATH,id=ID`, `--tap-name`;
//! with `--tap-name` old crosvm takes the MAC from the tap itself, and it accepted `--mac` only
//! together with `--host-ip`/`--netmask`, where it creates the tap, so no MAC is passed).
//! vhost-user vsock is `--vhost-user-vsock SOCKET` in both (newest crosvm also has the generic
//! `--vhost-user type=vsock,socket=…`). crosvm needs KVM: it has no TCG.
//!
//! Shares are `--shared-dir PATH:TAG:type=p9` (crosvm's p9 server; a `:` in the path cannot
//! be carried). It has no read-only mode, so a read-only share is refused.
//!
//! The token is on argv (`--params`): crosvm's `--cfg FILE.json` (`{"params": [...]}`) could
//! hide it, but needs the experimental `config-file` build feature, so it is not used here.

use std::path::{Path, PathBuf};

use vm_proto::disks::ROOTFS;

use super::VsockBackend;
use super::{concat, no_comma, no_separator, HvCommand, Hypervisor, HypervisorError, Stop, VmSpec};

const NAME: &str = "crosvm";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrosvmFlags {
    /// Key-value flags of current crosvm.
    Current,
    /// The deprecated single-value flags of older releases.
    Legacy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crosvm {
    pub program: PathBuf,
    pub flags: CrosvmFlags,
}

impl Crosvm {
    pub fn new(flags: CrosvmFlags) -> Crosvm {
        Crosvm {
            program: "crosvm".into(),
            flags,
        }
    }
}

impl Crosvm {
    /// One virtio-blk disk with `id` as its serial; crosvm numbers disks in argv order.
    fn disk_args(
        &self,
        id: &str,
        path: &Path,
        read_only: bool,
        root: bool,
        cmd: &mut HvCommand,
    ) -> Result<(), HypervisorError> {
        let field = if root { "rootfs" } else { "disk" };
        let path = no_comma(NAME, field, path)?;
        let id_opt = format!(",id={id}");
        if self.flags == CrosvmFlags::Legacy {
            let flag = match (root, read_only) {
                (true, true) => "--root",
                (true, false) => "--rwroot",
                (false, true) => "--disk",
                (false, false) => "--rwdisk",
            };
            cmd.pair(flag, concat("", path, &id_opt));
        } else {
            let root = if root { ",root=true" } else { "" };
            let opts = format!("{root},ro={read_only}{id_opt}");
            cmd.pair("--block", concat("path=", path, &opts));
        }
        Ok(())
    }
}

impl Hypervisor for Crosvm {
    fn command(&self, spec: &VmSpec) -> Result<HvCommand, HypervisorError> {
        spec.check(NAME)?;
        spec.no_read_only_shares(NAME)?;
        let legacy = self.flags == CrosvmFlags::Legacy;
        let mut cmd = HvCommand::new(&self.program);
        cmd.arg("run");
        let (cpus, mem) = (spec.cpus, spec.mem_mib);
        match legacy {
            true => cmd
                .pair("--cpus", cpus.to_string())
                .pair("--mem", mem.to_string()),
            false => cmd
                .pair("--cpus", format!("num-cores={cpus}"))
                .pair("--mem", format!("size={mem}")),
        };
        match &spec.vsock {
            VsockBackend::Vhost { cid } if legacy => cmd.pair("--cid", cid.to_string()),
            VsockBackend::Vhost { cid } => cmd.pair("--vsock", format!("cid={cid}")),
            VsockBackend::VhostUser { socket } => cmd.pair("--vhost-user-vsock", socket),
        };
        cmd.pair("--params", spec.cmdline_with_root(false));
        if let Some(initrd) = &spec.initrd {
            cmd.pair("--initrd", initrd);
        }
        if let Some(root) = &spec.rootfs {
            self.disk_args(ROOTFS, &root.path, root.read_only, true, &mut cmd)?;
        }
        for disk in &spec.disks {
            self.disk_args(&disk.id, &disk.path, disk.read_only, false, &mut cmd)?;
        }
        for share in &spec.shares {
            let path = no_separator(NAME, "share", &share.path, b':')?;
            let opts = format!(":{}:type=p9", share.tag);
            cmd.pair("--shared-dir", concat("", path, &opts));
        }
        if let Some(net) = &spec.net {
            if net.tap.contains(',') {
                return Err(HypervisorError::bad_spec(
                    NAME,
                    "net tap",
                    "tap names hold no commas",
                ));
            }
            match legacy {
                true => cmd.pair("--tap-name", net.tap.as_str()),
                false => cmd.pair("--net", format!("tap-name={},mac={}", net.tap, net.mac)),
            };
        }
        // The serial console on stdout: the launcher reads it from a pipe.
        cmd.pair("--serial", "type=stdout,num=1,console=true,stdin=true");
        cmd.pair("--socket", &spec.control_socket);
        cmd.arg(&spec.kernel);
        Ok(cmd)
    }

    fn stop(&self, spec: &VmSpec) -> Stop {
        let mut cmd = HvCommand::new(&self.program);
        cmd.arg("stop").arg(&spec.control_socket);
        Stop::Command(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_utils::*;
    use super::super::{FsType, Rootfs};
    use super::*;

    fn args(flags: CrosvmFlags, spec: &VmSpec) -> Vec<String> {
        Crosvm::new(flags).command(spec).unwrap().args_lossy()
    }

    #[test]
    fn command_current_full_spec_sets_every_field() {
        let spec = full_spec();
        let a = args(CrosvmFlags::Current, &spec);
        assert_eq!(a[0], "run");
        assert_eq!(value_of(&a, "--cpus"), Some("num-cores=2"));
        assert_eq!(value_of(&a, "--mem"), Some("size=512"));
        assert_eq!(value_of(&a, "--vsock"), Some("cid=5"));
        let params = format!("rootwait {}", spec.cmdline);
        assert_eq!(value_of(&a, "--params"), Some(params.as_str()));
        assert_eq!(value_of(&a, "--initrd"), Some("/k/initrd.cpio"));
        let blocks = [
            "path=/img/root.raw,root=true,ro=true,id=rootfs",
            "path=/img/ctr.raw,ro=true,id=container",
            "path=/img/data.raw,ro=false,id=disk0",
        ];
        assert_eq!(values_of(&a, "--block"), blocks);
        let net = "tap-name=vmtap5,mac=02:00:5e:10:00:01";
        assert_eq!(value_of(&a, "--net"), Some(net));
        assert_eq!(values_of(&a, "--shared-dir"), ["/h/src:vmvol0:type=p9"]);
        let serial = "type=stdout,num=1,console=true,stdin=true";
        assert_eq!(value_of(&a, "--serial"), Some(serial));
        assert_eq!(value_of(&a, "--socket"), Some("/run/vm/vm-1/control.sock"));
        assert_eq!(a.last().map(String::as_str), Some("/k/bzImage"));
        for old in ["--cid", "--root", "--tap-name"] {
            assert_eq!(value_of(&a, old), None, "{old}");
        }
    }

    #[test]
    fn command_legacy_uses_old_flags() {
        let a = args(CrosvmFlags::Legacy, &full_spec());
        assert_eq!(value_of(&a, "--cpus"), Some("2"));
        assert_eq!(value_of(&a, "--mem"), Some("512"));
        assert_eq!(value_of(&a, "--cid"), Some("5"));
        assert_eq!(value_of(&a, "--root"), Some("/img/root.raw,id=rootfs"));
        assert_eq!(value_of(&a, "--disk"), Some("/img/ctr.raw,id=container"));
        assert_eq!(value_of(&a, "--rwdisk"), Some("/img/data.raw,id=disk0"));
        assert_eq!(value_of(&a, "--tap-name"), Some("vmtap5"));
        for new in ["--vsock", "--block", "--net", "--mac"] {
            assert_eq!(value_of(&a, new), None, "{new}");
        }
        let mut spec = full_spec();
        spec.rootfs = Some(Rootfs {
            path: "/img/rw.raw".into(),
            read_only: false,
            fs_type: FsType::Squashfs,
        });
        let a = args(CrosvmFlags::Legacy, &spec);
        assert_eq!(value_of(&a, "--rwroot"), Some("/img/rw.raw,id=rootfs"));
        let params = format!("rootwait rootfstype=squashfs {}", spec.cmdline);
        assert_eq!(value_of(&a, "--params"), Some(params.as_str()));
    }

    #[test]
    fn command_vhost_user_vsock_passes_the_socket() {
        let mut spec = full_spec();
        spec.vsock = VsockBackend::VhostUser {
            socket: "/run/vm/vm-1/vhost.sock".into(),
        };
        for flags in [CrosvmFlags::Current, CrosvmFlags::Legacy] {
            let a = args(flags, &spec);
            assert_eq!(
                value_of(&a, "--vhost-user-vsock"),
                Some("/run/vm/vm-1/vhost.sock")
            );
            assert_eq!(value_of(&a, "--vsock"), None);
            assert_eq!(value_of(&a, "--cid"), None);
        }
    }

    #[test]
    fn command_bare_spec_has_no_optional_devices() {
        let spec = bare_spec();
        let a = args(CrosvmFlags::Current, &spec);
        for flag in ["--block", "--net", "--shared-dir"] {
            assert_eq!(value_of(&a, flag), None, "{flag}");
        }
        assert_eq!(value_of(&a, "--params"), Some(spec.cmdline.as_str()));
        let serial = "type=stdout,num=1,console=true,stdin=true";
        assert_eq!(value_of(&a, "--serial"), Some(serial));
    }

    #[test]
    fn command_comma_in_rootfs_is_refused() {
        let mut spec = full_spec();
        spec.rootfs.as_mut().unwrap().path = "/img/a,b".into();
        let err = Crosvm::new(CrosvmFlags::Current)
            .command(&spec)
            .unwrap_err();
        assert!(err.to_string().contains("rootfs"), "{err}");
        let mut spec = full_spec();
        spec.disks[0].path = "/img/c,d".into();
        let err = Crosvm::new(CrosvmFlags::Legacy).command(&spec).unwrap_err();
        assert!(err.to_string().contains("disk: \"/img/c,d\""), "{err}");
    }

    #[test]
    fn command_read_only_or_colon_share_is_refused() {
        let mut spec = full_spec();
        spec.shares.push(ro_share());
        for flags in [CrosvmFlags::Current, CrosvmFlags::Legacy] {
            let err = Crosvm::new(flags).command(&spec).unwrap_err().to_string();
            assert!(
                err.contains("crosvm does not support read-only volumes"),
                "{err}"
            );
        }
        let mut spec = full_spec();
        spec.shares[0].path = "/h/a:b".into();
        let err = Crosvm::new(CrosvmFlags::Current)
            .command(&spec)
            .unwrap_err();
        assert!(
            err.to_string().contains("share: \"/h/a:b\" holds a ':'"),
            "{err}"
        );
        let a = args(CrosvmFlags::Legacy, &full_spec());
        assert_eq!(values_of(&a, "--shared-dir"), ["/h/src:vmvol0:type=p9"]);
    }

    #[test]
    fn stop_runs_crosvm_stop_on_the_socket() {
        let Stop::Command(cmd) = Crosvm::new(CrosvmFlags::Current).stop(&full_spec()) else {
            panic!("crosvm stops with a command");
        };
        assert_eq!(cmd.program, "crosvm");
        assert_eq!(cmd.args_lossy(), ["stop", "/run/vm/vm-1/control.sock"]);
    }
}
