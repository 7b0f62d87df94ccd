//! The host services refuse what is not this VM: a foreign peer before any call, and a call
//! without this VM's token before any handler. And they defend themselves against their own
//! VM: log floods (records/s, bytes/s) are dropped, counted and noticed once per interval;
//! crash report floods are refused past the per-minute limit; a slow crash reporter never
//! delays VmReady or ApplicationExited and excess runs are skipped; ApplicationExited counts
//! once, and only after the launcher started an application.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicI32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grpcio::RpcStatusCode;
use vm_launcher::backend::peer_filter;
use vm_launcher::host_services::limits::Rate;
use vm_launcher::host_services::{CrashConfig, HostServices, Limits, Stats, VmEvent, RATE_LIMITED};
use vm_launcher::log_forward::{LogForwarder, LogSink};
use vm_proto::protos::common::EmptyMessage;
use vm_proto::protos::guest::ProcessStatus;
use vm_proto::protos::host::{ApplicationExit, CrashReport, LogRecord, LogRequest};
use vm_proto::protos::host_grpc::{CrashListenerClient, LogCollectorClient, StartupListenerClient};
use vm_proto::{grpc_environment, Address, CallError, Connector, Listener, Token};

const TIMEOUT: Duration = Duration::from_secs(5);

fn start(dir: &Path, token: &Token, trusted_pid: i32) -> (HostServices, Address) {
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
            upload: None,
        },
    )
    .unwrap();
    (services, addr)
}

/// Host services for this process (the trusted peer), logging to `dir/vm.log`.
struct Host {
    services: HostServices,
    addr: Address,
    token: Token,
    log: PathBuf,
    spool: PathBuf,
}

impl Host {
    fn start(dir: &Path, reporter: Option<Vec<String>>, limits: &Limits) -> Host {
        let addr = Address::Unix(dir.join("host.sock"));
        let token = Token::generate().unwrap();
        let log = dir.join("vm.log");
        let spool = dir.join("spool");
        let services = HostServices::start_with_limits(
            "vm9",
            token.clone(),
            Listener::bind(&addr).unwrap(),
            peer_filter(9, Arc::new(AtomicI32::new(std::process::id() as i32))),
            LogForwarder::new("vm9", LogSink::File(log.clone())),
            CrashConfig {
                spool: spool.clone(),
                reporter,
                keep: 1000,
                upload: None,
            },
            limits,
        )
        .unwrap();
        Host {
            services,
            addr,
            token,
            log,
            spool,
        }
    }

    /// A connection of its own (calls on one connection are served one after another).
    fn connect(&self) -> Connector {
        Connector::new(grpc_environment("t"), self.addr.clone(), self.token.clone())
    }

    fn stats(&self) -> Stats {
        self.services.stats()
    }

    fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    fn dumps(&self) -> Vec<PathBuf> {
        let mut dumps: Vec<PathBuf> = std::fs::read_dir(self.spool.join("vm9"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        dumps.retain(|p| p.extension().is_some_and(|e| e == "dmp"));
        dumps.sort();
        dumps
    }
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn records(contents: impl IntoIterator<Item = String>) -> LogRequest {
    let mut req = LogRequest::new();
    for content in contents {
        let mut r = LogRecord::new();
        r.set_app_name("app".into());
        r.set_pid(42);
        r.set_content(content.into_bytes());
        req.mut_records().push(r);
    }
    req
}

fn send_logs(conn: &Connector, req: &LogRequest) -> Result<EmptyMessage, CallError> {
    conn.call(Duration::from_secs(30), |ch, o| {
        LogCollectorClient::new(ch).collect_user_logs_opt(req, o)
    })
}

/// The record contents that reached the log, in order.
fn delivered(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.split(" app 42 user - ").nth(1).map(String::from))
        .collect()
}

fn notices(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains("over the rate limit"))
        .cloned()
        .collect()
}

/// A report from a process with `pid` (the spool names reports by exe, time and pid).
fn crash_report(bytes: usize, pid: u32) -> CrashReport {
    let mut report = CrashReport::new();
    let mut dump = b"MDMP".to_vec();
    dump.resize(bytes.max(4), 0x5a);
    report.set_minidump(dump);
    report.mut_metadata().insert("exe".into(), "app".into());
    report.mut_metadata().insert("pid".into(), pid.to_string());
    report
}

fn send_crash(conn: &Connector, report: &CrashReport) -> Result<EmptyMessage, CallError> {
    conn.call(Duration::from_secs(30), |ch, o| {
        CrashListenerClient::new(ch).send_crash_report_opt(report, o)
    })
}

fn app_exited(conn: &Connector, code: i32) -> Result<EmptyMessage, CallError> {
    let mut exit = ApplicationExit::new();
    exit.set_status(ProcessStatus::EXITED);
    exit.set_code(code);
    conn.call(TIMEOUT, |ch, o| {
        StartupListenerClient::new(ch).application_exited_opt(&exit, o)
    })
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

#[test]
fn log_flood_past_records_per_second_is_dropped_counted_and_noticed_once() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        log_records: Rate::per_second(100.0, 100.0),
        log_notice_every: Duration::from_secs(1),
        ..Limits::default()
    };
    let host = Host::start(dir.path(), None, &limits);
    let conn = host.connect();
    let started = Instant::now();
    send_logs(&conn, &records((0..1000).map(|i| format!("rec {i:04}")))).unwrap();
    let elapsed = started.elapsed();

