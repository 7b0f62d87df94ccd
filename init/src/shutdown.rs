//! The orderly end: SIGTERM to every process, up to 5 s for them to go, SIGKILL the rest,
//! then (as PID 1) unmount in reverse, sync and power off. In host mode only maitred's own
//! process groups are signalled and the process exits instead of powering off.

use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::context::{Context, Shutdown};
use crate::{error, info, mounts, warn};

pub const TERM_GRACE: Duration = Duration::from_secs(5);
const KILL_GRACE: Duration = Duration::from_secs(2);

fn signal_everyone(ctx: &Context, signal: Signal) {
    if ctx.pid1 {
        // kill(-1) from PID 1 reaches every process but PID 1 itself; kernel threads ignore it.
        let _ = kill(Pid::from_raw(-1), signal);
    } else {
        // Every child leads its own session and process group (setsid in spawn).
        for pid in ctx.reaper.tracked() {
            let _ = kill(Pid::from_raw(-pid), signal);
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
}

/// Stops every process. Returns when none are left or after SIGKILL's grace. Runs on the
/// thread that reaps (maitred's main thread), and reaps while it waits.
pub fn stop_processes(ctx: &Context) {
    ctx.stopping.store(true, Ordering::SeqCst);
    signal_everyone(ctx, Signal::SIGTERM);
    if ctx.reaper.reap_until_childless(TERM_GRACE) {
        return;
    }
    warn!(
        "processes still running after {}s; sending SIGKILL",
        TERM_GRACE.as_secs()
    );
    signal_everyone(ctx, Signal::SIGKILL);
    if !ctx.reaper.reap_until_childless(KILL_GRACE) {
        warn!("some processes survived SIGKILL");
    }
}

/// Shuts down. As PID 1 this powers the VM off and never returns.
pub fn shutdown(ctx: &Context, why: &Shutdown) {
    info!("shutting down ({why:?})");
    stop_processes(ctx);
    if ctx.pid1 {
        power_off();
    }
}

/// Unmounts, syncs and powers off. Never returns: if power-off fails, it waits forever,
/// because PID 1 exiting would panic the kernel.
pub fn power_off() -> ! {
    let table = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for (target, errno) in mounts::unmount_all(&mounts::unmount_order(&table)) {
        warn!("cannot unmount {target}: {}", errno.desc());
    }
    // A root disk attached read-write is left clean; a read-only root or an initramfs
    // needs nothing, so a failure here is not worth a line.
    let _ = nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    );
    nix::unistd::sync();
    info!("powering off");
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    error!("power-off failed: {}", e.desc());
    loop {
        std::thread::park();
    }
}

/// A fatal error: one clear line, then power off (PID 1) or exit 1 (host mode).
pub fn fatal(pid1: bool, message: &str) -> ! {
    error!("fatal: {message}");
    if pid1 {
        power_off();
    }
    std::process::exit(1);
}
