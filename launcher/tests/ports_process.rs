//! `--publish` and `--forward` through the real vm_launcher and host-mode maitred (the
//! `process` back-end, no QEMU): the guest's 127.0.0.1 is the host's here, so this test
//! plays both the guest's servers and clients and the host's. The QEMU suite
//! (e2e_ports.rs) repeats the essentials in a real guest and container.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ensure_maitred, free_port, launcher, random_bytes, spawn_until_ready, TcpServer};

fn run_cmd(runtime: &Path, flags: &[String]) -> Command {
    ensure_maitred();
    let mut c = Command::new(launcher());
    c.env("VM_LAUNCHER_RUNTIME_DIR", runtime)
        .args(["run", "--hypervisor", "process", "-T"])
        .args(flags)
        .args(["--", "sh", "-c", "echo ready; exec sleep 600"]);
    c
}

/// A running `vm_launcher run` with ports; stopped (and its maitred with it) when dropped.
struct Vm {
    child: Child,
    _runtime: tempfile::TempDir,
}

impl Vm {
    fn start(flags: &[String]) -> Vm {
        let runtime = tempfile::tempdir().unwrap();
        let child = spawn_until_ready(run_cmd(runtime.path(), flags));
        Vm {
            child,
            _runtime: runtime,
        }
    }

