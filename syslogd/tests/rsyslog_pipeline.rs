//! The whole host-side path with real programs at both ends: util-linux `logger` and glibc
//! `syslog()` → vm_syslog (private paths) → the launcher's LogCollector over a Unix socket
//! → a real rsyslogd (imuxsock on a private socket, omfile to a private file). Every record
//! must arrive, tagged `VM(<id>)`, with its program, pid and severity, in order per sender.
//!
//! glibc's syslog() only ever writes to /dev/log, so its sender is this test binary
//! re-executed in a private mount namespace where /dev/log points at vm_syslog's socket
//! (`unshare`, as root or with user namespaces).

mod common;

use std::ffi::CString;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use vm_launcher::log_forward::LogSink;
use vm_proto::Token;

const GLIBC_SENDER_ENV: &str = "VM_SYSLOG_TEST_GLIBC_SENDER";
const GLIBC_RECORDS: usize = 300;
const STDIN_RECORDS: usize = 200;

/// Not a test on its own: the glibc sender, when re-executed with GLIBC_SENDER_ENV set.
#[test]
fn glibc_sender_helper_process() {
    if std::env::var_os(GLIBC_SENDER_ENV).is_none() {
        return;
    }
    let ident = CString::new("it-glibc").unwrap();
    let format = CString::new("%s").unwrap();
    // SAFETY: `ident` outlives every syslog() call below (openlog keeps the pointer).
    unsafe {
        libc::openlog(
            ident.as_ptr(),
            libc::LOG_PID | libc::LOG_NDELAY,
            libc::LOG_LOCAL0,
        )
    };
    let send = |priority: i32, text: &[u8]| {
        let msg = CString::new(text).unwrap();
        // SAFETY: a "%s" format with one NUL-terminated string argument.
        unsafe { libc::syslog(priority, format.as_ptr(), msg.as_ptr()) };
    };
    for i in 0..GLIBC_RECORDS {
        send(libc::LOG_ERR, format!("glibc {i:03}").as_bytes());
    }
    send(libc::LOG_INFO, b"multi\nline");
    send(libc::LOG_DEBUG, b"bad \xff utf8");
    // SAFETY: no arguments; closes glibc's syslog socket.
    unsafe { libc::closelog() };
}

