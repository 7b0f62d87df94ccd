//! Every raw system call maitred makes that nix does not wrap safely, each in one small
//! function with its safety argument. Everything above this module is safe Rust.

use std::ffi::{c_char, CStr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;

use crate::spawn::{ChildStdio, Prepared};

fn null_terminated(strings: &[std::ffi::CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Why [`spawn_exec`] did not start the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnFailure {
    /// clone(2) itself failed: no child.
    Clone(Errno),
    /// The child could not set itself up or exec; it exited 127 (and is left to the reaper).
    Exec { pid: i32, errno: Errno },
}

/// The child's stack: it only makes system calls, so this is ample (glibc's posix_spawn
/// uses 32 KiB plus the argument sizes, and copies nothing onto it either).
const CHILD_STACK_BYTES: usize = 64 * 1024;

/// What the child of [`spawn_exec`] reads; it lives on the parent's stack, which the
/// parent does not touch until the child has exec'd or exited (CLONE_VFORK).
struct ChildArgs<'a> {
    program: &'a CStr,
    cwd: &'a CStr,
    argv: &'a [*const c_char],
    envp: &'a [*const c_char],
    fds: [i32; 3],
    /// Become fds 3, 4, …; all above the last of them (see [`spawn_exec`]).
    inherit: &'a [i32],
    die_with_parent: bool,
    reset_signals: &'a [i32],
    /// 0, or the errno of the step that failed; written by the child, read after it.
    errno: std::sync::atomic::AtomicI32,
}

/// Starts `prepared` the way posix_spawn does: clone(CLONE_VM | CLONE_VFORK) on a stack of
/// its own, so nothing is copied (fork copied every page table, and both sides then took
/// copy-on-write faults), and this thread is suspended until the child has exec'd or
/// failed. The child sets itself up and execs; an error comes back in shared memory.
/// Returns the child's pid.
/// `inherit` become the child's fds 3, 4, …; each must already be numbered above
/// 2 + `inherit.len()`, so that no dup2 into place overwrites one still to be moved.
pub fn spawn_exec(
    prepared: &Prepared,
    stdio: &ChildStdio,
    inherit: &[i32],
    die_with_parent: bool,
) -> Result<i32, SpawnFailure> {
    // All allocation happens here, before the clone.
    let argv = null_terminated(&prepared.argv);
    let envp = null_terminated(&prepared.envp);
    let mut stack = vec![0u8; CHILD_STACK_BYTES];
    let args = ChildArgs {
        program: &prepared.program,
        cwd: &prepared.cwd,
        argv: &argv,
        envp: &envp,
        fds: [
            stdio.stdin.as_raw_fd(),
            stdio.stdout.as_raw_fd(),
            stdio.stderr.as_raw_fd(),
        ],
        inherit,
        die_with_parent,
        reset_signals: non_default_signals(),
        errno: std::sync::atomic::AtomicI32::new(0),
    };
    // The stack grows down from its (16-byte aligned) end.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK_BYTES) & !15;

    // No signal handler may run in the child while it shares our memory: everything is
    // blocked across the clone, and the child resets dispositions before unblocking.
    let all = nix::sys::signal::SigSet::all();
    let mut old = nix::sys::signal::SigSet::empty();
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&all),
        Some(&mut old),
    );
    // The child reads `args` and runs on `stack`; CLONE_VFORK keeps this thread suspended,
    // so both stay alive and untouched, until the child has exec'd or exited.
    // SAFETY: see above; the child makes only system calls on data prepared above, so
    // sharing our memory (CLONE_VM) is safe.
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::from_ref(&args).cast_mut().cast(),
        )
    };
    let clone_errno = Errno::last();
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&old),
        None,
    );
    drop(stack);
    if pid < 0 {
        return Err(SpawnFailure::Clone(clone_errno));
    }
    match args.errno.load(std::sync::atomic::Ordering::SeqCst) {
        0 => Ok(pid),
        errno => Err(SpawnFailure::Exec {
            pid,
            errno: Errno::from_raw(errno),
        }),
    }
}

/// The signals whose disposition is not SIG_DFL here (Rust's runtime ignores SIGPIPE and
/// catches SIGSEGV and SIGBUS), read once: maitred sets no disposition after start-up, so
/// a child resets these few instead of making 62 sigaction calls while we wait for it.
fn non_default_signals() -> &'static [i32] {
    static SIGNALS: std::sync::OnceLock<Vec<i32>> = std::sync::OnceLock::new();
    SIGNALS.get_or_init(|| {
        (1..libc::SIGRTMAX())
            .filter(|&signal| signal != libc::SIGKILL && signal != libc::SIGSTOP)
            .filter(|&signal| {
                // SAFETY: a zeroed sigaction is a valid value for the kernel to overwrite;
                // a null new action only reads the current one.
                let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
                // SAFETY: as above; `current` is a live local.
                let rc = unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) };
                rc != 0 || current.sa_sigaction != libc::SIG_DFL
            })
            .collect()
    })
}