    // The first ones arrive, in order; the rest are dropped and counted exactly.
    let got = delivered(&host.log_lines());
    let allowed = 100 + (100.0 * elapsed.as_secs_f64()).ceil() as usize;
    assert!(
        (100..=allowed).contains(&got.len()),
        "{} delivered",
        got.len()
    );
    let want: Vec<String> = (0..got.len()).map(|i| format!("rec {i:04}")).collect();
    assert_eq!(got, want);
    let stats = host.stats();
    assert_eq!(stats.log_records_dropped, 1000 - got.len() as u64);
    assert_eq!(stats.log_bytes_dropped, stats.log_records_dropped * 11); // "app" + "rec nnnn"

    // One notice line for the interval, with the exact counts.
    wait_for("the drop notice", Duration::from_secs(5), || {
        !notices(&host.log_lines()).is_empty()
    });
    let lines = host.log_lines();
    let notice = notices(&lines);
    assert_eq!(notice.len(), 1, "{notice:?}");
    assert!(
        notice[0].contains(" VM(vm9) vm_launcher ")
            && notice[0].ends_with(&format!(
                " - dropped {} log records ({} bytes) over the rate limit",
                stats.log_records_dropped, stats.log_bytes_dropped
            )),
        "{}",
        notice[0]
    );

    // Within the limit again: everything arrives, and no further notice comes.
    send_logs(&conn, &records((0..10).map(|i| format!("late {i}")))).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let lines = host.log_lines();
    assert_eq!(delivered(&lines).len(), got.len() + 10);
    assert_eq!(notices(&lines).len(), 1);
    assert_eq!(host.stats().log_records_dropped, stats.log_records_dropped);
}

#[test]
fn log_flood_past_bytes_per_second_is_dropped_counted_and_noticed_once() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        log_bytes: Rate::per_second(1_000.0, 10_000.0),
        log_notice_every: Duration::from_secs(1),
        ..Limits::default()
    };
    let host = Host::start(dir.path(), None, &limits);
    let conn = host.connect();
    // 1003 bytes a record ("app" + 1000): nine fit the 10,000-byte burst.
    let big = |i: usize| format!("{i:04}{}", "x".repeat(996));
    send_logs(&conn, &records((0..50).map(big))).unwrap();
    // One more at once, refused whole (a record needs a second of refill).
    send_logs(&conn, &records((50..60).map(big))).unwrap();
    let got = delivered(&host.log_lines());
    assert_eq!(got, (0..9).map(big).collect::<Vec<_>>());
    let stats = host.stats();
    assert_eq!(stats.log_records_dropped, 51);
    assert_eq!(stats.log_bytes_dropped, 51 * 1003);
    wait_for("the drop notice", Duration::from_secs(5), || {
        !notices(&host.log_lines()).is_empty()
    });
    std::thread::sleep(Duration::from_millis(1200));
    let notice = notices(&host.log_lines());
    assert_eq!(notice.len(), 1, "{notice:?}");
    assert!(
        notice[0].ends_with(" - dropped 51 log records (51153 bytes) over the rate limit"),
        "{}",
        notice[0]
    );
}

