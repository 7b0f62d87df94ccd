//! The guest's programs in a real guest: /init, /sbin/maitred, /sbin/vm_syslog and
//! /sbin/crash_sender are one file (vm_tools_guest, scripts/build-image), and the name it
//! is run under picks the program: each name prints its own program's usage, an unknown
//! name is refused with a usage line, and vm_syslog (a boot service started through its
//! link) runs from that same file. /sbin/crash_collector is a file of its own, without the
//! gRPC C-core. That a crash still becomes a report (collector, then sender) is e2e_crash's
//! test.
//!
//! Needs what e2e_qemu.rs needs (qemu-system-x86_64, vhost-device-vsock, the kernel and
//! image from scripts/build-kernel and scripts/build-image).

mod common;

use vm_proto::protos::guest::{LaunchProcessResponse, ProcessStatus};

use common::*;

const NAMES: [&str; 4] = [
    "/init",
    "/sbin/maitred",
    "/sbin/vm_syslog",
    "/sbin/crash_sender",
];

fn sh(vm: &StartedVm, conn: &vm_proto::Connector, script: &str) -> LaunchProcessResponse {
    let r = vm
        .launch(conn, &wait_req(&["/bin/sh", "-c", script]))
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    assert_eq!(r.get_status(), ProcessStatus::EXITED, "{script}: {r:?}");
    r
}

fn stdout(r: &LaunchProcessResponse) -> String {
    String::from_utf8_lossy(r.get_stdout()).into_owned()
}

#[test]
fn guest_programs_are_one_file_dispatched_by_name() {
    let vm = StartedVm::start("e2e-multicall");
    let conn = vm.maitred(vm.token());

    // One inode under four names, and the hard link count says so.
    let r = sh(
        &vm,
        &conn,
        &format!("stat -c '%d:%i %h %F' {}", NAMES.join(" ")),
    );
    let out = stdout(&r);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), NAMES.len(), "{out}");
    assert!(
        lines.iter().all(|l| *l == lines[0]),
        "one file under every name: {out}"
    );
    let fields: Vec<&str> = lines[0].split(' ').collect();
    assert!(
        fields[1].parse::<u32>().unwrap() >= 4 && fields[2] == "regular",
        "a regular file with (at least) four links: {out}"
    );
    // crash_collector is its own, much smaller file (no gRPC C-core in a crash's path).
    let r = sh(&vm, &conn, "stat -c '%i %s' /init /sbin/crash_collector");
    let out = stdout(&r);
    let sizes: Vec<(&str, u64)> = out
        .lines()
        .map(|l| {
            let (inode, size) = l.split_once(' ').unwrap();
            (inode, size.parse().unwrap())
        })
        .collect();
    assert_ne!(sizes[0].0, sizes[1].0, "a file of its own: {out}");
    assert!(
        sizes[1].1 * 3 < sizes[0].1,
        "much smaller than /init: {out}"
    );
    // /sbin/init is still the symlink to /init.
    let r = sh(&vm, &conn, "readlink /sbin/init");
    assert_eq!(stdout(&r).trim(), "/init");

    // Each name is its program: its own --help, exit status 0.
    for (name, usage) in [
        ("/sbin/maitred", "usage: maitred "),
        ("/sbin/vm_syslog", "usage: vm_syslog "),
        ("/sbin/crash_sender", "usage: crash_sender "),
        ("/sbin/crash_collector", "usage: crash_collector "),
    ] {
        let r = sh(&vm, &conn, &format!("{name} --help"));
        assert_eq!(r.get_code(), 0, "{name} --help: {r:?}");
        assert!(
            stdout(&r).starts_with(usage),
            "{name} --help prints its own usage: {}",
            stdout(&r)
        );
    }
    // /init run by hand (not PID 1) is maitred too.
    let r = sh(&vm, &conn, "/init --help");
    assert!(stdout(&r).starts_with("usage: maitred "), "{}", stdout(&r));

    // A name the binary does not answer to: one usage line on stderr, status 2.
    let r = sh(
        &vm,
        &conn,
        "ln -s /init /tmp/not_a_program && /tmp/not_a_program --help",
    );
    let err = String::from_utf8_lossy(r.get_stderr()).into_owned();
    assert_eq!(r.get_code(), 2, "{r:?}");
    assert!(r.get_stdout().is_empty(), "{r:?}");
    assert!(
        err.starts_with("vm_tools_guest: unknown program \"not_a_program\"; usage:")
            && err.contains("vm_syslog")
            && err.lines().count() == 1,
        "{err}"
    );

    // vm_syslog, a boot service started as /sbin/vm_syslog, runs from the same file.
    let r = sh(
        &vm,
        &conn,
        "ps -o pid,args | grep '[/]sbin/vm_syslog'; \
         readlink /proc/$(pidof vm_syslog)/exe; stat -L -c '%d:%i' /proc/$(pidof vm_syslog)/exe",
    );
    let out = stdout(&r);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "one vm_syslog, its exe and inode: {out}");
    assert!(lines[0].contains("/sbin/vm_syslog --socket"), "{out}");
    assert_eq!(lines[1], "/sbin/vm_syslog", "{out}");
    assert_eq!(
        lines[2], fields[0],
        "vm_syslog's executable is the one binary: {out}"
    );
}