/// The child of [`spawn_exec`]: sets itself up and execs; never returns.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` spawn_exec passed, alive until we exec or exit.
    let args = unsafe { &*(arg as *const ChildArgs<'_>) };
    // SAFETY: we are the clone(CLONE_VM | CLONE_VFORK) child; the pointers are into data the
    // suspended parent keeps alive.
    unsafe { child_exec(args) }
}

/// In the child. Never returns.
///
/// # Safety
/// Call only in the child of [`spawn_exec`]; the pointers must be valid and NUL-terminated.
unsafe fn child_exec(args: &ChildArgs<'_>) -> ! {
    let fail = |errno: i32| -> ! {
        args.errno
            .store(errno.max(1), std::sync::atomic::Ordering::SeqCst);
        // SAFETY: _exit is async-signal-safe and ends only this child.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: each call is async-signal-safe and takes plain integers or pointers to live,
    // NUL-terminated data prepared before the clone.
    unsafe {
        libc::setsid();
        if args.die_with_parent {
            // Host mode: a killed maitred must not leave its processes behind.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        }
        for (target, fd) in args.fds.into_iter().enumerate() {
            if libc::dup2(fd, target as i32) < 0 {
                fail(*libc::__errno_location());
            }
        }
        for (i, &fd) in args.inherit.iter().enumerate() {
            if libc::dup2(fd, 3 + i as i32) < 0 {
                fail(*libc::__errno_location());
            }
        }
        // A console child gets it as controlling terminal if nobody holds it; not fatal.
        libc::ioctl(0, libc::TIOCSCTTY, 0);
        // Start from a clean signal state: default dispositions, nothing blocked.
        for &signal in args.reset_signals {
            libc::signal(signal, libc::SIG_DFL);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if libc::chdir(args.cwd.as_ptr()) < 0 {
            fail(*libc::__errno_location());
        }
        // No fd of ours leaks into the program, but those it inherits.
        libc::syscall(
            libc::SYS_close_range,
            3 + args.inherit.len() as u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        libc::execve(
            args.program.as_ptr(),
            args.argv.as_ptr(),
            args.envp.as_ptr(),
        );
        fail(*libc::__errno_location())
    }
}

/// `ioctl(fd, TIOCSCTTY, 1)`: make `fd`'s terminal our controlling terminal.
pub fn set_controlling_tty(fd: &OwnedFd) -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY takes an integer argument; `fd` is open for the call's duration.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 1) };
    Errno::result(rc).map(drop)
}

/// Sets the flags of network interface `name` through `socket` (SIOCGIFFLAGS/SIOCSIFFLAGS).
pub fn set_interface_up(socket: &OwnedFd, name: &str) -> Result<(), Errno> {
    let mut req = ifreq(name)?;
    // SAFETY: `req` is a valid ifreq for this interface name; the kernel fills ifru_flags.
    Errno::result(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: reading and writing the flags member of the union the kernel just filled.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS reads the ifreq.
    Errno::result(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }).map(drop)
}

/// SIOCSIFADDR or SIOCSIFNETMASK with an IPv4 address (network byte order as `u32` bytes).
pub fn set_interface_ipv4(
    socket: &OwnedFd,
    name: &str,
    request: libc::Ioctl,
    addr: std::net::Ipv4Addr,
) -> Result<(), Errno> {
    let mut req = ifreq(name)?;
    let sin = sockaddr_in(addr);
    // SAFETY: ifru_addr is a sockaddr-sized union member; a sockaddr_in fits in it exactly.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (&sin as *const libc::sockaddr_in).cast::<u8>(),
            (&mut req.ifr_ifru.ifru_addr as *mut libc::sockaddr).cast::<u8>(),
            std::mem::size_of::<libc::sockaddr_in>(),
        );
    }
    // SAFETY: `req` is a valid ifreq holding the name and address for this request.
    Errno::result(unsafe { libc::ioctl(socket.as_raw_fd(), request, &req) }).map(drop)
}

/// Adds a default route via `gateway` (SIOCADDRT).
pub fn add_default_route(socket: &OwnedFd, gateway: std::net::Ipv4Addr) -> Result<(), Errno> {
    // SAFETY: rtentry is plain data; all-zero is its documented empty value.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    let any = sockaddr_in(std::net::Ipv4Addr::UNSPECIFIED);
    let gw = sockaddr_in(gateway);
    // SAFETY: each rt_* field is a sockaddr; a sockaddr_in has the same size.
    unsafe {
        std::ptr::copy_nonoverlapping(&any, (&mut route.rt_dst as *mut libc::sockaddr).cast(), 1);
        std::ptr::copy_nonoverlapping(
            &any,
            (&mut route.rt_genmask as *mut libc::sockaddr).cast(),
            1,
        );
        std::ptr::copy_nonoverlapping(
            &gw,
            (&mut route.rt_gateway as *mut libc::sockaddr).cast(),
            1,
        );
    }
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: `route` is a fully initialised rtentry for SIOCADDRT.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCADDRT, &route) };
    match Errno::result(rc) {
        Err(Errno::EEXIST) => Ok(()),
        other => other.map(drop),
    }
}

