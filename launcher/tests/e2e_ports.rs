//! `--publish` and `--forward` in real guests under QEMU (hybrid vsock): busybox httpd in
//! the guest fetched from the host, a guest `nc` reaching a host TCP server, both again
//! with the application in a container, and nothing left listening or running once the
//! VM stops. One VM per case group (plain, container): boots are the slow part.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const GUEST_HTTP: u16 = 8080;
const GUEST_FORWARD: u16 = 7000;
/// The application: a web root with a page, then httpd in the foreground.
const HTTPD_APP: &str = "mkdir -p /tmp/www && echo hello-from-guest > /tmp/www/index.html \
                         && exec httpd -f -p 8080 -h /tmp/www";

/// A host service for `--forward`: reads one line, answers `host-got:<line>`, closes.
/// Stops accepting when dropped.
fn host_service() -> TcpServer {
    TcpServer::start(|conn| {
        let mut line = String::new();
        let _ = BufReader::new(&conn).read_line(&mut line);
        let _ = (&conn).write_all(format!("host-got:{line}").as_bytes());
        let _ = conn.shutdown(Shutdown::Both);
    })
}

/// GET `path` from 127.0.0.1:`port` (HTTP/1.0: the server closes after the reply); the
/// body, or None if the connection failed or closed without a reply.
fn http_get(port: u16, path: &str) -> Option<Vec<u8>> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    conn.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply).ok()?;
    let at = reply.windows(4).position(|w| w == b"\r\n\r\n")?;
    // busybox httpd answers HTTP/1.1 even to a 1.0 request.
    reply
        .starts_with(b"HTTP/1.1 200")
        .then(|| reply[at + 4..].to_vec())
}

/// Retries until the guest's httpd answers (it starts a moment after `start` returns).
fn wait_for_page(port: u16) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(body) = http_get(port, "/index.html") {
            return body;
        }
        assert!(Instant::now() < deadline, "httpd never answered on {port}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `vm_launcher exec [--vm] ID -- sh -c SCRIPT` with `input` on stdin.
fn exec(vm: &StartedVm, in_vm: bool, script: &str, input: &[u8]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vm_launcher"));
    cmd.env("VM_LAUNCHER_RUNTIME_DIR", vm.runtime.path())
        .args(["exec", "-T"]);
    if in_vm {
        cmd.arg("--vm");
    }
    cmd.args([vm.id.as_str(), "--", "sh", "-c", script]);
    pipe_through(cmd, input.to_vec())
}

/// The guest's `nc` reaches the host service through `--forward`.
fn assert_guest_reaches_host(vm: &StartedVm, in_vm: bool) {
    let out = exec(
        vm,
        in_vm,
        &format!("echo ping | nc 127.0.0.1 {GUEST_FORWARD}"),
        b"",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "host-got:ping\n",
        "{}",
        show(&out)
    );
}

/// Stops the VM and checks that no listener and no helper process is left.
fn assert_nothing_left(vm: StartedVm, published: u16) {
    let rundir = vm.rundir().to_string_lossy().into_owned();
    let runtime = vm.runtime.path().to_path_buf();
    let out = vm_cmd_plain(&runtime, &["stop", &vm.id]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        TcpStream::connect(("127.0.0.1", published)).is_err(),
        "port {published} still listens"
    );
    assert_eq!(processes_mentioning(&rundir), vec![]);
    drop(vm);
}

fn ports_flags(published: u16, service: &TcpServer) -> Vec<String> {
    vec![
        "--publish".into(),
        format!("{published}:{GUEST_HTTP}"),
        "--forward".into(),
        format!("{GUEST_FORWARD}:127.0.0.1:{}", service.port),
    ]
}

#[test]
fn publish_and_forward_in_a_vm() {
    let service = host_service();
    let published = free_port();
    let mut flags = ports_flags(published, &service);
    flags.extend(["--".into(), "sh".into(), "-c".into(), HTTPD_APP.into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let vm = StartedVm::start_with("ports-vm", &flags);

    assert_eq!(wait_for_page(published), b"hello-from-guest\n");
    assert_guest_reaches_host(&vm, true);

    // 100 concurrent fetches of a random 256 KiB file, each byte-exact.
    let blob = random_bytes(256 * 1024);
    let out = exec(&vm, true, "cat > /tmp/www/blob", &blob);
    assert!(out.status.success(), "{}", show(&out));
    let fetches: Vec<_> = (0..100)
        .map(|_| std::thread::spawn(move || http_get(published, "/blob")))
        .collect();
    let bodies: Vec<Option<Vec<u8>>> = fetches.into_iter().map(|f| f.join().unwrap()).collect();
    let exact = bodies
        .iter()
        .flatten()
        .filter(|body| **body == blob)
        .count();
    let failed: Vec<String> = bodies
        .iter()
        .filter(|b| b.as_ref() != Some(&blob))
        .map(|b| {
            b.as_ref()
                .map_or("no answer".into(), |b| format!("{} bytes", b.len()))
        })
        .collect();
    assert_eq!(
        exact, 100,
        "byte-exact fetches of 100; the others: {failed:?}"
    );

    let list = vm_cmd_plain(vm.runtime.path(), &["list", "--json"]);
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        list.contains(&format!("\"publish\":[\"127.0.0.1:{published}:8080/tcp\"]")),
        "{list}"
    );
    assert!(
        list.contains(&format!(
            "\"forward\":[\"7000:127.0.0.1:{}\"]",
            service.port
        )),
        "{list}"
    );
    assert_nothing_left(vm, published);
}

#[test]
fn publish_and_forward_reach_into_the_container() {
    let service = host_service();
    let published = free_port();
    let staging = tempfile::tempdir().unwrap();
    let rootfs = staging.path().join("rootfs");
    busybox_root(&rootfs, &["sh", "mkdir", "echo", "httpd", "nc", "cat"]);
    let mut flags = vec!["--container".to_string(), rootfs.to_string_lossy().into()];
    flags.extend(ports_flags(published, &service));
    flags.extend(["--".into(), "sh".into(), "-c".into(), HTTPD_APP.into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let vm = StartedVm::start_with("ports-ctr", &flags);

    // httpd listens only in the container's network namespace: the VM's has nothing.
    assert_eq!(wait_for_page(published), b"hello-from-guest\n");
    let out = exec(&vm, true, "nc 127.0.0.1 8080 </dev/null; echo rc=$?", b"");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("rc=0"),
        "{}",
        show(&out)
    );
    // The forward answers in the container (exec enters it) and in the VM.
    assert_guest_reaches_host(&vm, false);
    assert_guest_reaches_host(&vm, true);
    assert_nothing_left(vm, published);
}

#[test]
fn publish_of_a_port_in_use_fails_before_boot() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let runtime = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let out = vm_cmd(
        runtime.path(),
        "run",
        &["--publish", &format!("{port}:80"), "--", "true"],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        show(&out)
    );
    // Well under a TCG boot: no VM was started.
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}
