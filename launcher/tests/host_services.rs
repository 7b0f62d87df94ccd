//! The host services refuse what is not this VM: a foreign peer before any call, and a call
//! without this VM's token before any handler.

use std::sync::atomic::AtomicI32;
use std::sync::Arc;
use std::time::Duration;

use grpcio::RpcStatusCode;
use vm_launcher::backend::peer_filter;
use vm_launcher::host_services::{CrashConfig, HostServices, VmEvent};
use vm_launcher::log_forward::{LogForwarder, LogSink};
use vm_proto::protos::common::EmptyMessage;
use vm_proto::protos::host::CrashReport;
use vm_proto::protos::host_grpc::{CrashListenerClient, StartupListenerClient};
use vm_proto::{grpc_environment, Address, Connector, Listener, Token};

const TIMEOUT: Duration = Duration::from_secs(5);

fn start(dir: &std::path::Path, token: &Token, trusted_pid: i32) -> (HostServices, Address) {
    let addr = Address::Unix(dir.join("host.sock"));
    let services = HostServices::start(
        "vm9",
        token.clone(),
        Listener::bind(&addr).unwrap(),
        peer_filter(9, Arc::new(AtomicI32::new(trusted_pid))),
        LogForwarder::new("vm9", LogSink::Discard),
        CrashConfig {
            spool: dir.join("spool"),
            reporter: Some(vec!["touch".into()]),
            keep: 10,
        },
    )
    .unwrap();
    (services, addr)
}

fn vm_ready(conn: &Connector) -> Result<EmptyMessage, vm_proto::CallError> {
    conn.call(TIMEOUT, |ch, o| {
        StartupListenerClient::new(ch).vm_ready_opt(&EmptyMessage::new(), o)
    })
}

#[test]
fn foreign_peer_is_refused_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let token = Token::generate().unwrap();
    // Only pid 1 speaks for this VM; we are not pid 1.
    let (services, addr) = start(dir.path(), &token, 1);
    let conn = Connector::new(grpc_environment("t"), addr, token);
    assert_eq!(
        vm_ready(&conn).unwrap_err().code(),
        Some(RpcStatusCode::UNAVAILABLE)
    );
    assert!(services.server.refused_peers() >= 1);
    assert!(services.events.try_recv().is_err());
}

#[test]
fn wrong_token_is_unauthenticated_right_token_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let token = Token::generate().unwrap();
    let (services, addr) = start(dir.path(), &token, std::process::id() as i32);
    let wrong = Connector::new(
        grpc_environment("t"),
        addr.clone(),
        Token::generate().unwrap(),
    );
    assert_eq!(
        vm_ready(&wrong).unwrap_err().code(),
        Some(RpcStatusCode::UNAUTHENTICATED)
    );
    assert!(services.events.try_recv().is_err());

    let right = Connector::new(grpc_environment("t"), addr, token);
    vm_ready(&right).unwrap();
    assert_eq!(
        services.events.recv_timeout(TIMEOUT).unwrap(),
        VmEvent::Ready
    );

    let mut report = CrashReport::new();
    report.set_minidump(b"MDMPxyz".to_vec());
    report.mut_metadata().insert("exe".into(), "app".into());
    report.mut_metadata().insert("pid".into(), "77".into());
    right
        .call(TIMEOUT, |ch, o| {
            CrashListenerClient::new(ch).send_crash_report_opt(&report, o)
        })
        .unwrap();
    let VmEvent::CrashStored { dump } = services.events.recv_timeout(TIMEOUT).unwrap() else {
        panic!("no crash event");
    };
    assert!(dump.starts_with(dir.path().join("spool/vm9")));
    assert_eq!(std::fs::read(&dump).unwrap(), b"MDMPxyz");
    let meta = std::fs::read_to_string(dump.with_extension("meta")).unwrap();
    assert!(
        meta.contains("exe=app\n") && meta.ends_with("done=1\n"),
        "{meta}"
    );
}
