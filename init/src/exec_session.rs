//! One running process's I/O stream (see `vm_proto::stream` for the protocol). Four small
//! threads, each with one job:
//!
//! - the pump: read the output pipes (or the terminal master), send STDOUT/STDERR frames.
//!   A blocked send stops the reading, so a host that stops reading blocks the process;
//! - the stdin writer: write granted STDIN bytes to the process, then grant that much
//!   credit again, so at most `STDIN_WINDOW` bytes ever wait here;
//! - the reader: STDIN, STDIN_EOF, RESIZE and SIGNAL frames from the host. A host that
//!   disconnects (or breaks the protocol) hangs the process up with SIGHUP;
//! - the session's own thread: wait for the exit, let the pumps drain what the process
//!   wrote, send EXIT, close.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{bounded, select, unbounded, Receiver, Sender};
use nix::errno::Errno;
use nix::poll::PollFlags;
use vm_proto::stream::{self, DataFrame, ExitStatus, Frame, FrameError, Kind, STDIN_WINDOW};

use crate::exec_io::SessionFds;
use crate::reaper::Exit;
use crate::stream_accept::Refusals;
use crate::{sys, warn};

/// How long maitred waits, after EXIT, for the host to close the stream.
const EXIT_ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// After the process exits, at most this much more output is forwarded (a daemon it left
/// behind may keep writing to the same pipe).
const DRAIN_LIMIT: usize = 4 << 20;

/// Sends frames on the connection; every thread of a session shares one.
#[derive(Clone)]
struct FrameSink {
    conn: Arc<Mutex<UnixStream>>,
}

impl FrameSink {
    fn send_raw(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.write_all(bytes)
    }

    fn send(&self, kind: Kind, payload: &[u8]) -> std::io::Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        stream::write_frame(&mut *conn, kind, payload)
    }
}

/// A one-shot stop that threads can wait for with poll (a pipe whose write end closes) or
/// with select (a channel whose sender drops).
struct Stop {
    pipe_r: OwnedFd,
    pipe_w: Mutex<Option<OwnedFd>>,
    chan_tx: Mutex<Option<Sender<()>>>,
    chan_rx: Receiver<()>,
}

