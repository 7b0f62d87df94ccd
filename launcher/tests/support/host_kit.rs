//! Shared by the host services tests (host_services.rs, host_services_isolation.rs): host
//! services for this process on a Unix socket, and one call of each kind.
#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicI32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_launcher::backend::peer_filter;
use vm_launcher::host_services::{CrashConfig, HostServices, Limits, Stats};
use vm_launcher::log_forward::{LogForwarder, LogSink};
use vm_proto::protos::common::EmptyMessage;
use vm_proto::protos::guest::ProcessStatus;
use vm_proto::protos::host::{ApplicationExit, CrashReport, LogRecord, LogRequest};
use vm_proto::protos::host_grpc::{CrashListenerClient, LogCollectorClient, StartupListenerClient};
use vm_proto::{grpc_environment, Address, CallError, Connector, Listener, Token};

pub const TIMEOUT: Duration = Duration::from_secs(5);

pub fn start(dir: &Path, token: &Token, trusted_pid: i32) -> (HostServices, Address) {
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
pub struct Host {
    pub services: HostServices,
    addr: Address,
    token: Token,
    pub log: PathBuf,
    spool: PathBuf,
}

impl Host {
    pub fn start(dir: &Path, reporter: Option<Vec<String>>, limits: &Limits) -> Host {
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
    pub fn connect(&self) -> Connector {
        Connector::new(grpc_environment("t"), self.addr.clone(), self.token.clone())
    }

    pub fn stats(&self) -> Stats {
        self.services.stats()
    }

    pub fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    pub fn dumps(&self) -> Vec<PathBuf> {
        let mut dumps: Vec<PathBuf> = std::fs::read_dir(self.spool.join("vm9"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        dumps.retain(|p| p.extension().is_some_and(|e| e == "dmp"));
        dumps.sort();
        dumps
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn records(contents: impl IntoIterator<Item = String>) -> LogRequest {
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

pub fn send_logs(conn: &Connector, req: &LogRequest) -> Result<EmptyMessage, CallError> {
    conn.call(Duration::from_secs(30), |ch, o| {
        LogCollectorClient::new(ch).collect_user_logs_opt(req, o)
    })
}

/// The record contents that reached the log, in order.
pub fn delivered(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.split(" app 42 user - ").nth(1).map(String::from))
        .collect()
}

pub fn notices(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains("over the rate limit"))
        .cloned()
        .collect()
}

/// A report from a process with `pid` (the spool names reports by exe, time and pid).
pub fn crash_report(bytes: usize, pid: u32) -> CrashReport {
    let mut report = CrashReport::new();
    let mut dump = b"MDMP".to_vec();
    dump.resize(bytes.max(4), 0x5a);
    report.set_minidump(dump);
    report.mut_metadata().insert("exe".into(), "app".into());
    report.mut_metadata().insert("pid".into(), pid.to_string());
    report
}

pub fn send_crash(conn: &Connector, report: &CrashReport) -> Result<EmptyMessage, CallError> {
    conn.call(Duration::from_secs(30), |ch, o| {
        CrashListenerClient::new(ch).send_crash_report_opt(report, o)
    })
}

pub fn app_exited(conn: &Connector, code: i32) -> Result<EmptyMessage, CallError> {
    let mut exit = ApplicationExit::new();
    exit.set_status(ProcessStatus::EXITED);
    exit.set_code(code);
    conn.call(TIMEOUT, |ch, o| {
        StartupListenerClient::new(ch).application_exited_opt(&exit, o)
    })
}

pub fn vm_ready(conn: &Connector) -> Result<EmptyMessage, vm_proto::CallError> {
    conn.call(TIMEOUT, |ch, o| {
        StartupListenerClient::new(ch).vm_ready_opt(&EmptyMessage::new(), o)
    })
}

/// How long `call` took (it must succeed).
pub fn timed<T, E: std::fmt::Debug>(call: impl FnOnce() -> Result<T, E>) -> Duration {
    let started = Instant::now();
    call().unwrap();
    started.elapsed()
}
