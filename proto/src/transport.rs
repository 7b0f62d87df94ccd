//! Dialling an [`Address`]: every transport ends as a connected, non-blocking stream socket
//! that grpcio takes over, because grpcio 0.13 cannot dial vsock itself.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::address::Address;
use crate::sys;

/// How long a hybrid vsock back-end may take to answer `CONNECT`.
pub const HYBRID_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// `OK <port>\n` is short; a longer line is not the protocol.
const HYBRID_REPLY_MAX: usize = 64;

#[derive(Debug)]
pub enum TransportError {
    Bind {
        addr: String,
        source: io::Error,
    },
    Accept {
        addr: String,
        source: io::Error,
    },
    Connect {
        addr: String,
        source: io::Error,
    },
    /// The hybrid back-end answered something other than `OK <n>`.
    HybridRefused {
        addr: String,
        reply: String,
    },
    /// The hybrid back-end closed the connection: nothing listens on that guest port.
    HybridClosed {
        addr: String,
    },
    Setup {
        addr: String,
        source: io::Error,
    },
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Self::Accept { addr, source } => {
                write!(f, "accepting a connection on {addr} failed: {source}")
            }
            Self::Connect { addr, source } => write!(f, "cannot connect to {addr}: {source}"),
            Self::HybridRefused { addr, reply } => write!(
                f,
                "hybrid vsock {addr}: the back-end answered {reply:?} instead of \"OK <port>\""
            ),
            Self::HybridClosed { addr } => write!(
                f,
                "hybrid vsock {addr}: the back-end closed the connection; is anything listening on that port in the guest?"
            ),
            Self::Setup { addr, source } => {
                write!(f, "cannot set up the connection to {addr}: {source}")
            }
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Bind { source, .. }
            | Self::Accept { source, .. }
            | Self::Connect { source, .. }
            | Self::Setup { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Connects to `addr` and returns the socket, non-blocking, ready for grpcio.
pub fn connect(addr: &Address) -> Result<OwnedFd, TransportError> {
    connect_with_timeout(addr, HYBRID_HANDSHAKE_TIMEOUT)
}

/// [`connect`], giving a hybrid back-end `handshake_timeout` to answer.
pub fn connect_with_timeout(
    addr: &Address,
    handshake_timeout: Duration,
) -> Result<OwnedFd, TransportError> {
    let name = addr.to_string();
    let connect_err = |source| TransportError::Connect {
        addr: name.clone(),
        source,
    };
    let fd: OwnedFd = match addr {
        Address::Vsock { cid, port } => vsock::VsockStream::connect_with_cid_port(*cid, *port)
            .map(sys::owned_fd)
            .map_err(connect_err)?,
        Address::Unix(path) => UnixStream::connect(path).map_err(connect_err)?.into(),
        Address::Hybrid { uds, port } => {
            hybrid_connect(uds, *port, &name, handshake_timeout)?.into()
        }
    };
    set_nonblocking(&fd).map_err(|source| TransportError::Setup { addr: name, source })?;
    Ok(fd)
}

/// grpcio needs O_NONBLOCK: with a blocking socket the first call hangs forever.
pub(crate) fn set_nonblocking(fd: &impl AsFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// The hybrid vsock handshake: `CONNECT <port>\n` → `OK <n>\n`, then the stream is the guest's
/// port. The reply is read one byte at a time so no byte of the stream after it is consumed.
fn hybrid_connect(
    uds: &Path,
    port: u32,
    name: &str,
    timeout: Duration,
) -> Result<UnixStream, TransportError> {
    let mut stream = UnixStream::connect(uds).map_err(|source| TransportError::Connect {
        addr: name.to_string(),
        source: with_path(source, uds),
    })?;
    let setup = |source| TransportError::Setup {
        addr: name.to_string(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(setup)?;
    stream.set_write_timeout(Some(timeout)).map_err(setup)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(setup)?;

    let mut reply = Vec::with_capacity(16);
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(TransportError::HybridClosed {
                    addr: name.to_string(),
                })
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if reply.len() < HYBRID_REPLY_MAX => reply.push(byte[0]),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(setup(source)),
        }
    }
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let ok = reply
        .strip_prefix("OK ")
        .is_some_and(|n| n.trim_end_matches('\r').parse::<u32>().is_ok());
    if !ok {
        return Err(TransportError::HybridRefused {
            addr: name.to_string(),
            reply,
        });
    }
    stream.set_read_timeout(None).map_err(setup)?;
    stream.set_write_timeout(None).map_err(setup)?;
    Ok(stream)
}

fn with_path(err: io::Error, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

/// Removes a stale Unix socket left by an earlier run, and nothing else: any other file at
/// `path` is an `AlreadyExists` error.
pub fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
