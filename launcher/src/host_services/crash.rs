//! CrashListener's defences. A gRPC thread only checks the per-minute limit and queues the
//! report; a spool writer thread of ours writes it (up to 16 MiB), replies, and hands it to a
//! fixed pool of reporter workers through a bounded queue. When that queue is full the report
//! stays in the spool, the run is skipped and counted; a reporter that outlives its time
//! limit is killed. A panic in a worker drops that one job, is counted and logged, and the
//! worker goes on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use grpcio::{RpcContext, RpcStatusCode, UnarySink};
use vm_proto::protos::common::EmptyMessage;
use vm_proto::protos::host::CrashReport;

use super::limits::{Limits, TokenBucket};
use super::reply::{self, status};
use super::stats::{bump, Counters};
use super::{note, CrashConfig, VmEvent};
use crate::crash_spool;
use crate::crash_upload::UploadWaker;

/// How often a reporter worker looks at its child.
const REPORTER_POLL: Duration = Duration::from_millis(50);

/// The words a refusal over the per-minute limit carries (crash_collector can tell it from
/// a message that is too large, which shares the status code).
pub const RATE_LIMITED: &str = vm_proto::CRASH_RATE_LIMITED;

struct StoreJob {
    report: CrashReport,
    sink: UnarySink<EmptyMessage>,
}

struct Writer {
    vm_id: Arc<str>,
    config: Arc<CrashConfig>,
    events: Sender<VmEvent>,
    counters: Arc<Counters>,
    reporters: Option<Sender<(PathBuf, PathBuf)>>,
    upload: Option<UploadWaker>,
}

/// The CrashListener's limits, spool writer and reporter pool.
pub struct CrashDesk {
    vm_id: Arc<str>,
    per_minute: Mutex<TokenBucket>,
    queue: Sender<StoreJob>,
    counters: Arc<Counters>,
}

impl CrashDesk {
    pub fn start(
        vm_id: Arc<str>,
        config: CrashConfig,
        upload: Option<UploadWaker>,
        limits: &Limits,
        events: Sender<VmEvent>,
        counters: Arc<Counters>,
    ) -> std::io::Result<CrashDesk> {
        let config = Arc::new(config);
        let reporters = match &config.reporter {
            Some(argv) if !argv.is_empty() => Some(start_reporters(
                argv,
                limits,
                vm_id.clone(),
                counters.clone(),
            )?),
            _ => None,
        };
        let (queue, jobs) = bounded(limits.crash_store_queue.max(1));
        let writer = Writer {
            vm_id: vm_id.clone(),
            config,
            events,
            counters: counters.clone(),
            reporters,
            upload,
        };
        std::thread::Builder::new()
            .name("host-crash".into())
            .spawn(move || {
                for job in jobs {
                    // A panic drops this job (the guest sees CANCELLED and keeps its
                    // report), not the writer: later reports are still stored.
                    let stored = catch_unwind(AssertUnwindSafe(|| writer.store(job)));
                    if let Err(payload) = stored {
                        worker_panicked(
                            &writer.vm_id,
                            "crash spool writer",
                            &writer.counters,
                            payload,
                        );
                    }
                }
            })?;
        Ok(CrashDesk {
            vm_id,
            per_minute: Mutex::new(TokenBucket::new(limits.crash_reports, Instant::now())),
            queue,
            counters,
        })
    }

    /// Called on a gRPC thread: refuses past the limits, otherwise queues for the writer,
    /// which replies.
    pub fn submit(&self, ctx: &RpcContext, report: CrashReport, sink: UnarySink<EmptyMessage>) {
        let allowed = self
            .per_minute
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(1.0, Instant::now());
        if !allowed {
            let n = bump(&self.counters.crash_reports_refused);
            if n.is_power_of_two() {
                note(format_args!(
                    "VM({}) refused a crash report over the rate limit ({n} so far)",
                    self.vm_id
                ));
            }
            let refusal = status(
                RpcStatusCode::RESOURCE_EXHAUSTED,
                format!("{RATE_LIMITED}: keep it and try later"),
            );
            return reply::on_grpc_thread(ctx, sink, Err(refusal));
        }
        let busy = |ctx: &RpcContext, sink| {
            let n = bump(&self.counters.crash_reports_busy);
            if n.is_power_of_two() {
                note(format_args!(
                    "VM({}) crash spool writer busy: refused a report ({n} so far)",
                    self.vm_id
                ));
            }
            let refusal = status(RpcStatusCode::UNAVAILABLE, "host crash spool busy");
            reply::on_grpc_thread(ctx, sink, Err(refusal));
        };
        match self.queue.try_send(StoreJob { report, sink }) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => busy(ctx, job.sink),
            Err(TrySendError::Disconnected(job)) => reply::on_grpc_thread(
                ctx,
                job.sink,
                Err(status(
                    RpcStatusCode::UNAVAILABLE,
                    "the crash spool writer stopped",
                )),
            ),
        }
    }
}

