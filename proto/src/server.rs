//! A gRPC server fed by our own listeners: one blocking acceptor thread per listener hands
//! each accepted socket (non-blocking, peer checked) to a running grpcio server; an
//! [`Admission`] does the same for sockets accepted by someone else's thread. Every call
//! must carry the access token ([`crate::auth::TokenChecker`]).
//!
//! Stopping is bounded: the acceptors wake through their listeners' eventfds (see
//! [`crate::listener`]), and a gRPC shutdown that has not finished within
//! [`SHUTDOWN_TIMEOUT`] is abandoned with one log line, so a teardown never hangs here.

use std::fmt;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use grpcio::{Environment, Server, ServerBuilder, Service};

use crate::address::Address;
use crate::auth::{Token, TokenChecker};
use crate::listener::{Listener, Peer};

/// The most connections one server keeps open at once; more are closed as they arrive. A
/// guest needs a handful (maitred's, vm_syslog's, crash_collector's), a host as few.
pub const MAX_CONNECTIONS: usize = 16;
/// How long [`GrpcServer::shutdown`] waits for grpcio before abandoning its server.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// Decides whether a connecting peer may talk to this server at all.
pub type PeerFilter = Arc<dyn Fn(&Peer) -> bool + Send + Sync>;

/// Lets every peer connect; the token still guards every call.
pub fn any_peer() -> PeerFilter {
    Arc::new(|_| true)
}

#[derive(Debug)]
pub enum ServerError {
    Build(grpcio::Error),
    Thread(std::io::Error),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Build(e) => write!(f, "cannot start the gRPC server: {e}"),
            Self::Thread(e) => write!(f, "cannot start an acceptor thread: {e}"),
        }
    }
}

impl std::error::Error for ServerError {}

struct Shared {
    server: Mutex<Server>,
    filter: PeerFilter,
    refused: AtomicU64,
    /// Connections handed to grpcio, as (fd number, socket inode): grpcio owns and closes
    /// the fds, so whether one is still open is asked of /proc, never held open by us.
    live: Mutex<Vec<(i32, u64)>>,
    refused_busy: AtomicU64,
}

/// The inode of the socket open as `fd` in this process, if it is open.
fn socket_inode(fd: i32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/self/fd/{fd}"))
        .ok()
        .map(|m| m.ino())
}

impl Shared {
    /// Is there room for one more connection? Forgets the ones grpcio has closed.
    fn has_room(&self) -> bool {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|(fd, inode)| socket_inode(*fd) == Some(*inode));
        live.len() < MAX_CONNECTIONS
    }

    fn add_connection(&self, fd: OwnedFd) {
        let Ok(mut server) = self.server.lock() else {
            return; // A panicked holder: drop the connection rather than spread the panic.
        };
        let raw = fd.into_raw_fd();
        if let Some(inode) = socket_inode(raw) {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            live.push((raw, inode));
        }
        // SAFETY: `raw` is a connected, non-blocking stream socket whose ownership we just
        // released; grpcio owns and closes it from here on and no other code touches it.
        unsafe { server.add_channel_from_fd(raw) };
    }
}

pub struct GrpcServer {
    shared: Arc<Shared>,
    listeners: Vec<Arc<Listener>>,
    acceptors: Vec<JoinHandle<()>>,
    stopped: AtomicBool,
}

impl GrpcServer {
    /// Starts serving `services` on every listener. Peers `filter` refuses are disconnected
    /// before grpcio sees them.
    pub fn start(
        env: Arc<Environment>,
        services: Vec<Service>,
        token: Token,
        listeners: Vec<Listener>,
        filter: PeerFilter,
    ) -> Result<GrpcServer, ServerError> {
        // Crash reports carry minidumps of up to 8 MiB; gRPC's default limit is 4 MiB.
        let args = grpcio::ChannelBuilder::new(env.clone())
            .max_receive_message_len(crate::MAX_MESSAGE_BYTES)
            .build_args();
        let mut builder = ServerBuilder::new(env)
            .channel_args(args)
            .add_checker(TokenChecker::new(token));
        for service in services {
            builder = builder.register_service(service);
        }
        let mut server = builder.build().map_err(ServerError::Build)?;
        server.start();
        let shared = Arc::new(Shared {
            server: Mutex::new(server),
            filter,
            refused: AtomicU64::new(0),
            live: Mutex::new(Vec::new()),
            refused_busy: AtomicU64::new(0),
        });
        let mut this = GrpcServer {
            shared,
            listeners: Vec::new(),
            acceptors: Vec::new(),
            stopped: AtomicBool::new(false),
        };
        for listener in listeners {
            let listener = Arc::new(listener);
            let (shared, l) = (this.shared.clone(), listener.clone());
            let handle = std::thread::Builder::new()
                .name("grpc-accept".into())
                .spawn(move || accept_loop(&shared, &l))
                .map_err(ServerError::Thread)?;
            this.listeners.push(listener);
            this.acceptors.push(handle);
        }
        Ok(this)
    }

