//! The /dev/log source: a Unix datagram socket, mode 0666, one record per datagram. A stale
//! socket from an earlier run is replaced. With SO_PASSCRED every datagram carries the
//! sender's credentials, so the pid recorded is the kernel's, not what the sender claims.
//!
//! The reader does nothing but receive, parse and push into the buffer: the kernel queues
//! only `net.unix.max_dgram_qlen` (10) datagrams, and past that every syslog() in the guest
//! blocks. A datagram longer than the receive buffer is cut by the kernel (MSG_TRUNC) and
//! its record marked truncated.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixCredentials,
};

use crate::buffer::Buffer;
use crate::record::{Kind, Record, Timestamp, MAX_CONTENT};
use crate::syslog_format;

/// Room for the largest record plus any header; longer datagrams are cut.
const RECV_BYTES: usize = MAX_CONTENT + 4096;
/// At most this many datagrams are taken from the socket before they go to the buffer.
const DRAIN_MAX: usize = 64;

#[derive(Debug)]
pub enum DevLogError {
    NotASocket(PathBuf),
    RemoveStale { path: PathBuf, source: io::Error },
    Bind { path: PathBuf, source: io::Error },
    Setup { path: PathBuf, source: io::Error },
}

impl fmt::Display for DevLogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotASocket(p) => write!(
                f,
                "{} exists and is not a socket; refusing to replace it",
                p.display()
            ),
            Self::RemoveStale { path, source } => {
                write!(
                    f,
                    "cannot remove the stale socket {}: {source}",
                    path.display()
                )
            }
            Self::Bind { path, source } => {
                write!(
                    f,
                    "cannot bind the syslog socket {}: {source}",
                    path.display()
                )
            }
            Self::Setup { path, source } => {
                write!(
                    f,
                    "cannot set up the syslog socket {}: {source}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for DevLogError {}

pub struct DevLog {
    socket: UnixDatagram,
    path: PathBuf,
}

/// Takes `fd`, inherited from our parent, once it is checked to be a socket of `kind`
/// (datagram, stream): a wrong number fails here, not later in a receive.
pub(crate) fn inherited_socket(
    fd: i32,
    kind: nix::sys::socket::SockType,
    path: &Path,
) -> Result<std::os::fd::OwnedFd, DevLogError> {
    let not_inherited = |why: String| DevLogError::Setup {
        path: path.to_path_buf(),
        source: io::Error::other(format!("inherited fd {fd}: {why}")),
    };
    // SAFETY: only borrowed for the check below; ownership is taken after it succeeds.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    match nix::sys::socket::getsockopt(&borrowed, sockopt::SockType) {
        Ok(t) if t == kind => {}
        Ok(t) => {
            return Err(not_inherited(format!(
                "a {t:?} socket, not the expected type"
            )))
        }
        Err(e) => return Err(not_inherited(format!("not an open socket ({})", e.desc()))),
    }
    // SAFETY: `fd` is an open socket (checked above) that our parent passed to us and that
    // nothing else in this process owns; it is taken once, at start-up.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// Removes a socket left by an earlier run; anything else at `path` is an error.
pub(crate) fn remove_stale(path: &Path) -> Result<(), DevLogError> {
    vm_proto::transport::remove_stale_socket(path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            DevLogError::NotASocket(path.to_path_buf())
        } else {
            DevLogError::RemoveStale {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

impl DevLog {
    pub fn bind(path: &Path) -> Result<DevLog, DevLogError> {
        remove_stale(path)?;
        let setup = |source| DevLogError::Setup {
            path: path.to_path_buf(),
            source,
        };
        let socket = UnixDatagram::bind(path).map_err(|source| DevLogError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(setup)?;
        setsockopt(&socket, sockopt::PassCred, &true).map_err(|e| setup(e.into()))?;
        Ok(DevLog {
            socket,
            path: path.to_path_buf(),
        })
    }

    /// Serves the datagram socket inherited as `fd` (bound by maitred at `path`, which is
    /// only named in messages and left in place).
    pub fn inherit(fd: i32, path: &Path) -> Result<DevLog, DevLogError> {
        let owned = inherited_socket(fd, nix::sys::socket::SockType::Datagram, path)?;
        let socket = UnixDatagram::from(owned);
        setsockopt(&socket, sockopt::PassCred, &true).map_err(|e| DevLogError::Setup {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        Ok(DevLog {
            socket,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives one datagram into `buf`: (length, cut by the kernel, sender pid or 0).
    /// `wait`: block until one comes; otherwise EAGAIN when none is queued.
    fn receive(
        &self,
        buf: &mut [u8],
        cmsg: &mut [u8],
        wait: bool,
    ) -> nix::Result<(usize, bool, u32)> {
        let mut iov = [IoSliceMut::new(buf)];
        let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
        if !wait {
            flags |= MsgFlags::MSG_DONTWAIT;
        }
        let msg = recvmsg::<()>(self.socket.as_raw_fd(), &mut iov, Some(cmsg), flags)?;
        let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
        let mut pid = 0;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmCredentials(creds) = c {
                    pid = u32::try_from(creds.pid()).unwrap_or(0);
                }
            }
        }
        Ok((msg.bytes, truncated, pid))
    }

    /// Receives forever, pushing one record per datagram into `buffer`: it waits for one,
    /// then takes whatever else is queued (up to [`DRAIN_MAX`]) and pushes them together.
    pub fn run(self, buffer: Arc<Buffer>) {
        let mut buf = vec![0u8; RECV_BYTES];
        let mut cmsg = nix::cmsg_space!(UnixCredentials);
        let mut records = Vec::with_capacity(DRAIN_MAX);
        let mut errors = 0u64;
        loop {
            let first = match self.receive(&mut buf, &mut cmsg, true) {
                Ok(datagram) => datagram,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    // ENOMEM and friends: say so (rarely) and keep serving.
                    errors += 1;
                    if errors.is_power_of_two() {
                        crate::warn!(
                            "vm_syslog: receiving on {} failed ({errors} times): {e}",
                            self.path.display()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let now = Timestamp::now();
            records.push((to_record(&buf, first, now), None));
            while records.len() < DRAIN_MAX {
                // EAGAIN: nothing else queued. Other errors show on the blocking receive.
                let Ok(next) = self.receive(&mut buf, &mut cmsg, false) else {
                    break;
                };
                records.push((to_record(&buf, next, now), None));
            }
            buffer.push_all(Kind::User, records.drain(..));
        }
    }
}

/// The record of a datagram received into `buf`: (length, cut by the kernel, sender pid).
fn to_record(buf: &[u8], (len, cut, pid): (usize, bool, u32), now: Timestamp) -> Record {
    let mut record = syslog_format::parse(&buf[..len], now);
    record.truncated |= cut;
    if pid != 0 {
        record.pid = pid;
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn bind_replaces_a_stale_socket_and_is_world_writable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        drop(UnixDatagram::bind(&path).unwrap());
        let devlog = DevLog::bind(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o666);
        let client = UnixDatagram::unbound().unwrap();
        client.send_to(b"<11>Nov 27 01:30:40 t: x", &path).unwrap();
        let mut buf = vec![0u8; 64];
        let mut cmsg = nix::cmsg_space!(UnixCredentials);
        let (len, cut, pid) = devlog.receive(&mut buf, &mut cmsg, true).unwrap();
        assert_eq!(&buf[..len], b"<11>Nov 27 01:30:40 t: x");
        assert!(!cut);
        assert_eq!(pid, std::process::id());
    }

    #[test]
    fn bind_refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, b"not a socket").unwrap();
        let err = DevLog::bind(&path).err().unwrap().to_string();
        assert!(err.contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    }

    #[test]
    fn receive_oversized_datagram_is_cut_and_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let devlog = DevLog::bind(&path).unwrap();
        let client = UnixDatagram::unbound().unwrap();
        client.send_to(&[b'x'; 100], &path).unwrap();
        let mut buf = vec![0u8; 40];
        let mut cmsg = nix::cmsg_space!(UnixCredentials);
        let (len, cut, _) = devlog.receive(&mut buf, &mut cmsg, true).unwrap();
        assert_eq!((len, cut), (40, true));
    }
}
