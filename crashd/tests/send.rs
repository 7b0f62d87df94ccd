//! Sending to the host: a stand-in CrashListener on a unix socket (the guest uses vsock;
//! the RPC and the token are the same). Host down → the report waits in the spool; host up
//! → the next run sends the spooled report first, then its own.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use crossbeam_channel::{unbounded, Receiver, Sender};
use grpcio::{RpcContext, UnarySink};
use vm_proto::protos::common::EmptyMessage;
use vm_proto::protos::host::CrashReport;
use vm_proto::protos::host_grpc::{create_crash_listener, CrashListener};
use vm_proto::server::any_peer;
use vm_proto::{grpc_environment, Address, GrpcServer, Listener, Token};

#[derive(Clone)]
struct FakeHost(Sender<CrashReport>);

impl CrashListener for FakeHost {
    fn send_crash_report(
        &mut self,
        ctx: RpcContext,
        report: CrashReport,
        sink: UnarySink<EmptyMessage>,
    ) {
        let _ = self.0.send(report);
        ctx.spawn(async move {
            let _ = sink.success(EmptyMessage::new()).await;
        });
    }
}

fn start_host(socket: &Path, token: &Token) -> (GrpcServer, Receiver<CrashReport>) {
    let (tx, rx) = unbounded();
    let listener = Listener::bind(&Address::Unix(socket.to_path_buf())).unwrap();
    let server = GrpcServer::start(
        grpc_environment("fake-host"),
        vec![create_crash_listener(FakeHost(tx))],
        token.clone(),
        vec![listener],
        any_peer(),
    )
    .unwrap();
    (server, rx)
}

fn collect(dir: &Path, core: &Path, pid: &str, time: &str) -> std::process::Output {
    Command::new(collector())
        .arg("--host")
        .arg(format!("unix:{}", dir.join("host.sock").display()))
        .arg("--cmdline")
        .arg(dir.join("cmdline"))
        .arg("--spool")
        .arg(dir.join("spool"))
        .arg("--core")
        .arg(core)
        .args(["--", pid, "11", time, "crashme"])
        .output()
        .unwrap()
}

#[test]
fn host_down_spools_then_next_run_sends_spooled_report_first() {
    let crash = GdbCrash::run("segv", 2);
    let dir = crash.dir.path().to_path_buf();
    let token = Token::generate().unwrap();
    std::fs::write(
        dir.join("cmdline"),
        format!(
            "console=ttyS0 maitred.token={} maitred.host_port=7779 maitred.vm_id=vm-test\n",
            token.to_hex()
        ),
    )
    .unwrap();
    let pid = crash.pid.to_string();

    let first = collect(&dir, &crash.core, &pid, "1700000000");
    assert_eq!(
        first.status.code(),
        Some(1),
        "host down → spooled: {}",
        show(&first)
    );
    assert!(
        String::from_utf8_lossy(&first.stderr).contains("kept in"),
        "{}",
        show(&first)
    );
    let spooled: Vec<_> = std::fs::read_dir(dir.join("spool")).unwrap().collect();
    assert_eq!(spooled.len(), 2, "one .dmp and one .meta");

    let (server, reports) = start_host(&dir.join("host.sock"), &token);
    let second = collect(&dir, &crash.core, &pid, "1700000100");
    assert_eq!(second.status.code(), Some(0), "{}", show(&second));
    let older = reports
        .recv_timeout(Duration::from_secs(10))
        .expect("the spooled report");
    let newer = reports
        .recv_timeout(Duration::from_secs(10))
        .expect("the new report");
    assert_eq!(older.get_metadata()["time"], "1700000000");
    assert_eq!(newer.get_metadata()["time"], "1700000100");
    for r in [&older, &newer] {
        assert_eq!(r.get_metadata()["vm_id"], "vm-test");
        assert_eq!(r.get_metadata()["pid"], pid);
        assert_eq!(&r.get_minidump()[..4], b"MDMP");
        assert!(r
            .get_process_tree()
            .starts_with(&format!("{pid} crashme: ")));
    }
    assert_eq!(
        std::fs::read_dir(dir.join("spool")).unwrap().count(),
        0,
        "the spool is empty"
    );
    server.shutdown();
    crash.finish();
}

#[test]
fn report_over_4_mib_is_delivered_whole() {
    // The host accepts up to 16 MiB (vm_proto::MAX_MESSAGE_BYTES); gRPC's default of
    // 4 MiB used to refuse this report, and the re-render under 4 MiB stays as a fallback.
    // 72 threads waiting under 128 KiB frames: 64 KiB of stack each, 4.5 MiB in all.
    let crash = GdbCrash::run_with("segv", 72, &[("CRASHME_DEEP", "1")]);
    let dir = crash.dir.path().to_path_buf();
    let token = Token::generate().unwrap();
    std::fs::write(
        dir.join("cmdline"),
        format!(
            "maitred.token={} maitred.host_port=7779 maitred.vm_id=vm3",
            token.to_hex()
        ),
    )
    .unwrap();
    let (server, reports) = start_host(&dir.join("host.sock"), &token);
    let out = collect(&dir, &crash.core, &crash.pid.to_string(), "1700000000");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let report = reports
        .recv_timeout(Duration::from_secs(10))
        .expect("a report");
    let size = report.get_minidump().len();
    // How deep each thread got before the crash varies with load (3.3 to 4.6 MiB seen);
    // whatever the size, it arrives as rendered, never cut down for the transport.
    assert!(size > 3 << 20 && size <= 8 << 20, "{size} bytes");
    assert_ne!(
        report.get_metadata().get("size_capped").map(String::as_str),
        Some("yes")
    );
    assert_eq!(report.get_metadata()["vm_id"], "vm3");
    assert_eq!(report.get_metadata()["threads"], "72");
    assert_eq!(
        std::fs::read_dir(dir.join("spool")).map_or(0, |d| d.count()),
        0
    );
    server.shutdown();
    crash.finish();
}

#[test]
fn wrong_token_is_refused_and_the_report_kept() {
    let crash = GdbCrash::run("segv", 1);
    let dir = crash.dir.path().to_path_buf();
    let host_token = Token::generate().unwrap();
    let guest_token = Token::generate().unwrap();
    std::fs::write(
        dir.join("cmdline"),
        format!(
            "maitred.token={} maitred.host_port=7779 maitred.vm_id=vm2",
            guest_token.to_hex()
        ),
    )
    .unwrap();
    let (server, reports) = start_host(&dir.join("host.sock"), &host_token);
    let out = collect(&dir, &crash.core, &crash.pid.to_string(), "1700000000");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("UNAUTHENTICATED"),
        "{}",
        show(&out)
    );
    assert!(reports.try_recv().is_err());
    server.shutdown();
    crash.finish();
}