impl Writer {
    fn store(&self, job: StoreJob) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let (dump, meta) =
            match crash_spool::store(&self.config.spool, &self.vm_id, &job.report, now) {
                Ok(stored) => stored,
                Err(e) => {
                    let why = status(RpcStatusCode::UNAVAILABLE, e.to_string());
                    return reply::from_worker(job.sink, Err(why));
                }
            };
        drop(job.report);
        bump(&self.counters.crash_reports_stored);
        note(format_args!(
            "VM({}) crash report stored: {}",
            self.vm_id,
            dump.display()
        ));
        if let Err(e) = crash_spool::prune(&self.config.spool, &self.vm_id, self.config.keep) {
            note(format_args!("VM({}) {e}", self.vm_id));
        }
        let _ = self
            .events
            .send(VmEvent::CrashStored { dump: dump.clone() });
        reply::from_worker(job.sink, Ok(EmptyMessage::new()));
        if let Some(upload) = &self.upload {
            upload.wake();
        }
        let Some(reporters) = &self.reporters else {
            return;
        };
        if let Err(TrySendError::Full((dump, _)) | TrySendError::Disconnected((dump, _))) =
            reporters.try_send((dump, meta))
        {
            let n = bump(&self.counters.reporter_runs_skipped);
            if n.is_power_of_two() {
                note(format_args!(
                    "VM({}) crash reporter busy: not run for {} (kept in the spool; {n} \
                     skipped so far)",
                    self.vm_id,
                    dump.display()
                ));
            }
        }
    }
}

fn start_reporters(
    argv: &[String],
    limits: &Limits,
    vm_id: Arc<str>,
    counters: Arc<Counters>,
) -> std::io::Result<Sender<(PathBuf, PathBuf)>> {
    let (tx, rx) = bounded::<(PathBuf, PathBuf)>(limits.reporter_queue);
    let argv: Arc<[String]> = argv.into();
    for i in 0..limits.reporter_workers.max(1) {
        let (rx, argv, vm_id, counters) =
            (rx.clone(), argv.clone(), vm_id.clone(), counters.clone());
        let timeout = limits.reporter_timeout;
        std::thread::Builder::new()
            .name(format!("host-reporter-{i}"))
            .spawn(move || reporter_loop(&rx, &argv, timeout, &vm_id, &counters))?;
    }
    Ok(tx)
}

fn reporter_loop(
    jobs: &Receiver<(PathBuf, PathBuf)>,
    argv: &[String],
    timeout: Duration,
    vm_id: &str,
    counters: &Counters,
) {
    for (dump, meta) in jobs {
        let run = || run_reporter(argv, &dump, &meta, timeout, vm_id, counters);
        if let Err(payload) = catch_unwind(AssertUnwindSafe(run)) {
            worker_panicked(vm_id, "crash reporter worker", counters, payload);
        }
        bump(&counters.reporter_runs_finished);
    }
}

/// One line for a worker's panic (at the 1st, 2nd, 4th…); the worker goes on.
fn worker_panicked(
    vm_id: &str,
    worker: &str,
    counters: &Counters,
    payload: Box<dyn std::any::Any + Send>,
) {
    let n = bump(&counters.panics);
    if n.is_power_of_two() {
        note(format_args!(
            "VM({vm_id}) {worker} panicked: {} ({n} panics so far)",
            reply::panic_text(payload.as_ref())
        ));
    }
}

/// Runs the reporter with the `.dmp` and `.meta` paths appended and waits for it, killing
/// it at `timeout`.
fn run_reporter(
    argv: &[String],
    dump: &Path,
    meta: &Path,
    timeout: Duration,
    vm_id: &str,
    counters: &Counters,
) {
    let Some((program, args)) = argv.split_first() else {
        return;
    };
    let child = Command::new(program).args(args).arg(dump).arg(meta).spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return note(format_args!("VM({vm_id}) crash reporter {program}: {e}")),
    };
    if !wait_until(&mut child, Instant::now() + timeout) {
        let _ = child.kill();
        let _ = child.wait();
        bump(&counters.reporter_runs_killed);
        note(format_args!(
            "VM({vm_id}) crash reporter {program} killed after {}s for {}",
            timeout.as_secs(),
            dump.display()
        ));
    }
}

/// Whether `child` ended (and was reaped) before `deadline`.
fn wait_until(child: &mut Child, deadline: Instant) -> bool {
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(REPORTER_POLL),
            Ok(None) => return false,
            // ECHILD and such: nothing left to wait for.
            Err(_) => return true,
        }
    }
}
