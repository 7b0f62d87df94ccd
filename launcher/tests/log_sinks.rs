//! The log destinations behind the launcher's real LogCollector, fed over gRPC as a guest
//! would feed them:
//!
//! - `dir:PATH` under a 50,000-record burst with a 64 KiB rotation size: every record is in
//!   exactly one file, once, whole, and the files are in order.
//! - `journald`: a real systemd-journald, started in a mount namespace of the test's own
//!   (tmpfs over /run/systemd, /run/log and /var/log/journal), receives the records; the
//!   test reads them back with `journalctl VM_ID=...` and checks every field, a message
//!   with newlines, one over 64 KiB (sent in a sealed memfd) and the kmsg structured data.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicI32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::RepeatedField;
use vm_launcher::backend::peer_filter;
use vm_launcher::host_services::limits::Rate;
use vm_launcher::host_services::{CrashConfig, HostServices, Limits};
use vm_launcher::log_forward::{LogForwarder, LogSink, Rotation};
use vm_proto::protos::common::Timestamp;
use vm_proto::protos::host::{LogRecord, LogRequest, LogSeverity, SdElement, SdParam};
use vm_proto::protos::host_grpc::LogCollectorClient;
use vm_proto::{grpc_environment, Address, Connector, Listener, Token};

const VM_ID: &str = "sink-vm";
const CID: u32 = 41;

/// Host services for this process's "guest", with no rate limit in the way.
struct Host {
    _services: HostServices,
    conn: Connector,
}

impl Host {
    fn start(dir: &Path, sink: LogSink) -> Host {
        let addr = Address::Unix(dir.join("host.sock"));
        let token = Token::generate().unwrap();
        let unlimited = Limits {
            log_records: Rate::per_second(1e9, 1e9),
            log_bytes: Rate::per_second(1e12, 1e12),
            ..Limits::default()
        };
        let services = HostServices::start_with_limits(
            VM_ID,
            token.clone(),
            Listener::bind(&addr).unwrap(),
            peer_filter(CID, Arc::new(AtomicI32::new(std::process::id() as i32))),
            LogForwarder::new(VM_ID, sink).with_cid(CID),
            CrashConfig {
                spool: dir.join("spool"),
                reporter: None,
                keep: 1,
                upload: None,
            },
            &unlimited,
        )
        .unwrap();
        let conn = Connector::new(grpc_environment("sinks"), addr, token);
        Host {
            _services: services,
            conn,
        }
    }

    fn send(&self, kernel: bool, records: Vec<LogRecord>) {
        let mut req = LogRequest::new();
        req.set_records(RepeatedField::from_vec(records));
        self.conn
            .call(Duration::from_secs(10), |channel, options| {
                let client = LogCollectorClient::new(channel);
                if kernel {
                    client.collect_kernel_logs_opt(&req, options)
                } else {
                    client.collect_user_logs_opt(&req, options)
                }
            })
            .unwrap();
    }
}

fn record(content: &[u8]) -> LogRecord {
    let mut r = LogRecord::new();
    r.set_severity(LogSeverity::WARNING);
    r.set_facility(1);
    r.set_app_name("sinktest".into());
    r.set_pid(4242);
    r.set_content(content.to_vec());
    let mut ts = Timestamp::new();
    ts.set_seconds(1_795_735_256);
    ts.set_nanos(792_737_000);
    r.set_timestamp(ts);
    r
}

const RECORDS: usize = 50_000;