#[test]
fn log_flood_with_the_default_limits_stops_at_the_burst_and_is_noticed_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits::default();
    let host = Host::start(dir.path(), None, &limits);
    let conn = host.connect();
    const PER_REQUEST: usize = 50_000;
    let started = Instant::now();
    for batch in 0..3 {
        let req = records((0..PER_REQUEST).map(|i| format!("{}", batch * PER_REQUEST + i)));
        send_logs(&conn, &req).unwrap();
    }
    let elapsed = started.elapsed();
    let got = delivered(&host.log_lines()).len();
    let stats = host.stats();
    eprintln!("default limits: {got} of 150000 records delivered in {elapsed:?}");
    let allowed = limits.log_records.burst + limits.log_records.amount * elapsed.as_secs_f64();
    assert!(got as f64 <= allowed + 1.0, "{got} delivered");
    assert!(got >= limits.log_records.burst as usize, "{got} delivered");
    assert_eq!(stats.log_records_dropped, (3 * PER_REQUEST - got) as u64);

    // The notice is due only after 10 s; a VM that stops first still gets it.
    let log = host.log.clone();
    drop(host);
    let notice = format!(
        "dropped {} log records ({} bytes) over the rate limit",
        stats.log_records_dropped, stats.log_bytes_dropped
    );
    wait_for("the notice at shutdown", Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains(&notice))
    });
}

#[test]
fn crash_flood_past_the_per_minute_limit_is_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits::default();
    let host = Host::start(dir.path(), None, &limits);
    let conn = host.connect();
    let (mut stored, mut refused) = (0, 0);
    for pid in 0..30 {
        match send_crash(&conn, &crash_report(64, pid)) {
            Ok(_) => stored += 1,
            Err(e) => {
                assert_eq!(e.code(), Some(RpcStatusCode::RESOURCE_EXHAUSTED), "{e}");
                assert!(e.to_string().contains(RATE_LIMITED), "{e}");
                refused += 1;
            }
        }
    }
    // 20 a minute: one more may have been earned while sending (one every 3 s).
    let burst = limits.crash_reports.burst as usize;
    assert!((burst..=burst + 1).contains(&stored), "{stored} stored");
    let stats = host.stats();
    assert_eq!(stats.crash_reports_refused, refused);
    assert_eq!(stats.crash_reports_stored, stored as u64);
    assert_eq!(host.dumps().len(), stored);
    // The other services still answer.
    vm_ready(&conn).unwrap();
}

/// 1 reporter worker and room for 2 more: of 6 reports stored within the reporter's second,
/// 3 are run and 3 are skipped, all 6 kept in the spool.
#[test]
fn crash_reporter_runs_are_bounded_and_the_excess_skipped_but_stored() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        reporter_workers: 1,
        reporter_queue: 2,
        ..Limits::default()
    };
    let reporter = ["sh", "-c", "sleep 1; touch \"$1.reported\"", "reporter"];
    let host = Host::start(
        dir.path(),
        Some(reporter.iter().map(|s| s.to_string()).collect()),
        &limits,
    );
    let conn = host.connect();
    let started = Instant::now();
    for pid in 0..6 {
        send_crash(&conn, &crash_report(64, pid)).unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "too slow to test"
    );
    wait_for("the reporter runs", Duration::from_secs(20), || {
        host.stats().reporter_runs_finished == 3
    });
    let stats = host.stats();
    assert_eq!(
        (stats.crash_reports_stored, stats.reporter_runs_skipped),
        (6, 3)
    );
    let dumps = host.dumps();
    assert_eq!(dumps.len(), 6);
    let reported: Vec<bool> = dumps
        .iter()
        .map(|d| {
            let mut marker = d.clone().into_os_string();
            marker.push(".reported");
            Path::new(&marker).exists()
        })
        .collect();
    assert_eq!(reported.iter().filter(|r| **r).count(), 3, "{reported:?}");
    // Nothing else runs later.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(host.stats().reporter_runs_finished, 3);
}

#[test]
fn crash_reporter_past_its_time_limit_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        reporter_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let host = Host::start(
        dir.path(),
        Some(vec![
            "sh".into(),
            "-c".into(),
            "sleep 600".into(),
            "r".into(),
        ]),
        &limits,
    );
    let started = Instant::now();
    send_crash(&host.connect(), &crash_report(64, 1)).unwrap();
    wait_for("the reporter killed", Duration::from_secs(10), || {
        host.stats().reporter_runs_finished == 1
    });
    assert_eq!(host.stats().reporter_runs_killed, 1);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Big crash reports from three connections, each run by a reporter that sleeps, while a
