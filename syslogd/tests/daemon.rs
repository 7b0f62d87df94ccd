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

/// vm_syslog on sockets it inherits as fds 3 and 4 (as maitred starts it), sending to `host`.
fn start_on_inherited(
    dir: &Path,
    token: &Token,
    host: &vm_proto::Address,
    dgram: &std::os::unix::net::UnixDatagram,
    stream: &std::os::unix::net::UnixListener,
) -> std::process::Child {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    // Copies numbered 10 and up, so that moving one into 3 or 4 in the child cannot
    // overwrite the other before it is moved (the sockets themselves may be 3 and 4).
    let copies: Vec<std::os::fd::OwnedFd> = [dgram.as_raw_fd(), stream.as_raw_fd()]
        .into_iter()
        .map(|fd| {
            // SAFETY: F_DUPFD_CLOEXEC takes integers and returns a new descriptor or -1.
            let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
            assert!(copy >= 10, "fcntl: {}", std::io::Error::last_os_error());
            // SAFETY: `copy` was just returned by fcntl, is open, and nothing else owns it.
            unsafe { std::os::fd::FromRawFd::from_raw_fd(copy) }
        })
        .collect();
    let fds = [copies[0].as_raw_fd(), copies[1].as_raw_fd()];
    let mut cmd = Daemon::command(dir, token, host);
    cmd.args(["--socket-fd", "3", "--stream-socket-fd", "4", "--no-kmsg"]);
    // SAFETY: only dup2, which is async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for (target, fd) in fds.into_iter().enumerate() {
                if libc::dup2(fd, 3 + target as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn().expect("start vm_syslog")
}

#[test]
fn inherited_sockets_lose_nothing_before_start_or_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("host.log");
    let token = Token::generate().unwrap();
    let host = Host::start(dir.path(), &token, LogSink::File(out.clone()));
    // Bound by "maitred" (this test) before any vm_syslog runs.
    let dgram = std::os::unix::net::UnixDatagram::bind(dir.path().join("log")).unwrap();
    let stream = std::os::unix::net::UnixListener::bind(dir.path().join("log-stream")).unwrap();
    let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let send = |what: &str| {
        sender
            .send_to(
                format!("<13>app: {what}").as_bytes(),
                dir.path().join("log"),
            )
            .unwrap()
    };
    send("before any vm_syslog");

    let mut first = start_on_inherited(dir.path(), &token, &host.addr, &dgram, &stream);
    wait_for("the early record", Duration::from_secs(10), || {
        !lines_with(&out, "before any vm_syslog").is_empty()
    });
    // SAFETY: kill takes plain integers; the pid is our own live child's.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    assert_eq!(first.wait().unwrap().code(), Some(0));
    assert!(dir.path().join("log").exists(), "an inherited socket stays");

    send("gap-datagram");
    let mut stream_client =
        std::os::unix::net::UnixStream::connect(dir.path().join("log-stream")).unwrap();
    stream_client.write_all(b"<13>app: gap-stream\n").unwrap();
    drop(stream_client);
    let mut second = start_on_inherited(dir.path(), &token, &host.addr, &dgram, &stream);
    wait_for(
        "the records sent in between",
        Duration::from_secs(10),
        || {
            !lines_with(&out, "gap-datagram").is_empty()
                && !lines_with(&out, "gap-stream").is_empty()
        },
    );
    // SAFETY: as above.
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    assert_eq!(second.wait().unwrap().code(), Some(0));
    for what in ["before any vm_syslog", "gap-datagram", "gap-stream"] {
        assert_eq!(lines_with(&out, what).len(), 1, "{what}: exactly once");
    }
}

#[test]
fn an_inherited_fd_that_is_not_the_right_socket_exits_1_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let token = Token::generate().unwrap();
    let cmdline = write_cmdline(dir.path(), &token);
    let out = vm_syslog(&[
        "--socket-fd",
        "9",
        "--no-kmsg",
        "--cmdline",
        cmdline.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inherited fd 9: not an open socket"), "{err}");
}
