//! Listening on an [`Address`] and accepting connections with the peer's identity, so a
//! server can refuse a peer that is not the VM it serves.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use crate::address::{hybrid_host_path, Address};
use crate::sys;
use crate::transport::{remove_stale_socket, set_nonblocking, TransportError};

/// Who is on the other end of an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A vsock peer: the CID is the kernel's word for which VM (or the host) it is.
    Vsock { cid: u32, port: u32 },
    /// A Unix peer with its credentials (SO_PEERCRED).
    Unix { pid: i32, uid: u32, gid: u32 },
}

enum Socket {
    Unix(UnixListener, PathBuf),
    Vsock(vsock::VsockListener),
}

pub struct Listener {
    socket: Socket,
    addr: Address,
}

impl Listener {
    /// Binds `addr`. A Unix path left over from an earlier run is replaced; any other file
    /// at that path is an error.
    pub fn bind(addr: &Address) -> Result<Listener, TransportError> {
        let bind_err = |source| TransportError::Bind {
            addr: addr.to_string(),
            source,
        };
        let bind_unix = |path: PathBuf| {
            remove_stale_socket(&path).map_err(bind_err)?;
            let listener = UnixListener::bind(&path).map_err(bind_err)?;
            Ok::<_, TransportError>(Socket::Unix(listener, path))
        };
        let socket = match addr {
            Address::Vsock { cid, port } => Socket::Vsock(
                vsock::VsockListener::bind_with_cid_port(*cid, *port).map_err(bind_err)?,
            ),
            Address::Unix(path) => bind_unix(path.clone())?,
            Address::Hybrid { uds, port } => bind_unix(hybrid_host_path(uds, *port))?,
        };
        Ok(Listener {
            socket,
            addr: addr.clone(),
        })
    }

    pub fn address(&self) -> &Address {
        &self.addr
    }

    /// Waits for a connection; returns it non-blocking, ready for grpcio.
    pub fn accept(&self) -> Result<(OwnedFd, Peer), TransportError> {
        let accept_err = |source| TransportError::Accept {
            addr: self.addr.to_string(),
            source,
        };
        let (fd, peer): (OwnedFd, Peer) = match &self.socket {
            Socket::Unix(listener, _) => {
                let (stream, _) = listener.accept().map_err(accept_err)?;
                let cred = nix::sys::socket::getsockopt(
                    &stream,
                    nix::sys::socket::sockopt::PeerCredentials,
                )
                .map_err(|e| accept_err(e.into()))?;
                let peer = Peer::Unix {
                    pid: cred.pid(),
                    uid: cred.uid(),
                    gid: cred.gid(),
                };
                (stream.into(), peer)
            }
            Socket::Vsock(listener) => {
                let (stream, addr) = listener.accept().map_err(accept_err)?;
                let peer = Peer::Vsock {
                    cid: addr.cid(),
                    port: addr.port(),
                };
                (sys::owned_fd(stream), peer)
            }
        };
        set_nonblocking(&fd).map_err(accept_err)?;
        Ok((fd, peer))
    }

    /// The listening socket, for waking a blocked `accept` with shutdown(2).
    pub(crate) fn socket_fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            Socket::Unix(l, _) => l.as_fd(),
            Socket::Vsock(l) => l.as_fd(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Socket::Unix(_, path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}
