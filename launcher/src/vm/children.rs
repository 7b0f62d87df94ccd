//! The VM's child processes (hypervisor, vhost-device-vsock, host-mode maitred) and the
//! small things done to them: spawn so they die with us, wait for a helper's socket, copy
//! the console, signal, stop through the hypervisor's own channel.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Waits for a socket file the helper creates when it is ready; it offers no other signal.
pub(super) fn wait_for_socket(path: &Path, helper: &mut Child) -> Result<(), LaunchError> {
    let deadline = Instant::now() + HELPER_START;
    while !path.exists() {
        if let Ok(Some(status)) = helper.try_wait() {
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

/// Copies the hypervisor's stdout (the serial console) to the log file, and to our stdout
/// once `show` is set.
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
                        let mut out = std::io::stdout().lock();
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

pub(super) fn signal(pid: i32, signal: i32) {
    if pid > 0 {
        // SAFETY: kill takes plain integers; pid > 0 names one process, never a group.
        unsafe { libc::kill(pid, signal) };
    }
}

pub(super) fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (_, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
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