impl Stop {
    fn new() -> Result<Stop, Errno> {
        let (pipe_r, pipe_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (tx, rx) = bounded(0);
        Ok(Stop {
            pipe_r,
            pipe_w: Mutex::new(Some(pipe_w)),
            chan_tx: Mutex::new(Some(tx)),
            chan_rx: rx,
        })
    }

    fn fire(&self) {
        self.pipe_w.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.chan_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

static PROTOCOL_ERRORS: Refusals = Refusals::new("process stream");

/// What the session runs on: the started process, its fds, its exit.
pub struct Process {
    pub pid: i32,
    pub exit: Receiver<Exit>,
    pub fds: SessionFds,
}

pub fn exit_status(exit: Exit) -> ExitStatus {
    match exit {
        Exit::Code(code) => ExitStatus::Exited(code),
        Exit::Signal(signal) => ExitStatus::Signaled(signal),
    }
}

/// Serves `process` on `conn` until it exits; returns how it ended (None if the exit status
/// was lost, which only a broken reaper could cause).
pub fn serve(conn: UnixStream, process: Process) -> Option<Exit> {
    let Process { pid, exit, fds } = process;
    let reader_conn = conn.try_clone();
    let sink = FrameSink {
        conn: Arc::new(Mutex::new(conn)),
    };
    let started = sink
        .send(Kind::Started, &(pid as u32).to_be_bytes())
        .and_then(|()| sink.send(Kind::StdinCredit, &STDIN_WINDOW.to_be_bytes()));
    let stop = match Stop::new() {
        Ok(stop) => Arc::new(stop),
        Err(e) => {
            warn!("process stream: cannot create a pipe: {}", e.desc());
            hang_up(pid);
            return exit.recv().ok();
        }
    };
    let finished = Arc::new(AtomicBool::new(false));
    let SessionFds {
        stdin,
        stdout,
        stderr,
        master,
    } = fds;
    let tty = master.is_some();

    let outputs = [(Some(stdout), Kind::Stdout), (stderr, Kind::Stderr)]
        .into_iter()
        .filter_map(|(fd, kind)| fd.map(|fd| (fd, kind)))
        .collect();
    let pumper = {
        let (sink, stop) = (sink.clone(), stop.clone());
        std::thread::spawn(move || pump(outputs, &sink, &stop))
    };
    let (stdin_tx, stdin_rx) = unbounded();
    // Stdin bytes received and not yet written: never more than the credit window.
    let held = Arc::new(AtomicU64::new(0));
    let stdin = Arc::new(stdin);
    let direct = Some(stdin.clone());
    let writer = {
        let (sink, stop, held) = (sink.clone(), stop.clone(), held.clone());
        std::thread::spawn(move || write_stdin(stdin, &stdin_rx, &sink, &stop, &held, tty))
    };
    // Closed (dropped) when the reader ends: the host has closed its end.
    let (host_gone_tx, host_gone) = bounded::<()>(0);
    match (reader_conn, started) {
        (Ok(conn), Ok(())) => {
            let finished = finished.clone();
            let sink = sink.clone();
            let host = Host {
                pid,
                master,
                held,
                stdin: Some(stdin_tx),
                direct,
                unreported: 0,
            };
            std::thread::spawn(move || {
                read_host(conn, host, &sink, &finished);
                drop(host_gone_tx);
            });
        }
        _ => {
            hang_up(pid); // the host is already gone
            drop(host_gone_tx);
        }
    }

    let exit = exit.recv().ok();
    stop.fire();
    let _ = pumper.join();
    let _ = writer.join();
    finished.store(true, Ordering::SeqCst);
    if let Some(exit) = exit {
        let _ = sink.send(Kind::Exit, &stream::encode_exit(&exit_status(exit)));
    }
    {
        let conn = sink.conn.lock().unwrap_or_else(|p| p.into_inner());
        let _ = conn.shutdown(std::net::Shutdown::Write);
    }
    // Wait until the host has read EXIT and closed its end: the output before it may still
    // be on its way (a host reader that pauses), and an application's end powers the VM off,
    // which would lose what is in flight. A host that never closes is given up on.
    let _ = host_gone.recv_timeout(EXIT_ACK_TIMEOUT);
    let conn = sink.conn.lock().unwrap_or_else(|p| p.into_inner());
    let _ = conn.shutdown(std::net::Shutdown::Both);
    exit
}

/// A terminal hangup, for the process and its group: the host is gone.
fn hang_up(pid: i32) {
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGHUP);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP);
}

/// Output fds → frames of their kind, until each is at EOF, or until stopped and drained.
/// One thread serves stdout and stderr: they share the connection, so a host that stops
/// reading stops both either way.
fn pump(mut outputs: Vec<(OwnedFd, Kind)>, sink: &FrameSink, stop: &Stop) {
    let mut frame = DataFrame::new();
    let mut stopping = false;
    let mut drained = 0usize;
    // Wait before reading unless the last round filled a frame: after a short read the fd is
    // (almost surely) empty, and a read that fails with EAGAIN costs a system call, dear in
    // an emulated guest.
    let mut wait_first = true;
    while !outputs.is_empty() {
        let mut ready = vec![true; outputs.len()];
        if wait_first && !stopping {
            let fds: Vec<_> = outputs.iter().map(|(fd, _)| fd.as_fd()).collect();
            match sys::wait_any_or_stop(&fds, PollFlags::POLLIN, stop.pipe_r.as_fd()) {
                Ok((readable, stopped)) => {
                    stopping = stopped;
                    if !stopped {
                        ready = readable;
                    }
                }
                Err(_) => return,
            }
        }
        wait_first = true;
        let mut keep = Vec::with_capacity(outputs.len());
        for ((fd, kind), is_ready) in outputs.drain(..).zip(ready) {
            if !is_ready {
                keep.push((fd, kind));
                continue;
            }
            match nix::unistd::read(&fd, frame.space()) {
                Ok(0) => continue, // EOF: done with this one
                Ok(n) => {
                    if n == stream::DATA_CHUNK {
                        wait_first = false;
                    }
                    if sink.send_raw(frame.frame(kind, n)).is_err() {
                        return; // the host is gone: closing the fds gives the process EPIPE
                    }
                    if stopping {
                        drained += n;
                        if drained > DRAIN_LIMIT {
                            return;
                        }
                    }
                }
                Err(Errno::EAGAIN) if stopping => continue, // drained
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                // EIO: a terminal whose slave side every process has closed.
                Err(_) => continue,
            }
            keep.push((fd, kind));
        }
        outputs = keep;
    }
}

enum StdinMsg {
    Data(Vec<u8>),
    /// Bytes the reader wrote itself: give them back to the host as credit.
    Credit(u32),
    Eof,
}

/// Writes stdin data as the process takes it; grants the credit back after each chunk.
fn write_stdin(
    to: Arc<OwnedFd>,
    rx: &Receiver<StdinMsg>,
    sink: &FrameSink,
    stop: &Stop,
    held: &AtomicU64,
    tty: bool,
) {
    let mut to = Some(to);
    // Credit is given back in batches: one small frame per quarter window, or as soon as
    // nothing more is waiting here (the host may be waiting for it).
    let mut taken: u32 = 0;
    loop {
        let msg = select! {
            recv(rx) -> msg => msg.unwrap_or(StdinMsg::Eof),
            recv(stop.chan_rx) -> _ => return,
        };
        match msg {
            StdinMsg::Data(data) => {
                if let Some(fd) = &to {
                    match write_all(fd, &data, stop) {
                        Ok(true) => {}
                        Ok(false) => return, // stopped
                        Err(_) => to = None, // EPIPE: the process closed stdin; discard
                    }
                }
                held.fetch_sub(data.len() as u64, Ordering::SeqCst);
                taken += data.len() as u32;
                if taken >= STDIN_WINDOW / 4 || rx.is_empty() {
                    let _ = sink.send(Kind::StdinCredit, &taken.to_be_bytes());
                    taken = 0;
                }
            }
            StdinMsg::Credit(n) => {
                let _ = sink.send(Kind::StdinCredit, &(taken + n).to_be_bytes());
                taken = 0;
            }
            StdinMsg::Eof => {
                if let (true, Some(fd)) = (tty, &to) {
                    // A terminal has no EOF of its own: type the EOF character (^D).
                    let _ = write_all(fd, &[4], stop);
                }
                return; // dropping a pipe's write end is the process's EOF
            }
        }
    }
}

/// Writes as much of `data` as a non-blocking fd takes now; any error leaves the rest (and
/// the error) to the writer.
fn write_now(fd: &OwnedFd, mut data: &[u8]) -> usize {
    let mut written = 0;
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => {
                written += n;
                data = &data[n..];
            }
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    written
}

/// Writes all of `data` to a non-blocking fd; `Ok(false)` if stopped first.
fn write_all(fd: &OwnedFd, mut data: &[u8], stop: &Stop) -> Result<bool, Errno> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EAGAIN) => {
                let (_, stopped) =
                    sys::wait_or_stop(fd.as_fd(), PollFlags::POLLOUT, stop.pipe_r.as_fd())?;
                if stopped {
                    return Ok(false);
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// What the host's frames act on.
struct Host {
    pid: i32,
    master: Option<OwnedFd>,
    held: Arc<AtomicU64>,
    /// None after STDIN_EOF.
    stdin: Option<Sender<StdinMsg>>,
    /// The process's stdin, for writing without the writer thread while nothing is queued.
    direct: Option<Arc<OwnedFd>>,
    /// Bytes written here and not yet given back as credit (batched: every half window).
    unreported: u32,
}

/// Frames from the host until it closes. Breaking the protocol ends the session.
fn read_host(mut conn: UnixStream, mut host: Host, sink: &FrameSink, finished: &AtomicBool) {
    let pid = host.pid;
    let error = loop {
        let frame = match stream::read_frame(&mut conn) {
            Ok(frame) => frame,
            Err(e) => break e,
        };
        if let Err(e) = handle(frame, &mut host) {
            break e;
        }
    };
    drop(host); // no more stdin: the writer finishes
    if finished.load(Ordering::SeqCst) {
        return; // the session ended and closed the stream itself
    }
    if !matches!(error, FrameError::Closed | FrameError::Io(_)) {
        PROTOCOL_ERRORS.note(&error.to_string());
        let _ = sink.send(Kind::Error, error.to_string().as_bytes());
    }
    hang_up(pid);
    let conn = sink.conn.lock().unwrap_or_else(|p| p.into_inner());
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

fn handle(frame: Frame, host: &mut Host) -> Result<(), FrameError> {
    let during = "while the process runs";
    match frame.kind {
        Kind::Stdin => {
            // Credit: granted STDIN_WINDOW, given back as the process takes its input.
            let len = frame.payload.len() as u64;
            let before = host.held.fetch_add(len, Ordering::SeqCst);
            if before + len > u64::from(STDIN_WINDOW) || len == 0 {
                return Err(FrameError::BadPayload {
                    kind: frame.kind,
                    len: frame.payload.len(),
                });
            }
            let Some(tx) = host.stdin.as_ref() else {
                return Err(FrameError::Unexpected {
                    kind: frame.kind,
                    during: "after STDIN_EOF",
                });
            };
            // Nothing queued for the writer: write what the process takes right now here,
            // without waking the writer, and queue only the rest (order is kept: the queue
            // is empty).
            let written = match (&host.direct, before) {
                (Some(fd), 0) => write_now(fd, &frame.payload),
                _ => 0,
            };
            if written > 0 {
                host.held.fetch_sub(written as u64, Ordering::SeqCst);
                host.unreported += written as u32;
                if host.unreported >= STDIN_WINDOW / 2 {
                    let _ = tx.send(StdinMsg::Credit(host.unreported));
                    host.unreported = 0;
                }
            }
            if written < frame.payload.len() {
                let mut rest = frame.payload;
                rest.drain(..written);
                let _ = tx.send(StdinMsg::Data(rest));
            }
        }
        Kind::StdinCredit | Kind::Stdout | Kind::Stderr => {
            return Err(FrameError::Unexpected {
                kind: frame.kind,
                during: "from the host",
            })
        }
        Kind::StdinEof => {
            host.direct = None; // the writer's is then the last reference: its drop is EOF
            if let Some(tx) = host.stdin.take() {
                if host.unreported > 0 {
                    let _ = tx.send(StdinMsg::Credit(host.unreported));
                    host.unreported = 0;
                }
                let _ = tx.send(StdinMsg::Eof);
            }
        }
        Kind::Resize => {
            let size = stream::decode_resize(&frame)?;
            if let Some(master) = &host.master {
                let _ = sys::set_window_size(master, size);
            }
        }
        Kind::Signal => {
            let signal = stream::decode_signal(&frame)?;
            // SAFETY: kill takes plain integers; pid > 0 names our one child process.
            unsafe { libc::kill(host.pid, signal) };
        }
        kind => return Err(FrameError::Unexpected { kind, during }),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(stdin: Option<Sender<StdinMsg>>) -> Host {
        Host {
            pid: 0,
            master: None,
            held: Arc::new(AtomicU64::new(0)),
            stdin,
            direct: None,
            unreported: 0,
        }
    }

    #[test]
    fn handle_refuses_stdin_beyond_the_credit_window() {
        let (tx, rx) = unbounded();
        let mut host = host(Some(tx));
        let chunk = |n: usize| Frame {
            kind: Kind::Stdin,
            payload: vec![b'x'; n],
        };
        let window = STDIN_WINDOW as usize;
        handle(chunk(window), &mut host).unwrap();
        assert!(matches!(rx.try_recv(), Ok(StdinMsg::Data(d)) if d.len() == window));
        let err = handle(chunk(1), &mut host).unwrap_err();
        assert!(matches!(err, FrameError::BadPayload { .. }), "{err}");
        // Once written and credited back, the host may send again.
        host.held.store(0, Ordering::SeqCst);
        handle(chunk(1), &mut host).unwrap();
    }

    #[test]
    fn handle_refuses_frames_only_the_guest_sends() {
        let mut host = host(None);
        for kind in [Kind::Stdout, Kind::Exit, Kind::Hello, Kind::Start] {
            let frame = Frame {
                kind,
                payload: vec![],
            };
            let err = handle(frame, &mut host).unwrap_err();
            assert!(matches!(err, FrameError::Unexpected { .. }), "{err}");
        }
    }
}
