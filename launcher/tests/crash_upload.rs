//! Crash upload against a real HTTP server (tests/support/crash_server.py: Python's
//! http.server parsing multipart/form-data by hand): the protocol's fields and the .meta's
//! keys arrive, the minidump byte-equal to the spool's copy, gzipped when asked; a 4xx is
//! not retried, a 5xx is retried until it succeeds, the host's rate cap holds across
//! launchers, and a new launcher resumes what an earlier one left pending. Also through the
//! host services (a report stored over gRPC wakes the uploader) and the standalone
//! `vm_launcher crash-upload` command.

#[path = "support/crash_server.rs"]
mod crash_server;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicI32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_launcher::backend::peer_filter;
use vm_launcher::crash_spool;
use vm_launcher::crash_upload::{RateLimit, Retry, UploadConfig, Uploader};
use vm_launcher::host_services::{CrashConfig, HostServices};
use vm_launcher::log_forward::{LogForwarder, LogSink};
use vm_proto::protos::host::CrashReport;
use vm_proto::protos::host_grpc::CrashListenerClient;
use vm_proto::spool::parse_meta;
use vm_proto::{grpc_environment, Address, Connector, Listener, Token};

use crash_server::CrashServer;

/// A spool and a runtime dir of a test's own.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        Host {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    fn runtime(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Stores a report of `bytes` random bytes from `pid`; its .dmp path.
    fn store(&self, pid: u32, bytes: usize) -> PathBuf {
        let mut report = CrashReport::new();
        let mut dump = b"MDMP".to_vec();
        dump.extend((0..bytes).map(|i| (i * 7 + pid as usize) as u8));
        report.set_minidump(dump);
        let meta = report.mut_metadata();
        meta.insert("exe".into(), "app".into());
        meta.insert("pid".into(), pid.to_string());
        meta.insert("signal_name".into(), "SIGSEGV".into());
        report.set_process_tree(format!("{pid} app: app --flag\n1 init: /init"));
        let (dmp, _) = crash_spool::store(&self.spool(), "vm7", &report, pid as i64).unwrap();
        dmp
    }

    fn config(&self, url: &str) -> UploadConfig {
        let mut config = UploadConfig::new(
            url.parse().unwrap(),
            false,
            RateLimit::default(),
            &self.runtime(),
        );
        config.retry = Retry {
            first: Duration::from_secs(1),
            max: Duration::from_secs(2),
            attempts: 5,
        };
        config.timeout = Duration::from_secs(5);
        config
    }

    fn upload(&self, config: UploadConfig) -> Uploader {
        Uploader::start(self.spool(), config).unwrap()
    }
}

fn meta_of(dmp: &Path) -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(dmp.with_extension("meta")).unwrap();
    assert!(text.ends_with("done=1\n"), "{text}");
    parse_meta(&text).unwrap().into_iter().collect()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn upload_state(dmp: &Path) -> Option<String> {
    meta_of(dmp).get("upload_state").cloned()
}

#[test]
fn upload_sends_the_fields_and_the_byte_equal_minidump_and_keeps_the_crash_id() {
    let server = CrashServer::start(&[]);
    let host = Host::new();
    let dmp = host.store(41, 300_000);
    let uploader = host.upload(host.config(&server.url()));
    wait_for("the upload", Duration::from_secs(20), || {
        upload_state(&dmp).is_some()
    });
    drop(uploader);

    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let req = &requests[0];
    assert_eq!(req["path"], "/submit?x=1");
    assert_eq!(req["gzip"], false);
    assert!(req.get("error").is_none(), "{req}");
    let fields = &req["fields"];
    assert_eq!(fields["prod"], "vm_tools");
    assert_eq!(fields["ver"], env!("CARGO_PKG_VERSION"));
    let guid = fields["guid"].as_str().unwrap();
    assert!(
        guid.len() == 32 && guid.bytes().all(|b| b.is_ascii_hexdigit()),
        "{guid}"
    );
    assert_eq!(fields["exe"], "app");
    assert_eq!(fields["pid"], "41");
    assert_eq!(fields["signal_name"], "SIGSEGV");
    assert_eq!(fields["vm_id"], "vm7");
    assert_eq!(fields["payload_size"], "300004");
    assert_eq!(fields["process_tree"], "41 app: app --flag\n1 init: /init");
    // The host's own path is not sent.
    assert!(fields.get("payload").is_none(), "{fields}");
    assert_eq!(
        req["files"]["upload_file_minidump"],
        dmp.file_name().unwrap().to_str().unwrap()
    );
    assert_eq!(
        server.file(1, "upload_file_minidump"),
        std::fs::read(&dmp).unwrap()
    );

    let meta = meta_of(&dmp);
    assert_eq!(meta["upload_state"], "uploaded");
    assert_eq!(meta["upload_id"], "bp-1");
    assert_eq!(meta["exe"], "app", "the report's own keys stay");
    // The same client id next time (kept in the runtime dir).
    assert_eq!(
        std::fs::read_to_string(host.runtime().join("crash-upload/guid"))
            .unwrap()
            .trim(),
        guid
    );
}

