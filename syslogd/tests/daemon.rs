//! The vm_syslog process itself: its exit codes, SIGTERM flushing, a missing kernel log, and
//! kmsg positions surviving a restart (nothing sent twice, gaps counted).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use vm_launcher::log_forward::LogSink;
use vm_proto::Token;

fn vm_syslog(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vm_syslog"))
        .args(args)
        .output()
        .expect("run vm_syslog")
}

fn lines_with(path: &Path, needle: &str) -> Vec<String> {
    read_lines(path)
        .into_iter()
        .filter(|l| l.contains(needle))
        .collect()
}

#[test]
fn vm_syslog_unknown_flag_exits_2_naming_it() {
    let out = vm_syslog(&["--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown option \"--frobnicate\""), "{err}");
}

#[test]
fn vm_syslog_unreadable_cmdline_exits_1_naming_the_path() {
    let out = vm_syslog(&["--cmdline", "/nonexistent/cmdline", "--no-kmsg"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/cmdline"), "{err}");
}

#[test]
fn vm_syslog_cmdline_without_token_exits_1_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let cmdline = dir.path().join("cmdline");
    std::fs::write(&cmdline, "console=ttyS0 quiet\n").unwrap();
    let out = vm_syslog(&["--cmdline", cmdline.to_str().unwrap(), "--no-kmsg"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("maitred.token"), "{err}");
}

#[test]
fn sigterm_flushes_waiting_records_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("host.log");
    let token = Token::generate().unwrap();
    let host = Host::start(dir.path(), &token, LogSink::File(out.clone()));
    let mut daemon = Daemon::start(dir.path(), &token, &host.addr, &["--no-kmsg"]);
    let c = client(&daemon.socket);
    for i in 0..10 {
        c.send(format!("<13>app: last words {i}").as_bytes())
            .unwrap();
    }
    // Well inside the 200 ms linger: only the SIGTERM flush can deliver them now.
    std::thread::sleep(Duration::from_millis(20));
    let status = daemon.terminate();
    assert_eq!(status.code(), Some(0));
    assert_eq!(lines_with(&out, "last words").len(), 10);
    assert!(!daemon.socket.exists(), "the socket goes with the daemon");
}

#[test]
fn missing_kmsg_still_serves_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("host.log");
    let token = Token::generate().unwrap();
    let host = Host::start(dir.path(), &token, LogSink::File(out.clone()));
    let daemon = Daemon::start(
        dir.path(),
        &token,
        &host.addr,
        &["--kmsg", "/nonexistent/kmsg"],
    );
    client(&daemon.socket).send(b"<13>app: still here").unwrap();
    wait_for("the record", Duration::from_secs(10), || {
        !lines_with(&out, "still here").is_empty()
    });
}

#[test]
fn restart_resends_no_kernel_record_and_counts_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("host.log");
    let kmsg = dir.path().join("kmsg");
    let token = Token::generate().unwrap();
    let host = Host::start(dir.path(), &token, LogSink::File(out.clone()));
    std::fs::write(
        &kmsg,
        b"6,0,10,-;boot 0\n6,1,20,-;boot 1\n6,2,30,-;boot 2\n",
    )
    .unwrap();
    let kmsg_flag = ["--kmsg", kmsg.to_str().unwrap()];

    let mut first = Daemon::start(dir.path(), &token, &host.addr, &kmsg_flag);
    wait_for("the first kernel records", Duration::from_secs(10), || {
        lines_with(&out, " kernel - boot ").len() == 3
    });
    assert_eq!(first.terminate().code(), Some(0));

    // The ring buffer moved on while vm_syslog was down: 3 and 4 are gone.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&kmsg)
        .unwrap();
    f.write_all(b"6,5,50,-;boot 5\n6,6,60,-;boot 6\n").unwrap();
    drop(f);
    let _second = Daemon::start(dir.path(), &token, &host.addr, &kmsg_flag);
    wait_for("the new kernel records", Duration::from_secs(10), || {
        lines_with(&out, " kernel - boot ").len() >= 5
    });
    std::thread::sleep(Duration::from_millis(500)); // a resend would come now

    let kernel: Vec<String> = lines_with(&out, " kernel - ");
    let texts: Vec<&str> = kernel
        .iter()
        .map(|l| l.rsplit(" kernel - ").next().unwrap_or_default())
        .collect();
    assert_eq!(
        texts,
        [
            "boot 0",
            "boot 1",
            "boot 2",
            "vm_syslog: 2 kernel log records lost (overwritten before they were read)",
            "boot 5",
            "boot 6"
        ],
        "{kernel:#?}"
    );
}
