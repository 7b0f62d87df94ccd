//! maitred in host mode (not PID 1), driven over a real Unix socket by a real client, with a
//! real fake-host StartupListener: the same code paths as in a VM, minus mounts and power.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grpcio::RpcStatusCode;
use vm_proto::protos::common::{EmptyMessage, Timestamp};
use vm_proto::protos::guest::{
    IPv4Config, MountRequest, NetworkConfigRequest, ProcessStatus, SetTimeRequest,
};
use vm_proto::protos::guest_grpc::MaitredClient;
use vm_proto::{grpc_environment, Address, CallError, Connector, Token};

mod common;

use common::*;

#[test]
fn every_rpc_without_the_right_token_is_unauthenticated_and_runs_nothing() {
    let guest = Guest::start();
    let marker = guest.path("ran");
    let env = grpc_environment("bad-cli");
    let listen = Address::Unix(guest.path("maitred.sock"));
    for token in [Token::generate().unwrap(), Token::from_bytes([0; 32])] {
        let bad = Connector::new(env.clone(), listen.clone(), token);
        let touch = wait_req(&["touch", marker.to_str().unwrap()]);
        let mut mount = MountRequest::new();
        mount.set_target(guest.path("m").to_str().unwrap().into());
        mount.set_fstype("tmpfs".into());
        let results: Vec<Result<(), CallError>> = vec![
            bad.call(TIMEOUT, |ch, o| {
                MaitredClient::new(ch).launch_process_opt(&touch, o)
            })
            .map(drop),
            bad.call(TIMEOUT, |ch, o| {
                MaitredClient::new(ch).shutdown_opt(&EmptyMessage::new(), o)
            })
            .map(drop),
            bad.call(TIMEOUT, |ch, o| {
                MaitredClient::new(ch).configure_network_opt(&NetworkConfigRequest::new(), o)
            })
            .map(drop),
            bad.call(TIMEOUT, |ch, o| MaitredClient::new(ch).mount_opt(&mount, o))
                .map(drop),
            bad.call(TIMEOUT, |ch, o| {
                MaitredClient::new(ch).set_time_opt(&SetTimeRequest::new(), o)
            })
            .map(drop),
        ];
        for r in results {
            assert_eq!(r.unwrap_err().code(), Some(RpcStatusCode::UNAUTHENTICATED));
        }
    }
    // No token at all.
    let fd = vm_proto::connect(&listen).unwrap();
    let client = MaitredClient::new(vm_proto::client::channel_from_fd(env, "raw", fd));
    let touch = wait_req(&["touch", marker.to_str().unwrap()]);
    match client.launch_process(&touch) {
        Err(grpcio::Error::RpcFailure(s)) => assert_eq!(s.code(), RpcStatusCode::UNAUTHENTICATED),
        other => panic!("{other:?}"),
    }
    assert!(!marker.exists(), "a process ran without auth");
    // Still alive and serving the right token.
    let ok = guest.launch(&wait_req(&["true"])).unwrap();
    assert_eq!(ok.get_status(), ProcessStatus::EXITED);
}

