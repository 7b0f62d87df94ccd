//! The kvmtool command line (`lkvm run …`, `lkvm stop --name ID`).
//!
//! kvmtool names its control socket itself (`~/.lkvm/<name>.sock`), so the VM is addressed by
//! `--name`; `VmSpec::control_socket` is unused. It writes the serial console to its stdout
//! (`--console serial`), where the launcher reads it. Its `-n` takes no netmask (the host end gets
//! `host_ip`), it has no vhost-user vsock, and like crosvm it needs KVM and takes the token on
//! argv (`-p`).
//!
//! Shares are `--9p PATH,TAG` (virtio-9p); it has no read-only mode, so a read-only share
//! is refused.
//!
//! Disks: kvmtool's `-d PATH[,ro]` has no serial, so a kvmtool guest sees disks in probe
//! order only, which is the order they are given: the root disk (`/dev/vda`), then the
//! container, vm_tools and disk0…disk9 disks (`VmSpec::disks` in order). A guest that
//! looks a disk up by identity (`/sys/block/*/serial`) finds none under kvmtool.

use std::path::PathBuf;

use super::VsockBackend;
use super::{concat, no_comma, HvCommand, Hypervisor, HypervisorError, Stop, VmSpec};

const NAME: &str = "lkvm";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lkvm {
    pub program: PathBuf,
}

impl Default for Lkvm {
    fn default() -> Lkvm {
        Lkvm {
            program: "lkvm".into(),
        }
    }
}

impl Hypervisor for Lkvm {
    fn command(&self, spec: &VmSpec) -> Result<HvCommand, HypervisorError> {
        spec.check(NAME)?;
        spec.no_read_only_shares(NAME)?;
        let cid = match &spec.vsock {
            VsockBackend::Vhost { cid } => *cid,
            VsockBackend::VhostUser { .. } => {
                return Err(HypervisorError::Unsupported {
                    hypervisor: NAME,
                    feature: "vhost-user vsock",
                    hint: "use the kernel's vhost-vsock or another hypervisor",
                })
            }
        };
        let mut cmd = HvCommand::new(&self.program);
        cmd.arg("run").pair("--name", spec.name.as_str());
        cmd.pair("-k", &spec.kernel);
        if let Some(initrd) = &spec.initrd {
            cmd.pair("-i", initrd);
        }
        let root = spec.rootfs.iter().map(|r| ("rootfs", &r.path, r.read_only));
        let others = spec.disks.iter().map(|d| ("disk", &d.path, d.read_only));
        for (field, path, read_only) in root.chain(others) {
            let path = no_comma(NAME, field, path)?;
            cmd.pair("-d", concat("", path, if read_only { ",ro" } else { "" }));
        }
        for share in &spec.shares {
            let path = no_comma(NAME, "share", &share.path)?;
            cmd.pair("--9p", concat("", path, &format!(",{}", share.tag)));
        }
        cmd.pair("-m", spec.mem_mib.to_string());
        cmd.pair("-c", spec.cpus.to_string());
        cmd.pair("-p", spec.cmdline_with_root(true));
        cmd.pair("--vsock", cid.to_string());
        if let Some(net) = &spec.net {
            if net.tap.contains(',') {
                return Err(HypervisorError::bad_spec(
                    NAME,
                    "net tap",
                    "tap names hold no commas",
                ));
            }
            let (tap, mac, ip) = (&net.tap, net.mac, net.host_ip);
            cmd.pair(
                "-n",
                format!("mode=tap,tapif={tap},guest_mac={mac},host_ip={ip}"),
            );
        }
        cmd.pair("--console", "serial");
        Ok(cmd)
    }

