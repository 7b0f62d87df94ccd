//! The host services of one VM never stall each other: big crash reports with a slow
//! reporter, or a log sink blocked for 10 s, leave VmReady and ApplicationExited prompt; a
//! handler that panics is answered INTERNAL and the server keeps serving.

#[path = "support/host_kit.rs"]
mod host_kit;

use std::time::{Duration, Instant};

use grpcio::RpcStatusCode;
use vm_launcher::host_services::limits::Rate;
use vm_launcher::host_services::{Limits, VmEvent};
use vm_proto::Connector;

use host_kit::*;

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
