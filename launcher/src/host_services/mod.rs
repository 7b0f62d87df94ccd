//! The services the launcher serves for one VM: StartupListener (readiness and the
//! application's exit), LogCollector (into the host's log, tagged with the VM id) and
//! CrashListener (into the crash spool, then the crash reporter and the uploader). One gRPC
//! server per VM; it accepts only this VM's connections and only calls carrying this VM's
//! token.
//!
//! A guest is not trusted with the host's resources: each service has per-VM limits
//! ([`limits`]). The services are isolated from each other by threads, not completion
//! queues (grpcio hands any call to any of a server's queues, so a queue per service would
//! need a port per service, which the contract does not have): a handler on the
//! completion-queue thread only checks limits, counts and queues, and each service's slow
//! work runs on threads of its own behind a bounded queue — the log writer (a host syslog
//! that blocks), the crash spool writer (16 MiB reports), the reporter pool, the uploader.
//! A full queue refuses the call at once, so a stalled log sink or a crash flood never
//! delays VmReady or ApplicationExited. A handler that panics is answered INTERNAL and
//! logged ([`reply::guarded`]); the server keeps serving. ApplicationExited is honoured
//! once, and only after the launcher said it started an application
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
use grpcio::{RpcContext, RpcStatus, RpcStatusCode, UnarySink};
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
use reply::{status, Slot};
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
    #[cfg(feature = "test-hooks")]
    panic_next: Arc<std::sync::Mutex<Option<&'static str>>>,
}

/// Answers the call whose sink is still in `slot`.
fn answer<T: Send + 'static>(ctx: &RpcContext, slot: &mut Slot<T>, result: Result<T, RpcStatus>) {
    if let Some(sink) = slot.take() {
        reply::on_grpc_thread(ctx, sink, result);
    }
}

impl Services {
    /// Runs one handler's body on the completion-queue thread, under [`reply::guarded`]:
    /// bodies only check, count and queue (the slow work is the workers'), and a panic in
    /// one is answered INTERNAL without taking the server down.
    fn serve<T: Send + 'static>(
        &self,
        ctx: &RpcContext,
        sink: UnarySink<T>,
        method: &'static str,
        body: impl FnOnce(&RpcContext, &mut Slot<T>),
    ) {
        let who = format_args!("VM({}) {method}", self.vm_id);
        reply::guarded(ctx, sink, who, &self.counters.panics, |ctx, slot| {
            #[cfg(feature = "test-hooks")]
            self.test_panic(method);
            body(ctx, slot)
        });
    }

    #[cfg(feature = "test-hooks")]
    fn test_panic(&self, method: &'static str) {
        let mut next = self.panic_next.lock().unwrap_or_else(|p| p.into_inner());
        if *next == Some(method) {
            *next = None;
            drop(next);
            panic!("test hook: {method} panics");
        }
    }
}

impl StartupListener for Services {
    fn vm_ready(&mut self, ctx: RpcContext, _: EmptyMessage, sink: UnarySink<EmptyMessage>) {
        self.serve(&ctx, sink, "VmReady", |ctx, slot| {
            let _ = self.events.send(VmEvent::Ready);
            answer(ctx, slot, Ok(EmptyMessage::new()));
        });
    }

    fn application_exited(
        &mut self,
        ctx: RpcContext,
        exit: ApplicationExit,
        sink: UnarySink<EmptyMessage>,
    ) {
        self.serve(&ctx, sink, "ApplicationExited", |ctx, slot| {
            answer(ctx, slot, self.app_exit(&exit));
        });
    }
}

impl Services {
    /// ApplicationExited: honoured once, and only after the launcher started an application.
    fn app_exit(&self, exit: &ApplicationExit) -> Result<EmptyMessage, RpcStatus> {
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
            return Err(status(RpcStatusCode::FAILED_PRECONDITION, why));
        }
        let _ = self.events.send(VmEvent::ApplicationExited {
            status: exit.get_status(),
            code: exit.get_code(),
        });
        Ok(EmptyMessage::new())
    }
}

impl LogCollector for Services {
    fn collect_kernel_logs(
        &mut self,
        ctx: RpcContext,
        req: LogRequest,
        sink: UnarySink<EmptyMessage>,
    ) {
        self.serve(&ctx, sink, "CollectKernelLogs", |ctx, slot| {
            if let Some(sink) = slot.take() {
                self.logs.submit(ctx, true, req, sink);
            }
        });
    }

    fn collect_user_logs(
        &mut self,
        ctx: RpcContext,
        req: LogRequest,
        sink: UnarySink<EmptyMessage>,
    ) {
        self.serve(&ctx, sink, "CollectUserLogs", |ctx, slot| {
            if let Some(sink) = slot.take() {
                self.logs.submit(ctx, false, req, sink);
            }
        });
    }
}

impl CrashListener for Services {
    fn send_crash_report(
        &mut self,
        ctx: RpcContext,
        report: CrashReport,
        sink: UnarySink<EmptyMessage>,
    ) {
        self.serve(&ctx, sink, "SendCrashReport", |ctx, slot| {
            if let Some(sink) = slot.take() {
                self.crash.submit(ctx, report, sink);
            }
        });
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
    #[cfg(feature = "test-hooks")]
    panic_next: Arc<std::sync::Mutex<Option<&'static str>>>,
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
        #[cfg(feature = "test-hooks")]
        let panic_next = Arc::new(std::sync::Mutex::new(None));
        let services = Services {
            events,
            logs: Arc::new(logs),
            crash: Arc::new(crash),
            app: app.clone(),
            counters: counters.clone(),
            vm_id,
            #[cfg(feature = "test-hooks")]
            panic_next: panic_next.clone(),
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
            #[cfg(feature = "test-hooks")]
            panic_next,
            _uploader: uploader,
        })
    }

    /// Test only: the next call of `method` (e.g. "VmReady") panics in its handler.
    #[cfg(feature = "test-hooks")]
    pub fn panic_on_next(&self, method: &'static str) {
        *self.panic_next.lock().unwrap_or_else(|p| p.into_inner()) = Some(method);
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