#[test]
fn upload_gzip_sends_a_gzip_body_the_server_decodes() {
    let server = CrashServer::start(&[]);
    let host = Host::new();
    // Mostly zero pages, like a real minidump: gzip must actually compress.
    let mut report = CrashReport::new();
    let mut dump = b"MDMP".to_vec();
    dump.resize(1 << 20, 0);
    dump[4096..4100].copy_from_slice(b"data");
    report.set_minidump(dump.clone());
    report.mut_metadata().insert("exe".into(), "zeros".into());
    let (dmp, _) = crash_spool::store(&host.spool(), "vm7", &report, 5).unwrap();
    let mut config = host.config(&server.url());
    config.gzip = true;
    let uploader = host.upload(config);
    wait_for("the upload", Duration::from_secs(20), || {
        upload_state(&dmp).is_some()
    });
    drop(uploader);

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["gzip"], true);
    assert!(requests[0].get("error").is_none(), "{}", requests[0]);
    assert_eq!(requests[0]["fields"]["exe"], "zeros");
    let sent = requests[0]["content_length"].as_u64().unwrap();
    assert!(sent < 64 << 10, "1 MiB of zeros sent as {sent} bytes");
    assert_eq!(server.file(1, "upload_file_minidump"), dump);
    assert_eq!(meta_of(&dmp)["upload_id"], "bp-1");
}

#[test]
fn upload_refused_with_4xx_is_not_retried_even_by_a_new_launcher() {
    let server = CrashServer::start(&[400]);
    let host = Host::new();
    let dmp = host.store(1, 1000);
    let uploader = host.upload(host.config(&server.url()));
    wait_for("the answer", Duration::from_secs(20), || {
        upload_state(&dmp).is_some()
    });
    // Well past the first retry's time.
    std::thread::sleep(Duration::from_millis(2500));
    drop(uploader);
    let again = host.upload(host.config(&server.url()));
    std::thread::sleep(Duration::from_millis(1500));
    drop(again);

    assert_eq!(server.requests().len(), 1);
    let meta = meta_of(&dmp);
    assert_eq!(meta["upload_state"], "refused");
    assert_eq!(meta["upload_status"], "400");
    assert_eq!(meta["upload_error"], "planned answer 400");
    assert!(!meta.contains_key("upload_id"));
    // The local copy stays (pruned as any other report).
    assert!(dmp.exists());
}

#[test]
fn upload_failing_with_5xx_is_retried_with_backoff_until_it_succeeds() {
    let server = CrashServer::start(&[503, 500]);
    let host = Host::new();
    let dmp = host.store(2, 1000);
    let started = Instant::now();
    let uploader = host.upload(host.config(&server.url()));
    wait_for("the third try", Duration::from_secs(30), || {
        upload_state(&dmp).is_some()
    });
    let took = started.elapsed();
    drop(uploader);

    let requests = server.requests();
    let statuses: Vec<u64> = requests
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [503, 500, 200]);
    // Backoff 1 s, then 2 s.
    assert!(took >= Duration::from_secs(3), "{took:?}");
    for n in [1, 2, 3] {
        assert_eq!(
            server.file(n, "upload_file_minidump"),
            std::fs::read(&dmp).unwrap()
        );
    }
    let meta = meta_of(&dmp);
    assert_eq!(meta["upload_state"], "uploaded");
    assert_eq!(meta["upload_id"], "bp-3");
    assert_eq!(meta["upload_attempts"], "2");
}

#[test]
fn upload_rate_cap_holds_for_the_whole_host_across_launchers() {
    let server = CrashServer::start(&[]);
    let host = Host::new();
    let dumps: Vec<PathBuf> = (0..5).map(|pid| host.store(pid, 100)).collect();
    let limited = |url: &str| {
        let mut config = host.config(url);
        config.limit = "3/hour".parse().unwrap();
        config
    };
    // Two launchers at once on one runtime dir and spool.
    let a = host.upload(limited(&server.url()));
    let b = host.upload(limited(&server.url()));
    wait_for("three uploads", Duration::from_secs(20), || {
        dumps.iter().filter(|d| upload_state(d).is_some()).count() >= 3
    });
    std::thread::sleep(Duration::from_millis(1500));
    drop((a, b));

    assert_eq!(server.requests().len(), 3);
    let uploaded = dumps
        .iter()
        .filter(|d| upload_state(d).as_deref() == Some("uploaded"))
        .count();
    assert_eq!(uploaded, 3);
    // Each report went once: the minidumps of the three marked uploaded, no duplicate.
    let mut got: Vec<Vec<u8>> = (1..=3)
        .map(|n| server.file(n, "upload_file_minidump"))
        .collect();
    let mut want: Vec<Vec<u8>> = dumps
        .iter()
        .filter(|d| upload_state(d).is_some())
        .map(|d| std::fs::read(d).unwrap())
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // The two left wait for the limit, untouched (no attempt counted against them).
    for d in dumps.iter().filter(|d| upload_state(d).is_none()) {
        assert!(!meta_of(d).keys().any(|k| k.starts_with("upload_")));
    }
}