#[test]
fn dir_rotation_under_a_50k_burst_keeps_every_record_once_and_whole() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let rotation = Rotation {
        max_bytes: 64 << 10,
        keep: 1000,
    };
    let host = Host::start(
        dir.path(),
        LogSink::Dir {
            path: logs.clone(),
            rotation,
        },
    );
    // Batches of varying size, as a guest's buffer hands them out.
    let mut next = 0;
    let mut batch = 1;
    while next < RECORDS {
        let end = (next + batch).min(RECORDS);
        let records = (next..end)
            .map(|i| record(format!("rec {i:05} {}", "p".repeat(i % 97)).as_bytes()))
            .collect();
        host.send(false, records);
        next = end;
        batch = batch % 700 + 37;
    }

    // Oldest first: <id>.log.N … <id>.log.1, then <id>.log.
    let mut files: Vec<(usize, PathBuf)> = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let n = match name.strip_prefix(&format!("{VM_ID}.log")) {
                Some("") => 0,
                Some(rest) => rest.trim_start_matches('.').parse().unwrap(),
                None => panic!("unexpected file {name}"),
            };
            (n, p)
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    assert!(files.len() > 20, "rotated only {} times", files.len());
    let mut seen = Vec::with_capacity(RECORDS);
    for (_, path) in &files {
        let bytes = std::fs::read(path).unwrap();
        assert!(
            bytes.len() as u64 <= rotation.max_bytes,
            "{} is {} bytes",
            path.display(),
            bytes.len()
        );
        assert!(bytes.ends_with(b"\n"), "{} ends mid-record", path.display());
        for line in String::from_utf8(bytes).unwrap().lines() {
            let prefix = "<12>1 2026-11-26T23:20:56.792737Z VM(sink-vm) sinktest 4242 user - rec ";
            let rest = line
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("split or foreign line: {line:?}"));
            let (number, padding) = rest.split_once(' ').unwrap();
            let n: usize = number.parse().unwrap();
            assert_eq!(padding, "p".repeat(n % 97), "record {n} cut");
            seen.push(n);
        }
    }
    let want: Vec<usize> = (0..RECORDS).collect();
    assert!(seen == want, "records lost, repeated or out of order");
    eprintln!(
        "dir sink: {RECORDS} records in {} files of at most {} bytes, each exactly once",
        files.len(),
        rotation.max_bytes
    );
}

/// systemd-journald in a mount namespace of its own; killed when dropped.
struct Journald {
    child: Child,
}

impl Journald {
    fn start() -> Journald {
        let journald = [
            "/lib/systemd/systemd-journald",
            "/usr/lib/systemd/systemd-journald",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("systemd-journald is missing: apt-get install systemd");
        // The shell mounts and then becomes journald: the child's pid is journald's.
        let script = format!(
            "set -e; for d in /run/systemd /run/log /var/log/journal; do \
             mkdir -p $d; mount -t tmpfs -o size=64m tmpfs $d; done; exec {journald}"
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("unshare (util-linux) is missing");
        let mut journald = Journald { child };
        let socket = journald.socket();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Ok(Some(status)) = journald.child.try_wait() {
                panic!(
                    "journald could not start in a private mount namespace ({status}): needs root"
                );
            }
            assert!(
                Instant::now() < deadline,
                "journald's socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        journald
    }

    /// Its native socket, reached through its own root.
    fn socket(&self) -> PathBuf {
        self.root().join("run/systemd/journal/socket")
    }

    fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.child.id()))
    }

    /// Every entry with `VM_ID=<vm_id>`, each as its fields (`journalctl -o export`).
    fn entries(&self, vm_id: &str) -> Vec<HashMap<String, Vec<u8>>> {
        let mut entries = Vec::new();
        for dir in ["run/log/journal", "var/log/journal"] {
            let out = Command::new("journalctl")
                .arg("--directory")
                .arg(self.root().join(dir))
                .args(["-o", "export", "--no-pager"])
                .arg(format!("VM_ID={vm_id}"))
                .output()
                .expect("journalctl");
            entries.extend(parse_export(&out.stdout));
        }
        entries
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// journalctl's export format: `NAME=value\n`, or `NAME\n` + u64 LE length + bytes + `\n`;
/// a blank line ends an entry.
fn parse_export(mut bytes: &[u8]) -> Vec<HashMap<String, Vec<u8>>> {
    let mut entries = Vec::new();
    let mut entry = HashMap::new();
    while let Some(end) = bytes.iter().position(|&c| c == b'\n') {
        let line = &bytes[..end];
        if line.is_empty() {
            entries.push(std::mem::take(&mut entry));
            bytes = &bytes[1..];
        } else if let Some(eq) = line.iter().position(|&c| c == b'=') {
            let name = String::from_utf8_lossy(&line[..eq]).into_owned();
            entry.insert(name, line[eq + 1..].to_vec());
            bytes = &bytes[end + 1..];
        } else {
            let rest = &bytes[end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let name = String::from_utf8_lossy(line).into_owned();
            entry.insert(name, rest[8..8 + len].to_vec());
            bytes = &rest[9 + len..];
        }
    }
    if !entry.is_empty() {
        entries.push(entry);
    }
    entries
}

fn field<'a>(entry: &'a HashMap<String, Vec<u8>>, name: &str) -> &'a str {
    std::str::from_utf8(entry.get(name).unwrap_or_else(|| panic!("no {name}"))).unwrap()
}

#[test]
fn journald_in_a_private_namespace_gets_every_field() {
    let journald = Journald::start();
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path(), LogSink::Journald(journald.socket()));

