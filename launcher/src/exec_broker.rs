//! `exec` into a started VM without handing out its token. The VM's launcher listens on
//! `<run dir>/exec.sock` (the run dir is 0700, the socket 0600, and the peer's uid must be
//! the launcher's own or root); for each caller it dials maitred's process stream port,
//! authenticates with the token itself, and passes the authenticated socket to the caller
//! (SCM_RIGHTS). The caller then speaks the rest of the protocol directly: no copying in
//! between, and the token never leaves the launcher.

use std::fmt;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    getsockopt, recvmsg, sendmsg, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
};
use vm_proto::{Address, Token};

use crate::stream_client;

/// The socket's name in the VM's run directory.
pub const SOCKET: &str = "exec.sock";
/// The reply when the launcher could not open the stream (its reason follows).
const REFUSED: u8 = b'0';
const OPENED: u8 = b'1';

#[derive(Debug)]
pub enum BrokerError {
    /// No launcher serves that VM (it is not running, or not ours).
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    Refused {
        id: String,
        why: String,
    },
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect { path, source } => write!(
                f,
                "cannot reach the VM's launcher at {}: {source} (only the user who started the VM, or root, may exec into it)",
                path.display()
            ),
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Self::Refused { id, why } => write!(f, "VM {id}: {why}"),
        }
    }
}

impl std::error::Error for BrokerError {}

/// Serves `<rundir>/exec.sock` from a thread of its own for the rest of the process's life
/// (a detached launcher exits after its VM's teardown).
pub fn serve(rundir: &Path, guest: Address, token: Token) -> std::io::Result<()> {
    let path = rundir.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let me = nix::unistd::geteuid().as_raw();
    std::thread::Builder::new()
        .name("exec-broker".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let uid = getsockopt(&conn, sockopt::PeerCredentials).map(|c| c.uid());
                match uid {
                    Ok(uid) if uid == me || uid == 0 => hand_over(&conn, &guest, &token),
                    _ => reply(&conn, REFUSED, b"not the VM's owner", None),
                }
            }
        })
        .map(drop)
}

/// Opens and authenticates a stream to maitred and passes it to the caller.
fn hand_over(caller: &UnixStream, guest: &Address, token: &Token) {
    match stream_client::open(guest, token) {
        Ok(stream) => reply(caller, OPENED, b"", Some(OwnedFd::from(stream))),
        Err(e) => reply(caller, REFUSED, e.to_string().as_bytes(), None),
    }
}

fn reply(caller: &UnixStream, status: u8, text: &[u8], fd: Option<OwnedFd>) {
    let mut message = vec![status];
    message.extend_from_slice(text);
    let iov = [IoSlice::new(&message)];
    let raw = fd.as_ref().map(|f| [f.as_raw_fd()]);
    let cmsgs: Vec<ControlMessage<'_>> = raw
        .as_ref()
        .map(|r| vec![ControlMessage::ScmRights(r)])
        .unwrap_or_default();
    let _ = sendmsg::<()>(caller.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None);
}

/// Asks the launcher of the VM whose run dir is `rundir` for an authenticated stream.
pub fn connect(rundir: &Path, id: &str) -> Result<UnixStream, BrokerError> {
    let path = rundir.join(SOCKET);
    let conn = UnixStream::connect(&path).map_err(|source| BrokerError::Connect {
        path: path.clone(),
        source,
    })?;
    let mut text = [0u8; 1024];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let (len, fd) = {
        let mut iov = [IoSliceMut::new(&mut text)];
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| BrokerError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        let mut fd = None;
        for cmsg in msg.cmsgs().into_iter().flatten() {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for raw in fds {
                    // SAFETY: SCM_RIGHTS just gave us this new descriptor; nothing else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    fd.get_or_insert(owned);
                }
            }
        }
        (msg.bytes, fd)
    };
    match (text.first(), fd) {
        (Some(&OPENED), Some(fd)) if len >= 1 => Ok(UnixStream::from(fd)),
        _ => Err(BrokerError::Refused {
            id: id.to_string(),
            why: match len {
                0 => "its launcher closed the connection".into(),
                _ => String::from_utf8_lossy(&text[1..len]).into_owned(),
            },
        }),
    }
}