fn sockaddr_in(addr: std::net::Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    }
}

fn ifreq(name: &str) -> Result<libc::ifreq, Errno> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() || name.contains('\0') {
        return Err(Errno::EINVAL);
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as c_char;
    }
    Ok(req)
}

/// Removes `cap` from the bounding set (needs CAP_SETPCAP).
pub fn drop_bounding_cap(cap: u32) -> Result<(), Errno> {
    // SAFETY: PR_CAPBSET_DROP takes a capability number; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
    match Errno::result(rc) {
        // A capability this kernel does not know is not held either.
        Err(Errno::EINVAL) => Ok(()),
        other => other.map(drop),
    }
}

/// Ends the process by `signal` with its default action (used to mirror how a contained
/// application died), without a second core dump of our own. Falls back to
/// exit(128 + signal) for a signal that does not kill.
pub fn die_by_signal(signal: i32) -> ! {
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    // SAFETY: signal/sigprocmask/raise take plain values and a local, initialised sigset.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
    std::process::exit(128 + signal)
}

/// Sets O_NONBLOCK on `fd`.
pub fn set_nonblocking(fd: std::os::fd::BorrowedFd<'_>) -> Result<(), Errno> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

/// A new pseudo-terminal of `size`: (master, slave), both close-on-exec.
pub fn open_pty(size: vm_proto::stream::WindowSize) -> Result<(OwnedFd, OwnedFd), Errno> {
    use nix::fcntl::OFlag;
    use std::os::unix::fs::OpenOptionsExt;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    // ptsname_r: the thread-safe form (other threads may open terminals at the same time).
    let name = nix::pty::ptsname_r(&master)?;
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&name)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?
        .into();
    let master = OwnedFd::from(master);
    set_window_size(&master, size)?;
    Ok((master, slave))
}

/// TIOCSWINSZ: the kernel sends SIGWINCH to the terminal's foreground process group.
pub fn set_window_size(tty: &OwnedFd, size: vm_proto::stream::WindowSize) -> Result<(), Errno> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which points at a live local.
    Errno::result(unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &ws) }).map(drop)
}

/// Waits until `fd` has `events` or `stop` is readable. Returns (fd ready, stop readable).
pub fn wait_or_stop(
    fd: std::os::fd::BorrowedFd<'_>,
    events: nix::poll::PollFlags,
    stop: std::os::fd::BorrowedFd<'_>,
) -> Result<(bool, bool), Errno> {
    let (ready, stopped) = wait_any_or_stop(&[fd], events, stop)?;
    Ok((ready[0], stopped))
}

/// Waits until one of `fds` has `events` or `stop` is readable. Returns which fds are
/// ready (an error or hang-up counts), and whether `stop` is.
pub fn wait_any_or_stop(
    fds: &[std::os::fd::BorrowedFd<'_>],
    events: nix::poll::PollFlags,
    stop: std::os::fd::BorrowedFd<'_>,
) -> Result<(Vec<bool>, bool), Errno> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut polled: Vec<PollFd<'_>> = fds.iter().map(|fd| PollFd::new(*fd, events)).collect();
    polled.push(PollFd::new(stop, PollFlags::POLLIN));
    loop {
        match poll(&mut polled, PollTimeout::NONE) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    let any = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
    let stopped = polled.pop().is_some_and(|f| any(&f));
    Ok((polled.iter().map(any).collect(), stopped))
}

/// In a freshly forked child whose stdin is a terminal: become a process group of our own
/// and that terminal's foreground group, so the terminal's signals (Ctrl-C, Ctrl-Z, Ctrl-\)
/// reach us and not the process that forked us (which would forward them a second time).
pub fn take_terminal_foreground() {
    // SAFETY: setpgid/isatty/signal/tcsetpgrp take plain integers; SIGTTOU is ignored only
    // around tcsetpgrp (a background group may not otherwise take the terminal) and reset.
    unsafe {
        libc::setpgid(0, 0);
        if libc::isatty(0) == 1 {
            libc::signal(libc::SIGTTOU, libc::SIG_IGN);
            libc::tcsetpgrp(0, libc::getpid());
            libc::signal(libc::SIGTTOU, libc::SIG_DFL);
        }
    }
}

/// Waits up to `timeout` for one of `signals` (which the caller blocks) to be pending, and
/// takes it. Returns false on timeout.
pub fn wait_for_signal(signals: &nix::sys::signal::SigSet, timeout: std::time::Duration) -> bool {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: both pointers are to live locals (the set is nix's wrapper over a sigset_t);
    // the siginfo out-pointer may be null.
    let rc = unsafe { libc::sigtimedwait(signals.as_ref(), std::ptr::null_mut(), &timeout) };
    rc > 0
}

/// A close-on-exec copy of `fd` numbered `min` or above.
pub fn dup_at_least(fd: std::os::fd::BorrowedFd<'_>, min: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: F_DUPFD_CLOEXEC takes an integer and returns a new descriptor or -1.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    Errno::result(copy)?;
    // SAFETY: `copy` was just returned by fcntl, is open, and nothing else owns it.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(copy) })
}
