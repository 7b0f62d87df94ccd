//! QEMU end-to-end: a process that crashes in the guest becomes a minidump in the host's
//! crash spool. The kernel pipes the core to /sbin/crash_collector (maitred's core_pattern),
//! which sends it over vsock to the launcher's CrashListener. Needs QEMU and the image
//! (scripts/test builds and exports both).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use minidump::system_info::Os;
use minidump::{
    Minidump, MinidumpException, MinidumpModuleList, MinidumpSystemInfo, MinidumpThreadList, Module,
};
use vm_proto::protos::guest::ProcessStatus;

/// The complete reports (`.meta` present) in `dir`, waiting up to `timeout` for `count`.
fn wait_for_reports(
    dir: &Path,
    count: usize,
    timeout: Duration,
) -> Vec<(PathBuf, BTreeMap<String, String>)> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut reports: Vec<(PathBuf, BTreeMap<String, String>)> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| {
                        let path = e.ok()?.path();
                        if path.extension()? != "meta" {
                            return None;
                        }
                        let text = std::fs::read_to_string(&path).ok()?;
                        let meta = text
                            .lines()
                            .filter_map(|l| l.split_once('='))
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect();
                        Some((path.with_extension("dmp"), meta))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if reports.len() >= count || Instant::now() > deadline {
            reports.sort_by(|a, b| a.0.cmp(&b.0));
            return reports;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn guest_segfault_becomes_a_minidump_in_the_host_spool() {
    let runtime = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let out = vm_cmd(
        runtime.path(),
        "run",
        &[
            "--name",
            "e2e-crash",
            "--crash-spool",
            spool.path().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "kill -SEGV $$",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(128 + 11), "{}", show(&out));

    let reports = wait_for_reports(&spool.path().join("e2e-crash"), 1, Duration::from_secs(10));
    assert_eq!(reports.len(), 1, "{}", show(&out));
    let (dmp, meta) = &reports[0];
    assert_eq!(meta["exe"], "sh", "{meta:?}");
    assert_eq!(meta["signal"], "11");
    assert_eq!(meta["signal_name"], "SIGSEGV");
    assert_eq!(meta["vm_id"], "e2e-crash");
    assert_eq!(meta["done"], "1");
    assert!(!meta.contains_key("partial"), "{meta:?}");
    // The memory came from /proc/PID/mem while the kernel was still dumping.
    assert_eq!(meta["memory_source"], "proc", "{meta:?}");
    let name = dmp.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("sh.") && name.ends_with(&format!(".{}.dmp", meta["pid"])),
        "{name}"
    );
    assert!(
        meta["process_tree"].starts_with(&format!("{} sh: sh -c kill -SEGV $$", meta["pid"])),
        "{meta:?}"
    );

    let dump = Minidump::read_path(dmp).unwrap();
    let sys: MinidumpSystemInfo = dump.get_stream().unwrap();
    assert_eq!(sys.os, Os::Linux);
    let exc: MinidumpException = dump.get_stream().unwrap();
    assert_eq!(exc.raw.exception_record.exception_code, 11);
    assert_eq!(exc.get_crashing_thread_id().to_string(), meta["pid"]);
    let threads: MinidumpThreadList = dump.get_stream().unwrap();
    assert_eq!(threads.threads.len(), 1);
    let memory = dump.get_memory().unwrap();
    assert!(threads.threads[0]
        .stack_memory(&memory)
        .is_some_and(|m| m.size() > 0));
    let modules: MinidumpModuleList = dump.get_stream().unwrap();
    let main = modules.main_module().expect("a module list");
    assert_eq!(main.code_file(), "/bin/busybox");
    // The initramfs has no os-release: the stream still names the (guest) kernel.
    let lsb = dump.get_raw_stream(0x4767_0005).expect("LinuxLsbRelease");
    assert!(
        String::from_utf8_lossy(lsb).contains("PRETTY_NAME=\"Linux 6.1"),
        "{lsb:?}"
    );
}

#[test]
fn crash_keep_leaves_the_newest_report_of_several() {
    let vm = StartedVm::start_with("e2e-crash-keep", &["--crash-keep", "2"]);
    let conn = vm.maitred(vm.token());
    let mut launched = Vec::new();
    for _ in 0..3 {
        // The kernel holds the crashed process until crash_collector exits
        // (core_pipe_limit), so each report is stored before the launch returns.
        let resp = vm
            .launch(&conn, &wait_req(&["sh", "-c", "kill -ABRT $$"]))
            .unwrap();
        assert_eq!(resp.get_status(), ProcessStatus::SIGNALED);
        assert_eq!(resp.get_code(), 6);
        launched.push(resp.get_pid());
        // Distinct .meta write times for the newest-first order.
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = vm.runtime.path().join("crash/e2e-crash-keep");
    let reports = wait_for_reports(&dir, 2, Duration::from_secs(10));
    // Every report reached the host: nothing waits in the guest's spool.
    let spool = vm
        .launch(&conn, &wait_req(&["ls", "-A", "/var/spool/crash"]))
        .unwrap();
    assert!(
        spool.get_stdout().is_empty(),
        "{:?}",
        String::from_utf8_lossy(spool.get_stdout())
    );
    assert_eq!(
        reports.len(),
        2,
        "{:?}",
        std::fs::read_dir(&dir).map(|d| d.count())
    );
    for (_, meta) in &reports {
        assert_eq!(meta["signal_name"], "SIGABRT");
    }
    // The oldest report was pruned, the two newest kept.
    let mut pids: Vec<u32> = reports
        .iter()
        .map(|(_, m)| m["pid"].parse().unwrap())
        .collect();
    pids.sort_unstable();
    let mut newest = launched[1..].to_vec();
    newest.sort_unstable();
    assert_eq!(pids, newest, "launched {launched:?}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 4);
}
