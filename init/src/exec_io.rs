//! The fds of a streamed process: three pipes, or a pseudo-terminal. The child's ends become
//! its fds 0-2; maitred keeps the other ends, non-blocking and close-on-exec, for the
//! session's pumps (see `exec_session`).

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use vm_proto::stream::WindowSize;

use crate::spawn::{ChildStdio, SpawnError};
use crate::sys;

/// The size of each stdio pipe of a streamed process.
const PIPE_SIZE: libc::c_int = 256 * 1024;

/// maitred's ends of a streamed process's stdio.
pub struct SessionFds {
    /// Where stdin bytes go: the pipe's write end, or the terminal's master.
    pub stdin: OwnedFd,
    /// Output read from here is the process's stdout (with a terminal: all its output).
    pub stdout: OwnedFd,
    /// With pipes: the stderr pipe's read end. With a terminal: none (it shares stdout).
    pub stderr: Option<OwnedFd>,
    /// With a terminal: its master, for window size changes.
    pub master: Option<OwnedFd>,
}

fn setup(what: &'static str) -> impl Fn(Errno) -> SpawnError {
    move |errno| SpawnError::Setup { what, errno }
}

fn io_setup(what: &'static str) -> impl Fn(std::io::Error) -> SpawnError {
    move |e| SpawnError::Setup {
        what,
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// Three pipes: the child reads stdin and writes stdout and stderr.
pub fn pipes() -> Result<(ChildStdio, SessionFds), SpawnError> {
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(setup("pipe2"));
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    for ours in [&in_w, &out_r, &err_r] {
        sys::set_nonblocking(ours.as_fd()).map_err(setup("fcntl O_NONBLOCK"))?;
        // Room for several 64 KiB chunks: fewer wake-ups per MiB on a slow guest. Only a
        // kernel buffer, still bounded; the default 64 KiB is fine if the kernel refuses.
        let _ = nix::fcntl::fcntl(ours.as_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    }
    Ok((
        ChildStdio {
            stdin: in_r,
            stdout: out_w,
            stderr: err_w,
        },
        SessionFds {
            stdin: in_w,
            stdout: out_r,
            stderr: Some(err_r),
            master: None,
        },
    ))
}

/// A pseudo-terminal of `size`: the child gets the slave as fds 0-2 (and, being a session
/// leader, as its controlling terminal); maitred keeps the master.
pub fn terminal(size: WindowSize) -> Result<(ChildStdio, SessionFds), SpawnError> {
    let (master, slave) = sys::open_pty(size).map_err(setup("opening a pseudo-terminal"))?;
    sys::set_nonblocking(master.as_fd()).map_err(setup("fcntl O_NONBLOCK"))?;
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(io_setup("dup"));
    Ok((
        ChildStdio {
            stdin: dup(&slave)?,
            stdout: dup(&slave)?,
            stderr: slave,
        },
        SessionFds {
            stdin: dup(&master)?,
            stdout: dup(&master)?,
            stderr: None,
            master: Some(master),
        },
    ))
}
