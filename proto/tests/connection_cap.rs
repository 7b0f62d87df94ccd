//! A server keeps at most `MAX_CONNECTIONS` connections: one more is closed as it arrives,
//! and a slot frees again once a connection ends. Real sockets, a real grpcio server.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use grpcio::{RpcContext, UnarySink};
use vm_proto::protos::common::EmptyMessage;
use vm_proto::protos::host::ApplicationExit;
use vm_proto::protos::host_grpc::{create_startup_listener, StartupListener};
use vm_proto::server::{any_peer, MAX_CONNECTIONS};
use vm_proto::{grpc_environment, Address, GrpcServer, Listener, Token};

#[derive(Clone)]
struct Nothing;

impl StartupListener for Nothing {
    fn vm_ready(&mut self, ctx: RpcContext, _: EmptyMessage, sink: UnarySink<EmptyMessage>) {
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

/// Does the server close `conn` (EOF) within `within`?
fn closed_by_server(conn: &mut UnixStream, within: Duration) -> bool {
    conn.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {} // grpcio's HTTP/2 settings on a live connection
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn one_connection_past_the_cap_is_closed_and_a_freed_slot_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let server = GrpcServer::start(
        grpc_environment("cap-srv"),
        vec![create_startup_listener(Nothing)],
        Token::generate().unwrap(),
        vec![Listener::bind(&Address::Unix(path.clone())).unwrap()],
        any_peer(),
    )
    .unwrap();
    let mut open: Vec<UnixStream> = (0..MAX_CONNECTIONS)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    // Let the acceptor hand them all to grpcio.
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = UnixStream::connect(&path).unwrap();
    assert!(closed_by_server(&mut extra, Duration::from_secs(5)));
    assert_eq!(server.refused_connections(), 1);
    assert!(!closed_by_server(&mut open[0], Duration::from_millis(300)));

    // One ends; grpcio closes its side; the next connection is kept.
    drop(open.pop());
    std::thread::sleep(Duration::from_millis(500));
    let mut again = UnixStream::connect(&path).unwrap();
    assert!(!closed_by_server(&mut again, Duration::from_millis(500)));
    assert_eq!(server.refused_connections(), 1);
}
