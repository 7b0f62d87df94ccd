//! The application's stdio, terminal, signals and `exec` in a real guest: vm_launcher boots
//! the project's kernel and initramfs under QEMU, and every byte travels over vsock (hybrid
//! vsock through vhost-device-vsock here) to maitred as PID 1.
//!
//! Boots are shared where a case allows: one `start`ed VM (its application in a container)
//! serves every `exec` case; `run` cases boot their own VM because `run` is what they test.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn pty_session(args: &[&str]) -> Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/pty_session.py");
    Command::new("python3")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_vm_launcher"))
        .args(args)
        .output()
        .expect("python3")
}

#[test]
fn run_streams_binary_stdin_and_stdout_exactly_and_stderr_apart() {
    let runtime = tempfile::tempdir().unwrap();
    let input = random_bytes(1 << 20);
    let script = "cat > /tmp/in; sha256sum /tmp/in >&2; \
                  head -c 1048576 /dev/urandom > /tmp/out; sha256sum /tmp/out >&2; \
                  cat /tmp/out; echo to-err >&2; exit 3";
    let out = pipe_through(
        vm_cmd(runtime.path(), "run", &["--", "sh", "-c", script]),
        input.clone(),
    );
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().collect();
    // Only what the application wrote: no kernel or console text.
    assert_eq!(lines.len(), 3, "{}", show(&out));
    assert_eq!(lines[0], format!("{}  /tmp/in", sha256(&input)));
    assert_eq!(out.stdout.len(), 1 << 20);
    assert_eq!(lines[1], format!("{}  /tmp/out", sha256(&out.stdout)));
    assert_eq!(lines[2], "to-err");
    assert!(processes_mentioning(runtime.path().to_str().unwrap()).is_empty());
}

#[test]
fn run_forwards_sigterm_and_reports_the_application_code() {
    let runtime = tempfile::tempdir().unwrap();
    let run = vm_cmd(runtime.path(), "run", &["--", "sh", "-c", TERM_TRAP_APP]);
    assert_sigterm_reaches_the_application(run);
    assert!(processes_mentioning(runtime.path().to_str().unwrap()).is_empty());
}

#[test]
fn run_on_a_terminal_is_an_interactive_shell() {
    let runtime = tempfile::tempdir().unwrap();
    let (kernel, initrd) = artifacts();
    let out = pty_session(&[
        "run",
        "--runtime-dir",
        runtime.path().to_str().unwrap(),
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--",
        "/bin/sh",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(processes_mentioning(runtime.path().to_str().unwrap()).is_empty());
}

/// Every `exec` case on one started VM whose application runs in a container.
#[test]
fn exec_into_a_started_vm_and_its_container() {
    let rootfs = tempfile::tempdir().unwrap();
    busybox_root(
        rootfs.path(),
        &[
            "sh", "cat", "echo", "sleep", "stty", "hostname", "head", "grep",
        ],
    );
    let rootfs = rootfs.path().to_str().unwrap().to_string();
    let vm = StartedVm::start_with(
        "e2e-exec",
        &[
            "--container",
            &rootfs,
            "--",
            "sh",
            "-c",
            "echo inside > /tmp/mark; exec sleep 100000",
        ],
    );
    let exec = |args: &[&str]| -> Command {
        let mut all = vec!["exec", "e2e-exec"];
        all.extend_from_slice(args);
        let mut c = Command::new(env!("CARGO_BIN_EXE_vm_launcher"));
        c.env("VM_LAUNCHER_RUNTIME_DIR", vm.runtime.path())
            .args(all);
        c
    };
    let output = |mut c: Command| c.stdin(Stdio::null()).output().unwrap();

    // Into the container by default; --vm runs in the VM itself.
    // The application writes its mark as it starts; exec may come first.
    let wait_mark =
        "i=0; while [ ! -e /tmp/mark ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done";
    let out = output(exec(&[
        "--",
        "sh",
        "-c",
        &format!("{wait_mark}; cat /tmp/mark; hostname"),
    ]));
    assert_eq!(out.stdout, b"inside\ne2e-exec\n", "{}", show(&out));
    let out = output(exec(&[
        "--vm",
        "--",
        "sh",
        "-c",
        "cat /tmp/mark || echo absent",
    ]));
    assert!(out.stdout.ends_with(b"absent\n"), "{}", show(&out));

    // Two at once, independently.
    let spawn = |tag: &str| {
        exec(&["--", "sh", "-c", &format!("sleep 2; echo {tag}; exit 9")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("first"), spawn("second"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(
        (a.status.code(), &a.stdout[..]),
        (Some(9), &b"first\n"[..]),
        "{}",
        show(&a)
    );
    assert_eq!(
        (b.status.code(), &b.stdout[..]),
        (Some(9), &b"second\n"[..]),
        "{}",
        show(&b)
    );

    // stdin from /dev/null is EOF at once; stdin data and its EOF arrive.
    let out = output(exec(&["--", "sh", "-c", "cat; echo done"]));
    assert_eq!(out.stdout, b"done\n", "{}", show(&out));
    let out = pipe_through(exec(&["--", "cat"]), b"a\nb\n".to_vec());
    assert_eq!(out.stdout, b"a\nb\n", "{}", show(&out));

    // Backpressure: a reader that pauses 5 s loses nothing, and maitred does not buffer.
    let rss = || {
        let out = output(exec(&["--vm", "--", "grep", "RssAnon", "/proc/1/status"]));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .nth(1)
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("RssAnon: {}", show(&out)))
    };
    let idle = rss();
    let total: usize = 32 << 20;
    let mut child = exec(&["--vm", "--", "head", "-c", &total.to_string(), "/dev/zero"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = vec![0u8; 1 << 20];
    stdout.read_exact(&mut first).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let paused = rss();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(first.len() + rest.len(), total);
    assert!(
        paused <= idle + 2048,
        "maitred's RssAnon grew from {idle} kB to {paused} kB while the reader paused"
    );

    // An interactive shell in the container.
    let out = pty_session(&[
        "shell",
        "--runtime-dir",
        vm.runtime.path().to_str().unwrap(),
        "e2e-exec",
    ]);
    assert!(out.status.success(), "{}", show(&out));

    let json = vm_cmd_plain(vm.runtime.path(), &["list", "--json"]);
    let json = String::from_utf8_lossy(&json.stdout).into_owned();
    assert!(json.contains("\"id\":\"e2e-exec\""), "{json}");
    assert!(json.contains("\"state\":\"running\""), "{json}");
    assert!(json.contains("\"hypervisor\":\"qemu\""), "{json}");
    let started = Instant::now();
    drop(vm);
    assert!(started.elapsed() < Duration::from_secs(60));
}