    fn stop(&self, spec: &VmSpec) -> Stop {
        let mut cmd = HvCommand::new(&self.program);
        cmd.arg("stop").pair("--name", spec.name.as_str());
        Stop::Command(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_utils::*;
    use super::super::{FsType, Rootfs};
    use super::*;

    #[test]
    fn command_full_spec_sets_every_field() {
        let spec = full_spec();
        let cmd = Lkvm::default().command(&spec).unwrap();
        let a = cmd.args_lossy();
        assert_eq!(cmd.program, "lkvm");
        assert_eq!(a[0], "run");
        assert_eq!(value_of(&a, "--name"), Some("vm-1"));
        assert_eq!(value_of(&a, "-k"), Some("/k/bzImage"));
        assert_eq!(value_of(&a, "-i"), Some("/k/initrd.cpio"));
        let disks = ["/img/root.raw,ro", "/img/ctr.raw,ro", "/img/data.raw"];
        assert_eq!(values_of(&a, "-d"), disks);
        assert_eq!(value_of(&a, "-m"), Some("512"));
        assert_eq!(value_of(&a, "-c"), Some("2"));
        let params = format!("root=/dev/vda ro rootwait {}", spec.cmdline);
        assert_eq!(value_of(&a, "-p"), Some(params.as_str()));
        assert_eq!(value_of(&a, "--vsock"), Some("5"));
        let net = "mode=tap,tapif=vmtap5,guest_mac=02:00:5e:10:00:01,host_ip=100.115.92.5";
        assert_eq!(value_of(&a, "-n"), Some(net));
        assert_eq!(values_of(&a, "--9p"), ["/h/src,vmvol0"]);
        assert_eq!(value_of(&a, "--console"), Some("serial"));
    }

    #[test]
    fn command_bare_spec_has_no_optional_devices() {
        let mut spec = bare_spec();
        spec.initrd = None;
        spec.rootfs = Some(Rootfs {
            path: "/img/rw.raw".into(),
            read_only: false,
            fs_type: FsType::Squashfs,
        });
        let cmd = Lkvm::default().command(&spec).unwrap();
        let a = cmd.args_lossy();
        assert_eq!(value_of(&a, "-i"), None);
        assert_eq!(value_of(&a, "-n"), None);
        assert_eq!(value_of(&a, "--9p"), None);
        assert_eq!(values_of(&a, "-d"), ["/img/rw.raw"]);
        let params = format!(
            "root=/dev/vda rw rootwait rootfstype=squashfs {}",
            spec.cmdline
        );
        assert_eq!(value_of(&a, "-p"), Some(params.as_str()));
    }

    #[test]
    fn command_comma_in_a_disk_is_refused() {
        let mut spec = full_spec();
        spec.disks[1].path = "/img/a,b".into();
        let err = Lkvm::default().command(&spec).unwrap_err().to_string();
        assert!(err.contains("disk: \"/img/a,b\""), "{err}");
    }

    #[test]
    fn command_read_only_or_comma_share_is_refused() {
        let mut spec = full_spec();
        spec.shares.push(ro_share());
        let err = Lkvm::default().command(&spec).unwrap_err().to_string();
        assert!(
            err.contains("lkvm does not support read-only volumes"),
            "{err}"
        );
        let mut spec = full_spec();
        spec.shares[0].path = "/h/a,b".into();
        let err = Lkvm::default().command(&spec).unwrap_err().to_string();
        assert!(err.contains("share: \"/h/a,b\""), "{err}");
    }

    #[test]
    fn command_vhost_user_is_unsupported() {
        let mut spec = full_spec();
        spec.vsock = VsockBackend::VhostUser {
            socket: "/run/v.sock".into(),
        };
        let err = Lkvm::default().command(&spec).unwrap_err().to_string();
        assert!(
            err.contains("lkvm does not support vhost-user vsock"),
            "{err}"
        );
    }

    #[test]
    fn stop_names_the_vm() {
        let Stop::Command(cmd) = Lkvm::default().stop(&full_spec()) else {
            panic!("lkvm stops with a command");
        };
        assert_eq!(cmd.args_lossy(), ["stop", "--name", "vm-1"]);
    }
}