    fn launcher_pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The host-mode maitred the launcher started.
    fn maitred_pid(&self) -> i32 {
        let me = self.launcher_pid();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let after = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
                stat.contains("(maitred)")
                    && after.split_whitespace().nth(1) == Some(&me.to_string())
            })
            .expect("maitred runs under the launcher")
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.launcher_pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An echo server on 127.0.0.1 (the "guest" application for --publish, the host service
/// for --forward): echoes until end of file, then half-closes. Stops when dropped.
fn echo_server() -> TcpServer {
    TcpServer::start(echo)
}

fn echo(mut conn: TcpStream) {
    let mut buf = vec![0u8; 65536];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}

/// Sends `data`, half-closes, and reads everything back.
fn round_trip(port: u16, data: &[u8]) -> Vec<u8> {
    let conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let data = data.to_vec();
    let sender = std::thread::spawn(move || {
        writer.write_all(&data).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    (&conn).read_to_end(&mut back).unwrap();
    sender.join().unwrap();
    back
}

fn publish(host: u16, guest: u16) -> [String; 2] {
    ["--publish".into(), format!("{host}:{guest}")]
}

fn forward(guest: u16, host: u16) -> [String; 2] {
    ["--forward".into(), format!("{guest}:127.0.0.1:{host}")]
}

/// Connects and waits for the peer to close; returns how long that took.
fn time_to_close(port: u16) -> Duration {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let start = Instant::now();
    let mut byte = [0u8; 1];
    match conn.read(&mut byte) {
        Ok(0) => {}
        Ok(_) => panic!("got data from a closed port"),
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "never closed"),
    }
    start.elapsed()
}

#[test]
fn publish_and_forward_are_byte_exact_both_ways_with_half_close() {
    let (guest_app, host_service) = (echo_server(), echo_server());
    let (host_port, guest_port) = (free_port(), free_port());
    let mut flags = publish(host_port, guest_app.port).to_vec();
    flags.extend(forward(guest_port, host_service.port));
    let _vm = Vm::start(&flags);
    let data = random_bytes(4 << 20);
    assert!(
        round_trip(host_port, &data) == data,
        "--publish changed bytes"
    );
    assert!(
        round_trip(guest_port, &data) == data,
        "--forward changed bytes"
    );
    // Nothing sent, just a half-close: the end of file travels and comes back.
    assert!(round_trip(host_port, b"").is_empty());
    assert!(round_trip(guest_port, b"").is_empty());
}

#[test]
fn refused_ports_close_the_connection_at_once() {
    let (host_port, guest_port) = (free_port(), free_port());
    let (closed_guest, closed_host) = (free_port(), free_port());
    let mut flags = publish(host_port, closed_guest).to_vec();
    flags.extend(forward(guest_port, closed_host));
    let _vm = Vm::start(&flags);
    for port in [host_port, guest_port] {
        let took = time_to_close(port);
        assert!(
            took < Duration::from_secs(2),
            "port {port}: closed after {took:?}"
        );
    }
}

#[test]
fn hundred_concurrent_connections_each_way_are_byte_exact() {
    let (guest_app, host_service) = (echo_server(), echo_server());
    let (host_port, guest_port) = (free_port(), free_port());
    let mut flags = publish(host_port, guest_app.port).to_vec();
    flags.extend(forward(guest_port, host_service.port));
    let _vm = Vm::start(&flags);
    let clients: Vec<_> = (0..200)
        .map(|i| {
            let port = if i % 2 == 0 { host_port } else { guest_port };
            std::thread::spawn(move || {
                let data = random_bytes(64 * 1024 + i);
                round_trip(port, &data) == data
            })
        })
        .collect();
    let exact = clients
        .into_iter()
        .map(|c| c.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(exact, 200);
}

#[test]
fn a_stalled_connection_does_not_stall_the_others() {
    // A guest application that accepts and never reads.
    let stalled = TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled_port = stalled.local_addr().unwrap().port();
    let guest_app = echo_server();
    let (stuck_host, host_port) = (free_port(), free_port());
    let mut flags = publish(stuck_host, stalled_port).to_vec();
    flags.extend(publish(host_port, guest_app.port));
    let _vm = Vm::start(&flags);
    let stuck = TcpStream::connect(("127.0.0.1", stuck_host)).unwrap();
    let _accepted = stalled.accept().unwrap();
    let mut writer = stuck.try_clone().unwrap();
    let pushed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = pushed.clone();
    std::thread::spawn(move || {
        let chunk = vec![7u8; 65536];
        while writer.write_all(&chunk).is_ok() {
            counter.fetch_add(chunk.len(), Ordering::SeqCst);
        }
    });
    // Wait until every buffer on the way is full: the stalled writer stops making progress.
    let mut last = usize::MAX;
    while last != pushed.load(Ordering::SeqCst) {
        last = pushed.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
    }
    let start = Instant::now();
    for _ in 0..20 {
        let data = random_bytes(256 * 1024);
        assert!(round_trip(host_port, &data) == data);
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "20 round trips took {took:?}"
    );
    assert!(last > 0, "the stalled connection carried nothing at all");
    drop(stuck);
}

/// A process's open fds: number → what it is (readlink: `socket:[inode]`, a path, …).
type FdTable = BTreeMap<u32, String>;

fn fd_table(pid: i32) -> FdTable {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((fd, target.display().to_string()))
        })
        .collect()
}

/// The lines of /proc/PID/net/{tcp,tcp6,unix} for the sockets in `table`, by inode.
fn socket_lines(pid: i32, table: &FdTable) -> BTreeMap<String, String> {
    let inodes: Vec<&str> = table
        .values()
        .filter_map(|t| t.strip_prefix("socket:[")?.strip_suffix(']'))
        .collect();
    let mut lines = BTreeMap::new();
    for file in ["tcp", "tcp6", "unix"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let inode = cols.get(if file == "unix" { 6 } else { 9 });
            if let Some(inode) = inode.filter(|i| inodes.contains(i)) {
                lines.insert(inode.to_string(), format!("{file}: {line}"));
            }
        }
    }
    lines
}

/// How many of `table`'s sockets are TCP connections (any state but LISTEN, `0A`).
fn tcp_connections(pid: i32, table: &FdTable) -> usize {
    socket_lines(pid, table)
        .values()
        .filter(|l| l.starts_with("tcp") && l.split_whitespace().nth(4) != Some("0A"))
        .count()
}

