//! Chromium OS-style images under QEMU (issue 16): a component directory (`vm_kernel`,
//! `vm_rootfs.img` from `scripts/build-image --component`, optionally `vm_tools.img`) booted
//! with `--vm-path` and no initramfs; maitred on the read-only ext4 root; a rootfs disk and
//! a container disk at once; extra `--disk`s found by their identity (virtio-blk serial),
//! never by probe order; and the launcher's one-line refusals of bad disk specs.
//!
//! Needs what e2e_qemu.rs needs, plus e2fsprogs (mke2fs) for the images.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nix::mount::MsFlags;
use vm_proto::disks::VM_TOOLS_MOUNT;
use vm_proto::protos::guest::{MountRequest, MountResponse, ProcessStatus};
use vm_proto::protos::guest_grpc::MaitredClient;
use vm_proto::{CallError, Connector};

/// A component directory of this test's own: the built kernel and rootfs (linked), and a
/// `vm_tools.img` holding `tools_marker` when given.
fn component_copy(dir: &Path, tools_marker: Option<&str>) -> PathBuf {
    let built = component();
    let copy = dir.join("component");
    std::fs::create_dir_all(&copy).unwrap();
    for name in ["vm_kernel", "vm_rootfs.img"] {
        assert!(
            built.join(name).is_file(),
            "{} lacks {name}",
            built.display()
        );
        std::os::unix::fs::symlink(built.join(name), copy.join(name)).unwrap();
    }
    if let Some(marker) = tools_marker {
        ext4_image(&copy.join("vm_tools.img"), &[("marker", marker)]);
    }
    copy
}

fn mount_call(
    conn: &Connector,
    source: &str,
    target: &str,
    flags: MsFlags,
) -> Result<MountResponse, CallError> {
    let mut req = MountRequest::new();
    req.set_source(source.into());
    req.set_target(target.into());
    req.set_fstype("ext4".into());
    req.set_mountflags(flags.bits());
    conn.call(CALL_TIMEOUT, |ch, o| {
        MaitredClient::new(ch).mount_opt(&req, o)
    })
}

/// Waits for a complete crash report (.dmp with its .meta) in `dir`.
fn wait_for_report(dir: &Path, timeout: Duration) -> Option<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = std::fs::read_dir(dir).ok().and_then(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "dmp"))
        });
        if let Some(path) = found.filter(|p| p.with_extension("meta").exists()) {
            return Some(path);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One boot covers the component form and the read-only root: `run --vm-path DIR` with no
/// initramfs brings the application's output and exit code back; the root is the ext4
/// disk, read-only, and a write to it fails; maitred still runs everything that writes
/// somewhere (the exec stream `run` uses, vm_syslog, crash_collector), and the vm_tools
/// disk is mounted read-only at its documented path.
#[test]
fn component_boots_without_initramfs_on_a_read_only_root_that_still_runs_everything() {
    let runtime = tempfile::tempdir().unwrap();
    let tools_marker = format!("vm-tools-{}", std::process::id());
    let vm_path = component_copy(runtime.path(), Some(&tools_marker));
    let sink_path = runtime.path().join("host-syslog.sock");
    let stop = Arc::new(AtomicBool::new(false));
    let reader = drain(UnixDatagram::bind(&sink_path).unwrap(), stop.clone());
    let spool = runtime.path().join("spool");
    let log_marker = format!("ro-root-log-{}", std::process::id());
    let script = format!(
        "echo root: $(grep ' / ' /proc/mounts); \
         touch /written-to-root 2>&1 || echo write-refused; \
         [ -e /written-to-root ] && echo root-changed; \
         echo tools: $(cat {VM_TOOLS_MOUNT}/marker) $(grep ' {VM_TOOLS_MOUNT} ' /proc/mounts); \
         i=0; while [ ! -S /dev/log ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
         logger -t ro-app -p user.err {log_marker}; \
         sh -c 'kill -SEGV $$'; \
         sleep 0.5; while pidof crash_collector crash_sender >/dev/null; do sleep 0.1; done; \
         sleep 1; echo done; exit 6"
    );
    let vm_path_arg = vm_path.to_str().unwrap();
    let dest = format!("unix:{}", sink_path.display());
    let out = vm_cmd_image(
        runtime.path(),
        "run",
        &["--vm-path", vm_path_arg],
        &[
            "--name",
            "ro-root",
            "--log-dest",
            &dest,
            "--crash-spool",
            spool.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ],
    )
    .output()
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    let lines = reader.join().unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));

    // The root is the rootfs disk (the kernel names it /dev/root), ext4, read-only.
    let root = stdout
        .lines()
        .find(|l| l.starts_with("root: "))
        .unwrap_or_else(|| panic!("{}", show(&out)));
    let fields: Vec<&str> = root.split_whitespace().collect();
    assert_eq!(fields[1..4], ["/dev/root", "/", "ext4"], "{root}");
    assert!(fields[4].split(',').any(|o| o == "ro"), "{root}");
    assert!(
        stdout.lines().any(|l| l == "write-refused"),
        "{}",
        show(&out)
    );
    assert!(all.contains("Read-only file system"), "{}", show(&out));
    assert!(!stdout.contains("root-changed"), "{}", show(&out));
    assert!(stdout.lines().any(|l| l == "done"), "{}", show(&out));

    // vm_tools.img: read-only at the documented path.
    let tools = stdout
        .lines()
        .find(|l| l.starts_with("tools: "))
        .unwrap_or_else(|| panic!("{}", show(&out)));
    let fields: Vec<&str> = tools.split_whitespace().collect();
    assert_eq!(fields.get(1), Some(&tools_marker.as_str()), "{tools}");
    assert_eq!(fields.get(3).copied(), Some(VM_TOOLS_MOUNT), "{tools}");
    assert!(
        fields
            .get(5)
            .is_some_and(|o| o.split(',').any(|o| o == "ro")),
        "{tools}"
    );

    // vm_syslog ran (its socket is on /run's tmpfs) and delivered.
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" VM(ro-root) ro-app ") && l.contains(&log_marker)),
        "no record with {log_marker} among {} lines\n{}",
        lines.len(),
        show(&out)
    );

    // crash_collector ran from the core pipe and its report reached the host.
    let dump = wait_for_report(&spool.join("ro-root"), Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no crash report in {}: {}", spool.display(), show(&out)));
    let meta = std::fs::read_to_string(dump.with_extension("meta")).unwrap();
    assert!(
        meta.contains("vm_id=ro-root") && meta.ends_with("done=1\n"),
        "{meta}"
    );
}

