//! Nothing lost while the host is away: the real vm_syslog in front of the launcher's real
//! LogCollector (writing a file), with the collector stopped in the middle of a burst.
//!
//! - With room in the buffer, every record arrives after the host returns, in order; only the
//!   batch whose answer the stop cut off may come twice (a new host has no memory of it).
//! - With a tiny buffer, the oldest records are dropped, and the one report that follows
//!   says exactly how many.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use vm_launcher::log_forward::LogSink;
use vm_proto::Token;

const RECORDS: usize = 50_000;
const OUTAGE: Duration = Duration::from_secs(10);
/// The mid-burst sender spreads its records over this long.
const SEND_TIME: Duration = Duration::from_secs(4);
/// Fits a 64 KiB buffer (records cost about 80 bytes there).
const FIRST_BURST: usize = 500;

fn record(i: usize) -> Vec<u8> {
    format!("<14>Nov 27 01:30:40 fault: rec {i:05}").into_bytes()
}

/// The record numbers in the host's file, in file order, and the drop reports with the
/// number of records before each.
fn arrived(path: &Path) -> (Vec<usize>, Vec<(usize, String)>) {
    let mut numbers = Vec::new();
    let mut reports = Vec::new();
    for line in read_lines(path) {
        assert!(line.contains(" VM(it-vm) "), "untagged: {line}");
        if let Some(n) = line.split(" user - rec ").nth(1) {
            numbers.push(n.parse().unwrap_or_else(|_| panic!("bad line {line}")));
        } else if line.contains("vm_syslog: dropped") {
            reports.push((numbers.len(), line));
        } else {
            panic!("unexpected line {line}");
        }
    }
    (numbers, reports)
}

/// N in "vm_syslog: dropped N records".
fn dropped_in(report: &str) -> usize {
    report
        .split("vm_syslog: dropped ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {report}"))
}

#[test]
fn host_away_for_10s_mid_burst_every_record_arrives_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("host.log");
    let token = Token::generate().unwrap();
    let mut host = Host::start(dir.path(), &token, LogSink::File(out.clone()));
    let daemon = Daemon::start(dir.path(), &token, &host.addr, &["--no-kmsg"]);

    // One sender, paced over SEND_TIME, so records flow before, during and after the stop.
    let socket = daemon.socket.clone();
    let sender = std::thread::spawn(move || {
        let client = client(&socket);
        let started = Instant::now();
        for i in 0..RECORDS {
            let due = SEND_TIME.mul_f64(i as f64 / RECORDS as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
            client.send(&record(i)).unwrap();
        }
        started.elapsed()
    });
    // Mid-burst, at a moment that has nothing to do with batch boundaries.
    let jitter = Duration::from_micros(u64::from(std::process::id() % 1000) * 400);
    std::thread::sleep(SEND_TIME / 4 + jitter);
    host.stop();
    let stopped = Instant::now();
    let at_stop = arrived(&out).0.len();
    let send_time = sender.join().unwrap();
    assert!(
        send_time < SEND_TIME + OUTAGE / 2,
        "sending blocked: {send_time:?}"
    );
    std::thread::sleep(OUTAGE.saturating_sub(stopped.elapsed()));
    let during = arrived(&out).0.len();
    host.resume();

    wait_for(
        "all records after the host returned",
        Duration::from_secs(60),
        || arrived(&out).0.len() >= RECORDS,
    );
    std::thread::sleep(Duration::from_millis(500)); // duplicates would come now
    let (numbers, reports) = arrived(&out);
    assert!(reports.is_empty(), "nothing may be dropped: {reports:?}");
    let unique: HashSet<usize> = numbers.iter().copied().collect();
    assert_eq!(
        unique.len(),
        RECORDS,
        "records lost: {}",
        RECORDS - unique.len()
    );
    // The host here is stopped and started again, and a new one has no memory of what the
    // old one wrote: the one batch whose answer the stop cut off may come twice, and
    // nothing else (a host that stays up writes each batch once: exactly_once.rs).
    let after_stop = &numbers[at_stop..];
    let repeated: Vec<usize> = after_stop
        .iter()
        .copied()
        .take_while(|n| numbers[..at_stop].contains(n))
        .collect();
    assert!(
        repeated.windows(2).all(|w| w[1] == w[0] + 1)
            && repeated
                .last()
                .is_none_or(|last| *last == numbers[at_stop - 1]),
        "only the tail written before the stop may repeat, as one run: {repeated:?}"
    );
    let rest = &after_stop[repeated.len()..];
    assert_eq!(
        numbers[..at_stop].len() + rest.len(),
        RECORDS,
        "duplicates besides the cut-off batch: {}",
        numbers.len() - RECORDS - repeated.len()
    );
    assert!(
        numbers[..at_stop]
            .iter()
            .chain(rest)
            .collect::<Vec<_>>()
            .windows(2)
            .all(|w| w[0] < w[1]),
        "out of order"
    );
    assert_eq!(during, at_stop, "records arrived while the host was away");
    eprintln!(
        "fault: {at_stop} records delivered before the stop, {} after {OUTAGE:?} away \
         ({} repeated by the restarted host); all {RECORDS} sent in {send_time:?}, none blocked",
        RECORDS - at_stop,
        repeated.len()
    );
}