/// fourth connection measures VmReady and then ApplicationExited.
#[test]
fn slow_reporter_and_big_reports_never_delay_ready_or_exit() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        crash_reports: Rate::per_minute(1000.0, 1000.0),
        ..Limits::default()
    };
    let reporter = ["sh", "-c", "sleep 3", "reporter"];
    let host = Host::start(
        dir.path(),
        Some(reporter.iter().map(|s| s.to_string()).collect()),
        &limits,
    );
    let probe = host.connect();
    let quiet: Vec<Duration> = (0..20).map(|_| timed(|| vm_ready(&probe))).collect();

    const SENDERS: usize = 3;
    const EACH: usize = 4;
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let conn = host.connect();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    let report = crash_report(12 << 20, (sender * EACH + i) as u32);
                    send_crash(&conn, &report).unwrap();
                }
            })
        })
        .collect();
    let mut busy = Vec::new();
    while !senders.iter().all(|s| s.is_finished()) {
        busy.push(timed(|| vm_ready(&probe)));
        std::thread::sleep(Duration::from_millis(10));
    }
    for s in senders {
        s.join().unwrap();
    }
    host.services.expect_application();
    let exit = timed(|| app_exited(&probe, 0));
    let stats = host.stats();
    assert_eq!(stats.crash_reports_stored, (SENDERS * EACH) as u64);
    let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    eprintln!(
        "VmReady: quiet max {:?}; during {} MiB of crash reports ({} calls) max {:?}, \
         median {:?}; ApplicationExited {exit:?}",
        max(&quiet),
        SENDERS * EACH * 12,
        busy.len(),
        max(&busy),
        busy.get(busy.len() / 2).copied().unwrap_or_default()
    );
    assert!(busy.len() >= 5, "the reports went too fast to measure");
    assert!(max(&busy) < Duration::from_millis(500), "{busy:?}");
    assert!(exit < Duration::from_millis(500));
    let mut events = host.services.events.try_iter();
    assert!(events.any(|e| matches!(e, VmEvent::ApplicationExited { code: 0, .. })));
    // Leave no reporter running: 2 at once, 3 s each, the rest skipped or queued.
    wait_for("the reporters", Duration::from_secs(60), || {
        let s = host.stats();
        s.reporter_runs_finished + s.reporter_runs_skipped == s.crash_reports_stored
    });
}

fn timed<T, E: std::fmt::Debug>(call: impl FnOnce() -> Result<T, E>) -> Duration {
    let started = Instant::now();
    call().unwrap();
    started.elapsed()
}

#[test]
fn application_exited_is_refused_before_the_launch_and_after_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path(), None, &Limits::default());
    let conn = host.connect();
    vm_ready(&conn).unwrap();
    assert_eq!(
        host.services.events.recv_timeout(TIMEOUT).unwrap(),
        VmEvent::Ready
    );

    // A forged exit before any application was started.
    let early = app_exited(&conn, 0).unwrap_err();
    assert_eq!(
        early.code(),
        Some(RpcStatusCode::FAILED_PRECONDITION),
        "{early}"
    );
    assert!(
        early.to_string().contains("no application was started"),
        "{early}"
    );

    host.services.expect_application();
    host.services.expect_application(); // the launcher's intent, not a second allowance
    app_exited(&conn, 3).unwrap();
    assert_eq!(
        host.services.events.recv_timeout(TIMEOUT).unwrap(),
        VmEvent::ApplicationExited {
            status: ProcessStatus::EXITED,
            code: 3
        }
    );

    // A second report, on this connection or another: refused, and no event.
    for conn in [&conn, &host.connect()] {
        let again = app_exited(conn, 0).unwrap_err();
        assert_eq!(
            again.code(),
            Some(RpcStatusCode::FAILED_PRECONDITION),
            "{again}"
        );
        assert!(again.to_string().contains("already reported"), "{again}");
    }
    host.services.expect_application(); // too late to re-arm
    assert!(app_exited(&conn, 0).is_err());
    assert!(host.services.events.try_recv().is_err());
    assert_eq!(host.stats().app_exits_refused, 4);
}

