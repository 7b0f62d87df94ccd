//! Attaching this process to a process in the VM, as `run` and `exec` do: our stdin, stdout
//! and stderr become its own (byte for byte, over `stream_client`); with a terminal, ours
//! goes to raw mode for the session and the guest process gets a terminal of the same size;
//! signals sent to us are passed on.
//!
//! Signals: SIGWINCH sends the new window size. SIGINT, SIGTERM, SIGHUP and SIGQUIT go to the
//! process. A second SIGINT within [`SECOND_INTERRUPT`], or a SIGTERM the process has not
//! answered within [`TERM_GRACE`], gives up on it ([`Ended::Interrupted`]).

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crossbeam_channel::{never, select, Receiver};
use vm_proto::protos::guest::ExecRequest;
use vm_proto::stream::ExitStatus;

use crate::stream_client::{self, LocalIo, SessionEnd};
use crate::terminal::{self, RawMode};

/// A second SIGINT this soon after the first stops waiting for the process.
pub const SECOND_INTERRUPT: Duration = Duration::from_secs(3);
/// How long a process may take to end after SIGTERM before we stop waiting for it.
pub const TERM_GRACE: Duration = Duration::from_secs(10);

/// Why a session ended.
#[derive(Debug)]
pub enum Ended {
    /// The process ended (or could not start: `ExitStatus::Failed`).
    Exited(ExitStatus),
    /// The stream broke without an exit status: maitred or the VM went away.
    Lost(String),
    /// The VM stopped (its hypervisor's exit status).
    VmStopped(String),
    /// We gave up after a second SIGINT or an unanswered SIGTERM.
    Interrupted(i32),
    /// The stream could not be set up.
    Failed(String),
}

/// Does the user want a terminal? `-t`/`-T` decide; otherwise only when both our stdin and
/// stdout are terminals, so `vm_launcher run -- app | sha256sum` stays byte-exact even when
/// typed at a shell.
pub fn wants_tty(choice: Option<bool>) -> bool {
    choice.unwrap_or_else(|| {
        terminal::is_terminal(std::io::stdin().as_fd())
            && terminal::is_terminal(std::io::stdout().as_fd())
    })
}

fn dup(fd: std::os::fd::BorrowedFd<'_>) -> Option<File> {
    fd.try_clone_to_owned().ok().map(File::from)
}

/// Our fds 0, 1 and 2 for the session (duplicates, so the stream's threads own them).
fn local_io() -> Result<LocalIo, String> {
    let stdout = dup(std::io::stdout().as_fd()).ok_or("cannot duplicate stdout")?;
    let stderr = dup(std::io::stderr().as_fd()).ok_or("cannot duplicate stderr")?;
    Ok(LocalIo {
        stdin: dup(std::io::stdin().as_fd()),
        stdout,
        stderr,
    })
}

/// Runs `req` on the authenticated stream `conn` with our stdio until it ends. `vm_end`
/// delivers when the VM stops (for `run`).
pub fn run_session(
    conn: UnixStream,
    name: &str,
    mut req: ExecRequest,
    tty: bool,
    signals: &Receiver<i32>,
    vm_end: Option<&Receiver<String>>,
) -> Ended {
    let stdin = std::io::stdin();
    let mut raw = None;
    if tty {
        req.set_tty(true);
        if let Some(size) = terminal::window_size(stdin.as_fd()) {
            req.set_rows(u32::from(size.rows));
            req.set_cols(u32::from(size.cols));
        }
        if let Ok(term) = std::env::var("TERM") {
            req.mut_env().entry("TERM".into()).or_insert(term);
        }
        if terminal::is_terminal(stdin.as_fd()) {
            raw = RawMode::enable(stdin.as_fd()).ok();
        }
    }
    let local = match local_io() {
        Ok(local) => local,
        Err(e) => return Ended::Failed(e),
    };
    let session = match stream_client::start(conn, name, &req, local) {
        Ok(Ok(session)) => session,
        Ok(Err(status)) => return Ended::Exited(status),
        Err(e) => return Ended::Failed(e.to_string()),
    };
    let ended = wait(&session, signals, vm_end, tty);
    drop(session); // a process still running is hung up
    drop(raw);
    ended
}

fn wait(
    session: &stream_client::Session,
    signals: &Receiver<i32>,
    vm_end: Option<&Receiver<String>>,
    tty: bool,
) -> Ended {
    let no_vm = never();
    let vm_end = vm_end.unwrap_or(&no_vm);
    let mut last_interrupt: Option<Instant> = None;
    let mut term_deadline: Option<Instant> = None;
    loop {
        let tick = term_deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        select! {
            recv(session.end) -> end => return match end {
                Ok(SessionEnd::Exited(status)) => Ended::Exited(status),
                Ok(SessionEnd::Lost(why)) => Ended::Lost(why),
                Err(_) => Ended::Lost("the process stream ended".into()),
            },
            recv(vm_end) -> status => {
                return Ended::VmStopped(status.unwrap_or_else(|_| "unknown".into()))
            }
            recv(signals) -> signal => {
                let Ok(signal) = signal else { continue };
                match signal {
                    libc::SIGWINCH if tty => {
                        if let Some(size) = terminal::window_size(std::io::stdin().as_fd()) {
                            session.resize(size);
                        }
                    }
                    libc::SIGWINCH => {}
                    libc::SIGINT => {
                        if last_interrupt.is_some_and(|t| t.elapsed() < SECOND_INTERRUPT) {
                            return Ended::Interrupted(signal);
                        }
                        last_interrupt = Some(Instant::now());
                        session.signal(signal);
                    }
                    libc::SIGTERM => {
                        session.signal(signal);
                        term_deadline.get_or_insert(Instant::now() + TERM_GRACE);
                    }
                    other => session.signal(other),
                }
            }
            default(tick) => {
                if term_deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ended::Interrupted(libc::SIGTERM);
                }
            }
        }
    }
}

/// The exit status for `ended`, with one line on stderr for everything but a normal end.
/// `what` names the process ("the application", "exec") and `vm` the VM, for the messages.
pub fn exit_code(ended: &Ended, what: &str, vm: &str) -> u8 {
    let code = match ended {
        Ended::Exited(status) => {
            if let ExitStatus::Failed { reason, .. } = status {
                eprintln!("vm_launcher: cannot run {what} in VM {vm}: {reason}");
            }
            status.shell_code()
        }
        Ended::Lost(why) => {
            eprintln!("vm_launcher: lost {what} in VM {vm}: {why}");
            crate::commands::EXIT_LAUNCHER_FAILED.into()
        }
        Ended::VmStopped(status) => {
            eprintln!(
                "vm_launcher: VM {vm} stopped before {what} ended ({status}); --console shows the guest's console"
            );
            crate::commands::EXIT_LAUNCHER_FAILED.into()
        }
        Ended::Interrupted(signal) => {
            eprintln!("vm_launcher: signal {signal}: gave up waiting for {what} in VM {vm}");
            128 + signal
        }
        Ended::Failed(why) => {
            eprintln!("vm_launcher: cannot run {what} in VM {vm}: {why}");
            crate::commands::EXIT_LAUNCHER_FAILED.into()
        }
    };
    code.clamp(0, 255) as u8
}
