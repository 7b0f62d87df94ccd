//! Teardown is bounded: a stopped listener wakes its accepting threads on every transport
//! (AF_VSOCK included, where shutdown(2) does not), and a gRPC server whose shutdown hangs
//! is abandoned after `SHUTDOWN_TIMEOUT`.
//!
//! The vsock tests only bind a listener on VMADDR_CID_ANY (harmless on a host that is itself
//! a VM); they never connect anywhere.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grpcio::{RpcContext, UnarySink};
use vm_proto::protos::common::EmptyMessage;
use vm_proto::protos::host::ApplicationExit;
use vm_proto::protos::host_grpc::{
    create_startup_listener, StartupListener, StartupListenerClient,
};
use vm_proto::server::{any_peer, SHUTDOWN_TIMEOUT};
use vm_proto::{grpc_environment, Address, Connector, GrpcServer, Listener, Token, ANY_CID};

/// A bound that a hang can never meet and a working stop always does, even on a loaded host.
const BOUND: Duration = Duration::from_secs(2);
/// How long a test waits for a thread before it calls the thing hung.
const HANG: Duration = Duration::from_secs(20);

/// A kernel-vsock address with a port the kernel picks (VMADDR_PORT_ANY).
fn vsock_any() -> Address {
    Address::Vsock {
        cid: ANY_CID,
        port: u32::MAX,
    }
}

fn bind_vsock() -> Listener {
    Listener::bind(&vsock_any()).unwrap_or_else(|e| {
        panic!("{e}: this test needs AF_VSOCK (the vsock module; /dev/vsock) to bind a listener")
    })
}

/// Runs `f` on a thread; the time it took, or a panic when it does not return within HANG.
fn timed(f: impl FnOnce() + Send + 'static) -> Duration {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        f();
        let _ = tx.send(start.elapsed());
    });
    rx.recv_timeout(HANG)
        .unwrap_or_else(|_| panic!("did not return within {HANG:?}: it hangs"))
}

/// Answers VmReady at once; ApplicationExited blocks the completion-queue thread until
/// the test lets it go, which is what keeps grpcio's shutdown from finishing.
#[derive(Clone)]
struct Service {
    entered: mpsc::Sender<()>,
    release: Arc<Mutex<mpsc::Receiver<()>>>,
    ready: Arc<AtomicUsize>,
}

impl StartupListener for Service {
    fn vm_ready(&mut self, ctx: RpcContext, _: EmptyMessage, sink: UnarySink<EmptyMessage>) {
        self.ready.fetch_add(1, Ordering::SeqCst);
        ctx.spawn(async move {
            let _ = sink.success(EmptyMessage::new()).await;
        });
    }

    fn application_exited(
        &mut self,
        ctx: RpcContext,
        _: ApplicationExit,
        sink: UnarySink<EmptyMessage>,
    ) {
        let _ = self.entered.send(());
        if let Ok(release) = self.release.lock() {
            let _ = release.recv_timeout(HANG);
        }
        ctx.spawn(async move {
            let _ = sink.success(EmptyMessage::new()).await;
        });
    }
}

