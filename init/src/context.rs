//! What every part of maitred shares: the reaper, the host link and the shutdown request.

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use crossbeam_channel::Sender;

use crate::host::HostLink;
use crate::reaper::Reaper;
use crate::spawn::Mode;

/// Wakes maitred's main thread to look at its shutdown requests. Anything else that sends it
/// only wakes the thread for nothing.
pub const WAKE_SIGNAL: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGUSR1;

/// Makes the main thread look at what was sent to it (see [`WAKE_SIGNAL`]).
pub fn wake_main_thread() {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), WAKE_SIGNAL);
}

/// Why maitred should shut the VM down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shutdown {
    Requested,
    Signal(i32),
    ApplicationExited,
}

pub struct Context {
    pub reaper: Reaper,
    pub host: HostLink,
    /// True when maitred is the VM's init; false in host mode (tests, demos).
    pub pid1: bool,
    /// This VM's id (maitred.vm_id): the hostname, also of containers.
    pub vm_id: String,
    /// Set once shutdown begins: nothing is respawned after that.
    pub stopping: AtomicBool,
    pub shutdown: Sender<Shutdown>,
    /// The pid of the running application's container init, which `exec` enters.
    pub app_container: Mutex<Option<i32>>,
}

impl Context {
    /// What `pid1` means for every child maitred starts (its console, its death signal).
    pub fn mode(&self) -> Mode {
        Mode::of(self.pid1)
    }

    /// Asks the main thread to shut down: it waits in sigwait, so the request is followed
    /// by [`WAKE_SIGNAL`] to the process (pending until it is taken, so never lost).
    pub fn request_shutdown(&self, why: Shutdown) {
        let _ = self.shutdown.send(why);
        wake_main_thread();
    }

    pub fn app_container(&self) -> Option<i32> {
        *self.app_container.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_app_container(&self, pid: Option<i32>) {
        *self.app_container.lock().unwrap_or_else(|p| p.into_inner()) = pid;
    }
}
