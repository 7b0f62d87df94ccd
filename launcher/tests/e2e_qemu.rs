//! The real-VM proof: the real vm_launcher boots the project's kernel and initramfs under
//! QEMU (TCG here; hybrid vsock through vhost-device-vsock) and every case talks to the
//! real maitred as PID 1 inside the guest.
//!
//! Needs qemu-system-x86_64 and vhost-device-vsock (scripts/test installs them); the kernel
//! and image come from $VM_TOOLS_KERNEL / $VM_TOOLS_INITRD or are built (cached) by
//! scripts/build-kernel and scripts/build-image.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use grpcio::RpcStatusCode;
use vm_proto::protos::common::EmptyMessage;
use vm_proto::protos::guest::{MountRequest, ProcessStatus};
use vm_proto::protos::guest_grpc::MaitredClient;
use vm_proto::Token;

#[test]
fn run_prints_output_and_exits_with_the_application_code() {
    let runtime = tempfile::tempdir().unwrap();
    let out = vm_cmd(
        runtime.path(),
        "run",
        &["--", "/bin/sh", "-c", "echo hello; exit 3"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == "hello"),
        "{}",
        show(&out)
    );
    assert!(processes_mentioning(runtime.path().to_str().unwrap()).is_empty());
}

/// `--cpus 2` gives the guest two CPUs it can use (the kernel has SMP), under `--accel
/// auto` decided afresh (a cache of its own): one line on stderr says which accelerator and
/// why, stdout is the application's alone, and the decision is kept for the next VM.
#[test]
fn cpus_2_gives_the_guest_two_cpus_and_auto_accel_says_why_once() {
    let runtime = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = vm_cmd(runtime.path(), "run", &["--cpus", "2", "--", "nproc"])
        .env("XDG_CACHE_HOME", cache.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2\n",
        "{}",
        show(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", show(&out));
    assert!(
        lines[0].starts_with("vm_launcher: --accel auto: kvm: a probe guest booted")
            || lines[0].starts_with("vm_launcher: --accel auto: tcg: "),
        "{}",
        lines[0]
    );
    assert!(cache.path().join("vm_launcher/accel").is_file());
}

#[test]
fn boot_is_listed_and_wrong_token_runs_nothing() {
    let vm = StartedVm::start("e2e-auth");
    let list = vm.list();
    assert!(
        list.lines()
            .any(|l| l.starts_with("e2e-auth ") && l.ends_with("running")),
        "{list}"
    );

    let marker = "/tmp/should-not-exist";
    let bad = vm.maitred(Token::generate().unwrap());
    let err = vm.launch(&bad, &wait_req(&["touch", marker])).unwrap_err();
    assert_eq!(err.code(), Some(RpcStatusCode::UNAUTHENTICATED), "{err}");

    let good = vm.maitred(vm.token());
    let r = vm
        .launch(
            &good,
            &wait_req(&["sh", "-c", &format!("test -e {marker}")]),
        )
        .unwrap();
    assert_eq!(
        (r.get_status(), r.get_code()),
        (ProcessStatus::EXITED, 1),
        "the marker exists"
    );
    // And the right token really runs things, in the guest.
    let r = vm
        .launch(&good, &wait_req(&["cat", "/proc/1/comm"]))
        .unwrap();
    assert_eq!(String::from_utf8_lossy(r.get_stdout()), "init\n");
}

#[test]
fn mount_rpc_takes_effect_in_the_guest() {
    let vm = StartedVm::start("e2e-mount");
    let good = vm.maitred(vm.token());
    let mut m = MountRequest::new();
    m.set_source("e2e-tmpfs".into());
    m.set_target("/mnt".into());
    m.set_fstype("tmpfs".into());
    m.set_options("size=1m".into());
    let r = good
        .call(CALL_TIMEOUT, |ch, o| {
            MaitredClient::new(ch).mount_opt(&m, o)
        })
        .unwrap();
    assert_eq!(r.get_error(), 0);
    let out = vm
        .launch(&good, &wait_req(&["cat", "/proc/mounts"]))
        .unwrap();
    let mounts = String::from_utf8_lossy(out.get_stdout());
    assert!(
        mounts
            .lines()
            .any(|l| l.starts_with("e2e-tmpfs /mnt tmpfs")),
        "{mounts}"
    );
    m.set_target("/no/such/dir".into());
    let r = good
        .call(CALL_TIMEOUT, |ch, o| {
            MaitredClient::new(ch).mount_opt(&m, o)
        })
        .unwrap();
    assert_eq!(r.get_error(), libc::ENOENT);
}

#[test]
fn net_tap_gives_the_guest_its_address_and_route() {
    // Root only (CI runs as root): a TAP device with the VM's /30, then ConfigureNetwork.
    let vm = StartedVm::start_with("e2e-net", &["--net", "tap"]);
    let list = vm.list();
    let row = list
        .lines()
        .find(|l| l.starts_with("e2e-net "))
        .unwrap_or_else(|| panic!("{list}"));
    let guest_ip = row.split_whitespace().nth(3).unwrap().to_string();
    let good = vm.maitred(vm.token());
    let out = vm
        .launch(&good, &wait_req(&["ip", "addr", "show", "eth0"]))
        .unwrap();
    let addr = String::from_utf8_lossy(out.get_stdout()).into_owned();
    assert!(addr.contains(&format!("inet {guest_ip}/30")), "{addr}");
    assert!(addr.contains("state UP") || addr.contains(",UP"), "{addr}");
    let out = vm.launch(&good, &wait_req(&["ip", "route"])).unwrap();
    let routes = String::from_utf8_lossy(out.get_stdout()).into_owned();
    let octets: Vec<u8> = guest_ip.split('.').map(|o| o.parse().unwrap()).collect();
    let gateway = format!(
        "{}.{}.{}.{}",
        octets[0],
        octets[1],
        octets[2],
        octets[3] - 1
    );
    assert!(
        routes.contains(&format!("default via {gateway}")),
        "{routes}"
    );
}

#[test]
fn shutdown_rpc_powers_off_and_leaves_nothing_running() {
    let vm = StartedVm::start("e2e-shutdown");
    let rundir = vm.rundir().display().to_string();
    let procs = processes_mentioning(&rundir);
    assert!(
        procs.iter().any(|(_, c)| c.contains("qemu-system")),
        "{procs:?}"
    );
    assert!(
        procs.iter().any(|(_, c)| c.contains("vhost-device-vsock")),
        "{procs:?}"
    );

    let good = vm.maitred(vm.token());
    good.call(CALL_TIMEOUT, |ch, o| {
        MaitredClient::new(ch).shutdown_opt(&EmptyMessage::new(), o)
    })
    .unwrap();
    // QEMU exits by itself when the guest powers off; the launcher then cleans up.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !processes_mentioning(&rundir).is_empty() || vm.list().lines().count() > 1 {
        assert!(
            Instant::now() < deadline,
            "still running: {:?}",
            processes_mentioning(&rundir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for_file(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while !path.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the launcher exited early"
        );
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kill_9_of_the_launcher_takes_the_vm_down_and_frees_the_cid() {
    let runtime = tempfile::tempdir().unwrap();
    let marker = runtime.path().join("vms/e2e-kill/vsock.sock");
    let mut child = vm_cmd(
        runtime.path(),
        "run",
        &["--name", "e2e-kill", "--", "sleep", "1000"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    wait_for_file(&marker, &mut child);
    let list =
        String::from_utf8_lossy(&vm_cmd_plain(runtime.path(), &["list"]).stdout).into_owned();
    let cid = list
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_string();
    let rundir = runtime.path().join("vms/e2e-kill").display().to_string();
    assert!(!processes_mentioning(&rundir).is_empty());

    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !processes_mentioning(&rundir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}",
            processes_mentioning(&rundir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A second VM in the same pool gets the freed CID.
    let out = vm_cmd(runtime.path(), "start", &["--name", "e2e-second"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let list =
        String::from_utf8_lossy(&vm_cmd_plain(runtime.path(), &["list"]).stdout).into_owned();
    let row = list
        .lines()
        .find(|l| l.starts_with("e2e-second "))
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(row.split_whitespace().nth(1), Some(cid.as_str()), "{list}");
    assert!(vm_cmd_plain(runtime.path(), &["stop", "--all"])
        .status
        .success());
}
