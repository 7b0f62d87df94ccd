//! The services the launcher serves for one VM: StartupListener (readiness and the
//! application's exit), LogCollector (into the host's log, tagged with the VM id) and
//! CrashListener (into the crash spool, then the crash reporter). One gRPC server per VM;
//! it accepts only this VM's connections and only calls carrying this VM's token.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use crossbeam_channel::{unbounded, Receiver, Sender};
use grpcio::{RpcContext, UnarySink};
use vm_proto::protos::common::EmptyMessage;
use vm_proto::protos::guest::ProcessStatus;
use vm_proto::protos::host::{ApplicationExit, CrashReport, LogRequest};
use vm_proto::protos::host_grpc::{
    create_crash_listener, create_log_collector, create_startup_listener, CrashListener,
    LogCollector, StartupListener,
};
use vm_proto::server::PeerFilter;
use vm_proto::{GrpcServer, Listener, ServerError, Token};

use crate::crash_spool;
use crate::log_forward::LogForwarder;

/// What the guest told us, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    Ready,
    ApplicationExited { status: ProcessStatus, code: i32 },
    CrashStored { dump: PathBuf },
}

pub struct CrashConfig {
    pub spool: PathBuf,
    /// Run with the `.dmp` and `.meta` paths appended, after each report is stored.
    pub reporter: Option<Vec<String>>,
    /// Reports kept per VM in the spool; older ones are removed after each store.
    pub keep: usize,
}

#[derive(Clone)]
struct Services {
    events: Sender<VmEvent>,
    logs: Arc<LogForwarder>,
    crash: Arc<CrashConfig>,
    vm_id: Arc<str>,
}

fn ok(ctx: &RpcContext, sink: UnarySink<EmptyMessage>) {
    ctx.spawn(async move {
        let _ = sink.success(EmptyMessage::new()).await;
    });
}

impl StartupListener for Services {
    fn vm_ready(&mut self, ctx: RpcContext, _: EmptyMessage, sink: UnarySink<EmptyMessage>) {
        let _ = self.events.send(VmEvent::Ready);
        ok(&ctx, sink);
    }

    fn application_exited(
        &mut self,
        ctx: RpcContext,
        exit: ApplicationExit,
        sink: UnarySink<EmptyMessage>,
    ) {
        let _ = self.events.send(VmEvent::ApplicationExited {
            status: exit.get_status(),
            code: exit.get_code(),
        });
        ok(&ctx, sink);
    }
}

impl LogCollector for Services {
    fn collect_kernel_logs(
        &mut self,
        ctx: RpcContext,
        req: LogRequest,
        sink: UnarySink<EmptyMessage>,
    ) {
        self.logs.forward(true, req.get_records());
        ok(&ctx, sink);
    }

    fn collect_user_logs(
        &mut self,
        ctx: RpcContext,
        req: LogRequest,
        sink: UnarySink<EmptyMessage>,
    ) {
        self.logs.forward(false, req.get_records());
        ok(&ctx, sink);
    }
}

impl CrashListener for Services {
    fn send_crash_report(
        &mut self,
        ctx: RpcContext,
        report: CrashReport,
        sink: UnarySink<EmptyMessage>,
    ) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let stored = crash_spool::store(&self.crash.spool, &self.vm_id, &report, now);
        let result = match stored {
            Ok((dump, meta)) => {
                note(format_args!(
                    "VM({}) crash report stored: {}",
                    self.vm_id,
                    dump.display()
                ));
                if let Err(e) = crash_spool::prune(&self.crash.spool, &self.vm_id, self.crash.keep)
                {
                    note(format_args!("VM({}) {e}", self.vm_id));
                }
                if let Some(reporter) = &self.crash.reporter {
                    run_reporter(reporter, &dump, &meta);
                }
                let _ = self.events.send(VmEvent::CrashStored { dump });
                Ok(EmptyMessage::new())
            }
            Err(e) => Err(grpcio::RpcStatus::with_message(
                grpcio::RpcStatusCode::UNAVAILABLE,
                e.to_string(),
            )),
        };
        ctx.spawn(async move {
            let _ = match result {
                Ok(m) => sink.success(m).await,
                Err(s) => sink.fail(s).await,
            };
        });
    }
}

/// One line on stderr. Never `eprintln!` here: a detached launcher's stderr is a closed pipe,
/// and a panic in a handler would leave the guest's call unanswered.
fn note(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Starts the crash reporter without waiting for it (it may be slow); a thread reaps it.
fn run_reporter(argv: &[String], dump: &std::path::Path, meta: &std::path::Path) {
    let Some((program, args)) = argv.split_first() else {
        return;
    };
    match Command::new(program).args(args).arg(dump).arg(meta).spawn() {
        Ok(mut child) => {
            std::thread::spawn(move || child.wait());
        }
        Err(e) => note(format_args!("crash reporter {program}: {e}")),
    }
}

pub struct HostServices {
    pub server: GrpcServer,
    pub events: Receiver<VmEvent>,
}

impl HostServices {
    pub fn start(
        vm_id: &str,
        token: Token,
        listener: Listener,
        peer_filter: PeerFilter,
        logs: LogForwarder,
        crash: CrashConfig,
    ) -> Result<HostServices, ServerError> {
        let (events, rx) = unbounded();
        let services = Services {
            events,
            logs: Arc::new(logs),
            crash: Arc::new(crash),
            vm_id: Arc::from(vm_id),
        };
        let server = GrpcServer::start(
            vm_proto::grpc_environment("host-svc"),
            vec![
                create_startup_listener(services.clone()),
                create_log_collector(services.clone()),
                create_crash_listener(services),
            ],
            token,
            vec![listener],
            peer_filter,
        )?;
        Ok(HostServices { server, events: rx })
    }
}