#[test]
fn launch_process_reports_exit_signal_and_failure() {
    let guest = Guest::start();
    let r = guest.launch(&wait_req(&["/bin/true"])).unwrap();
    assert_eq!((r.get_status(), r.get_code()), (ProcessStatus::EXITED, 0));
    assert!(r.get_pid() > 0);
    let r = guest.launch(&wait_req(&["/bin/false"])).unwrap();
    assert_eq!((r.get_status(), r.get_code()), (ProcessStatus::EXITED, 1));
    let r = guest
        .launch(&wait_req(&["sh", "-c", "kill -9 $$"]))
        .unwrap();
    assert_eq!((r.get_status(), r.get_code()), (ProcessStatus::SIGNALED, 9));

    let r = guest.launch(&wait_req(&["/no/such/binary"])).unwrap();
    assert_eq!(
        (r.get_status(), r.get_code()),
        (ProcessStatus::FAILED, libc::ENOENT)
    );
    assert!(
        r.get_reason().contains("/no/such/binary"),
        "{}",
        r.get_reason()
    );
    let r = guest.launch(&req(&["no-such-program-in-path"])).unwrap();
    assert_eq!(
        (r.get_status(), r.get_code()),
        (ProcessStatus::FAILED, libc::ENOENT)
    );

    let not_exec = guest.path("data.txt");
    std::fs::write(&not_exec, "x").unwrap();
    let r = guest.launch(&req(&[not_exec.to_str().unwrap()])).unwrap();
    assert_eq!(
        (r.get_status(), r.get_code()),
        (ProcessStatus::FAILED, libc::EACCES)
    );

    let mut bad_cwd = wait_req(&["true"]);
    bad_cwd.set_working_dir("/no/such/dir".into());
    let r = guest.launch(&bad_cwd).unwrap();
    assert_eq!(
        (r.get_status(), r.get_code()),
        (ProcessStatus::FAILED, libc::ENOENT)
    );

    let r = guest.launch(&req(&["sleep", "0"])).unwrap();
    assert_eq!(r.get_status(), ProcessStatus::LAUNCHED);
}

#[test]
fn launch_process_invalid_requests_are_invalid_argument() {
    let guest = Guest::start();
    let mut respawn_wait = wait_req(&["true"]);
    respawn_wait.set_respawn(true);
    let mut capture_nowait = req(&["true"]);
    capture_nowait.set_capture_output(true);
    for r in [req(&[]), respawn_wait, capture_nowait] {
        let err = guest.launch(&r).unwrap_err();
        assert_eq!(err.code(), Some(RpcStatusCode::INVALID_ARGUMENT), "{err}");
    }
}

#[test]
fn launch_process_captures_output_env_and_cwd() {
    let guest = Guest::start();
    let mut r = wait_req(&["sh", "-c", "echo out:$GREETING; pwd; echo err >&2; exit 3"]);
    r.set_capture_output(true);
    r.set_working_dir(guest.dir.path().to_str().unwrap().into());
    r.set_env(HashMap::from([(
        "GREETING".to_string(),
        "hi there".to_string(),
    )]));
    let resp = guest.launch(&r).unwrap();
    assert_eq!(
        (resp.get_status(), resp.get_code()),
        (ProcessStatus::EXITED, 3)
    );
    let want = format!("out:hi there\n{}\n", guest.dir.path().display());
    assert_eq!(String::from_utf8_lossy(resp.get_stdout()), want);
    assert_eq!(resp.get_stderr(), b"err\n");
    assert!(!resp.get_stdout_truncated());

    // 3 MiB of output: 1 MiB kept, flagged, and the process was never blocked.
    let mut big = wait_req(&["sh", "-c", "head -c 3145728 /dev/zero; exit 0"]);
    big.set_capture_output(true);
    let resp = guest.launch(&big).unwrap();
    assert_eq!(resp.get_status(), ProcessStatus::EXITED);
    assert_eq!(resp.get_stdout().len(), 1 << 20);
    assert!(resp.get_stdout_truncated());
}

fn zombie_children_of(pid: u32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid ...; comm may hold spaces, so split after the last ')'.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.first() == Some(&"Z") && fields.get(1) == Some(&pid.to_string().as_str())
        })
        .count()
}

