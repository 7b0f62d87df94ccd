//! Real gRPC calls over every transport, with the token check in place.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use grpcio::{RpcContext, RpcStatusCode, UnarySink};
use vm_proto::client::channel_from_fd;
use vm_proto::protos::common::EmptyMessage;
use vm_proto::protos::host::ApplicationExit;
use vm_proto::protos::host_grpc::{
    create_startup_listener, StartupListener, StartupListenerClient,
};
use vm_proto::server::{any_peer, PeerFilter};
use vm_proto::{
    grpc_environment, Address, CallError, Connector, GrpcServer, Listener, Peer, Token,
    TransportError,
};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Counts VmReady calls, so a test can prove a refused call never reached a handler.
#[derive(Clone, Default)]
struct Ready(Arc<AtomicUsize>);

impl StartupListener for Ready {
    fn vm_ready(&mut self, ctx: RpcContext, _: EmptyMessage, sink: UnarySink<EmptyMessage>) {
        self.0.fetch_add(1, Ordering::SeqCst);
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
        ctx.spawn(async move {
            let _ = sink.success(EmptyMessage::new()).await;
        });
    }
}

fn start(addr: &Address, token: &Token, filter: PeerFilter) -> (GrpcServer, Ready) {
    let ready = Ready::default();
    let listener = Listener::bind(addr).unwrap();
    let server = GrpcServer::start(
        grpc_environment("test-srv"),
        vec![create_startup_listener(ready.clone())],
        token.clone(),
        vec![listener],
        filter,
    )
    .unwrap();
    (server, ready)
}

fn vm_ready(conn: &Connector) -> Result<EmptyMessage, CallError> {
    conn.call(TIMEOUT, |ch, opt| {
        StartupListenerClient::new(ch).vm_ready_opt(&EmptyMessage::new(), opt)
    })
}

fn unix_addr(dir: &Path, name: &str) -> Address {
    Address::Unix(dir.join(name))
}

#[test]
fn unix_right_token_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let addr = unix_addr(dir.path(), "s.sock");
    let token = Token::generate().unwrap();
    let (_server, ready) = start(&addr, &token, any_peer());
    let conn = Connector::new(grpc_environment("test-cli"), addr, token);
    vm_ready(&conn).unwrap();
    vm_ready(&conn).unwrap();
    assert_eq!(ready.0.load(Ordering::SeqCst), 2);
}

#[test]
fn unix_wrong_missing_or_malformed_token_is_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let addr = unix_addr(dir.path(), "s.sock");
    let token = Token::generate().unwrap();
    let (_server, ready) = start(&addr, &token, any_peer());
    let env = grpc_environment("test-cli");

    let wrong = Connector::new(env.clone(), addr.clone(), Token::generate().unwrap());
    let err = vm_ready(&wrong).unwrap_err();
    assert_eq!(err.code(), Some(RpcStatusCode::UNAUTHENTICATED), "{err}");
    assert!(!err.to_string().contains(&token.to_hex()));

    let fd = vm_proto::connect(&addr).unwrap();
    let client = StartupListenerClient::new(channel_from_fd(env.clone(), "raw", fd));
    let none = client.vm_ready_opt(&EmptyMessage::new(), grpcio::CallOption::default());
    assert_rpc_code(none, RpcStatusCode::UNAUTHENTICATED);

    let headers = [
        format!("Bearer {}", &token.to_hex()[1..]),
        format!("Basic {}", token.to_hex()),
        token.to_hex(),
        format!("Bearer {}", token.to_hex().to_uppercase()),
        "Bearer".to_string(),
    ];
    for value in headers {
        let mut meta = grpcio::MetadataBuilder::new();
        meta.add_str("authorization", &value).unwrap();
        let opt = grpcio::CallOption::default().headers(meta.build());
        assert_rpc_code(
            client.vm_ready_opt(&EmptyMessage::new(), opt),
            RpcStatusCode::UNAUTHENTICATED,
        );
    }

    // Two authorization headers, one right: still refused.
    let mut meta = grpcio::MetadataBuilder::new();
    meta.add_str("authorization", &format!("Bearer {}", token.to_hex()))
        .unwrap();
    meta.add_str("authorization", "Bearer x").unwrap();
    let opt = grpcio::CallOption::default().headers(meta.build());
    assert_rpc_code(
        client.vm_ready_opt(&EmptyMessage::new(), opt),
        RpcStatusCode::UNAUTHENTICATED,
    );

    assert_eq!(
        ready.0.load(Ordering::SeqCst),
        0,
        "a handler ran without auth"
    );
}

fn assert_rpc_code<T: std::fmt::Debug>(result: grpcio::Result<T>, want: RpcStatusCode) {
    match result {
        Err(grpcio::Error::RpcFailure(status)) => assert_eq!(status.code(), want),
        other => panic!("expected {want:?}, got {other:?}"),
    }
}

#[test]
fn socketpair_fd_handoff_round_trips() {
    let token = Token::generate().unwrap();
    let ready = Ready::default();
    let server = GrpcServer::start(
        grpc_environment("test-srv"),
        vec![create_startup_listener(ready.clone())],
        token.clone(),
        vec![],
        any_peer(),
    )
    .unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    server.add_connection(theirs.into()).unwrap();
    ours.set_nonblocking(true).unwrap();
    let channel = channel_from_fd(grpc_environment("test-cli"), "pair", ours.into());
    StartupListenerClient::new(channel)
        .vm_ready_opt(&EmptyMessage::new(), token.call_option().timeout(TIMEOUT))
        .unwrap();
    assert_eq!(ready.0.load(Ordering::SeqCst), 1);
}