    let big = "b".repeat(100 << 10);
    host.send(
        false,
        vec![
            record(b"first line\nsecond line\nVM_ID=forged"),
            record(big.as_bytes()),
        ],
    );
    let mut kernel = record(b"pci 0000:00:01.0: probed");
    kernel.set_app_name(String::new());
    kernel.set_pid(0);
    kernel.set_facility(0);
    kernel.set_severity(LogSeverity::INFO);
    let mut sd = SdElement::new();
    sd.set_id("kmsg@32473".into());
    for (name, value) in [("SUBSYSTEM", "pci"), ("DEVICE", "+pci:0000:00:01.0")] {
        let mut p = SdParam::new();
        p.set_name(name.into());
        p.set_value(value.into());
        sd.mut_params().push(p);
    }
    kernel.mut_structured_data().push(sd);
    host.send(true, vec![kernel]);

    let deadline = Instant::now() + Duration::from_secs(20);
    let entries = loop {
        let entries = journald.entries(VM_ID);
        if entries.len() >= 3 {
            break entries;
        }
        assert!(
            Instant::now() < deadline,
            "journald has {} entries",
            entries.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(entries.len(), 3, "exactly the three records");
    let by_message = |start: &str| {
        entries
            .iter()
            .find(|e| field(e, "MESSAGE").starts_with(start))
            .unwrap_or_else(|| panic!("no entry starting {start:?}"))
    };

    let multi = by_message("first line");
    assert_eq!(
        field(multi, "MESSAGE"),
        "first line\nsecond line\nVM_ID=forged"
    );
    assert_eq!(field(multi, "VM_ID"), VM_ID, "the guest cannot forge VM_ID");
    assert_eq!(field(multi, "VM_CID"), CID.to_string());
    assert_eq!(field(multi, "PRIORITY"), "4");
    assert_eq!(field(multi, "SYSLOG_FACILITY"), "1");
    assert_eq!(field(multi, "SYSLOG_IDENTIFIER"), "sinktest");
    assert_eq!(field(multi, "SYSLOG_PID"), "4242");
    assert_eq!(
        field(multi, "SYSLOG_TIMESTAMP"),
        "2026-11-26T23:20:56.792737Z"
    );
    assert_eq!(field(multi, "VM_TIMESTAMP_USEC"), "1795735256792737");
    assert_eq!(field(multi, "VM_LOG"), "user");
    assert_eq!(field(multi, "_TRANSPORT"), "journal");

    let large = by_message("bbbb");
    assert!(
        field(large, "MESSAGE") == big,
        "the 100 KiB message arrived whole ({} bytes)",
        field(large, "MESSAGE").len()
    );

    let k = by_message("pci 0000");
    assert_eq!(field(k, "SYSLOG_IDENTIFIER"), "kernel");
    assert_eq!(field(k, "VM_LOG"), "kernel");
    assert_eq!(field(k, "VM_KMSG_SUBSYSTEM"), "pci");
    assert_eq!(field(k, "VM_KMSG_DEVICE"), "+pci:0000:00:01.0");
    eprintln!("journald: a real systemd-journald in a private mount namespace got all 3 entries");
}
