//! The application's stdio, terminal, signals and `exec`, through the real vm_launcher and
//! host-mode maitred (the `process` back-end): the same stream code as in a VM, over Unix
//! sockets, fast enough to try every case. The QEMU suite (e2e_stdio.rs) repeats the
//! essentials in a real guest over vsock.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{
    assert_sigterm_reaches_the_application, ensure_maitred, launcher, pipe_through, random_bytes,
    send_signal, spawn_until_ready, TERM_TRAP_APP,
};
use vm_proto::stream::{self, Kind};

fn cmd(runtime: &Path, args: &[&str]) -> Command {
    ensure_maitred();
    let mut c = Command::new(launcher());
    c.env("VM_LAUNCHER_RUNTIME_DIR", runtime).args(args);
    c
}

fn run_cmd(runtime: &Path, app: &[&str]) -> Command {
    let mut c = cmd(runtime, &["run", "--hypervisor", "process", "--"]);
    c.args(app);
    c
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ({} bytes)\n{}\n--- stderr\n{}",
        out.status,
        out.stdout.len(),
        String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(2000)]),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn run_carries_binary_stdin_and_stdout_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(4 << 20);
    let out = pipe_through(run_cmd(dir.path(), &["cat"]), data.clone());
    assert!(out.status.success(), "{}", show(&out));
    assert!(out.stdout == data, "{} bytes back differ", out.stdout.len());
    assert!(out.stderr.is_empty(), "{}", show(&out));
}

#[test]
fn run_keeps_stdout_and_stderr_apart_and_passes_eof() {
    let dir = tempfile::tempdir().unwrap();
    let out = pipe_through(
        run_cmd(
            dir.path(),
            &["sh", "-c", "cat; echo to-out; echo to-err >&2; exit 4"],
        ),
        b"a\nb\n".to_vec(),
    );
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert_eq!(out.stdout, b"a\nb\nto-out\n", "{}", show(&out));
    assert_eq!(out.stderr, b"to-err\n", "{}", show(&out));

    // stdin from /dev/null: EOF at once.
    let out = run_cmd(dir.path(), &["sh", "-c", "cat; echo done"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"done\n", "{}", show(&out));
}

/// One pump reads both output pipes: megabytes written to both at once arrive byte-exact,
/// each on its own stream.
#[test]
fn run_carries_stdout_and_stderr_written_at_once_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(8 << 20);
    let file = dir.path().join("data");
    std::fs::write(&file, &data).unwrap();
    let script = format!("cat {0} & cat {0} >&2; wait", file.display());
    let out = run_cmd(dir.path(), &["sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        out.stdout == data,
        "stdout: {} bytes differ",
        out.stdout.len()
    );
    assert!(
        out.stderr == data,
        "stderr: {} bytes differ",
        out.stderr.len()
    );
}

#[test]
fn run_exit_codes_are_a_shells() {
    let dir = tempfile::tempdir().unwrap();
    let code = |app: &[&str]| {
        let out = run_cmd(dir.path(), app)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code(&["sh", "-c", "exit 0"]).0, Some(0));
    assert_eq!(code(&["sh", "-c", "exit 255"]).0, Some(255));
    assert_eq!(code(&["sh", "-c", "kill -9 $$"]).0, Some(137));
    let (status, stderr) = code(&["/no/such/program"]);
    assert_eq!(status, Some(127));
    assert!(stderr.contains("/no/such/program"), "{stderr}");
}

#[test]
fn run_pauses_the_writer_while_the_reader_pauses_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let total: usize = 64 << 20;
    let mut child = run_cmd(
        dir.path(),
        &[
            "sh",
            "-c",
            &format!("head -c {total} /dev/zero; echo end >&2"),
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = vec![0u8; 1 << 20];
    stdout.read_exact(&mut first).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(first.len() + rest.len(), total);
    assert!(first.iter().chain(rest.iter()).all(|b| *b == 0));
}

/// The application ends while our reader is paused and its last output is still on the
/// way: the VM stops only after EXIT (and everything before it) has been read here.
#[test]
fn run_loses_nothing_when_the_application_ends_before_the_reader_reads() {
    let dir = tempfile::tempdir().unwrap();
    let total: usize = 192 << 10;
    let child = run_cmd(dir.path(), &["head", "-c", &total.to_string(), "/dev/zero"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(out.stdout.len(), total);
}

#[test]
fn run_forwards_sigterm_to_the_application() {
    let dir = tempfile::tempdir().unwrap();
    assert_sigterm_reaches_the_application(run_cmd(dir.path(), &["sh", "-c", TERM_TRAP_APP]));
}

/// An application that ignores SIGINT: the second one within 3 s stops the VM anyway.
#[test]
fn run_gives_up_on_a_second_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let child = spawn_until_ready(run_cmd(
        dir.path(),
        &[
            "sh",
            "-c",
            "trap '' INT; echo ready; while :; do sleep 0.1; done",
        ],
    ));
    send_signal(&child, nix::sys::signal::Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(500));
    send_signal(&child, nix::sys::signal::Signal::SIGINT);
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", show(&out));
    assert!(started.elapsed() < Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("signal 2: gave up waiting"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("vms")).unwrap().count(),
        0
    );
}

/// The host's `head -1` goes away: the application gets SIGPIPE, as it would locally.
#[test]
fn run_gives_the_application_sigpipe_when_our_reader_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    ensure_maitred();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "'{}' run --hypervisor process -- yes | head -n 1; echo \"status=${{PIPESTATUS[0]}}\"",
            launcher().display()
        ))
        .env("VM_LAUNCHER_RUNTIME_DIR", dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"y\nstatus=141\n", "{}", show(&out));
}

