//! The launcher's terminal during an interactive session: raw mode (every key goes to the
//! guest's terminal, which does its own echo, line editing and Ctrl-C), always restored, and
//! the window size to send to the guest.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::termios::{self, SetArg, Termios};
use vm_proto::stream::WindowSize;

use crate::sys;

/// Is `fd` a terminal?
pub fn is_terminal(fd: BorrowedFd<'_>) -> bool {
    nix::unistd::isatty(fd).unwrap_or(false)
}

/// The size of the terminal on `fd`, if it is one and knows its size.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<WindowSize> {
    sys::window_size(fd).filter(|s| s.rows > 0 && s.cols > 0)
}

/// Raw mode on a terminal until dropped; dropping restores the settings found.
pub struct RawMode {
    fd: OwnedFd,
    saved: Termios,
}

impl RawMode {
    /// Puts the terminal on `fd` into raw mode.
    pub fn enable(fd: BorrowedFd<'_>) -> nix::Result<RawMode> {
        let fd = fd
            .try_clone_to_owned()
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        let saved = termios::tcgetattr(&fd)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&fd, SetArg::TCSADRAIN, &raw)?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd.as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}
