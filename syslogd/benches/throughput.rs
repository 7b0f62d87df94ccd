//! Records per second from a syslog socket to a file, for one 100,000-record burst from one
//! sender (like one busy program calling syslog()), in the same run:
//!
//! - vm_syslog: its /dev/log socket → buffer → gRPC over a Unix socket → the launcher's
//!   LogCollector → RFC 5424 lines appended to a file (`--log-dest file:PATH`);
//! - rsyslogd: imuxsock (its defaults) → omfile, the usual syslog daemon doing the same.
//!
//! Prints the rates, the ratio (goal ≥ 1.0) and the records lost (goal 0); asserts nothing.
//! `cargo bench -p vm_syslog --bench throughput` (needs rsyslogd: scripts/test installs it).

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Daemon, Host, Rsyslog};
use vm_launcher::log_forward::LogSink;
use vm_proto::Token;

const RECORDS: usize = 100_000;
const TIMEOUT: Duration = Duration::from_secs(120);

fn record(i: usize) -> Vec<u8> {
    format!("<14>Nov 27 01:30:40 bench[4242]: record {i:06} of the burst, a typical short line")
        .into_bytes()
}

/// Counts the lines holding `needle` appended to `path`, reading only what is new.
struct Tail {
    file: Option<File>,
    path: std::path::PathBuf,
    partial: Vec<u8>,
    count: usize,
}

impl Tail {
    fn new(path: &Path) -> Tail {
        Tail {
            file: None,
            path: path.to_path_buf(),
            partial: Vec::new(),
            count: 0,
        }
    }

    fn poll(&mut self, needle: &[u8]) -> usize {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(file) = self.file.as_mut() else {
            return 0;
        };
        let mut chunk = Vec::new();
        let _ = file.read_to_end(&mut chunk);
        self.partial.extend_from_slice(&chunk);
        if let Some(end) = self.partial.iter().rposition(|&c| c == b'\n') {
            self.count += self.partial[..end]
                .split(|&c| c == b'\n')
                .filter(|l| l.windows(needle.len()).any(|w| w == needle))
                .count();
            self.partial.drain(..=end);
        }
        self.count
    }
}

/// Sends the burst to `socket` and waits until `output` has every record (or TIMEOUT).
/// Returns (records seen, seconds from the first send to the last record written, seconds
/// the sender took: how long the daemon let it wait).
fn burst(socket: &Path, output: &Path) -> (usize, f64, f64) {
    let client = UnixDatagram::unbound().expect("a socket");
    client.connect(socket).expect("connect to the daemon");
    let mut tail = Tail::new(output);
    let started = Instant::now();
    let sender = std::thread::spawn(move || {
        for i in 0..RECORDS {
            client.send(&record(i)).expect("send");
        }
        started.elapsed().as_secs_f64()
    });
    let deadline = started + TIMEOUT;
    let mut seen = 0;
    while seen < RECORDS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
        seen = tail.poll(b" of the burst");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sending = sender.join().unwrap_or(f64::NAN);
    (seen, elapsed, sending)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: then do nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = tempfile::tempdir().expect("a temp dir");

    let ours_dir = dir.path().join("vm_syslog");
    std::fs::create_dir_all(&ours_dir).unwrap();
    let out = ours_dir.join("host.log");
    let token = Token::generate().unwrap();
    let host = Host::start(&ours_dir, &token, LogSink::File(out.clone()));
    let daemon = Daemon::start(&ours_dir, &token, &host.addr, &["--no-kmsg"]);
    let (ours_seen, ours_secs, ours_send) = burst(&daemon.socket, &out);
    drop(daemon);
    drop(host);

    let theirs_dir = dir.path().join("rsyslog");
    std::fs::create_dir_all(&theirs_dir).unwrap();
    let rsyslog = Rsyslog::start_with(
        &theirs_dir,
        "%timereported% %hostname% %syslogtag%%msg%\\n",
        "",
    );
    let (theirs_seen, theirs_secs, theirs_send) = burst(&rsyslog.socket, &rsyslog.output);
    drop(rsyslog);

    let ours_rate = ours_seen as f64 / ours_secs;
    let theirs_rate = theirs_seen as f64 / theirs_secs;
    println!("burst of {RECORDS} records from one sender, socket to file:");
    println!(
        "  vm_syslog → gRPC → launcher LogCollector → file: {ours_rate:>9.0} records/s \
         ({ours_secs:.3} s, sender done after {ours_send:.3} s, {} lost)",
        RECORDS - ours_seen
    );
    println!(
        "  rsyslogd imuxsock → omfile:                      {theirs_rate:>9.0} records/s \
         ({theirs_secs:.3} s, sender done after {theirs_send:.3} s, {} lost)",
        RECORDS - theirs_seen
    );
    println!(
        "  ratio vm_syslog / rsyslogd: {:.2} (goal ≥ 1.0)",
        ours_rate / theirs_rate
    );
}
