//! Accepting for every service maitred serves on its own sockets: one thread polls the
//! gRPC, process stream and port forward listeners together (a thread per listener would
//! idle in PID 1 for the VM's whole life) and hands each connection to its service. Also
//! what the two stream services (process streams, port forwards) share: a connection
//! thread per admitted peer, and counted refusals, logged at the 1st, 2nd, 4th, 8th… (a
//! guest can cause them, so the log stays bounded).

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use vm_proto::server::PeerFilter;
use vm_proto::{Listener, ListenerSet, Peer};

use crate::warn;

/// Refusals of one service, counted.
pub struct Refusals {
    service: &'static str,
    count: AtomicU64,
}

impl Refusals {
    pub const fn new(service: &'static str) -> Refusals {
        Refusals {
            service,
            count: AtomicU64::new(0),
        }
    }

    /// Counts a refusal; logs it when the count is a power of two.
    pub fn note(&self, what: &str) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            warn!("{}: {what} ({n} so far)", self.service);
        }
    }
}

/// An accepted connection as the blocking stream a service thread reads: the listener hands
/// out non-blocking sockets (for grpcio). A vsock or Unix fd works as a UnixStream either
/// way: read, write and shutdown are the same socket calls. The opening frames must come
/// within `handshake`. None if the socket cannot be set up (the peer is gone).
pub fn blocking_stream(fd: OwnedFd, handshake: Duration) -> Option<UnixStream> {
    let conn = UnixStream::from(fd);
    conn.set_nonblocking(false)
        .and_then(|()| conn.set_read_timeout(Some(handshake)))
        .ok()?;
    Some(conn)
}

/// What a service does with one accepted connection, on the accepting thread: it must not
/// block (hand the connection to a thread of its own or to grpcio).
pub type Admit = Box<dyn Fn(OwnedFd, Peer) + Send>;

/// A stream service: each connection from a peer its filter admits is served on a new
/// thread.
pub struct StreamService {
    /// Each connection thread's name.
    pub connection: &'static str,
    /// A connection thread's stack, if not the default.
    pub stack: Option<usize>,
    pub refusals: &'static Refusals,
}

impl StreamService {
    pub fn admit(
        self,
        filter: PeerFilter,
        serve: impl Fn(OwnedFd) + Clone + Send + 'static,
    ) -> Admit {
        Box::new(move |fd, peer| {
            if !filter(&peer) {
                self.refusals.note(&format!("refused peer {peer:?}"));
                return;
            }
            let serve = serve.clone();
            let mut thread = std::thread::Builder::new().name(self.connection.into());
            if let Some(bytes) = self.stack {
                thread = thread.stack_size(bytes);
            }
            if let Err(e) = thread.spawn(move || serve(fd)) {
                self.refusals.note(&format!("cannot start a thread: {e}"));
            }
        })
    }
}

/// Accepts on every listener from one thread of its own, for as long as maitred runs.
pub fn start(services: Vec<(Listener, Admit)>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || {
            let mut listeners = ListenerSet::new(services.iter().map(|(l, _)| l).collect());
            loop {
                match listeners.accept() {
                    Ok(Some((index, fd, peer))) => (services[index].1)(fd, peer),
                    Ok(None) => return, // stopped: maitred is ending
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!("{e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map(drop)
}