/// `pid`'s fds once no forwarded connection is left in it: none of its sockets is a TCP
/// connection and the table stayed the same for 200 ms (a connection's forward stream
/// closes a moment after its TCP socket). Connections end in their own threads a moment
/// after the client saw them end, so counting at once can count one that just ended.
/// Gives up after 10 s and returns what is open then.
fn quiet_fds(pid: i32) -> FdTable {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = fd_table(pid);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = fd_table(pid);
        if (now == last && tcp_connections(pid, &now) == 0) || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// What differs between two tables of `pid`, with the sockets it opened described, for a
/// failure message.
fn fd_diff(pid: i32, before: &FdTable, after: &FdTable) -> String {
    let opened: FdTable = after
        .iter()
        .filter(|(fd, target)| before.get(fd) != Some(target))
        .map(|(fd, target)| (*fd, target.clone()))
        .collect();
    let closed: FdTable = before
        .iter()
        .filter(|(fd, target)| after.get(fd) != Some(target))
        .map(|(fd, target)| (*fd, target.clone()))
        .collect();
    format!(
        "pid {pid}: opened {opened:?} {:#?}, closed {closed:?}",
        socket_lines(pid, &opened)
    )
}

/// Connects, sends a little, and resets the connection (SO_LINGER 0 → RST on close).
fn reset_after_sending(port: u16) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = conn.write_all(b"about to reset");
    nix::sys::socket::setsockopt(
        &conn,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .unwrap();
    drop(conn);
}

#[test]
fn thousand_connections_with_resets_leak_no_fds() {
    let (guest_app, host_service) = (echo_server(), echo_server());
    let (host_port, guest_port) = (free_port(), free_port());
    let mut flags = publish(host_port, guest_app.port).to_vec();
    flags.extend(forward(guest_port, host_service.port));
    let vm = Vm::start(&flags);
    // One of each first, so lazily made things (threads' stacks, the forward control
    // stream) are counted in the baseline.
    assert_eq!(round_trip(host_port, b"warm"), b"warm");
    assert_eq!(round_trip(guest_port, b"warm"), b"warm");
    let (launcher, maitred) = (vm.launcher_pid(), vm.maitred_pid());
    let before = (quiet_fds(launcher), quiet_fds(maitred));
    let workers: Vec<_> = (0..10)
        .map(|w| {
            std::thread::spawn(move || {
                for i in 0..100 {
                    let port = if (w + i) % 2 == 0 {
                        host_port
                    } else {
                        guest_port
                    };
                    if i % 3 == 0 {
                        reset_after_sending(port);
                    } else {
                        assert_eq!(round_trip(port, b"0123456789"), b"0123456789");
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let after = (quiet_fds(launcher), quiet_fds(maitred));
    assert_eq!(
        (after.0.len(), after.1.len()),
        (before.0.len(), before.1.len()),
        "open fds (launcher, maitred) after 1000 connections\nlauncher {}\nmaitred {}",
        fd_diff(launcher, &before.0, &after.0),
        fd_diff(maitred, &before.1, &after.1),
    );
}

#[test]
fn a_host_port_in_use_fails_before_boot() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let runtime = tempfile::tempdir().unwrap();
    // run_cmd builds maitred on first use; the clock measures only the launcher.
    let mut cmd = run_cmd(runtime.path(), &publish(port, 80));
    let start = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains(&format!("--publish 127.0.0.1:{port}:80/tcp")) && stderr.contains("in use"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // Nothing was leased or started: no VM directory was ever made.
    assert!(!runtime.path().join("vms").exists());
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn malformed_or_overlapping_specs_are_refused_with_one_line() {
    let cases: [&[&str]; 7] = [
        &["--publish", "80"],
        &["--publish", "8080:80/udp"],
        &["--publish", "example.com:8080:80"],
        &["--forward", "5432:5432"],
        &["--forward", "0:127.0.0.1:5432"],
        &["--publish", "8080:80", "--publish", "0.0.0.0:8080:81"],
        &["--publish", "8080:80", "--forward", "80:127.0.0.1:1"],
    ];
    let runtime = tempfile::tempdir().unwrap();
    for flags in cases {
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        let out = run_cmd(runtime.path(), &flags)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{flags:?}: {stderr}");
        assert!(
            stderr.contains("--publish") || stderr.contains("--forward"),
            "{stderr}"
        );
    }
}

#[test]
fn listeners_are_gone_once_the_vm_stops() {
    let host_service = echo_server();
    let (host_port, guest_port) = (free_port(), free_port());
    let mut flags = publish(host_port, 1).to_vec();
    flags.extend(forward(guest_port, host_service.port));
    let vm = Vm::start(&flags);
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    assert!(TcpStream::connect(addr(guest_port)).is_ok());
    drop(vm);
    for port in [host_port, guest_port] {
        let refused = TcpStream::connect_timeout(&addr(port), Duration::from_secs(2));
        assert!(refused.is_err(), "port {port} still listens");
    }
}