    /// Serves one already-connected socket (a socketpair, an inherited fd).
    pub fn add_connection(&self, fd: OwnedFd) -> std::io::Result<()> {
        crate::transport::set_nonblocking(&fd)?;
        self.shared.add_connection(fd);
        Ok(())
    }

    /// A handle that serves connections accepted elsewhere, with this server's peer filter
    /// and connection limit.
    pub fn admission(&self) -> Admission {
        Admission(self.shared.clone())
    }

    pub fn addresses(&self) -> Vec<Address> {
        self.listeners.iter().map(|l| l.address().clone()).collect()
    }

    /// How many connections the peer filter refused.
    pub fn refused_peers(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// How many connections were refused because [`MAX_CONNECTIONS`] were open.
    pub fn refused_connections(&self) -> u64 {
        self.shared.refused_busy.load(Ordering::Relaxed)
    }

    /// Stops accepting, then stops the gRPC server; in-flight calls are cancelled. Returns
    /// within about [`SHUTDOWN_TIMEOUT`] whatever grpcio does.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        for listener in &self.listeners {
            listener.stop();
        }
        for handle in self.acceptors.drain(..) {
            let _ = handle.join();
        }
        let addresses = self.addresses();
        self.listeners.clear();
        let started = Instant::now();
        if !shutdown_grpc(self.shared.clone(), SHUTDOWN_TIMEOUT) {
            let on = addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>();
            eprintln!(
                "the gRPC server on [{}] did not shut down within {:.1}s; abandoning it",
                on.join(", "),
                started.elapsed().as_secs_f64()
            );
        }
    }
}

/// Cancels every call and shuts grpcio's server down on a thread of its own; false when
/// that did not finish within `timeout` (the thread is then left to finish or not).
fn shutdown_grpc(shared: Arc<Shared>, timeout: Duration) -> bool {
    let (done, finished) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("grpc-shutdown".into())
        .spawn(move || {
            if let Ok(mut server) = shared.server.lock() {
                server.cancel_all_calls();
                let _ = futures_executor::block_on(server.shutdown());
            }
            let _ = done.send(());
        });
    spawned.is_ok() && finished.recv_timeout(timeout).is_ok()
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &Listener) {
    let admission = Admission(shared.clone());
    loop {
        match listener.accept_or_stop() {
            Ok(None) => break,
            Ok(Some((fd, peer))) => admission.admit(fd, peer, listener.address()),
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("{e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Hands accepted connections to a running [`GrpcServer`], for an acceptor that is not the
/// server's own (one thread accepting for several services). Cheap to clone.
#[derive(Clone)]
pub struct Admission(Arc<Shared>);

impl Admission {
    /// Serves `fd` if the peer filter admits `peer` and fewer than [`MAX_CONNECTIONS`] are
    /// open; otherwise closes it, logging at the 1st, 2nd, 4th… refusal (a foreign peer can
    /// make us log). `on` names the listener in those lines.
    pub fn admit(&self, fd: OwnedFd, peer: Peer, on: &Address) {
        let shared = &self.0;
        if !(shared.filter)(&peer) {
            let n = shared.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                eprintln!("refused a connection on {on} from {peer:?} ({n} refused so far)");
            }
        } else if !shared.has_room() {
            // Dropping the socket closes it: the peer sees its connection end at once.
            let n = shared.refused_busy.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                eprintln!(
                    "refused a connection on {on} from {peer:?}: {MAX_CONNECTIONS} are open ({n} refused so far)"
                );
            }
        } else {
            shared.add_connection(fd);
        }
    }
}
