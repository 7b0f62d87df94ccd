//! The control stream of `--forward`: maitred listens on 127.0.0.1:PORT for each forward,
//! in the guest at once and, while the application runs in a container with a network of
//! its own, in that namespace too. Each accepted connection is parked (`Pending`) and
//! announced to the host as PENDING; the host ATTACHes to it or CANCELs it. The listeners
//! live as long as the control stream: the host closing it closes them.

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};
use vm_proto::forward;
use vm_proto::stream;

use super::{netns, note_refusal, refuse, Pending, Slot};
use crate::context::Context;

/// How often an accept loop looks at its stop flags.
const ACCEPT_POLL: Duration = Duration::from_millis(200);
/// How often the session looks for the application's container coming or going.
const WATCH_INTERVAL: Duration = Duration::from_millis(10);
/// How long a new container may take to make its network namespace (it does so first).
const NETNS_WAIT: Duration = Duration::from_secs(2);

struct Session {
    writer: Mutex<UnixStream>,
    stop: AtomicBool,
    pending: Arc<Pending>,
    /// What this control stream's connections are parked under.
    id: u64,
}

impl Session {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Serves one control stream until the host closes it.
pub fn serve(ctx: &Arc<Context>, pending: &Arc<Pending>, mut conn: UnixStream, ports: &[u16]) {
    let mut listeners = Vec::with_capacity(ports.len());
    for port in ports {
        match bind(*port, false) {
            Ok(listener) => listeners.push(listener),
            Err(e) => {
                return refuse(
                    &mut conn,
                    &format!("cannot listen on 127.0.0.1:{port} in the guest: {e}"),
                )
            }
        }
    }
    let Ok(writer) = conn.try_clone() else {
        return;
    };
    if stream::write_frame(&mut conn, forward::OK, &[]).is_err() {
        return;
    }
    let session = Arc::new(Session {
        writer: Mutex::new(writer),
        stop: AtomicBool::new(false),
        pending: pending.clone(),
        id: pending.new_session(),
    });
    let always = Arc::new(AtomicBool::new(false));
    for (index, listener) in listeners.into_iter().enumerate() {
        spawn_accept(&session, listener, index as u16, &always);
    }
    let (watch_ctx, watch_session, watch_ports) = (ctx.clone(), session.clone(), ports.to_vec());
    let watcher = std::thread::Builder::new()
        .name("forward-watch".into())
        .stack_size(super::THREAD_STACK)
        .spawn(move || watch_container(&watch_ctx, &watch_session, &watch_ports));
    if watcher.is_err() {
        note_refusal("cannot start the container watcher");
    }
    loop {
        match stream::read_frame(&mut conn) {
            Ok(frame) if frame.kind == forward::CANCEL => {
                if let Ok(id) = forward::decode_cancel(&frame) {
                    drop(pending.take(id));
                }
            }
            Ok(frame) => note_refusal(&format!("unexpected {:?} on a control stream", frame.kind)),
            Err(_) => break,
        }
    }
    session.stop.store(true, Ordering::SeqCst);
    pending.end_session(session.id);
}

/// A listening socket on 127.0.0.1:`port`. `freebind`: bind even before the namespace's
/// loopback is up (a new container brings it up a moment after it makes the namespace).
fn bind(port: u16, freebind: bool) -> std::io::Result<TcpListener> {
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if freebind {
        socket::setsockopt(&fd, sockopt::IpFreebind, &true)?;
    }
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(127, 0, 0, 1, port),
    )?;
    socket::listen(&fd, Backlog::new(128).unwrap_or(Backlog::MAXCONN))?;
    Ok(TcpListener::from(fd))
}

fn spawn_accept(session: &Arc<Session>, listener: TcpListener, index: u16, stop: &Arc<AtomicBool>) {
    let (session, stop) = (session.clone(), stop.clone());
    let spawned = std::thread::Builder::new()
        .name("forward-listen".into())
        .stack_size(super::THREAD_STACK)
        .spawn(move || accept_loop(&session, &listener, index, &stop));
    if spawned.is_err() {
        note_refusal("cannot start a forward listener thread");
    }
}

/// Accepts guest connections for forward `index` until the session or `stop` ends.
fn accept_loop(session: &Session, listener: &TcpListener, index: u16, stop: &AtomicBool) {
    while !session.stopped() && !stop.load(Ordering::SeqCst) {
        // Every ACCEPT_POLL at least: a connection the host never answered is closed in
        // time even when no other one comes.
        session.pending.expire();
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(ACCEPT_POLL).unwrap_or(PollTimeout::NONE);
        if !matches!(poll(&mut fds, timeout), Ok(n) if n > 0) {
            continue;
        }
        let conn = match listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                note_refusal(&format!("accepting on a forward: {e}"));
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        if announce(session, conn, index).is_err() {
            // The host is gone: the session ends.
            session.stop.store(true, Ordering::SeqCst);
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::ConnectionAborted
    )
}

/// Parks `conn` and tells the host; past the relay limit the connection is closed at once.
fn announce(session: &Session, conn: TcpStream, index: u16) -> std::io::Result<()> {
    let Some(slot) = Slot::take() else {
        note_refusal("too many forwarded connections; closed a new one");
        return Ok(());
    };
    conn.set_nonblocking(false)?;
    let id = session.pending.park(conn, slot, session.id);
    let mut writer = session.writer.lock().unwrap_or_else(|p| p.into_inner());
    stream::write_frame(
        &mut *writer,
        forward::PENDING,
        &forward::encode_pending(id, index),
    )
}

/// Listens in the application container's network namespace while there is one.
fn watch_container(ctx: &Context, session: &Arc<Session>, ports: &[u16]) {
    let mut current: Option<(i32, Arc<AtomicBool>)> = None;
    while !session.stopped() {
        let app = ctx.app_container();
        if app != current.as_ref().map(|(pid, _)| *pid) {
            if let Some((_, stop)) = current.take() {
                stop.store(true, Ordering::SeqCst);
            }
            if let Some(pid) = app {
                let stop = Arc::new(AtomicBool::new(false));
                if wait_separate(pid, session) {
                    listen_in(pid, session, ports, &stop);
                }
                // A container on the VM's network is served by the guest's listeners.
                current = Some((pid, stop));
            }
        }
        std::thread::sleep(WATCH_INTERVAL);
    }
    if let Some((_, stop)) = current {
        stop.store(true, Ordering::SeqCst);
    }
}

/// Waits until the container `pid` has its own network namespace; false if it shares the
/// VM's (it never makes one) or ended.
fn wait_separate(pid: i32, session: &Session) -> bool {
    let deadline = Instant::now() + NETNS_WAIT;
    while Instant::now() < deadline && !session.stopped() {
        if netns::is_separate(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn listen_in(pid: i32, session: &Arc<Session>, ports: &[u16], stop: &Arc<AtomicBool>) {
    for (index, port) in ports.iter().copied().enumerate() {
        match netns::run_in(pid, move || bind(port, true)) {
            Ok(listener) => spawn_accept(session, listener, index as u16, stop),
            Err(e) => note_refusal(&format!(
                "cannot listen on 127.0.0.1:{port} in the application's container: {e}"
            )),
        }
    }
}
