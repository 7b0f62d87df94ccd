//! The host services refuse what is not this VM: a foreign peer before any call, and a call
//! without this VM's token before any handler. And they defend themselves against their own
//! VM: log floods (records/s, bytes/s) are dropped, counted and noticed once per interval;
//! crash report floods are refused past the per-minute limit; excess crash reporter runs
//! are skipped; ApplicationExited counts once, and only after the launcher started an
//! application. That one service never stalls another is host_services_isolation.rs.

#[path = "support/host_kit.rs"]
mod host_kit;

use std::path::Path;
use std::time::{Duration, Instant};

use grpcio::RpcStatusCode;
use vm_launcher::host_services::limits::Rate;
use vm_launcher::host_services::{Limits, VmEvent, RATE_LIMITED};
use vm_proto::protos::guest::ProcessStatus;
use vm_proto::protos::host::CrashReport;
use vm_proto::protos::host_grpc::CrashListenerClient;
use vm_proto::{grpc_environment, Connector, Token};

use host_kit::*;

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
