//! The stream socket with real clients: util-linux `logger -T` (newline-framed) and
//! `logger -T --octet-count`, many at once, plus one client sending garbage and an endless
//! line, through the real vm_syslog to the launcher's LogCollector. Every good record
//! arrives once; the garbage client costs the others nothing.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use common::*;
use vm_launcher::log_forward::LogSink;
use vm_proto::Token;

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 200;

fn logger(socket: &std::path::Path, octet_count: bool, client: usize) {
    let mut cmd = Command::new("logger");
    cmd.args(["-T", "-u"])
        .arg(socket)
        .args(["-t", "streamtest"]);
    if octet_count {
        cmd.arg("--octet-count");
    }
    // One logger process sends every line of its stdin over one connection.
    let input: String = (0..PER_CLIENT)
        .map(|i| format!("client {client} rec {i:04}\n"))
        .collect();
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("logger (util-linux) is missing");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "logger failed: {status}");
}

#[test]
fn logger_stream_clients_both_framings_and_a_garbage_client() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("host.log");
    let token = Token::generate().unwrap();
    let _host = Host::start(dir.path(), &token, LogSink::File(out.clone()));
    let daemon = Daemon::start(dir.path(), &token, &_host.addr, &["--no-kmsg"]);

    // The bad client: binary junk, a bogus count, and a line that never ends, held open.
    let mut bad = UnixStream::connect(&daemon.stream_socket).unwrap();
    bad.write_all(b"\xff\xfe\x00garbage\x01\n99999999999 x\n")
        .unwrap();
    bad.write_all(&vec![b'z'; 100_000]).unwrap();

    let socket = daemon.stream_socket.clone();
    let senders: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let s = socket.clone();
            std::thread::spawn(move || logger(&s, c % 2 == 1, c))
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let good = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| l.split(" streamtest ").nth(1).map(String::from))
            .collect()
    };
    wait_for("every logger record", Duration::from_secs(30), || {
        good(&read_lines(&out)).len() >= CLIENTS * PER_CLIENT
    });
    drop(bad);
    std::thread::sleep(Duration::from_millis(500));
    let lines = read_lines(&out);
    let got = good(&lines);
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(got.len(), CLIENTS * PER_CLIENT, "duplicates or strays");
    assert_eq!(unique.len(), CLIENTS * PER_CLIENT);
    for c in 0..CLIENTS {
        for i in [0, PER_CLIENT - 1] {
            let want = format!("client {c} rec {i:04}");
            assert!(got.iter().any(|g| g.ends_with(&want)), "missing {want}");
        }
    }
    // The garbage became records of its own, the endless line cut and marked.
    assert!(
        lines.iter().any(|l| l.contains("garbage#001")),
        "garbage record"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("zzzz") && l.ends_with("[truncated]")),
        "the endless line, cut"
    );
    eprintln!(
        "stream socket: {CLIENTS} logger -T clients (half octet-counted), {} records each, \
         all delivered once beside a garbage client",
        PER_CLIENT
    );
}