/// The host's log sink blocks for 10 s (a FIFO nobody opens for reading: the log writer
/// hangs in open(2), as on a stalled disk), while the guest floods logs from ten
/// connections: VmReady and ApplicationExited still answer within 100 ms, and once the sink
/// moves again every accepted record arrives.
#[test]
fn log_sink_blocked_for_10s_never_delays_ready_or_exit() {
    const BLOCKED: Duration = Duration::from_secs(10);
    let dir = tempfile::tempdir().unwrap();
    // Host::start logs to dir/vm.log: make that a FIFO.
    nix::unistd::mkfifo(&dir.path().join("vm.log"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let host = Host::start(dir.path(), None, &Limits::default());
    let started = Instant::now();
    let senders: Vec<_> = (0..10)
        .map(|t| {
            let conn = host.connect();
            std::thread::spawn(move || {
                send_logs(&conn, &records((0..100).map(|i| format!("t{t} r{i}"))))
                    .map(|_| ())
                    .map_err(|e| e.code())
            })
        })
        .collect();
    let probe = host.connect();
    let mut ready = Vec::new();
    let mut exit = None;
    while started.elapsed() < BLOCKED - Duration::from_millis(500) {
        ready.push(timed(|| vm_ready(&probe)));
        if exit.is_none() && started.elapsed() > BLOCKED / 2 {
            host.services.expect_application();
            exit = Some(timed(|| app_exited(&probe, 7)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The sink was blocked all along: the writer's first request is still unanswered.
    let waiting = senders.iter().filter(|s| !s.is_finished()).count();
    let busy = host.stats().log_requests_busy;

    // Unblock: read the FIFO until the host goes.
    let fifo = dir.path().join("vm.log");
    let reader = std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap());
    let results: Vec<_> = senders.into_iter().map(|s| s.join().unwrap()).collect();
    let sent_ok = results.iter().filter(|r| r.is_ok()).count();
    drop(host);
    let text = reader.join().unwrap();

    ready.sort();
    let exit = exit.expect("ApplicationExited was measured");
    eprintln!(
        "sink blocked {BLOCKED:?}: {} VmReady calls, median {:?}, max {:?}; \
         ApplicationExited {exit:?}; {waiting} log calls waiting, {busy} refused busy",
        ready.len(),
        ready[ready.len() / 2],
        ready[ready.len() - 1]
    );
    assert!(waiting >= 1, "the sink did not block");
    assert!(ready.len() >= 50, "{} probes", ready.len());
    assert!(
        ready[ready.len() - 1] < Duration::from_millis(100),
        "{ready:?}"
    );
    assert!(exit < Duration::from_millis(100), "{exit:?}");
    // 1 request with the writer, 8 queued, the rest refused UNAVAILABLE (kept by the guest).
    for r in &results {
        assert!(
            matches!(r, Ok(()) | Err(Some(RpcStatusCode::UNAVAILABLE))),
            "{r:?}"
        );
    }
    assert_eq!(sent_ok as u64 + busy, 10, "{results:?}");
    assert_eq!(text.lines().count(), sent_ok * 100);
}

/// A handler that panics (a test hook) is answered INTERNAL, for each service; the
/// completion-queue thread it ran on lives on, so every service still answers afterwards.
#[test]
fn panicking_handler_is_answered_internal_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path(), None, &Limits::default());
    let conn = host.connect();
    let methods = [
        "VmReady",
        "CollectUserLogs",
        "SendCrashReport",
        "ApplicationExited",
    ];
    let pid = std::sync::atomic::AtomicU32::new(1);
    let call = |method: &str, conn: &Connector| match method {
        "VmReady" => vm_ready(conn).map(|_| ()),
        "CollectUserLogs" => send_logs(conn, &records(["after".to_string()])).map(|_| ()),
        "SendCrashReport" => {
            // A pid of its own: the spool names reports by exe, second and pid.
            let pid = pid.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            send_crash(conn, &crash_report(64, pid)).map(|_| ())
        }
        _ => app_exited(conn, 0).map(|_| ()),
    };
    for method in methods {
        host.services.panic_on_next(method);
        let err = call(method, &conn).unwrap_err();
        assert_eq!(err.code(), Some(RpcStatusCode::INTERNAL), "{method}: {err}");
    }
    assert_eq!(host.stats().panics, 4);
    assert!(
        host.services.events.try_recv().is_err(),
        "a panicked call had effects"
    );

    host.services.expect_application();
    for conn in [&conn, &host.connect()] {
        for method in &methods[..3] {
            call(method, conn).unwrap_or_else(|e| panic!("{method} after the panics: {e}"));
        }
    }
    call("ApplicationExited", &conn).unwrap();
    assert_eq!(host.stats().panics, 4);
    assert_eq!(host.dumps().len(), 2);
    wait_for("the log records", TIMEOUT, || {
        delivered(&host.log_lines()).len() == 2
    });
}
