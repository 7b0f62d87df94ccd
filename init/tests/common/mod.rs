//! The host-mode maitred harness: maitred as a child process on a private Unix socket, with
//! a real fake host (StartupListener) that records what maitred tells it.
#![allow(dead_code)] // each test file uses a different part

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use grpcio::{RpcContext, UnarySink};
use vm_proto::protos::common::EmptyMessage;
use vm_proto::protos::guest::{LaunchProcessRequest, LaunchProcessResponse, ProcessStatus};
use vm_proto::protos::guest_grpc::MaitredClient;
use vm_proto::protos::host::ApplicationExit;
use vm_proto::protos::host_grpc::{create_startup_listener, StartupListener};
use vm_proto::server::any_peer;
use vm_proto::{grpc_environment, Address, CallError, Connector, GrpcServer, Listener, Token};

pub const TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, PartialEq)]
pub enum HostEvent {
    Ready,
    AppExit(ProcessStatus, i32),
}

#[derive(Clone)]
pub struct FakeHost(Sender<HostEvent>);

impl StartupListener for FakeHost {
    fn vm_ready(&mut self, ctx: RpcContext, _: EmptyMessage, sink: UnarySink<EmptyMessage>) {
        let _ = self.0.send(HostEvent::Ready);
        ctx.spawn(async move {
            let _ = sink.success(EmptyMessage::new()).await;
        });
    }
    fn application_exited(
        &mut self,
        ctx: RpcContext,
        m: ApplicationExit,
        sink: UnarySink<EmptyMessage>,
    ) {
        let _ = self
            .0
            .send(HostEvent::AppExit(m.get_status(), m.get_code()));
        ctx.spawn(async move {
            let _ = sink.success(EmptyMessage::new()).await;
        });
    }
}

pub struct Guest {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub conn: Connector,
    host_events: Receiver<HostEvent>,
    _host: GrpcServer,
}

impl Guest {
    pub fn start() -> Guest {
        Self::start_with_services(&[])
    }

    pub fn start_with_services(services: &[(&str, &str)]) -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let token = Token::generate().unwrap();
        std::fs::write(
            dir.path().join("cmdline"),
            format!(
                "console=ttyS0 maitred.token={} maitred.host_port=7777 maitred.vm_id=test-vm\n",
                token.to_hex()
            ),
        )
        .unwrap();
        let svc_dir = dir.path().join("services");
        std::fs::create_dir(&svc_dir).unwrap();
        for (name, text) in services {
            std::fs::write(svc_dir.join(name), text).unwrap();
        }
        let (tx, host_events) = unbounded();
        let host_addr = Address::Unix(dir.path().join("host.sock"));
        let host = GrpcServer::start(
            grpc_environment("fake-host"),
            vec![create_startup_listener(FakeHost(tx))],
            token.clone(),
            vec![Listener::bind(&host_addr).unwrap()],
            any_peer(),
        )
        .unwrap();
        let listen = Address::Unix(dir.path().join("maitred.sock"));
        let child = Command::new(env!("CARGO_BIN_EXE_maitred"))
            .args([
                "--listen",
                &listen.to_string(),
                "--host",
                &host_addr.to_string(),
            ])
            .arg("--cmdline")
            .arg(dir.path().join("cmdline"))
            .arg("--services")
            .arg(&svc_dir)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let conn = Connector::new(grpc_environment("test-cli"), listen, token.clone());
        let guest = Guest {
            dir,
            child,
            conn,
            host_events,
            _host: host,
        };
        // VmReady is the readiness signal: maitred sends it once it serves.
        assert_eq!(guest.next_host_event(), HostEvent::Ready);
        guest
    }

    pub fn next_host_event(&self) -> HostEvent {
        self.host_events
            .recv_timeout(TIMEOUT)
            .expect("no call from maitred to the host")
    }

    pub fn launch(&self, req: &LaunchProcessRequest) -> Result<LaunchProcessResponse, CallError> {
        self.conn.call(TIMEOUT, |ch, opt| {
            MaitredClient::new(ch).launch_process_opt(req, opt)
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Waits for maitred to exit; returns its exit status and stderr.
    pub fn wait_exit(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status, err);
            }
            assert!(Instant::now() < deadline, "maitred did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn req(argv: &[&str]) -> LaunchProcessRequest {
    let mut r = LaunchProcessRequest::new();
    r.set_argv(argv.iter().map(|s| s.to_string()).collect());
    r
}

pub fn wait_req(argv: &[&str]) -> LaunchProcessRequest {
    let mut r = req(argv);
    r.set_wait_for_exit(true);
    r
}
