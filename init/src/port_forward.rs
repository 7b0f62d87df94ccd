//! Port forwarding in the guest (`--publish`, `--forward`): the forward stream service on
//! `vm_proto::forward::FORWARD_PORT` (protocol there). One thread per connection; HELLO
//! must carry the VM's token before anything else is read.
//!
//! - OPEN: connect to 127.0.0.1:PORT, in the application container's network namespace when
//!   the application runs in one, and relay.
//! - LISTEN: the control stream of `--forward` (see `listen`).
//! - ATTACH: relay a connection `listen` accepted and parked in [`Pending`].
//!
//! Live relays are bounded per VM ([`MAX_RELAYS`]): past that, OPEN is refused and a
//! guest connection to a forward is closed at once.

mod listen;
mod netns;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_proto::forward::{self, Request};
use vm_proto::server::PeerFilter;
use vm_proto::stream;
use vm_proto::Token;

use crate::context::Context;
use crate::stream_accept::{self, Admit, Refusals, StreamService};

/// HELLO and the request must arrive within this time of connecting.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Live relays (both directions of one connection count once) per VM.
pub const MAX_RELAYS: usize = 256;
/// A guest connection the host did not ATTACH within this time is closed.
const PENDING_TIMEOUT: Duration = Duration::from_secs(10);
/// Connection threads only copy through a heap buffer: a small stack is plenty.
const THREAD_STACK: usize = 256 * 1024;

static REFUSED: Refusals = Refusals::new("port forward");
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Logs a refusal at counts 1, 2, 4, 8…: a guest or peer cannot flood the log.
fn note_refusal(what: &str) {
    REFUSED.note(what);
}

/// One of the [`MAX_RELAYS`] relay places, given back when dropped.
pub struct Slot(());

impl Slot {
    pub fn take() -> Option<Slot> {
        LIVE.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < MAX_RELAYS).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A guest connection parked for the host's ATTACH: from which control stream, since when.
struct Parked {
    conn: TcpStream,
    slot: Slot,
    session: u64,
    at: Instant,
}

/// Guest connections accepted for a forward, waiting for the host's ATTACH. One the host
/// neither ATTACHes nor CANCELs is closed after [`PENDING_TIMEOUT`] (its control stream's
/// accept loops call [`Pending::expire`]) or when its control stream ends.
#[derive(Default)]
pub struct Pending {
    conns: Mutex<HashMap<u32, Parked>>,
    next_id: AtomicU64,
    next_session: AtomicU64,
}

impl Pending {
    /// A number for a new control stream, to park its connections under.
    pub fn new_session(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Parks `conn` for control stream `session` and returns its id.
    pub fn park(&self, conn: TcpStream, slot: Slot, session: u64) -> u32 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) as u32;
        let parked = Parked {
            conn,
            slot,
            session,
            at: Instant::now(),
        };
        self.lock().insert(id, parked);
        id
    }

    pub fn take(&self, id: u32) -> Option<(TcpStream, Slot)> {
        self.lock().remove(&id).map(|p| (p.conn, p.slot))
    }

    /// Closes the connections left unattached too long.
    pub fn expire(&self) {
        self.lock().retain(|_, p| p.at.elapsed() < PENDING_TIMEOUT);
    }

