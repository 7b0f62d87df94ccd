//! The one and only waiter. Every exit status in this process goes through [`Reaper::reap`]
//! (a `waitpid(-1, WNOHANG)` loop run on SIGCHLD), which hands it to whoever registered for
//! that pid: a callback run on the reaping thread once the lock is released (a respawn, a
//! LaunchProcess reply), or a channel a thread waits on. Nothing else calls wait, so no
//! status is ever stolen or lost, and orphans that the kernel re-parents to us are reaped
//! too.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// What runs when a registered process ends (with its pid and exit), on the thread that reaps it. It must not
/// block for long: that thread is the signal loop (or shutdown).
pub type OnExit = Box<dyn FnOnce(i32, Exit) + Send>;

#[derive(Default)]
struct State {
    waiters: HashMap<i32, OnExit>,
    /// True once waitpid said ECHILD: we have no children at all.
    childless: bool,
}

#[derive(Default)]
pub struct Reaper {
    state: Mutex<State>,
}

/// Held while starting a process, so its exit cannot be published before it is registered.
pub struct Registration<'a> {
    state: MutexGuard<'a, State>,
}

impl Registration<'_> {
    /// Registers `pid`; `on_exit` runs with its exit status.
    pub fn register_call(mut self, pid: i32, on_exit: OnExit) {
        self.state.waiters.insert(pid, on_exit);
        self.state.childless = false;
    }
}

impl Reaper {
    pub fn new() -> Reaper {
        Reaper::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: take it anyway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Call before starting a process; call `register_call` with the child's pid after.
    pub fn registration(&self) -> Registration<'_> {
        Registration { state: self.lock() }
    }

    /// Reaps every child that has exited and publishes each status. Run on SIGCHLD.
    pub fn reap(&self) {
        loop {
            let status = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG));
            let (pid, exit) = match status {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, Exit::Signal(signal as i32)),
                Ok(WaitStatus::StillAlive) => return,
                Ok(_) => continue, // stopped/continued: not an exit
                Err(Errno::EINTR) => continue,
                Err(_) => {
                    // ECHILD: nobody left.
                    self.lock().childless = true;
                    return;
                }
            };
            let on_exit = { self.lock().waiters.remove(&pid.as_raw()) };
            // Outside the lock: a callback may start a process (a respawn).
            if let Some(on_exit) = on_exit {
                on_exit(pid.as_raw(), exit);
            }
        }
    }

    /// Reaps until we have no children left, or `timeout` passes. True if none are left.
    /// For the thread that otherwise reaps on SIGCHLD (which must be blocked): it waits here
    /// for SIGCHLD itself, since nobody else will take it.
    pub fn reap_until_childless(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut sigchld = SigSet::empty();
        sigchld.add(Signal::SIGCHLD);
        loop {
            self.reap();
            if self.lock().childless {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            // An exit after the reap above leaves SIGCHLD pending: this returns at once.
            crate::sys::wait_for_signal(&sigchld, left);
        }
    }

    /// Pids still registered (running processes we started).
    pub fn tracked(&self) -> Vec<i32> {
        self.lock().waiters.keys().copied().collect()
    }
}