#[test]
fn upload_left_pending_by_a_stopped_launcher_is_resumed_by_the_next() {
    let host = Host::new();
    let dmp = host.store(3, 5000);
    // Nobody listens there yet: a network error, retried later.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut config = host.config(&format!("http://127.0.0.1:{port}/submit"));
    // Long enough that the first launcher's last pass (when it stops) finds nothing due.
    config.retry.first = Duration::from_secs(3);
    let first = host.upload(config);
    wait_for("the failed try", Duration::from_secs(20), || {
        meta_of(&dmp).contains_key("upload_attempts")
    });
    drop(first);
    let meta = meta_of(&dmp);
    assert_eq!(meta["upload_attempts"], "1");
    assert!(
        meta["upload_error"].contains("cannot connect"),
        "{}",
        meta["upload_error"]
    );
    assert!(meta.contains_key("upload_next_try"));
    assert!(!meta.contains_key("upload_state"));

    // The next launcher honours the backoff the first one wrote down.
    let due: u64 = meta["upload_next_try"].parse().unwrap();
    let server = CrashServer::start(&[]);
    let next = host.upload(host.config(&server.url()));
    std::thread::sleep(Duration::from_millis(300));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now + 1 < due {
        assert!(server.requests().is_empty(), "retried before its time");
    }
    wait_for("the resumed upload", Duration::from_secs(20), || {
        upload_state(&dmp).is_some()
    });
    drop(next);
    assert_eq!(server.requests().len(), 1);
    assert_eq!(meta_of(&dmp)["upload_id"], "bp-1");
}

#[test]
fn report_stored_over_grpc_wakes_the_uploader() {
    let server = CrashServer::start(&[]);
    let host = Host::new();
    let addr = Address::Unix(host.dir.path().join("host.sock"));
    let token = Token::generate().unwrap();
    let mut config = host.config(&server.url());
    config.gzip = true;
    let services = HostServices::start(
        "vm7",
        token.clone(),
        Listener::bind(&addr).unwrap(),
        peer_filter(7, Arc::new(AtomicI32::new(std::process::id() as i32))),
        LogForwarder::new("vm7", LogSink::Discard),
        CrashConfig {
            spool: host.spool(),
            reporter: None,
            keep: 10,
            upload: Some(host.upload(config)),
        },
    )
    .unwrap();
    // Let the start-up pass find the spool empty first.
    std::thread::sleep(Duration::from_millis(300));
    let mut report = CrashReport::new();
    report.set_minidump(b"MDMP over grpc".to_vec());
    report.mut_metadata().insert("exe".into(), "grpc".into());
    report.mut_metadata().insert("pid".into(), "9".into());
    // A guest cannot pretend its report was uploaded already.
    report
        .mut_metadata()
        .insert("upload_state".into(), "uploaded".into());
    let conn = Connector::new(grpc_environment("t"), addr, token);
    let started = Instant::now();
    conn.call(Duration::from_secs(10), |ch, o| {
        CrashListenerClient::new(ch).send_crash_report_opt(&report, o)
    })
    .unwrap();
    wait_for("the upload", Duration::from_secs(10), || {
        !server.requests().is_empty()
    });
    // Woken, not found by the next rescan minutes later.
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(services);
    let requests = server.requests();
    assert_eq!(requests[0]["fields"]["exe"], "grpc");
    assert!(requests[0]["fields"].get("upload_state").is_none());
    assert_eq!(
        server.file(1, "upload_file_minidump"),
        b"MDMP over grpc".to_vec()
    );
}

#[test]
fn crash_upload_command_drains_the_spool_and_says_how_it_went() {
    let server = CrashServer::start(&[200, 404]);
    let host = Host::new();
    let dumps: Vec<PathBuf> = (0..2).map(|pid| host.store(pid, 100)).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_vm_launcher"))
        .args(["crash-upload", &server.url(), "--crash-upload-gzip"])
        .arg("--crash-spool")
        .arg(host.spool())
        .arg("--runtime-dir")
        .arg(host.runtime())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout.trim(),
        "1 uploaded, 1 refused, 0 to retry, 0 given up"
    );
    assert!(stderr.contains("refused by http://127.0.0.1"), "{stderr}");
    assert_eq!(upload_state(&dumps[0]).as_deref(), Some("uploaded"));
    assert_eq!(upload_state(&dumps[1]).as_deref(), Some("refused"));

    let https = Command::new(env!("CARGO_BIN_EXE_vm_launcher"))
        .args(["crash-upload", "https://example.invalid/"])
        .output()
        .unwrap();
    assert_eq!(https.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&https.stderr).contains("https is not supported"),
        "{}",
        String::from_utf8_lossy(&https.stderr)
    );
}
