//! A syslog datagram socket as a destination (the host's /dev/log, or any `unix:PATH`):
//! many lines go out in one `sendmmsg(2)`. Connected lazily and again after the daemon
//! restarts. The socket blocks while the daemon's queue is full (that is the back-pressure
//! that keeps records in the guest's buffer), but one request waits at most
//! [`SEND_TIMEOUT`] in all; then the rest of it is dropped and counted, so a stuck daemon
//! can never wedge the launcher's gRPC threads.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long one request may wait for the syslog daemon to take its lines.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed connect, wait this long before trying again.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// Lines per `sendmmsg` call (the kernel's limit is UIO_MAXIOV, 1024).
const BATCH: usize = 256;

/// Sends `lines` as one datagram each with as few `sendmmsg(2)` calls as the socket
/// allows. Returns how many were sent; an error only if not even the first one went out.
pub fn send_lines(socket: BorrowedFd<'_>, lines: &[&[u8]]) -> io::Result<usize> {
    let chunk = &lines[..lines.len().min(BATCH)];
    let mut iovecs: Vec<libc::iovec> = chunk
        .iter()
        .map(|line| libc::iovec {
            iov_base: line.as_ptr() as *mut libc::c_void,
            iov_len: line.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: msghdr is plain old data; all-zero is its "no address, no control
            // data, no flags" value.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_iov = iov;
            hdr.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            }
        })
        .collect();
    // `headers` holds `headers.len()` initialised mmsghdrs, each pointing at one iovec in
    // `iovecs`, which points into a line of `lines`; all of them outlive the call.
    // SAFETY: the kernel only reads those (and writes msg_len into `headers`).
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            headers.as_mut_ptr(),
            headers.len() as libc::c_uint,
            libc::MSG_NOSIGNAL,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// What one request came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub sent: usize,
    pub dropped: usize,
    /// Why lines were dropped, if they were.
    pub error: Option<String>,
}

pub struct DatagramOut {
    path: PathBuf,
    socket: Option<UnixDatagram>,
    retry_at: Option<Instant>,
}

impl DatagramOut {
    pub fn new(path: &Path) -> DatagramOut {
        DatagramOut {
            path: path.to_path_buf(),
            socket: None,
            retry_at: None,
        }
    }

    fn connect(&mut self) -> io::Result<&UnixDatagram> {
        if self.socket.is_none() {
            if self.retry_at.is_some_and(|at| Instant::now() < at) {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "not connected; retrying shortly",
                ));
            }
            let socket = UnixDatagram::unbound().and_then(|s| s.connect(&self.path).map(|_| s));
            match socket {
                Ok(s) => {
                    self.socket = Some(s);
                    self.retry_at = None;
                }
                Err(e) => {
                    self.retry_at = Some(Instant::now() + RECONNECT_AFTER);
                    return Err(e);
                }
            }
        }
        self.socket
            .as_ref()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// Sends an empty datagram carrying `fd` (SCM_RIGHTS), within [`SEND_TIMEOUT`],
    /// reconnecting once if the daemon went away.
    pub fn send_fd(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let fds = [fd.as_raw_fd()];
        let mut reconnected = false;
        loop {
            let result = self.connect().and_then(|socket| {
                socket.set_write_timeout(Some(SEND_TIMEOUT))?;
                let cmsg = [ControlMessage::ScmRights(&fds)];
                sendmsg::<()>(socket.as_raw_fd(), &[], &cmsg, MsgFlags::MSG_NOSIGNAL, None)
                    .map(|_| ())
                    .map_err(io::Error::from)
            });
            match result {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.socket = None;
                    let gone = matches!(
                        e.raw_os_error(),
                        Some(libc::ECONNREFUSED | libc::ENOTCONN | libc::ENOENT)
                    );
                    if gone && !reconnected {
                        reconnected = true;
                        continue;
                    }
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{}: {e}", self.path.display()),
                    ));
                }
                Ok(()) => return Ok(()),
            }
        }
    }

    /// Sends every line within [`SEND_TIMEOUT`], reconnecting once if the daemon went away.
    pub fn send(&mut self, lines: &[&[u8]]) -> Outcome {
        let deadline = Instant::now() + SEND_TIMEOUT;
        let mut outcome = Outcome::default();
        let mut reconnected = false;
        while outcome.sent + outcome.dropped < lines.len() {
            let rest = &lines[outcome.sent + outcome.dropped..];
            let left = deadline.saturating_duration_since(Instant::now());
            let result = self.connect().and_then(|socket| {
                if left.is_zero() {
                    return Err(io::Error::from(io::ErrorKind::TimedOut));
                }
                socket.set_write_timeout(Some(left))?;
                send_lines(socket.as_fd(), rest)
            });
            match result {
                Ok(n) => outcome.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // One line too long for the socket: drop it, keep the others.
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                    outcome.dropped += 1;
                    outcome.error = Some(format!("{}: {e}", self.path.display()));
                }
                Err(e) => {
                    let gone = matches!(
                        e.raw_os_error(),
                        Some(libc::ECONNREFUSED | libc::ENOTCONN | libc::ENOENT)
                    );
                    self.socket = None;
                    if gone && !reconnected {
                        reconnected = true;
                        continue;
                    }
                    outcome.dropped = lines.len() - outcome.sent;
                    outcome.error = Some(format!("{}: {e}", self.path.display()));
                }
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_delivers_each_line_as_one_datagram() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let mut out = DatagramOut::new(&path);
        let lines: Vec<Vec<u8>> = (0..5).map(|i| format!("line {i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        assert_eq!(
            out.send(&refs),
            Outcome {
                sent: 5,
                dropped: 0,
                error: None
            }
        );
        let mut buf = [0u8; 64];
        for i in 0..5 {
            let n = server.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], format!("line {i}").as_bytes());
        }
    }

    #[test]
    fn send_more_than_the_queue_holds_waits_for_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            (0..1000).map(|_| server.recv(&mut buf).unwrap()).count()
        });
        let lines: Vec<Vec<u8>> = (0..1000).map(|i| format!("{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let outcome = DatagramOut::new(&path).send(&refs);
        assert_eq!((outcome.sent, outcome.dropped), (1000, 0), "{outcome:?}");
        assert_eq!(reader.join().unwrap(), 1000);
    }

    #[test]
    fn send_to_a_daemon_that_never_reads_drops_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let _server = UnixDatagram::bind(&path).unwrap();
        let lines: Vec<Vec<u8>> = (0..100).map(|i| format!("{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let started = Instant::now();
        let outcome = DatagramOut::new(&path).send(&refs);
        assert!(started.elapsed() < SEND_TIMEOUT + Duration::from_millis(500));
        assert!(outcome.sent >= 1 && outcome.sent < 100, "{outcome:?}");
        assert_eq!(outcome.sent + outcome.dropped, 100);
        assert!(outcome.error.is_some());
    }

    #[test]
    fn send_reconnects_after_the_daemon_restarts_and_counts_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut out = DatagramOut::new(&path);
        let outcome = out.send(&[b"nobody listens"]);
        assert_eq!((outcome.sent, outcome.dropped), (0, 1));
        assert!(outcome.error.unwrap().contains("log"));

        let server = UnixDatagram::bind(&path).unwrap();
        out.retry_at = None;
        assert_eq!(out.send(&[b"first"]).sent, 1);
        drop(server);
        std::fs::remove_file(&path).unwrap();
        let server = UnixDatagram::bind(&path).unwrap();
        assert_eq!(out.send(&[b"after restart"]).sent, 1);
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"after restart");
    }
}
