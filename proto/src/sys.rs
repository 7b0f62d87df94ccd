//! The few raw system calls this crate makes, each wrapped once.

use std::io;

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

/// `shutdown(2)` on a listening socket: wakes a thread blocked in `accept`.
pub fn shutdown_listener(fd: std::os::fd::BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    // SAFETY: shutdown takes a file descriptor number only; `fd` is borrowed, so open.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
}

/// Takes ownership of a socket from a type that only offers `IntoRawFd`.
pub fn owned_fd(socket: impl std::os::fd::IntoRawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let fd = socket.into_raw_fd();
    // SAFETY: `into_raw_fd` gave up ownership of an open descriptor; nothing else closes it.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}
