//! The few process-level syscalls the collector makes, each wrapped once.
//!
//! Recursion guard: the collector runs as the kernel's core_pattern pipe helper. It calls
//! `prctl(PR_SET_DUMPABLE, 0)` first thing, so if it crashes the kernel writes no core for it
//! at all (do_coredump gives up on a non-dumpable process) and never pipes the collector's
//! own core into a new collector. RLIMIT_CORE is deliberately left alone: the kernel sets the
//! helper's limit to 1, which is its own recursion marker ("RLIMIT_CORE set to 1, aborting
//! core"); a limit of 0 would not stop a pipe dump (pipes ignore the limit except for 1)
//! and would only remove that marker.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

/// Makes this process non-dumpable (see the module doc).
pub fn disable_core_dumps() -> nix::Result<()> {
    nix::sys::prctl::set_dumpable(false)
}

fn fd_is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only reads the descriptor flags of `fd`; it touches no memory.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// A kernel pipe helper starts with only fd 0 (the pipe); stdout and stderr are closed, so
/// the next file opened would become fd 1 or 2 and log lines would land in it. Opens
/// /dev/null as stdout and /dev/kmsg (the kernel log, forwarded to the host) as stderr when
/// they are missing.
pub fn ensure_stdio() {
    for (fd, path, fallback) in [(1, "/dev/null", "/dev/null"), (2, "/dev/kmsg", "/dev/null")] {
        if fd_is_open(fd) {
            continue;
        }
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .or_else(|_| OpenOptions::new().write(true).open(fallback));
        let Ok(file) = file else { continue };
        if file.as_raw_fd() == fd {
            // It landed on the right number: keep it open for the process's life.
            std::mem::forget(file);
            continue;
        }
        let _ = if fd == 1 {
            nix::unistd::dup2_stdout(&file)
        } else {
            nix::unistd::dup2_stderr(&file)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_is_open_distinguishes_open_and_closed() {
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(fd_is_open(file.as_raw_fd()));
        // Far above any descriptor a test process opens (and RLIMIT_NOFILE).
        assert!(!fd_is_open(i32::MAX - 1));
    }
}
