//! How each back-end wires a VM: which hypervisor command, which vsock helper, where the
//! host services listen, how to reach maitred, and which peer may call the host services.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vm_proto::address::hybrid_host_path;
use vm_proto::server::PeerFilter;
use vm_proto::{Address, Peer, MAITRED_PORT};

use crate::hypervisor::{Crosvm, Hypervisor, Lkvm, Qemu, VsockBackend};

pub enum Backend {
    Qemu(Qemu),
    Crosvm(Crosvm),
    Lkvm(Lkvm),
    /// No hypervisor: host-mode maitred as a child process (tests, demos).
    Process {
        maitred: PathBuf,
    },
}

impl Backend {
    pub fn hypervisor(&self) -> Option<&dyn Hypervisor> {
        match self {
            Backend::Qemu(h) => Some(h),
            Backend::Crosvm(h) => Some(h),
            Backend::Lkvm(h) => Some(h),
            Backend::Process { .. } => None,
        }
    }
}

/// The per-VM sockets, all under the VM's 0700 run directory.
pub struct Wiring {
    pub vsock: VsockBackend,
    /// vhost-device-vsock's arguments, when this VM needs it.
    pub vsock_helper: Option<Vec<String>>,
    pub host_listen: Address,
    pub maitred: Address,
}

/// Kernel vhost-vsock when the host has it; otherwise vhost-device-vsock (hybrid vsock).
pub fn wiring(
    backend: &Backend,
    rundir: &Path,
    cid: u32,
    host_port: u32,
    use_vhost: bool,
) -> Wiring {
    if let Backend::Process { .. } = backend {
        return Wiring {
            vsock: VsockBackend::Vhost { cid },
            vsock_helper: None,
            host_listen: Address::Unix(rundir.join("host.sock")),
            maitred: Address::Unix(rundir.join("maitred.sock")),
        };
    }
    if use_vhost {
        return Wiring {
            vsock: VsockBackend::Vhost { cid },
            vsock_helper: None,
            host_listen: Address::Vsock {
                cid: vm_proto::ANY_CID,
                port: host_port,
            },
            maitred: Address::Vsock {
                cid,
                port: MAITRED_PORT,
            },
        };
    }
    let vhost_user = rundir.join("vhost-user.sock");
    let uds = rundir.join("vsock.sock");
    Wiring {
        vsock: VsockBackend::VhostUser {
            socket: vhost_user.clone(),
        },
        vsock_helper: Some(vec![
            "--vm".to_string(),
            format!(
                "guest-cid={cid},socket={},uds-path={}",
                vhost_user.display(),
                uds.display()
            ),
        ]),
        host_listen: Address::Unix(hybrid_host_path(&uds, host_port)),
        maitred: Address::Hybrid {
            uds,
            port: MAITRED_PORT,
        },
    }
}

/// Only this VM may call its host services: over kernel vsock the peer's CID must be the
/// VM's; over a Unix socket the peer must be the one process that speaks for the VM
/// (vhost-device-vsock, or host-mode maitred).
pub fn peer_filter(cid: u32, trusted_pid: Arc<std::sync::atomic::AtomicI32>) -> PeerFilter {
    Arc::new(move |peer| match peer {
        Peer::Vsock { cid: c, .. } => *c == cid,
        Peer::Unix { pid, .. } => *pid == trusted_pid.load(std::sync::atomic::Ordering::SeqCst),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI32;

    #[test]
    fn wiring_hybrid_puts_everything_under_the_rundir() {
        let qemu = Backend::Qemu(Qemu::new(crate::hypervisor::Accel::Tcg));
        let w = wiring(&qemu, Path::new("/run/vm/x"), 5, 10001, false);
        assert_eq!(w.host_listen.to_string(), "unix:/run/vm/x/vsock.sock_10001");
        assert_eq!(w.maitred.to_string(), "hybrid:/run/vm/x/vsock.sock:8888");
        assert_eq!(
            w.vsock_helper.unwrap()[1],
            "guest-cid=5,socket=/run/vm/x/vhost-user.sock,uds-path=/run/vm/x/vsock.sock"
        );
    }

    #[test]
    fn wiring_vhost_uses_kernel_vsock() {
        let qemu = Backend::Qemu(Qemu::new(crate::hypervisor::Accel::Kvm));
        let w = wiring(&qemu, Path::new("/r"), 7, 10002, true);
        assert_eq!(w.host_listen.to_string(), "vsock:-1:10002");
        assert_eq!(w.maitred.to_string(), "vsock:7:8888");
        assert!(w.vsock_helper.is_none());
    }

    #[test]
    fn peer_filter_admits_only_this_vm() {
        let pid = Arc::new(AtomicI32::new(100));
        let filter = peer_filter(5, pid.clone());
        assert!(filter(&Peer::Vsock { cid: 5, port: 1 }));
        assert!(!filter(&Peer::Vsock { cid: 6, port: 1 }));
        assert!(filter(&Peer::Unix {
            pid: 100,
            uid: 0,
            gid: 0
        }));
        assert!(!filter(&Peer::Unix {
            pid: 101,
            uid: 0,
            gid: 0
        }));
        pid.store(101, std::sync::atomic::Ordering::SeqCst);
        assert!(filter(&Peer::Unix {
            pid: 101,
            uid: 0,
            gid: 0
        }));
    }
}