/// One VM with a rootfs disk, a container disk and three extra disks at once: the
/// container sees its own root (exec enters it), LaunchProcess runs in the VM on the
/// read-only root, and Mount finds each extra disk by its identity: `disk:diskN` is the
/// Nth `--disk`, holding its own marker, whatever the guest's probe order.
#[test]
fn rootfs_container_and_three_disks_each_found_by_identity() {
    let runtime = tempfile::tempdir().unwrap();
    let vm_path = component_copy(runtime.path(), None);
    let ctr = runtime.path().join("ctr");
    busybox_root(&ctr, &["sh", "cat", "ls", "tr", "sleep", "echo"]);
    std::fs::write(ctr.join("etc/container-only"), "the container's root\n").unwrap();
    // Given in the order c, a, b: disk0 holds "c", disk1 "a", disk2 "b".
    let markers = ["marker-c", "marker-a", "marker-b"];
    let mut disks = Vec::new();
    for (i, marker) in markers.iter().enumerate() {
        let img = runtime.path().join(format!("{marker}.img"));
        ext4_image(&img, &[("marker", marker)]);
        let spec = match i {
            1 => format!("{}:rw", img.display()),
            _ => img.display().to_string(),
        };
        disks.push(spec);
    }
    let vm_path_arg = vm_path.to_str().unwrap();
    let ctr_arg = ctr.to_str().unwrap();
    let mut extra = vec!["--container", ctr_arg];
    for spec in &disks {
        extra.extend(["--disk", spec.as_str()]);
    }
    extra.extend(["--", "sleep", "1000"]);
    let vm = StartedVm::start_image("disks-vm", &["--vm-path", vm_path_arg], &extra);

    // exec enters the application's container: its own root, from the container disk.
    let out = vm_cmd_plain(
        vm.runtime.path(),
        &[
            "exec",
            "disks-vm",
            "--",
            "sh",
            "-c",
            "cat /etc/container-only; ls / | tr '\\n' ' '; echo",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("the container's root"), "{}", show(&out));
    let listing: Vec<&str> = stdout
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        listing,
        ["bin", "dev", "etc", "lost+found", "proc", "tmp"],
        "{}",
        show(&out)
    );

    // LaunchProcess in the VM itself: the rootfs disk is its root, read-only; /mnt is a
    // tmpfs (so mount points can be made); the container's root is not the VM's.
    let conn = vm.maitred(vm.token());
    let r = vm
        .launch(
            &conn,
            &wait_req(&[
                "sh",
                "-c",
                "grep ' / ' /proc/mounts; [ -e /etc/container-only ] && echo leaked; \
                 touch /x 2>/dev/null || echo write-refused; \
                 mkdir /mnt/d0 /mnt/d1 /mnt/d2 /mnt/d9 && echo made; \
                 for d in /sys/block/vd*; do echo ${d##*/}=$(cat $d/serial); done",
            ]),
        )
        .unwrap();
    let out = String::from_utf8_lossy(r.get_stdout()).into_owned();
    assert_eq!(r.get_status(), ProcessStatus::EXITED, "{out}");
    let root: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(root.get(1..3), Some(&["/", "ext4"][..]), "{out}");
    assert!(root[3].split(',').any(|o| o == "ro"), "{out}");
    assert!(!out.contains("leaked"), "{out}");
    assert!(out.lines().any(|l| l == "write-refused"), "{out}");
    assert!(out.lines().any(|l| l == "made"), "{out}");
    // Every disk carries its identity as its serial.
    let serials: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("vd"))
        .filter_map(|l| l.split_once('=').map(|(_, s)| s))
        .collect();
    let mut sorted = serials.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["container", "disk0", "disk1", "disk2", "rootfs"],
        "{out}"
    );

    // A read-only disk cannot be mounted read-write (tried before it is mounted at all:
    // once mounted read-only, a read-write mount fails whatever the disk).
    let resp = mount_call(&conn, "disk:disk2", "/mnt/d2", MsFlags::empty()).unwrap();
    assert!(
        [libc::EACCES, libc::EROFS].contains(&resp.get_error()),
        "disk2 was given read-only: errno {}",
        resp.get_error()
    );

    // Mount by identity: each disk's own marker; disk1 was given :rw, the others are ro.
    for (i, marker) in markers.iter().enumerate() {
        let target = format!("/mnt/d{i}");
        let flags = if i == 1 {
            MsFlags::empty()
        } else {
            MsFlags::MS_RDONLY
        };
        let resp = mount_call(&conn, &format!("disk:disk{i}"), &target, flags).unwrap();
        assert_eq!(resp.get_error(), 0, "mount disk:disk{i} on {target}");
        let r = vm
            .launch(&conn, &wait_req(&["cat", &format!("{target}/marker")]))
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(r.get_stdout()),
            *marker,
            "disk:disk{i} is the {i}th --disk"
        );
    }
    let r = vm
        .launch(
            &conn,
            &wait_req(&[
                "sh",
                "-c",
                "echo new > /mnt/d1/written && cat /mnt/d1/written; \
                 touch /mnt/d0/x 2>/dev/null || echo d0-refused",
            ]),
        )
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(r.get_stdout()),
        "new\nd0-refused\n",
        "{}",
        String::from_utf8_lossy(r.get_stderr())
    );
    // A disk that is not there: ENOENT once maitred's bounded wait is over; a malformed
    // identity is refused outright; maitred goes on serving.
    let start = Instant::now();
    let resp = mount_call(&conn, "disk:disk7", "/mnt/d9", MsFlags::MS_RDONLY).unwrap();
    assert_eq!(resp.get_error(), libc::ENOENT);
    assert!(start.elapsed() >= Duration::from_secs(4), "it waited");
    let refused = mount_call(&conn, "disk:../vda", "/mnt/d9", MsFlags::MS_RDONLY);
    assert!(refused.is_err(), "{refused:?}");
    let r = vm.launch(&conn, &wait_req(&["true"])).unwrap();
    assert_eq!(r.get_status(), ProcessStatus::EXITED);
}

