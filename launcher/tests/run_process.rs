//! vm_launcher driving host-mode maitred (the `process` back-end): the whole run/start/
//! stop/list path over real sockets and real processes, without a hypervisor.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ensure_maitred, launcher};

fn run(runtime: &std::path::Path, app: &[&str]) -> Output {
    ensure_maitred();
    Command::new(launcher())
        .args(["run", "--hypervisor", "process", "--runtime-dir"])
        .arg(runtime)
        .arg("--")
        .args(app)
        .output()
        .unwrap()
}

#[test]
fn run_exits_with_the_application_code_and_streams_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["/bin/sh", "-c", "echo hello; exit 7"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    // Everything released: the VM's run directory is gone.
    assert_eq!(
        std::fs::read_dir(dir.path().join("vms")).unwrap().count(),
        0
    );
}

#[test]
fn run_reports_signals_and_missing_programs_like_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        run(dir.path(), &["sh", "-c", "kill -9 $$"]).status.code(),
        Some(137)
    );
    let out = run(dir.path(), &["/no/such/app"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/app"));
}

fn launcher_cmd(args: &[&str], runtime: &std::path::Path) -> Output {
    ensure_maitred();
    Command::new(launcher())
        .args(args)
        .arg("--runtime-dir")
        .arg(runtime)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn start_list_stop_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let started = launcher_cmd(
        &["start", "--hypervisor", "process", "--name", "bg1"],
        dir.path(),
    );
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&started.stdout), "bg1\n");
    let dup = launcher_cmd(
        &["start", "--hypervisor", "process", "--name", "bg1"],
        dir.path(),
    );
    assert_eq!(dup.status.code(), Some(125));

    let list = String::from_utf8_lossy(&launcher_cmd(&["list"], dir.path()).stdout).into_owned();
    let row = list
        .lines()
        .find(|l| l.starts_with("bg1 "))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(row.ends_with("running"), "{row}");

    let stopped = launcher_cmd(&["stop", "bg1"], dir.path());
    assert!(stopped.status.success());
    let list = String::from_utf8_lossy(&launcher_cmd(&["list"], dir.path()).stdout).into_owned();
    assert_eq!(list.lines().count(), 1, "{list}");
    assert_eq!(
        launcher_cmd(&["stop", "bg1"], dir.path()).status.code(),
        Some(1)
    );
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn killing_the_launcher_kills_its_vm_and_frees_its_leases() {
    let dir = tempfile::tempdir().unwrap();
    ensure_maitred();
    let mut child = Command::new(launcher())
        .args([
            "run",
            "--hypervisor",
            "process",
            "--name",
            "victim",
            "--runtime-dir",
        ])
        .arg(dir.path())
        .args(["--", "sleep", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the VM is up: its lease record names the maitred... via `list`.
    let deadline = Instant::now() + Duration::from_secs(20);
    let maitred_pid = loop {
        let pids = children_named(child.id() as i32, "maitred");
        if let Some(pid) = pids.first() {
            break *pid;
        }
        assert!(Instant::now() < deadline, "maitred never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap(); // SIGKILL: no teardown code runs
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while alive(maitred_pid) {
        assert!(
            Instant::now() < deadline,
            "maitred outlived its launcher by 2s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The name (and the rest of the lease) is free again at once.
    let out = launcher_cmd(
        &["start", "--hypervisor", "process", "--name", "victim"],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(launcher_cmd(&["stop", "--all"], dir.path())
        .status
        .success());
}

fn children_named(parent: i32, name: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1;
            let ppid: i32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent && comm == name).then_some(pid)
        })
        .collect()
}

#[test]
fn ctrl_c_shuts_the_vm_down_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    ensure_maitred();
    let child = Command::new(launcher())
        .args([
            "run",
            "--hypervisor",
            "process",
            "--name",
            "ctrlc",
            "--runtime-dir",
        ])
        .arg(dir.path())
        .args(["--", "sleep", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let maitred_pid = loop {
        if let Some(pid) = children_named(child.id() as i32, "maitred").first() {
            break *pid;
        }
        assert!(Instant::now() < deadline, "maitred never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    // The application is running once maitred has a child of its own.
    while children_named(maitred_pid, "sleep").is_empty() {
        assert!(Instant::now() < deadline, "the application never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    // SIGINT went to the application (as Ctrl-C would locally), which died of it.
    assert_eq!(output.status.code(), Some(130));
    assert!(!alive(maitred_pid));
    assert_eq!(
        std::fs::read_dir(dir.path().join("vms")).unwrap().count(),
        0
    );
}
