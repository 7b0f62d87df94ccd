//! Containers in a real VM: `vm_launcher run --container ROOTFS -- APP` under QEMU, the
//! rootfs a busybox directory built here (the launcher turns it into an ext4 disk).

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;

/// The applets these cases use.
const CONTAINER_APPLETS: &[&str] = &[
    "sh", "hostname", "cat", "ls", "touch", "echo", "grep", "tr", "logger",
];

fn run_in_container(extra: &[&str], script: &str) -> std::process::Output {
    let runtime = tempfile::tempdir().unwrap();
    let rootfs = runtime.path().join("rootfs");
    busybox_root(&rootfs, CONTAINER_APPLETS);
    let rootfs = rootfs.to_str().unwrap().to_string();
    let mut args = vec!["--name", "ctr-vm", "--container", &rootfs];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    vm_cmd(runtime.path(), "run", &args).output().unwrap()
}

#[test]
fn container_app_sees_its_own_root_pid1_and_hostname_and_its_code_comes_back() {
    let out = run_in_container(
        &[],
        "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; ls / | tr '\\n' ' '; exit 4",
    );
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| *l == "ctr-vm")
        .unwrap_or_else(|| panic!("{}", show(&out)));
    assert!(lines[at + 1].contains("--container-init"), "{}", show(&out));
    let root: Vec<&str> = lines[at + 2].split_whitespace().collect();
    assert_eq!(
        root,
        ["bin", "dev", "etc", "lost+found", "proc", "tmp"],
        "{}",
        show(&out)
    );
}

#[test]
fn container_cannot_read_the_token_and_read_only_root_stays_read_only() {
    let script = "grep -c maitred.token /proc/cmdline; touch /x && echo wrote; exit 0";
    let out = run_in_container(&[], script);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.lines().any(|l| l == "0"),
        "token visible: {}",
        show(&out)
    );
    assert!(!stdout.contains("wrote"), "{}", show(&out));
    let out = run_in_container(&["--container-rw"], "touch /x && echo wrote");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("wrote"),
        "{}",
        show(&out)
    );
}

#[test]
fn container_missing_program_fails_clearly() {
    let runtime = tempfile::tempdir().unwrap();
    let rootfs = runtime.path().join("rootfs");
    busybox_root(&rootfs, CONTAINER_APPLETS);
    let out = vm_cmd(
        runtime.path(),
        "run",
        &[
            "--container",
            rootfs.to_str().unwrap(),
            "--",
            "/usr/bin/python3",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(127), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not in the container"),
        "{}",
        show(&out)
    );
}

#[test]
fn container_logger_reaches_the_host_tagged_with_the_vm_id() {
    let runtime = tempfile::tempdir().unwrap();
    let sink_path = runtime.path().join("host-syslog.sock");
    // Drained all along: the host's datagram queue holds only 10 (max_dgram_qlen).
    let stop = Arc::new(AtomicBool::new(false));
    let reader = drain(UnixDatagram::bind(&sink_path).unwrap(), stop.clone());
    let rootfs = runtime.path().join("rootfs");
    busybox_root(&rootfs, CONTAINER_APPLETS);
    let marker = format!("ctr-log-{}", std::process::id());
    // vm_syslog starts at boot; wait for its socket from inside the container.
    let script = format!(
        "i=0; while [ ! -S /dev/log ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
         logger -t ctr-app -p user.err {marker}; sleep 1"
    );
    let dest = format!("unix:{}", sink_path.display());
    let rootfs = rootfs.to_str().unwrap().to_string();
    let args = [
        "--name",
        "ctr-log",
        "--log-dest",
        &dest,
        "--container",
        &rootfs,
        "--",
        "sh",
        "-c",
        &script,
    ];
    let out = vm_cmd(runtime.path(), "run", &args).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    stop.store(true, Ordering::SeqCst);
    let lines = reader.join().unwrap();
    let line = lines
        .iter()
        .find(|l| l.contains(&marker))
        .unwrap_or_else(|| panic!("no record with {marker}: {lines:#?}\n{}", show(&out)));
    // <user.err> = <11>, tagged with the VM id the connection proved.
    assert!(line.starts_with("<11>1 "), "{line}");
    assert!(line.contains(" VM(ctr-log) ctr-app "), "{line}");
}

#[test]
fn container_segfault_becomes_a_minidump_on_the_host() {
    let runtime = tempfile::tempdir().unwrap();
    let spool = runtime.path().join("spool");
    let rootfs = runtime.path().join("rootfs");
    busybox_root(&rootfs, CONTAINER_APPLETS);
    let (rootfs, spool_arg) = (
        rootfs.to_str().unwrap().to_string(),
        spool.to_str().unwrap().to_string(),
    );
    let args = [
        "--name",
        "ctr-crash",
        "--crash-spool",
        &spool_arg,
        "--container",
        &rootfs,
        "--",
        "sh",
        "-c",
        "kill -SEGV $$",
    ];
    let out = vm_cmd(runtime.path(), "run", &args).output().unwrap();
    assert_eq!(out.status.code(), Some(128 + 11), "{}", show(&out));
    // The report is sent before the application's exit is; still, allow for the spool write.
    let dir = spool.join("ctr-crash");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let dump = loop {
        let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "dmp"))
        });
        if let Some(path) = found.filter(|p| p.with_extension("meta").exists()) {
            break path;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no minidump in {}: {}",
            dir.display(),
            show(&out)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let minidump =
        minidump::Minidump::read_path(&dump).unwrap_or_else(|e| panic!("{}: {e}", dump.display()));
    let exception: minidump::MinidumpException = minidump.get_stream().unwrap();
    assert_eq!(exception.raw.exception_record.exception_code, 11, "SIGSEGV");
    let meta = std::fs::read_to_string(dump.with_extension("meta")).unwrap();
    assert!(
        meta.contains("vm_id=ctr-crash") && meta.ends_with("done=1\n"),
        "{meta}"
    );
}
