//! The VM's child processes (hypervisor, vhost-device-vsock, host-mode maitred) as guards:
//! each is killed and reaped when dropped, so an early error leaves none running. Signals
//! go only to a child we have not reaped: its pid cannot have been reused.
//!
//! The hypervisor's waiter thread learns of its exit with `waitid(WNOWAIT)`, which leaves
//! the zombie in place; only the guard reaps it, after the last signal it may send.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{io, LaunchError, HELPER_START};
use crate::hypervisor::Stop;
use crate::sys;

pub(super) fn spawn_child(mut command: Command, program: &str) -> Result<Child, LaunchError> {
    sys::kill_with_parent(&mut command);
    command.spawn().map_err(|source| LaunchError::Spawn {
        program: program.to_string(),
        source,
    })
}

/// vhost-device-vsock (or any helper that does not exit with the hypervisor).
pub(super) struct Helper {
    child: Child,
}

impl Helper {
    pub(super) fn spawn(command: Command, program: &str) -> Result<Helper, LaunchError> {
        spawn_child(command, program).map(|child| Helper { child })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a socket file the helper creates when it is ready; it offers no other signal.
    pub(super) fn wait_for_socket(&mut self, path: &Path) -> Result<(), LaunchError> {
        let deadline = Instant::now() + HELPER_START;
        while !path.exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(io("vhost-device-vsock")(std::io::Error::other(format!(
                    "exited during start-up ({status})"
                ))));
            }
            if Instant::now() > deadline {
                return Err(io("vhost-device-vsock")(std::io::Error::other(format!(
                    "{} did not appear within {}s",
                    path.display(),
                    HELPER_START.as_secs()
                ))));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL (by dropping).
    pub(super) fn stop(mut self, grace: Duration) {
        // try_wait reaps: once it says exited, the pid is no longer ours to signal.
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.child.id(), Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // Child::kill does nothing once a wait has seen the exit, so never hits a reused pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hypervisor (or host-mode maitred): its exit arrives on `exit`; dropping it kills and
/// reaps it.
pub(super) struct Hypervisor {
    child: Child,
    pub(super) exit: Receiver<String>,
    status: Option<String>,
}

impl Hypervisor {
    pub(super) fn spawn(command: Command, program: &str) -> Result<Hypervisor, LaunchError> {
        let child = spawn_child(command, program)?;
        let (tx, exit) = bounded(1);
        let pid = Pid::from_raw(child.id() as i32);
        // Sees the exit without reaping it (WNOWAIT): the zombie keeps the pid ours.
        std::thread::spawn(move || loop {
            match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(status) => return drop(tx.send(describe_wait(status))),
                Err(e) => return drop(tx.send(e.to_string())),
            }
        });
        Ok(Hypervisor {
            child,
            exit,
            status: None,
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Records an exit status received from `exit` elsewhere (a `select!`).
    pub(super) fn exited(&mut self, status: String) -> String {
        self.status = Some(status.clone());
        status
    }

    /// Has it exited, waiting up to `within`?
    pub(super) fn wait_exit(&mut self, within: Duration) -> bool {
        if self.status.is_some() {
            return true;
        }
        match self.exit.recv_timeout(within) {
            Ok(status) => {
                self.status = Some(status);
                true
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => true,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => false,
        }
    }

    /// Safe whatever its state: it is reaped only in `drop`, so the pid is still its own.
    pub(super) fn signal(&self, sig: Signal) {
        signal(self.child.id(), sig);
    }
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.signal(Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, sig: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 0 {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }
}

/// Copies the hypervisor's stdout (the serial console) to the log file, and to our stderr
/// once `show` is set (`--console`; stdout belongs to the application).
pub(super) fn tee_console(
    mut from: impl Read + Send + 'static,
    mut log: std::fs::File,
    show: Arc<AtomicBool>,
) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let _ = log.write_all(&buf[..n]);
                    if show.load(Ordering::SeqCst) {
                        let mut out = std::io::stderr().lock();
                        let _ = out.write_all(&buf[..n]);
                        let _ = out.flush();
                    }
                }
            }
        }
    });
}

/// The last `lines` lines of the guest console, on stderr: what a failed boot said.
pub fn print_console_tail(path: &Path, lines: usize) {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    eprintln!(
        "--- last {lines} lines of the guest console ({}) ---",
        path.display()
    );
    for line in &all[all.len().saturating_sub(lines)..] {
        // The kernel logs its command line, token included.
        eprintln!("{}", crate::hypervisor::redact(line));
    }
    eprintln!("--- end of the guest console ---");
}

fn describe_wait(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit code {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("killed by signal {}", sig as i32),
        other => format!("{other:?}"),
    }
}

/// Asks the hypervisor to stop through its own channel (QMP quit, `crosvm stop`, …).
pub(super) fn request_stop(stop: &Stop) {
    match stop {
        Stop::Command(command) => {
            let _ = command
                .to_command()
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        Stop::QmpQuit { socket } => {
            if let Ok(mut qmp) = std::os::unix::net::UnixStream::connect(socket) {
                let _ = qmp.set_read_timeout(Some(Duration::from_secs(2)));
                let _ =
                    qmp.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n");
                let mut sink = [0u8; 4096];
                let _ = qmp.read(&mut sink);
            }
        }
    }
}

pub(super) fn write_private(path: &Path, contents: &str) -> Result<(), LaunchError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(io(format!("writing {}", path.display())))
}
