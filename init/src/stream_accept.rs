//! What maitred's stream services (process streams, port forwards) share: the accept loop,
//! one thread that refuses peers the filter rejects and serves every other connection on a
//! thread of its own, and counted refusals, logged at the 1st, 2nd, 4th, 8th… (a guest can
//! cause them, so the log stays bounded).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use vm_proto::server::PeerFilter;
use vm_proto::Listener;

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

/// How a service names its threads and counts its refusals.
pub struct AcceptLoop {
    /// The accepting thread's name.
    pub name: &'static str,
    /// Each connection thread's name.
    pub connection: &'static str,
    /// A connection thread's stack, if not the default.
    pub stack: Option<usize>,
    pub refusals: &'static Refusals,
}

impl AcceptLoop {
    /// Accepts on `listener` from a thread of its own; each connection from a peer that
    /// `filter` admits is `serve`d on a new thread.
    pub fn start(
        self,
        listener: Listener,
        filter: PeerFilter,
        serve: impl Fn(OwnedFd) + Clone + Send + 'static,
    ) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name(self.name.into())
            .spawn(move || loop {
                match listener.accept() {
                    Ok((fd, peer)) if filter(&peer) => {
                        let serve = serve.clone();
                        let mut thread = std::thread::Builder::new().name(self.connection.into());
                        if let Some(bytes) = self.stack {
                            thread = thread.stack_size(bytes);
                        }
                        if let Err(e) = thread.spawn(move || serve(fd)) {
                            self.refusals.note(&format!("cannot start a thread: {e}"));
                        }
                    }
                    Ok((_, peer)) => self.refusals.note(&format!("refused peer {peer:?}")),
                    Err(e) => {
                        warn!("{e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
            .map(drop)
    }
}
