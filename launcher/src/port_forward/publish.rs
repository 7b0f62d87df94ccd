//! One `--publish` listener: bound before boot, served from its own accept thread once the
//! guest is ready. Each connection gets a thread that opens an OPEN stream to maitred and
//! relays; a refused guest port closes the host connection at once.

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vm_proto::forward::{self, Request};

use super::{Guest, PortError, PublishSpec, Slot};

/// How often the accept thread looks at its stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(100);

pub struct Publisher {
    spec: PublishSpec,
    listener: Option<TcpListener>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Publisher {
    pub fn bind(spec: PublishSpec) -> Result<Publisher, PortError> {
        let bind_err = |source| PortError::Bind { spec, source };
        let listener = TcpListener::bind(spec.host).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(Publisher {
            spec,
            listener: Some(listener),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        })
    }

    pub fn start(&mut self, guest: Guest, live: Arc<AtomicUsize>) -> Result<(), PortError> {
        let Some(listener) = self.listener.take() else {
            return Ok(());
        };
        let (stop, port) = (self.stop.clone(), self.spec.guest_port);
        let thread = std::thread::Builder::new()
            .name("publish-accept".into())
            .spawn(move || accept_loop(&listener, &stop, &guest, port, &live))
            .map_err(PortError::Thread)?;
        self.thread = Some(thread);
        Ok(())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    stop: &AtomicBool,
    guest: &Guest,
    port: u16,
    live: &Arc<AtomicUsize>,
) {
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(ACCEPT_POLL).unwrap_or(PollTimeout::NONE);
        if !matches!(poll(&mut fds, timeout), Ok(n) if n > 0) {
            continue;
        }
        let Ok((conn, _)) = listener.accept() else {
            continue;
        };
        // Past the limit the connection is closed at once (dropped).
        let Some(slot) = Slot::take(live) else {
            continue;
        };
        let guest = guest.clone();
        let _ = std::thread::Builder::new()
            .name("publish".into())
            .stack_size(256 * 1024)
            .spawn(move || serve(conn, &guest, port, slot));
    }
}

/// One published connection: OPEN in the guest, then relay; any failure closes `conn`.
fn serve(conn: TcpStream, guest: &Guest, port: u16, slot: Slot) {
    if conn.set_nonblocking(false).is_err() {
        return;
    }
    let _ = conn.set_nodelay(true);
    if let Ok(stream) = forward::open(&guest.addr, &guest.token, &Request::Open { port }) {
        let _ = forward::relay(conn, stream, "publish-copy");
    }
    drop(slot);
}
