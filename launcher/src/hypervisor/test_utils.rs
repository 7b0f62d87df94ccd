//! Fixtures shared by the back-ends' unit tests: specs with and without options, argv lookups.

use super::*;
use vm_proto::{GuestParams, Token};

/// The fixture token, 0xab × 32.
pub fn token_hex() -> String {
    "ab".repeat(32)
}

/// A VM with every option set: initrd, read-only ext4 rootfs, a read-only container disk and a
/// read-write extra disk, a read-write share, net, vhost vsock.
pub fn full_spec() -> VmSpec {
    let params = GuestParams {
        token: Token::from_bytes([0xab; 32]),
        host_port: 10000,
        vm_id: "vm-1".into(),
    };
    VmSpec {
        name: "vm-1".into(),
        kernel: "/k/bzImage".into(),
        initrd: Some("/k/initrd.cpio".into()),
        rootfs: Some(Rootfs {
            path: "/img/root.raw".into(),
            read_only: true,
            fs_type: FsType::Ext4,
        }),
        disks: vec![
            Disk {
                id: "container".into(),
                path: "/img/ctr.raw".into(),
                read_only: true,
            },
            Disk {
                id: "disk0".into(),
                path: "/img/data.raw".into(),
                read_only: false,
            },
        ],
        shares: vec![Share {
            tag: "vmvol0".into(),
            path: "/h/src".into(),
            read_only: false,
        }],
        mem_mib: 512,
        cpus: 2,
        cmdline: format!("console=ttyS0 {}", params.to_cmdline()),
        control_socket: "/run/vm/vm-1/control.sock".into(),
        vsock: VsockBackend::Vhost { cid: 5 },
        net: Some(NetSpec {
            tap: "vmtap5".into(),
            mac: MacAddr([0x02, 0, 0x5e, 0x10, 0, 1]),
            host_ip: Ipv4Addr::new(100, 115, 92, 5),
            netmask: Ipv4Addr::new(255, 255, 255, 252),
        }),
        private_dir: "/run/vm/vm-1".into(),
    }
}

/// Only what is required: an initrd, and no disks, shares or net.
pub fn bare_spec() -> VmSpec {
    VmSpec {
        rootfs: None,
        disks: Vec::new(),
        shares: Vec::new(),
        net: None,
        ..full_spec()
    }
}

/// The value following `flag` in `args` (its first occurrence).
pub fn value_of<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).map(String::as_str)
}

/// Every value following an occurrence of `flag`.
pub fn values_of<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

/// A read-only share (QEMU enforces it; crosvm and kvmtool refuse it).
pub fn ro_share() -> Share {
    Share {
        tag: "vmvol1".into(),
        path: "/h/data".into(),
        read_only: true,
    }
}