/// Runs the glibc sender with /dev/log → `socket`, in a private mount namespace.
fn run_glibc_sender(socket: &Path) {
    let exe = std::env::current_exe().unwrap();
    let script = r#"mount -t tmpfs tmpfs /dev && ln -s "$1" /dev/log && shift && exec "$@""#;
    let mut tried = Vec::new();
    for unshare in [
        &["--mount", "--propagation", "private"][..],
        &[
            "--user",
            "--map-root-user",
            "--mount",
            "--propagation",
            "private",
        ],
    ] {
        let out = Command::new("unshare")
            .args(unshare)
            .args(["--", "sh", "-c", script, "sh"])
            .arg(socket)
            .arg(&exe)
            .args([
                "glibc_sender_helper_process",
                "--exact",
                "--test-threads",
                "1",
            ])
            .env(GLIBC_SENDER_ENV, "1")
            .stdin(Stdio::null())
            .output()
            .expect("run unshare (util-linux)");
        if out.status.success() {
            return;
        }
        tried.push(format!(
            "unshare {unshare:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    panic!(
        "cannot give the glibc sender a private /dev/log (needs root or user namespaces):\n{}",
        tried.join("\n")
    );
}

fn logger(socket: &Path, args: &[&str], stdin: Option<&str>) {
    let mut child = Command::new("logger")
        .arg("-u")
        .arg(socket)
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .expect("run logger (util-linux)");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    assert!(child.wait().unwrap().success(), "logger {args:?} failed");
}

/// One rsyslog output line: hostname|app|procid|msgid|severity|time|msg.
#[derive(Debug)]
struct Line {
    host: String,
    app: String,
    pid: String,
    msgid: String,
    severity: u8,
    time: String,
    msg: String,
}

fn parse(line: &str) -> Line {
    let f: Vec<&str> = line.splitn(7, '|').collect();
    assert_eq!(f.len(), 7, "not a template line: {line:?}");
    Line {
        host: f[0].into(),
        app: f[1].into(),
        pid: f[2].into(),
        msgid: f[3].into(),
        severity: f[4]
            .parse()
            .unwrap_or_else(|_| panic!("severity in {line:?}")),
        time: f[5].into(),
        msg: f[6].into(),
    }
}

#[test]
fn logger_and_glibc_reach_rsyslog_tagged_complete_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let rsyslog = Rsyslog::start(
        dir.path(),
        "%hostname%|%app-name%|%procid%|%msgid%|%syslogseverity%|%timereported:::date-rfc3339%|%msg%\\n",
    );
    let token = Token::generate().unwrap();
    let host = Host::start(dir.path(), &token, LogSink::Syslog(rsyslog.socket.clone()));
    let kmsg = dir.path().join("kmsg");
    std::fs::write(
        &kmsg,
        b"6,0,1000,-;Linux version 6.1 (it)\n4,1,2000,-;oops\\x0anext line\n SUBSYSTEM=x\n",
    )
    .unwrap();
    let daemon = Daemon::start(
        dir.path(),
        &token,
        &host.addr,
        &["--kmsg", kmsg.to_str().unwrap()],
    );

    let stdin: String = (0..STDIN_RECORDS)
        .map(|i| format!("stdin {i:03}\n"))
        .collect();
    logger(&daemon.socket, &["-t", "lg-stdin"], Some(&stdin));
    logger(
        &daemon.socket,
        &[
            "--rfc3164",
            "-t",
            "lg-3164",
            "-p",
            "daemon.warning",
            "rfc3164 msg",
        ],
        None,
    );
    logger(
        &daemon.socket,
        &[
            "--rfc5424",
            "-t",
            "lg-5424",
            "-p",
            "user.err",
            "rfc5424 msg",
        ],
        None,
    );
    logger(&daemon.socket, &["-i", "-t", "lg-pid", "with pid"], None);
    let big = "x".repeat(9000);
    logger(
        &daemon.socket,
        &["--size", "20000", "-t", "lg-big", &big],
        None,
    );
    run_glibc_sender(&daemon.socket);

    let expected = STDIN_RECORDS + 4 + GLIBC_RECORDS + 2 + 2;
    wait_for(
        "every record in rsyslog's file",
        Duration::from_secs(30),
        || rsyslog.lines().len() >= expected,
    );
    std::thread::sleep(Duration::from_millis(300)); // nothing more may come
    let lines: Vec<Line> = rsyslog.lines().iter().map(|l| parse(l)).collect();
    assert_eq!(lines.len(), expected, "{lines:#?}");

    for l in &lines {
        assert_eq!(l.host, "VM(it-vm)", "{l:?}");
        assert!(!l.msg.contains('\n'), "{l:?}");
    }
    let of = |app: &str| -> Vec<&Line> { lines.iter().filter(|l| l.app == app).collect() };

    let stdin_msgs: Vec<&str> = of("lg-stdin").iter().map(|l| l.msg.as_str()).collect();
    let want: Vec<String> = (0..STDIN_RECORDS)
        .map(|i| format!("stdin {i:03}"))
        .collect();
    assert_eq!(stdin_msgs, want, "logger's lines, complete and in order");
    assert!(of("lg-stdin")
        .iter()
        .all(|l| l.severity == 5 && l.msgid == "user"));

    let l = of("lg-3164")[0];
    assert_eq!((l.severity, l.msg.as_str()), (4, "rfc3164 msg"));
    let l = of("lg-5424")[0];
    assert_eq!((l.severity, l.msg.as_str()), (3, "rfc5424 msg"));
    let year = l
        .time
        .get(..4)
        .unwrap_or_default()
        .parse::<i32>()
        .unwrap_or(0);
    assert!(year >= 2024, "the record's own time: {l:?}");
    let l = of("lg-pid")[0];
    assert!(
        l.pid.parse::<u32>().is_ok(),
        "pid from SCM_CREDENTIALS: {l:?}"
    );
    let l = of("lg-big")[0];
    assert_eq!(l.msg, format!("{} [truncated]", &big[..8192]));

    let glibc = of("it-glibc");
    let msgs: Vec<&str> = glibc.iter().map(|l| l.msg.as_str()).collect();
    let mut want: Vec<String> = (0..GLIBC_RECORDS)
        .map(|i| format!("glibc {i:03}"))
        .collect();
    want.push("multi#012line".into());
    want.push("bad \u{fffd} utf8".into());
    assert_eq!(msgs, want, "glibc's records, complete and in order");
    let pid = &glibc[0].pid;
    assert!(pid.parse::<u32>().is_ok() && glibc.iter().all(|l| &l.pid == pid));
    assert_eq!(
        glibc.iter().map(|l| l.severity).collect::<Vec<_>>()[GLIBC_RECORDS - 1..],
        [3, 6, 7]
    );

    let kernel = of("kernel");
    assert_eq!(kernel.len(), 2, "{lines:#?}");
    assert!(kernel.iter().all(|l| l.msgid == "kernel"));
    assert_eq!(kernel[0].msg, "Linux version 6.1 (it)");
    assert_eq!(
        (kernel[1].severity, kernel[1].msg.as_str()),
        (4, "oops#012next line")
    );
}