/// A fake hybrid vsock back-end speaking the CONNECT protocol exactly; after `OK` the
/// connection is the guest port's stream, which it hands to `server`.
fn fake_hybrid(uds: PathBuf, reply: &'static [&'static [u8]], server: Arc<GrpcServer>) {
    let listener = UnixListener::bind(&uds).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            assert_eq!(line, b"CONNECT 8888");
            if reply.is_empty() {
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
            for piece in reply {
                stream.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            if reply.concat().starts_with(b"OK ") {
                server.add_connection(stream.into()).unwrap();
            }
        }
    });
}

fn start_no_listener(token: &Token) -> (Arc<GrpcServer>, Ready) {
    let ready = Ready::default();
    let server = GrpcServer::start(
        grpc_environment("test-srv"),
        vec![create_startup_listener(ready.clone())],
        token.clone(),
        vec![],
        any_peer(),
    )
    .unwrap();
    (Arc::new(server), ready)
}

#[test]
fn hybrid_connect_ok_in_pieces_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let token = Token::generate().unwrap();
    let (server, ready) = start_no_listener(&token);
    let uds = dir.path().join("vm.vsock");
    // The reply arrives split across reads.
    fake_hybrid(uds.clone(), &[b"O", b"K 10", b"24\n"], server);
    let addr: Address = format!("hybrid:{}:8888", uds.display()).parse().unwrap();
    let conn = Connector::new(grpc_environment("test-cli"), addr, token);
    vm_ready(&conn).unwrap();
    assert_eq!(ready.0.load(Ordering::SeqCst), 1);
}

#[test]
fn hybrid_connect_refused_closed_or_silent_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let token = Token::generate().unwrap();
    let (server, _) = start_no_listener(&token);
    let addr = |name: &str| -> Address {
        format!("hybrid:{}:8888", dir.path().join(name).display())
            .parse()
            .unwrap()
    };

    fake_hybrid(
        dir.path().join("refuse"),
        &[b"ERR no listener\n"],
        server.clone(),
    );
    match vm_proto::connect(&addr("refuse")) {
        Err(TransportError::HybridRefused { reply, .. }) => assert_eq!(reply, "ERR no listener"),
        other => panic!("{other:?}"),
    }

    fake_hybrid(dir.path().join("close"), &[b"OK"], server.clone());
    match vm_proto::connect(&addr("close")) {
        Err(e @ TransportError::HybridClosed { .. }) => {
            assert!(e.to_string().contains("listening"), "{e}")
        }
        other => panic!("{other:?}"),
    }

    fake_hybrid(dir.path().join("silent"), &[], server);
    let err =
        vm_proto::connect_with_timeout(&addr("silent"), Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, TransportError::Setup { .. }), "{err:?}");

    let err = vm_proto::connect(&"hybrid:/nope:1".parse().unwrap()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("/nope") && msg.contains("No such file"),
        "{msg}"
    );
}

#[test]
fn vsock_listener_binds_any_cid() {
    // Binding is harmless on a host that is itself a VM; no traffic is sent.
    let port = 40_000 + std::process::id() % 20_000;
    let addr: Address = format!("vsock:-1:{port}").parse().unwrap();
    let listener = Listener::bind(&addr)
        .unwrap_or_else(|e| panic!("{e}; is the vsock module loaded (modprobe vsock)?"));
    assert_eq!(listener.address(), &addr);
}

#[test]
fn connector_redials_after_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let addr = unix_addr(dir.path(), "s.sock");
    let token = Token::generate().unwrap();
    let conn = Connector::new(grpc_environment("test-cli"), addr.clone(), token.clone());

    let (server, first) = start(&addr, &token, any_peer());
    vm_ready(&conn).unwrap();
    server.shutdown();

    let err = vm_ready(&conn).unwrap_err();
    assert!(
        matches!(err, CallError::Transport(TransportError::Connect { .. })),
        "{err}"
    );

    let (_server, second) = start(&addr, &token, any_peer());
    vm_ready(&conn).unwrap();
    assert_eq!(first.0.load(Ordering::SeqCst), 1);
    assert_eq!(second.0.load(Ordering::SeqCst), 1);
}

#[test]
fn peer_filter_refuses_foreign_peer_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let addr = unix_addr(dir.path(), "s.sock");
    let token = Token::generate().unwrap();
    let me = std::process::id() as i32;
    let not_me: PeerFilter =
        Arc::new(move |peer| !matches!(peer, Peer::Unix { pid, .. } if *pid == me));
    let (server, ready) = start(&addr, &token, not_me);
    let conn = Connector::new(grpc_environment("test-cli"), addr, token);
    let err = vm_ready(&conn).unwrap_err();
    assert_eq!(err.code(), Some(RpcStatusCode::UNAVAILABLE), "{err}");
    assert!(server.refused_peers() >= 1);
    assert_eq!(ready.0.load(Ordering::SeqCst), 0);
}

#[test]
fn listener_bind_refuses_to_replace_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("precious");
    std::fs::write(&path, b"data").unwrap();
    let err = Listener::bind(&Address::Unix(path.clone())).err().unwrap();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
}