/// Each bad spec is refused before anything starts, with one line naming the problem.
#[test]
fn bad_disk_specs_each_get_one_clear_line_and_start_nothing() {
    let runtime = tempfile::tempdir().unwrap();
    let dir = runtime.path();
    let vm_path = component_copy(dir, None);
    let vm_path_arg = vm_path.to_str().unwrap().to_string();
    let mut images = Vec::new();
    for i in 0..11 {
        let img = dir.join(format!("d{i}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        images.push(img.to_str().unwrap().to_string());
    }
    let missing = dir.join("no-such-disk.img");
    let missing = missing.to_str().unwrap();
    let no_kernel = dir.join("no-kernel");
    std::fs::create_dir_all(&no_kernel).unwrap();
    std::os::unix::fs::symlink(
        vm_path.join("vm_rootfs.img"),
        no_kernel.join("vm_rootfs.img"),
    )
    .unwrap();
    let no_kernel = no_kernel.to_str().unwrap();

    let eleven: Vec<&str> = images.iter().flat_map(|p| ["--disk", p.as_str()]).collect();
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "a missing disk",
            vec!["--vm-path", &vm_path_arg, "--disk", missing],
            vec![missing],
        ),
        (
            "11 disks",
            [&["--vm-path", vm_path_arg.as_str()][..], &eleven].concat(),
            vec!["10"],
        ),
        (
            "the same file twice",
            vec![
                "--vm-path",
                &vm_path_arg,
                "--disk",
                &images[0],
                "--disk",
                &images[0],
            ],
            vec![images[0].as_str()],
        ),
        (
            "no vm_kernel in --vm-path",
            vec!["--vm-path", no_kernel],
            vec!["vm_kernel"],
        ),
    ];
    for (what, args, names) in cases {
        let started = Instant::now();
        let mut all = args.clone();
        all.extend(["--name", "bad-spec", "--", "true"]);
        let out = vm_cmd_image(dir, "run", &[], &all).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{what}: {}", show(&out));
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{what}: one line: {stderr}"
        );
        for name in names {
            assert!(stderr.contains(name), "{what}: names {name}: {stderr}");
        }
        // Refused before anything started: no QEMU was booted for it.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: took {:?}",
            started.elapsed()
        );
        assert!(
            !stderr.contains("console"),
            "{what}: a VM was started: {stderr}"
        );
        assert!(
            processes_mentioning(dir.to_str().unwrap()).is_empty(),
            "{what}: something is still running"
        );
    }
}
