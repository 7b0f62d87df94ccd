//! The services the launcher serves for one VM: StartupListener (readiness and the
//! application's exit), LogCollector (into the host's log, tagged with the VM id) and
//! CrashListener (into the crash spool, then the crash reporter). One gRPC server per VM;
//! it accepts only this VM's connections and only calls carrying this VM's token.
//!
//! A guest is not trusted with the host's resources: each service has per-VM limits
//! ([`limits`]), and slow work (writing logs and 16 MiB crash reports, running the reporter)
//! happens on worker threads of ours, never on a gRPC completion-queue thread, so a flood
//! of one kind never delays VmReady or ApplicationExited. ApplicationExited is honoured once,
//! and only after the launcher said it started an application
//! ([`HostServices::expect_application`]).

mod crash;
pub mod limits;
mod logs;
mod reply;
mod stats;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crossbeam_channel::{unbounded, Receiver, Sender};
use grpcio::{RpcContext, RpcStatusCode, UnarySink};
use vm_proto::protos::common::EmptyMessage;
use vm_proto::protos::guest::ProcessStatus;
use vm_proto::protos::host::{ApplicationExit, CrashReport, LogRequest};
use vm_proto::protos::host_grpc::{
    create_crash_listener, create_log_collector, create_startup_listener, CrashListener,
    LogCollector, StartupListener,
};
use vm_proto::server::PeerFilter;
use vm_proto::{GrpcServer, Listener, ServerError, Token};

use crate::crash_upload::Uploader;
use crate::log_forward::LogForwarder;
use crash::CrashDesk;
pub use crash::RATE_LIMITED;
pub use limits::Limits;
use logs::LogGate;
use reply::status;
pub use stats::Stats;
use stats::{bump, Counters};

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
    /// `--crash-upload`: the uploader of this spool (a thread of its own), woken after
    /// each stored report; the services own it from here on.
    pub upload: Option<Uploader>,
}

/// Where the application stands, as far as ApplicationExited is concerned.
const APP_NONE: u8 = 0;
const APP_EXPECTED: u8 = 1;
const APP_EXITED: u8 = 2;

#[derive(Clone)]
struct Services {
    events: Sender<VmEvent>,
    logs: Arc<LogGate>,
    crash: Arc<CrashDesk>,
    app: Arc<AtomicU8>,
    counters: Arc<Counters>,
    vm_id: Arc<str>,
}

fn ok(ctx: &RpcContext, sink: UnarySink<EmptyMessage>) {
    reply::on_grpc_thread(ctx, sink, Ok(EmptyMessage::new()));
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
        let first =
            self.app
                .compare_exchange(APP_EXPECTED, APP_EXITED, Ordering::SeqCst, Ordering::SeqCst);
        if let Err(state) = first {
            let why = if state == APP_NONE {
                "no application was started"
            } else {
                "the application's exit was already reported"
            };
            if bump(&self.counters.app_exits_refused) == 1 {
                note(format_args!(
                    "VM({}) refused ApplicationExited: {why}",
                    self.vm_id
                ));
            }
            let refusal = status(RpcStatusCode::FAILED_PRECONDITION, why);
            return reply::on_grpc_thread(&ctx, sink, Err(refusal));
        }
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
        mut req: LogRequest,
        sink: UnarySink<EmptyMessage>,
    ) {
        self.logs
            .submit(&ctx, true, req.take_records().into_vec(), sink);
    }

    fn collect_user_logs(
        &mut self,
        ctx: RpcContext,
        mut req: LogRequest,
        sink: UnarySink<EmptyMessage>,
    ) {
        self.logs
            .submit(&ctx, false, req.take_records().into_vec(), sink);
    }
}

impl CrashListener for Services {
    fn send_crash_report(
        &mut self,
        ctx: RpcContext,
        report: CrashReport,
        sink: UnarySink<EmptyMessage>,
    ) {
        self.crash.submit(&ctx, report, sink);
    }
}

/// One line on stderr. Never `eprintln!` here: a detached launcher's stderr is a closed pipe,
/// and a panic in a handler would leave the guest's call unanswered.
fn note(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

pub struct HostServices {
    pub server: GrpcServer,
    pub events: Receiver<VmEvent>,
    app: Arc<AtomicU8>,
    counters: Arc<Counters>,
    /// Last, so it drops after the server: its last pass uploads what is due then.
    _uploader: Option<Uploader>,
}

impl HostServices {
    /// Starts the services with the default [`Limits`].
    pub fn start(
        vm_id: &str,
        token: Token,
        listener: Listener,
        peer_filter: PeerFilter,
        logs: LogForwarder,
        crash: CrashConfig,
    ) -> Result<HostServices, ServerError> {
        Self::start_with_limits(
            vm_id,
            token,
            listener,
            peer_filter,
            logs,
            crash,
            &Limits::default(),
        )
    }

    pub fn start_with_limits(
        vm_id: &str,
        token: Token,
        listener: Listener,
        peer_filter: PeerFilter,
        logs: LogForwarder,
        mut crash: CrashConfig,
        limits: &Limits,
    ) -> Result<HostServices, ServerError> {
        let (events, rx) = unbounded();
        let counters = Arc::new(Counters::default());
        let vm_id: Arc<str> = Arc::from(vm_id);
        let uploader = crash.upload.take();
        let logs = LogGate::start(logs, limits, counters.clone()).map_err(ServerError::Thread)?;
        let crash = CrashDesk::start(
            vm_id.clone(),
            crash,
            uploader.as_ref().map(Uploader::waker),
            limits,
            events.clone(),
            counters.clone(),
        )
        .map_err(ServerError::Thread)?;
        let app = Arc::new(AtomicU8::new(APP_NONE));
        let services = Services {
            events,
            logs: Arc::new(logs),
            crash: Arc::new(crash),
            app: app.clone(),
            counters: counters.clone(),
            vm_id,
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
        Ok(HostServices {
            server,
            events: rx,
            app,
            counters,
            _uploader: uploader,
        })
    }

    /// The launcher is about to start the application: from now on, one ApplicationExited
    /// is honoured. Call it right before LaunchProcess, so an exit cannot come first.
    pub fn expect_application(&self) {
        let _ =
            self.app
                .compare_exchange(APP_NONE, APP_EXPECTED, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// What was refused, dropped or skipped so far.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }
}
