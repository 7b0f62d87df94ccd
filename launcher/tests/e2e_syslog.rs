//! vm_syslog in a real guest: `logger` inside a QEMU VM reaches a syslog socket on the host
//! (`vm_launcher run --log-dest unix:PATH`) as an RFC 5424 line tagged with the VM id the
//! connection proved, with its severity; the guest kernel's own records arrive too, marked
//! as kernel records, with the VM's access token (on the kernel's command line) redacted.
//!
//! Needs what e2e_qemu.rs needs (qemu-system-x86_64, vhost-device-vsock, the kernel and
//! image from scripts/build-kernel and scripts/build-image).

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;

#[test]
fn guest_logger_reaches_the_host_sink_tagged_with_the_vm_id() {
    let runtime = tempfile::tempdir().unwrap();
    let sink_path = runtime.path().join("host-syslog.sock");
    let stop = Arc::new(AtomicBool::new(false));
    let reader = drain(UnixDatagram::bind(&sink_path).unwrap(), stop.clone());

    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let marker = format!("e2e-{nonce}");
    // vm_syslog is a boot service: wait for its socket, log, give it time to flush.
    let script = format!(
        "i=0; while [ ! -S /dev/log ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
         logger -t e2e-app -p user.err {marker}; sleep 1"
    );
    let dest = format!("unix:{}", sink_path.display());
    let out = vm_cmd(
        runtime.path(),
        "run",
        &[
            "--name",
            "e2e-syslog",
            "--log-dest",
            &dest,
            "--",
            "/bin/sh",
            "-c",
            &script,
        ],
    )
    .output()
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    let lines = reader.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    let ours: Vec<&String> = lines.iter().filter(|l| l.contains(&marker)).collect();
    assert_eq!(
        ours.len(),
        1,
        "the record, once: {lines:#?}\n{}",
        show(&out)
    );
    // <user.err>1 TIME VM(<id>) e2e-app <pid> user - <marker>
    let fields: Vec<&str> = ours[0].splitn(8, ' ').collect();
    assert_eq!(
        fields[0], "<11>1",
        "severity ERROR, facility user: {}",
        ours[0]
    );
    assert_eq!(
        fields[2], "VM(e2e-syslog)",
        "tagged with the VM id: {}",
        ours[0]
    );
    assert_eq!(fields[3], "e2e-app", "the program name: {}", ours[0]);
    assert!(
        fields[4].parse::<u32>().is_ok(),
        "the sender's pid: {}",
        ours[0]
    );
    assert_eq!(
        (fields[5], fields[6], fields[7]),
        ("user", "-", marker.as_str())
    );
    let year: i32 = fields[1].get(..4).and_then(|y| y.parse().ok()).unwrap_or(0);
    assert!(year >= 2024, "the guest's own time: {}", ours[0]);

    // The guest kernel's log came along, marked as the kernel's.
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" VM(e2e-syslog) kernel - kernel - Linux version")),
        "no kernel boot record among {} lines: {:#?}",
        lines.len(),
        &lines[..lines.len().min(20)]
    );
    assert!(lines.iter().all(|l| l.contains(" VM(e2e-syslog) ")));

    // The kernel logs its command line, access token included: the token stays in the guest.
    let cmdline = lines
        .iter()
        .find(|l| l.contains(" kernel - kernel - Command line: "))
        .expect("the kernel's command line record");
    assert!(cmdline.contains("maitred.token=<redacted> "), "{cmdline}");
    for line in &lines {
        for (at, _) in line.match_indices("maitred.token=") {
            let value = &line[at + "maitred.token=".len()..];
            assert!(value.starts_with("<redacted>"), "token leaked: {line}");
        }
    }
}
