//! The few raw system calls this crate makes, each wrapped once.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

/// Fills `buf` from the kernel CSPRNG, blocking until it is seeded.
pub fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, a live, writable slice.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        filled += n as usize;
    }
    Ok(())
}

/// Takes ownership of a socket from a type that only offers `IntoRawFd`.
pub fn owned_fd(socket: impl IntoRawFd) -> OwnedFd {
    let fd = socket.into_raw_fd();
    // SAFETY: `into_raw_fd` gave up ownership of an open descriptor; nothing else closes it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A close-on-exec, non-blocking eventfd: a flag one thread raises and another polls.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes two integers and returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd, is open, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes an eventfd readable (for good: nobody reads it back).
pub fn eventfd_raise(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes the 8 bytes of `one`, a live local, to a descriptor `fd` keeps open.
    // EAGAIN (the counter is full) still leaves it readable, which is all we need.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// Blocks until one of `fds` is readable (or in error); returns which, in order.
pub fn poll_readable(fds: &[BorrowedFd<'_>]) -> io::Result<Vec<bool>> {
    let ready =
        |revents: libc::c_short| revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0;
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `polled` is a live array of pollfd whose descriptors the borrows keep open.
        let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, -1) };
        if n >= 0 {
            return Ok(polled.iter().map(|p| ready(p.revents)).collect());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
