//! QEMU end-to-end: a process that crashes in a guest started with `--crash-upload URL
//! --crash-upload-gzip` reaches a real crash server (tests/support/crash_server.py) as a
//! Breakpad/Crashpad upload: the minidump byte-equal to the host spool's copy, the report's
//! keys as fields, the crash id back in the `.meta`. One booted VM serves both cases (the
//! second crash is refused with a 4xx and not retried). Needs QEMU and the image
//! (scripts/test builds and exports both).

mod common;
#[path = "support/crash_server.rs"]
mod crash_server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use crash_server::CrashServer;
use vm_proto::protos::guest::ProcessStatus;
use vm_proto::spool::parse_meta;

/// The report of process `pid` in `dir` once its `.meta` has an `upload_state`.
fn wait_for_upload(dir: &Path, pid: u32, timeout: Duration) -> (PathBuf, BTreeMap<String, String>) {
    let deadline = Instant::now() + timeout;
    loop {
        let found = std::fs::read_dir(dir).ok().and_then(|entries| {
            entries.flatten().map(|e| e.path()).find_map(|path| {
                let name = path.file_name()?.to_str()?;
                if !name.ends_with(&format!(".{pid}.meta")) {
                    return None;
                }
                let text = std::fs::read_to_string(&path).ok()?;
                let meta: BTreeMap<String, String> = parse_meta(&text)?.into_iter().collect();
                meta.contains_key("upload_state")
                    .then(|| (path.with_extension("dmp"), meta))
            })
        });
        if let Some(found) = found {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no uploaded report of pid {pid} in {}: {:?}",
            dir.display(),
            std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn guest_crash_is_uploaded_to_a_crash_server_and_a_4xx_is_not_retried() {
    let server = CrashServer::start(&[200, 422]);
    let url = server.url();
    let vm = StartedVm::start_with(
        "e2e-upload",
        &["--crash-upload", &url, "--crash-upload-gzip"],
    );
    let conn = vm.maitred(vm.token());
    let dir = vm.runtime.path().join("crash/e2e-upload");

    // 1: uploaded.
    let resp = vm
        .launch(&conn, &wait_req(&["sh", "-c", "kill -SEGV $$"]))
        .unwrap();
    assert_eq!(resp.get_status(), ProcessStatus::SIGNALED);
    let (dmp, meta) = wait_for_upload(&dir, resp.get_pid(), Duration::from_secs(30));
    assert_eq!(meta["upload_state"], "uploaded", "{meta:?}");
    assert_eq!(meta["upload_id"], "bp-1");
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let req = &requests[0];
    assert_eq!(req["gzip"], true);
    assert!(req.get("error").is_none(), "{req}");
    let fields = &req["fields"];
    assert_eq!(fields["prod"], "vm_tools");
    assert_eq!(fields["exe"], "sh");
    assert_eq!(fields["signal_name"], "SIGSEGV");
    assert_eq!(fields["vm_id"], "e2e-upload");
    assert_eq!(fields["pid"], resp.get_pid().to_string());
    assert!(
        fields["process_tree"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{} sh: sh -c kill -SEGV $$", resp.get_pid())),
        "{fields}"
    );
    let sent = server.file(1, "upload_file_minidump");
    assert_eq!(sent, std::fs::read(&dmp).unwrap());
    assert!(sent.starts_with(b"MDMP"));

    // 2: refused (422), on the same VM: not retried.
    let resp = vm
        .launch(&conn, &wait_req(&["sh", "-c", "kill -ABRT $$"]))
        .unwrap();
    let (_, meta) = wait_for_upload(&dir, resp.get_pid(), Duration::from_secs(30));
    assert_eq!(meta["upload_state"], "refused", "{meta:?}");
    assert_eq!(meta["upload_status"], "422");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(server.requests().len(), 2);
}
