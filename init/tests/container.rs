//! Containers in host mode (needs root, as CI has): maitred starts the process in its own
//! namespaces on a busybox root built here, exactly as in the VM minus the disk mount.

mod common;

use std::path::Path;

use common::*;
use vm_proto::protos::guest::{ContainerSpec, LaunchProcessRequest, ProcessStatus};

/// A busybox root: /bin/busybox plus applet links, and the directories a container needs.
fn busybox_root(dir: &Path) {
    for d in ["bin", "proc", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    assert!(
        Path::new("/bin/busybox").exists(),
        "busybox-static is missing: run scripts/test"
    );
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "hostname", "cat", "ls", "touch", "echo", "sleep", "id", "grep", "mknod", "unshare",
        "head", "wc", "find", "timeout", "dd",
    ] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
}

fn in_container(root: &Path, writable: bool, script: &str) -> LaunchProcessRequest {
    let mut r = wait_req(&["sh", "-c", script]);
    r.set_capture_output(true);
    r.set_env([("PATH".to_string(), "/bin".to_string())].into());
    let mut c = ContainerSpec::new();
    c.set_rootfs_dir(root.to_str().unwrap().into());
    c.set_writable(writable);
    r.set_container(c);
    r
}

#[test]
fn container_has_its_own_root_pid1_hostname_and_exit_code() {
    let guest = Guest::start();
    let root = guest.path("rootfs");
    busybox_root(&root);
    let r = guest
        .launch(&in_container(
            &root,
            false,
            "hostname; cat /proc/1/cmdline; echo; ls /; exit 4",
        ))
        .unwrap();
    let out = String::from_utf8_lossy(r.get_stdout()).into_owned();
    assert_eq!(
        (r.get_status(), r.get_code()),
        (ProcessStatus::EXITED, 4),
        "{out}\n{}",
        String::from_utf8_lossy(r.get_stderr())
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "test-vm", "{out}");
    assert!(
        lines[1].contains("--container-init"),
        "PID 1 is the container's init: {out}"
    );
    let listing: Vec<&str> = lines[2..].to_vec();
    assert_eq!(listing, ["bin", "dev", "etc", "proc", "tmp"], "{out}");
}

#[test]
fn container_cannot_read_the_token_or_write_a_read_only_root() {
    let guest = Guest::start();
    let root = guest.path("rootfs");
    busybox_root(&root);
    let script =
        "cat /proc/cmdline | grep -c maitred.token; touch /new-file && echo wrote; ls /dev; exit 0";
    let r = guest.launch(&in_container(&root, false, script)).unwrap();
    let out = String::from_utf8_lossy(r.get_stdout()).into_owned();
    let err = String::from_utf8_lossy(r.get_stderr()).into_owned();
    assert_eq!(out.lines().next(), Some("0"), "the token is visible: {out}");
    assert!(!out.contains("wrote"), "wrote to a read-only root: {out}");
    assert!(err.contains("Read-only file system"), "{err}");
    for node in ["null", "zero", "urandom", "pts", "shm", "tty"] {
        assert!(out.lines().any(|l| l == node), "/dev/{node} missing: {out}");
    }
    assert!(!root.join("new-file").exists());

    let r = guest
        .launch(&in_container(&root, true, "touch /new-file && echo wrote"))
        .unwrap();
    assert_eq!(String::from_utf8_lossy(r.get_stdout()), "wrote\n");
    assert!(root.join("new-file").exists());
}

#[test]
fn container_reaps_orphans_and_reports_the_signal() {
    let guest = Guest::start();
    let root = guest.path("rootfs");
    busybox_root(&root);
    // Orphans inside (each ( … & ) exits at once) are reaped by the container's PID 1.
    let r = guest
        .launch(&in_container(
            &root,
            false,
            "i=0; while [ $i -lt 50 ]; do ( sleep 0 & ); i=$((i+1)); done; kill -SEGV $$",
        ))
        .unwrap();
    assert_eq!(
        (r.get_status(), r.get_code()),
        (ProcessStatus::SIGNALED, 11)
    );
}

#[test]
fn container_disk_by_identity_that_is_not_there_fails_clearly() {
    // This machine has no disk with either serial: maitred waits its bounded time for the
    // disk to appear, then says which identity it could not find; a malformed one is
    // refused at once.
    let guest = Guest::start();
    let root = guest.path("rootfs");
    busybox_root(&root);
    let mut absent = in_container(&root, false, "true");
    absent
        .mut_container()
        .set_rootfs_device("disk:e2e-absent-7".into());
    let start = std::time::Instant::now();
    let r = guest.launch(&absent).unwrap();
    assert_eq!(
        (r.get_status(), r.get_code()),
        (ProcessStatus::FAILED, libc::ENOENT),
        "{}",
        r.get_reason()
    );
    assert!(
        r.get_reason()
            .contains("no disk has the identity e2e-absent-7"),
        "{}",
        r.get_reason()
    );
    assert!(
        start.elapsed() >= std::time::Duration::from_secs(4),
        "it waited"
    );

    let mut bad = in_container(&root, false, "true");
    bad.mut_container().set_rootfs_device("disk:../sda".into());
    let r = guest.launch(&bad).unwrap();
    assert_eq!(
        (r.get_status(), r.get_code()),
        (ProcessStatus::FAILED, libc::EINVAL),
        "{}",
        r.get_reason()
    );
    assert!(
        r.get_reason().contains("is not a disk identity"),
        "{}",
        r.get_reason()
    );
}