struct Fixture {
    service: Service,
    entered: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

fn fixture() -> Fixture {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    Fixture {
        service: Service {
            entered: entered_tx,
            release: Arc::new(Mutex::new(release_rx)),
            ready: Arc::default(),
        },
        entered,
        release,
    }
}

fn serve(listeners: Vec<Listener>, token: &Token, service: Service) -> GrpcServer {
    GrpcServer::start(
        grpc_environment("test-srv"),
        vec![create_startup_listener(service)],
        token.clone(),
        listeners,
        any_peer(),
    )
    .unwrap()
}

#[test]
fn vsock_server_shutdown_is_bounded() {
    let token = Token::generate().unwrap();
    let server = serve(vec![bind_vsock()], &token, fixture().service);
    std::thread::sleep(Duration::from_millis(100)); // the acceptor is in its wait
    let took = timed(move || server.shutdown());
    eprintln!("vsock server shutdown took {took:?}");
    assert!(took < BOUND, "took {took:?}");
}

#[test]
fn vsock_and_unix_listeners_on_one_server_shut_down_together() {
    let dir = tempfile::tempdir().unwrap();
    let unix = Listener::bind(&Address::Unix(dir.path().join("s.sock"))).unwrap();
    let token = Token::generate().unwrap();
    let f = fixture();
    let ready = f.service.ready.clone();
    let server = serve(vec![bind_vsock(), unix], &token, f.service);
    // The unix side still serves: the wakeable accept did not break accepting.
    let conn = Connector::new(
        grpc_environment("test-cli"),
        Address::Unix(dir.path().join("s.sock")),
        token,
    );
    conn.call(BOUND, |ch, opt| {
        StartupListenerClient::new(ch).vm_ready_opt(&EmptyMessage::new(), opt)
    })
    .unwrap();
    assert_eq!(ready.load(Ordering::SeqCst), 1);
    let took = timed(move || server.shutdown());
    eprintln!("vsock+unix server shutdown took {took:?}");
    assert!(took < BOUND, "took {took:?}");
    assert!(!dir.path().join("s.sock").exists(), "the socket file stays");
}

#[test]
fn blocking_accept_on_vsock_returns_an_error_once_stopped() {
    let listener = Arc::new(bind_vsock());
    let waker = listener.waker();
    let l = listener.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(l.accept().map(drop).map_err(|e| e.to_string()));
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        rx.try_recv().is_err(),
        "accept returned with nobody connecting"
    );
    let start = Instant::now();
    waker.wake();
    let result = rx.recv_timeout(HANG).expect("accept did not wake");
    eprintln!("vsock accept woke after {:?}", start.elapsed());
    let err = result.unwrap_err();
    assert!(err.contains("listener stopped"), "{err}");
    // Stopped for good: a later accept returns at once, and so does accept_or_stop.
    assert!(listener.accept().is_err());
    assert!(listener.accept_or_stop().unwrap().is_none());
}

#[test]
fn accept_or_stop_on_unix_wakes_and_accepts_before_that() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = Arc::new(Listener::bind(&Address::Unix(path.clone())).unwrap());
    let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let (_fd, peer) = listener.accept_or_stop().unwrap().expect("a connection");
    let me = std::process::id() as i32;
    assert!(
        matches!(peer, vm_proto::Peer::Unix { pid, .. } if pid == me),
        "{peer:?}"
    );
    let l = listener.clone();
    let handle = std::thread::spawn(move || l.accept_or_stop().map(|c| c.is_none()));
    std::thread::sleep(Duration::from_millis(100));
    listener.stop();
    let took = timed(move || assert!(handle.join().unwrap().unwrap(), "not a stop"));
    assert!(took < BOUND, "took {took:?}");
}

#[test]
fn hung_grpc_shutdown_is_abandoned_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let addr = Address::Unix(dir.path().join("s.sock"));
    let token = Token::generate().unwrap();
    let f = fixture();
    let server = serve(vec![Listener::bind(&addr).unwrap()], &token, f.service);
    let conn = Connector::new(grpc_environment("test-cli"), addr, token);
    let client = std::thread::spawn(move || {
        conn.call(HANG, |ch, opt| {
            StartupListenerClient::new(ch).application_exited_opt(&ApplicationExit::new(), opt)
        })
        .map(drop)
    });
    f.entered
        .recv_timeout(HANG)
        .expect("the handler was never called");
    // The only completion-queue thread is now stuck in the handler: grpcio cannot finish.
    let took = timed(move || server.shutdown());
    let _ = f.release.send(());
    let _ = client.join();
    eprintln!("a hung gRPC shutdown returned after {took:?}");
    assert!(
        took >= SHUTDOWN_TIMEOUT,
        "took {took:?}: was it really hung?"
    );
    assert!(took < SHUTDOWN_TIMEOUT + BOUND, "took {took:?}");
}