#[test]
fn run_with_a_terminal_is_an_interactive_shell() {
    let dir = tempfile::tempdir().unwrap();
    ensure_maitred();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/pty_session.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(launcher())
        .args(["run", "--hypervisor", "process", "--", "/bin/sh"])
        .env("VM_LAUNCHER_RUNTIME_DIR", dir.path())
        .output()
        .expect("python3 (installed on every Debian machine here)");
    assert!(out.status.success(), "{}", show(&out));
}

/// A VM started in the background, stopped when dropped.
struct Started {
    runtime: tempfile::TempDir,
    id: String,
}

impl Started {
    fn new(name: &str, extra: &[&str]) -> Started {
        let runtime = tempfile::tempdir().unwrap();
        let mut args = vec!["start", "--hypervisor", "process", "--name", name];
        args.extend_from_slice(extra);
        let out = cmd(runtime.path(), &args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        Started {
            runtime,
            id: name.to_string(),
        }
    }

    fn exec(&self, args: &[&str]) -> Command {
        let mut all = vec!["exec", self.id.as_str()];
        all.extend_from_slice(args);
        cmd(self.runtime.path(), &all)
    }

    fn rundir(&self) -> PathBuf {
        self.runtime.path().join("vms").join(&self.id)
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = cmd(self.runtime.path(), &["stop", "--all"]).output();
    }
}

#[test]
fn exec_runs_concurrent_processes_in_a_started_vm() {
    let vm = Started::new("stdio-exec", &[]);
    let spawn = |tag: &str| -> Child {
        vm.exec(&["--", "sh", "-c", &format!("sleep 1; echo {tag}; exit 3")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let started = Instant::now();
    let (a, b) = (spawn("first"), spawn("second"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(
        (a.status.code(), &a.stdout[..]),
        (Some(3), &b"first\n"[..]),
        "{}",
        show(&a)
    );
    assert_eq!(
        (b.status.code(), &b.stdout[..]),
        (Some(3), &b"second\n"[..]),
        "{}",
        show(&b)
    );
    // They ran side by side, not one after the other.
    assert!(started.elapsed() < Duration::from_secs(10));

    let out = pipe_through(
        vm.exec(&[
            "-e",
            "GREETING=hi",
            "-w",
            "/tmp",
            "--",
            "sh",
            "-c",
            "cat; echo $GREETING; pwd",
        ]),
        b"in\n".to_vec(),
    );
    assert_eq!(out.stdout, b"in\nhi\n/tmp\n", "{}", show(&out));

    let json = cmd(vm.runtime.path(), &["list", "--json"])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&json.stdout);
    assert!(json.starts_with("[{\"id\":\"stdio-exec\""), "{json}");
    assert!(
        json.contains("\"state\":\"running\"") && json.contains("\"hypervisor\":\"process\""),
        "{json}"
    );
}

/// The host side goes away mid-stream (kill -9): the process is hung up (SIGHUP) and
/// maitred lets go of it; the VM goes on serving.
#[test]
fn exec_client_killed_hangs_the_process_up() {
    let vm = Started::new("stdio-hup", &[]);
    let marker = vm.runtime.path().join("hung-up");
    let script = format!(
        "trap 'echo hup > {}; exit 0' HUP; echo ready; while :; do sleep 0.1; done",
        marker.display()
    );
    let mut child = vm
        .exec(&["--", "sh", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 6];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the process never got SIGHUP");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = vm
        .exec(&["--", "echo", "still-here"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"still-here\n", "{}", show(&out));
}

#[test]
fn exec_into_an_unknown_vm_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = cmd(dir.path(), &["exec", "nope", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("exec.sock"), "{err}");
}

/// The guest side of the stream refuses a wrong token, junk and oversized frames; nothing
/// runs and the service keeps working.
#[test]
fn stream_refuses_bad_tokens_and_bad_frames_and_runs_nothing() {
    let vm = Started::new("stdio-attack", &[]);
    let socket = vm.rundir().join("maitred.sock.exec");
    let marker = vm.runtime.path().join("ran");
    let mut req = vm_proto::protos::guest::ExecRequest::new();
    req.set_argv(vec!["touch".into(), marker.display().to_string()].into());
    let start = protobuf::Message::write_to_bytes(&req).unwrap();

    let attempt = |frames: &[(u8, Vec<u8>)]| -> Vec<u8> {
        let mut conn = UnixStream::connect(&socket).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        for (kind, payload) in frames {
            let mut wire = vec![*kind];
            wire.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            wire.extend_from_slice(payload);
            let _ = conn.write_all(&wire);
        }
        let mut reply = Vec::new();
        let _ = conn.read_to_end(&mut reply);
        reply
    };
    let wrong = vm_proto::Token::generate().unwrap();
    type Frames = Vec<(u8, Vec<u8>)>;
    let cases: Vec<(&str, Frames)> = vec![
        (
            "wrong token",
            vec![(1, stream::hello_payload(&wrong)), (2, start.clone())],
        ),
        (
            "no token",
            vec![(1, b"Bearer ".to_vec()), (2, start.clone())],
        ),
        ("START first", vec![(2, start.clone())]),
        ("unknown kind", vec![(0x7f, vec![])]),
        ("too large", vec![(1, vec![b'x'; stream::MAX_PAYLOAD + 1])]),
    ];
    for (what, frames) in cases {
        let reply = attempt(&frames);
        let frame = stream::read_frame(&mut reply.as_slice())
            .unwrap_or_else(|e| panic!("{what}: no ERROR frame: {e}"));
        assert_eq!(frame.kind, Kind::Error, "{what}");
        assert!(!marker.exists(), "{what}: the process ran");
    }
    // And the service still works.
    let out = vm
        .exec(&["--", "echo", "alive"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"alive\n", "{}", show(&out));
}