#[test]
fn host_away_with_a_tiny_buffer_reports_the_exact_drop_count() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("host.log");
    let token = Token::generate().unwrap();
    let mut host = Host::start(dir.path(), &token, LogSink::File(out.clone()));
    host.stop();
    let daemon = Daemon::start(
        dir.path(),
        &token,
        &host.addr,
        &["--no-kmsg", "--buffer-bytes", "64K"],
    );
    let client = client(&daemon.socket);
    // A first burst: the sender takes a batch, fails, and holds on to it.
    for i in 0..FIRST_BURST {
        client.send(&record(i)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(800));
    // The rest overflows the 64 KiB buffer: the oldest waiting records go.
    for i in FIRST_BURST..RECORDS {
        client.send(&record(i)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(800));
    host.resume();

    let complete = || {
        let (numbers, reports) = arrived(&out);
        let dropped: usize = reports.iter().map(|(_, r)| dropped_in(r)).sum();
        numbers.len() + dropped >= RECORDS
    };
    wait_for(
        "every record or its drop report",
        Duration::from_secs(60),
        complete,
    );
    std::thread::sleep(Duration::from_millis(500));
    let (numbers, reports) = arrived(&out);
    assert_eq!(reports.len(), 1, "one report: {reports:?}");
    let (at, report) = &reports[0];
    let dropped = dropped_in(report);
    assert_eq!(
        numbers.len() + dropped,
        RECORDS,
        "delivered {} + reported dropped {dropped}",
        numbers.len()
    );
    let unique: HashSet<usize> = numbers.iter().copied().collect();
    assert_eq!(unique.len(), numbers.len(), "duplicates");
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "out of order");
    // Delivered: the batch held while the host was away (the oldest records), then the
    // report, then the newest records; everything in between was dropped.
    let (held, newest) = numbers.split_at(*at);
    assert!(
        !held.is_empty() && !newest.is_empty(),
        "{at} of {}",
        numbers.len()
    );
    assert_eq!(held[0], 0);
    assert_eq!(
        held[held.len() - 1] + 1 + dropped,
        newest[0],
        "the report sits at the gap"
    );
    assert_eq!(newest.last(), Some(&(RECORDS - 1)));
    assert!(numbers.windows(2).filter(|w| w[1] != w[0] + 1).count() == 1);
    eprintln!(
        "tiny buffer: {} delivered ({} held + {} newest), {dropped} dropped and reported",
        numbers.len(),
        held.len(),
        newest.len()
    );
}