    /// Closes the connections parked for `session`: its control stream ended, so no
    /// CANCEL can come for them.
    pub fn end_session(&self, session: u64) {
        self.lock().retain(|_, p| p.session != session);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Parked>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What every forward connection shares.
struct Shared {
    ctx: Arc<Context>,
    token: Token,
    pending: Arc<Pending>,
}

/// Serves forward streams: what to do with each connection on the forward port.
pub fn service(ctx: Arc<Context>, token: Token, filter: PeerFilter) -> Admit {
    let shared = Arc::new(Shared {
        ctx,
        token,
        pending: Arc::new(Pending::default()),
    });
    StreamService {
        connection: "forward",
        stack: Some(THREAD_STACK),
        refusals: &REFUSED,
    }
    .admit(filter, move |fd| serve_connection(&shared, fd))
}

/// Refuses the stream with an ERROR frame (best effort) and a counted log line.
fn refuse(conn: &mut UnixStream, why: &str) {
    note_refusal(why);
    let _ = stream::write_frame(conn, forward::REFUSED, why.as_bytes());
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

fn serve_connection(shared: &Shared, fd: OwnedFd) {
    let Some(mut conn) = stream_accept::blocking_stream(fd, HANDSHAKE_TIMEOUT) else {
        return;
    };
    let request = match handshake(&mut conn, &shared.token) {
        Ok(request) => request,
        Err(why) => return refuse(&mut conn, &why),
    };
    if conn.set_read_timeout(None).is_err() {
        return;
    }
    match request {
        Request::Open { port } => open(shared, conn, port),
        Request::Attach { id } => attach(shared, conn, id),
        Request::Listen { ports } => listen::serve(&shared.ctx, &shared.pending, conn, &ports),
    }
}

/// HELLO with the token, then the request; anything else is refused.
fn handshake(conn: &mut UnixStream, token: &Token) -> Result<Request, String> {
    let request =
        stream::accept_opening(conn, token, forward::REQUEST, "before the forward request")?;
    Request::decode(&request).map_err(|e| e.to_string())
}

/// OPEN: connect to the guest port (a refusal is ERROR at once) and relay.
fn open(shared: &Shared, mut conn: UnixStream, port: u16) {
    let Some(slot) = Slot::take() else {
        return refuse(
            &mut conn,
            &format!("too many forwarded connections (at most {MAX_RELAYS})"),
        );
    };
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // No timeout of our own: a closed port refuses at once, and a server whose backlog is
    // full gets the kernel's SYN retries, as a client in the guest would. (A 5 s timeout here
    // turned 10 of 100 concurrent fetches from busybox httpd, backlog 9, into closed
    // connections.)
    let connected = match shared.ctx.app_container() {
        Some(pid) => netns::run_in(pid, move || TcpStream::connect(target)),
        None => TcpStream::connect(target),
    };
    let guest = match connected {
        Ok(guest) => guest,
        // Not logged: a closed port is the user's business, and the host is told.
        Err(e) => {
            let _ = stream::write_frame(
                &mut conn,
                forward::REFUSED,
                format!("cannot connect to {target} in the guest: {e}").as_bytes(),
            );
            return;
        }
    };
    if stream::write_frame(&mut conn, forward::OK, &[]).is_err() {
        return;
    }
    relay(conn, guest, slot);
}

/// ATTACH: the host is connected to its target; relay the parked guest connection.
fn attach(shared: &Shared, mut conn: UnixStream, id: u32) {
    let Some((guest, slot)) = shared.pending.take(id) else {
        return refuse(&mut conn, &format!("no pending connection {id}"));
    };
    if stream::write_frame(&mut conn, forward::OK, &[]).is_err() {
        return;
    }
    relay(conn, guest, slot);
}

fn relay(host: UnixStream, guest: TcpStream, slot: Slot) {
    let _ = guest.set_nodelay(true);
    if let Err(e) = forward::relay(guest, host, "forward-copy") {
        note_refusal(&format!("cannot start a relay thread: {e}"));
    }
    drop(slot);
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the slots are process-wide, so a second test holding one would race.
    #[test]
    fn slots_are_bounded_and_pending_connections_are_taken_once() {
        let slots: Vec<Slot> = std::iter::from_fn(Slot::take)
            .take(MAX_RELAYS + 1)
            .collect();
        assert_eq!(slots.len(), MAX_RELAYS);
        assert!(Slot::take().is_none());
        drop(slots);

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let conn = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let pending = Pending::default();
        let Some(slot) = Slot::take() else {
            panic!("no slot after all were given back")
        };
        let id = pending.park(conn, slot, 0);
        assert!(pending.take(id + 1).is_none());
        assert!(pending.take(id).is_some());
        assert!(pending.take(id).is_none());
        assert_eq!(LIVE.load(Ordering::SeqCst), 0);

        // A control stream's end closes what it left parked, and only that.
        let park = |session| {
            let conn = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            pending.park(conn, Slot::take().unwrap(), session)
        };
        let (ended, other) = (park(1), park(2));
        pending.expire();
        pending.end_session(1);
        assert!(pending.take(ended).is_none());
        assert!(pending.take(other).is_some());
        assert_eq!(LIVE.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn own_process_has_no_separate_netns() {
        assert!(!netns::is_separate(std::process::id() as i32));
        assert!(!netns::is_separate(i32::MAX));
    }
}
