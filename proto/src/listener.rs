//! Listening on an [`Address`] and accepting connections with the peer's identity, so a
//! server can refuse a peer that is not the VM it serves.
//!
//! Stopping: `shutdown(2)` does not wake a thread blocked in `accept` on an AF_VSOCK
//! listener (it fails with ENOTCONN), so nothing here blocks in `accept`. The listening
//! socket is non-blocking and every accept first polls it together with an eventfd; raising
//! that eventfd ([`Listener::stop`] or a [`Waker`]) wakes every accepting thread on every
//! transport, and each later accept returns at once. A [`ListenerSet`] serves several listeners
//! from one thread.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

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

/// Stops a [`Listener`] from any thread: every thread in its `accept` returns, and so does
/// every later call. Cheap to clone; stopping twice is harmless.
#[derive(Clone, Debug)]
pub struct Waker(Arc<OwnedFd>);

impl Waker {
    pub fn wake(&self) {
        sys::eventfd_raise(self.0.as_fd());
    }
}

pub struct Listener {
    socket: Socket,
    addr: Address,
    stop: Waker,
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
            listener.set_nonblocking(true).map_err(bind_err)?;
            Ok::<_, TransportError>(Socket::Unix(listener, path))
        };
        let socket = match addr {
            Address::Vsock { cid, port } => {
                let listener =
                    vsock::VsockListener::bind_with_cid_port(*cid, *port).map_err(bind_err)?;
                listener.set_nonblocking(true).map_err(bind_err)?;
                Socket::Vsock(listener)
            }
            Address::Unix(path) => bind_unix(path.clone())?,
            Address::Hybrid { uds, port } => bind_unix(hybrid_host_path(uds, *port))?,
        };
        let stop = Waker(Arc::new(sys::eventfd().map_err(bind_err)?));
        Ok(Listener {
            socket,
            addr: addr.clone(),
            stop,
        })
    }

    pub fn address(&self) -> &Address {
        &self.addr
    }

    /// A handle that stops this listener from another thread (see [`Listener::stop`]).
    pub fn waker(&self) -> Waker {
        self.stop.clone()
    }

    /// Wakes every thread waiting in [`accept`](Self::accept) or
    /// [`accept_or_stop`](Self::accept_or_stop); later calls return at once. Works on
    /// every transport, AF_VSOCK included.
    pub fn stop(&self) {
        self.stop.wake();
    }

    /// Waits, with no timeout, for a connection; returns it non-blocking, ready for grpcio.
    /// Once the listener is stopped this returns an `Accept` error ("listener stopped"),
    /// as a blocking accept on a shut-down socket would.
    pub fn accept(&self) -> Result<(OwnedFd, Peer), TransportError> {
        self.accept_or_stop()?
            .ok_or_else(|| TransportError::Accept {
                addr: self.addr.to_string(),
                source: io::Error::other("listener stopped"),
            })
    }

    /// Like [`accept`](Self::accept), but a stop is `Ok(None)` rather than an error: for
    /// accept loops that end when their owner stops the listener.
    pub fn accept_or_stop(&self) -> Result<Option<(OwnedFd, Peer)>, TransportError> {
        Ok(ListenerSet::new(vec![self])
            .accept()?
            .map(|(_, fd, peer)| (fd, peer)))
    }

    /// One non-blocking accept(2).
    fn try_accept(&self) -> io::Result<(OwnedFd, Peer)> {
        match &self.socket {
            Socket::Unix(listener, _) => {
                let (stream, _) = listener.accept()?;
                let cred = nix::sys::socket::getsockopt(
                    &stream,
                    nix::sys::socket::sockopt::PeerCredentials,
                )?;
                let peer = Peer::Unix {
                    pid: cred.pid(),
                    uid: cred.uid(),
                    gid: cred.gid(),
                };
                Ok((stream.into(), peer))
            }
            Socket::Vsock(listener) => {
                let (stream, addr) = listener.accept()?;
                let peer = Peer::Vsock {
                    cid: addr.cid(),
                    port: addr.port(),
                };
                Ok((sys::owned_fd(stream), peer))
            }
        }
    }

    fn socket_fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            Socket::Unix(l, _) => l.as_fd(),
            Socket::Vsock(l) => l.as_fd(),
        }
    }
}

/// Several listeners served by one thread: [`ListenerSet::accept`] waits on all of them.
/// Ready listeners are taken in turn, so a flood on one does not starve the others.
pub struct ListenerSet<'a> {
    listeners: Vec<&'a Listener>,
    next: usize,
}

impl<'a> ListenerSet<'a> {
    pub fn new(listeners: Vec<&'a Listener>) -> ListenerSet<'a> {
        ListenerSet { listeners, next: 0 }
    }

    /// Waits, with no timeout, for a connection on any listener: returns the listener's
    /// index and the connection (non-blocking, ready for grpcio), or `Ok(None)` once any
    /// listener is stopped.
    pub fn accept(&mut self) -> Result<Option<(usize, OwnedFd, Peer)>, TransportError> {
        let count = self.listeners.len();
        let mut fds: Vec<BorrowedFd<'_>> =
            self.listeners.iter().map(|l| l.stop.0.as_fd()).collect();
        fds.extend(self.listeners.iter().map(|l| l.socket_fd()));
        loop {
            let ready = sys::poll_readable(&fds).map_err(|source| TransportError::Accept {
                addr: self
                    .listeners
                    .iter()
                    .map(|l| l.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                source,
            })?;
            if ready[..count].contains(&true) {
                return Ok(None);
            }
            for index in (0..count).map(|i| (self.next + i) % count) {
                if !ready[count + index] {
                    continue;
                }
                let listener = self.listeners[index];
                let accept_err = |source| TransportError::Accept {
                    addr: listener.addr.to_string(),
                    source,
                };
                match listener.try_accept() {
                    Ok((fd, peer)) => {
                        set_nonblocking(&fd).map_err(accept_err)?;
                        self.next = (index + 1) % count;
                        return Ok(Some((index, fd, peer)));
                    }
                    // Another thread took it, or the peer gave up before we got to it.
                    Err(e) if is_transient(&e) => continue,
                    Err(e) => return Err(accept_err(e)),
                }
            }
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
    )
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Socket::Unix(_, path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}