#[test]
fn thousand_orphans_are_reaped_and_no_exit_status_is_lost() {
    let guest = Guest::start();
    let guest = Arc::new(guest);
    let orphans = {
        let g = guest.clone();
        std::thread::spawn(move || {
            // Each ( cmd & ) forks a child and exits at once: the child is orphaned to us.
            let script = "i=0; while [ $i -lt 1000 ]; do ( /bin/true & ); i=$((i+1)); done";
            g.launch(&wait_req(&["sh", "-c", script])).unwrap()
        })
    };
    let waiters: Vec<_> = (0..16)
        .map(|i| {
            let g = guest.clone();
            std::thread::spawn(move || {
                let code = 10 + i;
                let r = g
                    .launch(&wait_req(&["sh", "-c", &format!("exit {code}")]))
                    .unwrap();
                assert_eq!(
                    (r.get_status(), r.get_code()),
                    (ProcessStatus::EXITED, code)
                );
            })
        })
        .collect();
    for w in waiters {
        w.join().unwrap();
    }
    let r = orphans.join().unwrap();
    assert_eq!((r.get_status(), r.get_code()), (ProcessStatus::EXITED, 0));
    let maitred = guest.child.id();
    let deadline = Instant::now() + TIMEOUT;
    while zombie_children_of(maitred) > 0 {
        assert!(
            Instant::now() < deadline,
            "zombies left: {}",
            zombie_children_of(maitred)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn service_crash_loop_stops_at_ten_spawns() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("spawns");
    let conf = format!(
        "argv = sh -c \"echo x >> {}; exit 1\"\nrespawn = yes\n",
        log.display()
    );
    let guest =
        Guest::start_with_services(&[("10-crash.conf", &conf), ("20-bad.conf", "nonsense\n")]);
    let count = || {
        std::fs::read_to_string(&log)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + TIMEOUT;
    while count() < 10 {
        assert!(Instant::now() < deadline, "only {} spawns", count());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Give a would-be 11th spawn ample time to show up.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(count(), 10);
    guest
        .conn
        .call(TIMEOUT, |ch, o| {
            MaitredClient::new(ch).shutdown_opt(&EmptyMessage::new(), o)
        })
        .unwrap();
    let (status, stderr) = guest.wait_exit();
    assert!(status.success());
    assert!(stderr.contains("spawned 10 times within 30s"), "{stderr}");
    assert!(stderr.contains("20-bad.conf:1"), "{stderr}");
}

/// A service's `socket =` is bound by maitred and passed as fd 3; it stays bound while the
/// service is not running, so datagrams sent between its runs wait for the next one.
#[test]
fn service_sockets_outlive_the_service_and_lose_nothing_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/svc.sock");
    let out = dir.path().join("received");
    // Each run takes one datagram from fd 3, appends it, lists its fds and exits (respawned).
    let script = format!(
        "import os,socket; f=' '.join(sorted(os.listdir('/proc/self/fd'))); \
         s=socket.socket(fileno=3); open('{out}','ab').write(s.recv(100)+b' fds='+f.encode()+b'\\n')",
        out = out.display()
    );
    let conf = format!(
        "socket = dgram {}\nargv = python3 -c \"{script}\"\nrespawn = yes\n",
        socket.display()
    );
    let guest = Guest::start_with_services(&[("10-reader.conf", &conf)]);
    let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while sender.send_to(b"first", &socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} never bound",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // A burst: at most one run is reading at any time, the rest queue in the socket.
    for word in ["second", "third", "fourth"] {
        sender.send_to(word.as_bytes(), &socket).unwrap();
    }
    let received = || std::fs::read_to_string(&out).unwrap_or_default();
    while received().lines().count() < 4 {
        assert!(Instant::now() < deadline, "received only {:?}", received());
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines: Vec<String> = received().lines().map(String::from).collect();
    let words: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(words, ["first", "second", "third", "fourth"]);
    for line in &lines {
        // 0-2, the socket as 3, and the fd python's listdir itself opens: nothing else.
        assert!(line.ends_with("fds=0 1 2 3 4"), "{line}");
    }
    drop(guest);
}

#[test]
fn application_exit_is_reported_then_maitred_shuts_down() {
    let guest = Guest::start();
    let sleeper = guest.launch(&req(&["sleep", "1000"])).unwrap();
    assert_eq!(sleeper.get_status(), ProcessStatus::LAUNCHED);
    let mut app = req(&["sh", "-c", "exit 7"]);
    app.set_is_application(true);
    assert_eq!(
        guest.launch(&app).unwrap().get_status(),
        ProcessStatus::LAUNCHED
    );
    assert_eq!(
        guest.next_host_event(),
        HostEvent::AppExit(ProcessStatus::EXITED, 7)
    );
    let sleeper_pid = sleeper.get_pid() as i32;
    let (status, _) = guest.wait_exit();
    assert!(status.success());
    // The other process was stopped on the way out.
    assert!(!Path::new(&format!("/proc/{sleeper_pid}")).exists() || is_zombie(sleeper_pid));
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

#[test]
fn killed_application_reports_the_signal() {
    let guest = Guest::start();
    let mut app = wait_req(&["sh", "-c", "kill -TERM $$"]);
    app.set_is_application(true);
    let r = guest.launch(&app).unwrap();
    assert_eq!(
        (r.get_status(), r.get_code()),
        (ProcessStatus::SIGNALED, 15)
    );
    assert_eq!(
        guest.next_host_event(),
        HostEvent::AppExit(ProcessStatus::SIGNALED, 15)
    );
    assert!(guest.wait_exit().0.success());
}

#[test]
fn host_only_rpcs_validate_then_refuse_outside_a_vm() {
    let guest = Guest::start();
    let net = |address: u32| {
        let mut c = IPv4Config::new();
        c.set_address(address);
        c.set_netmask(u32::from_ne_bytes([255, 255, 255, 252]));
        c.set_gateway(u32::from_ne_bytes([100, 115, 92, 5]));
        let mut r = NetworkConfigRequest::new();
        r.set_ipv4_config(c);
        guest.conn.call(TIMEOUT, |ch, o| {
            MaitredClient::new(ch).configure_network_opt(&r, o)
        })
    };
    assert_eq!(
        net(0).unwrap_err().code(),
        Some(RpcStatusCode::INVALID_ARGUMENT)
    );
    let ok_addr = u32::from_ne_bytes([100, 115, 92, 6]);
    assert_eq!(
        net(ok_addr).unwrap_err().code(),
        Some(RpcStatusCode::FAILED_PRECONDITION)
    );

    let time = |seconds: i64, nanos: i32| {
        let mut ts = Timestamp::new();
        ts.set_seconds(seconds);
        ts.set_nanos(nanos);
        let mut r = SetTimeRequest::new();
        r.set_time(ts);
        guest
            .conn
            .call(TIMEOUT, |ch, o| MaitredClient::new(ch).set_time_opt(&r, o))
    };
    assert_eq!(
        time(1, -1).unwrap_err().code(),
        Some(RpcStatusCode::INVALID_ARGUMENT)
    );
    assert_eq!(
        time(1_800_000_000, 0).unwrap_err().code(),
        Some(RpcStatusCode::FAILED_PRECONDITION)
    );

    // Mount: validated first, then refused; nothing is mounted on this machine.
    let mount = |target: &Path| {
        let mut m = MountRequest::new();
        m.set_source("none".into());
        m.set_target(target.to_str().unwrap().into());
        m.set_fstype("tmpfs".into());
        guest
            .conn
            .call(TIMEOUT, |ch, o| MaitredClient::new(ch).mount_opt(&m, o))
    };
    assert_eq!(
        mount(Path::new("")).unwrap_err().code(),
        Some(RpcStatusCode::INVALID_ARGUMENT)
    );
    let target = guest.path("m");
    std::fs::create_dir(&target).unwrap();
    let refused = mount(&target).unwrap_err();
    assert_eq!(refused.code(), Some(RpcStatusCode::FAILED_PRECONDITION));
    assert!(
        refused.to_string().contains("refusing to mount"),
        "{refused}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(target.to_str().unwrap()),
        "mounted in host mode:\n{mounts}"
    );
}

#[test]
fn sigterm_stops_children_and_exits() {
    let guest = Guest::start();
    let r = guest.launch(&req(&["sleep", "1000"])).unwrap();
    let pid = r.get_pid() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(guest.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(guest.wait_exit().0.success());
    assert!(!Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid));
}