#[test]
fn container_bad_input_fails_clearly_and_maitred_keeps_running() {
    let guest = Guest::start();
    let root = guest.path("rootfs");
    busybox_root(&root);
    let mut missing_prog = in_container(&root, false, "true");
    missing_prog.set_argv(vec!["/usr/bin/python3".to_string()].into());
    let r = guest.launch(&missing_prog).unwrap();
    assert_eq!(r.get_status(), ProcessStatus::FAILED);
    assert!(
        r.get_reason()
            .contains("/usr/bin/python3 is not in the container"),
        "{}",
        r.get_reason()
    );

    let r = guest
        .launch(&in_container(&guest.path("no-such-root"), false, "true"))
        .unwrap();
    assert_eq!(
        (r.get_status(), r.get_code()),
        (ProcessStatus::FAILED, libc::ENOENT)
    );
    assert!(
        r.get_reason().contains("not a directory"),
        "{}",
        r.get_reason()
    );

    let mut no_root = in_container(&root, false, "true");
    no_root.mut_container().clear_rootfs_dir();
    let r = guest.launch(&no_root).unwrap();
    assert_eq!(r.get_status(), ProcessStatus::FAILED);

    let mut respawn = in_container(&root, false, "true");
    respawn.set_wait_for_exit(false);
    respawn.set_capture_output(false);
    respawn.set_respawn(true);
    assert!(guest.launch(&respawn).is_err());

    let r = guest.launch(&wait_req(&["true"])).unwrap();
    assert_eq!(
        r.get_status(),
        ProcessStatus::EXITED,
        "maitred still serves"
    );
}

/// Issue 12's container promises, in host mode (here the root is not an initramfs, so the
/// container is pivot_root'ed, not chroot'ed: only the seccomp filter stops `unshare -U`).
#[test]
fn container_has_no_mknod_no_user_namespaces_a_nodev_dev_masks_and_bounded_tmpfs() {
    let guest = Guest::start();
    let root = guest.path("rootfs");
    busybox_root(&root);
    std::fs::create_dir(root.join("run")).unwrap();
    let script = "\
        mknod /tmp/k c 1 11 && echo ALLOWED mknod; \
        unshare -U true && echo ALLOWED userns; \
        unshare -Ur true && echo ALLOWED userns-root; \
        echo x > /dev/null && head -c 4 /dev/urandom | wc -c; \
        grep CapBnd /proc/self/status; \
        echo kmsg $(timeout 2 cat /proc/kmsg | wc -c); \
        echo proc-dirs $(find /proc/irq /proc/bus /proc/acpi -mindepth 1 2>/dev/null | wc -l); \
        grep -E '^[^ ]+ /(dev|tmp|run|dev/shm) ' /proc/mounts; \
        dd if=/dev/zero of=/dev/filler bs=1k count=2048 2>/dev/null || echo dev-full";
    let r = guest.launch(&in_container(&root, false, script)).unwrap();
    let out = String::from_utf8_lossy(r.get_stdout()).into_owned();
    let all = format!("{out}\n{}", String::from_utf8_lossy(r.get_stderr()));
    assert_eq!(r.get_status(), ProcessStatus::EXITED, "{all}");
    assert!(!out.contains("ALLOWED"), "{all}");
    assert!(
        out.lines().any(|l| l == "4"),
        "/dev/urandom must work: {all}"
    );
    let cap_bnd = out
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap_or_else(|| panic!("{all}"));
    for (cap, name) in [(21, "SYS_ADMIN"), (27, "MKNOD"), (34, "SYSLOG")] {
        assert_eq!(
            cap_bnd & (1 << cap),
            0,
            "{name} is in the bounding set: {all}"
        );
    }
    assert!(out.lines().any(|l| l == "kmsg 0"), "{all}");
    assert!(out.lines().any(|l| l == "proc-dirs 0"), "{all}");
    let mount = |target: &str| {
        out.lines()
            .find(|l| l.split(' ').nth(1) == Some(target))
            .unwrap_or_else(|| panic!("no {target} mount: {all}"))
            .to_string()
    };
    assert!(mount("/dev").contains("nodev"), "{all}");
    for (target, size) in [
        ("/tmp", "size="),
        ("/run", "size="),
        ("/dev/shm", "size=65536k"),
    ] {
        assert!(mount(target).contains(size), "{target} is unbounded: {all}");
    }
    assert!(out.contains("dev-full"), "/dev is bounded at 1 MiB: {all}");
}
