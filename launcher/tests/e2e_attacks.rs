//! The adversarial suite (issue 12, SECURITY.md): one VM under QEMU, attacked from inside by
//! an unprivileged user of the VM and by root in a container. Each attack is a shell line
//! printing `RESULT <name> <outcome>`; the test asserts every outcome, that the VM's token
//! appears in nothing the attacker could read, and that the VM and its host services (logs,
//! crash reports, Maitred) still work afterwards, also after it floods them.
//!
//! One VM for everything (boots are slow under TCG): root prepares a busybox root in the VM
//! for the container (`rootfs_dir`), then each attacker runs as its own LaunchProcess.

mod common;

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use vm_proto::protos::guest::{ContainerSpec, LaunchProcessRequest, ProcessStatus};
use vm_proto::protos::guest_grpc::MaitredClient;
use vm_proto::Connector;

/// The launcher's default guest memory; the tmpfs limits are shares of it.
const MEM_MIB: u64 = 512;
const ATTACK_TIMEOUT: Duration = Duration::from_secs(300);

/// Shell helpers every attacker script starts with.
const HELPERS: &str = r#"
r() { echo "RESULT $1 $2"; }
try() { n=$1; shift; if "$@" >/dev/null 2>&1; then r "$n" allowed; else r "$n" denied; fi; }
# Every 64-hex string the caller can read anywhere the token could be.
hexscan() {
    {
        for f in /proc/[0-9]*/cmdline /proc/[0-9]*/environ /proc/[0-9]*/task/*/environ \
                 /proc/cmdline; do
            tr '\0' '\n' 2>/dev/null < "$f"
        done
        dmesg 2>/dev/null
        timeout 5 cat /dev/kmsg 2>/dev/null
        timeout 5 cat /proc/kmsg 2>/dev/null
        timeout 120 grep -rhs . /sys /proc/sys /run /tmp /etc /dev/.syslog 2>/dev/null
        r scan-grep $?
    } | grep -oE '[0-9a-f]{64}|RESULT scan-grep [0-9]+' | sed -e 's/^[0-9a-f]/HEX &/'
}
# Writes zeros to DIR until it is full; reports dd's status and the MiB written.
fill() {
    dd if=/dev/zero of="$1/fill" bs=1M 2>/dev/null; rc=$?
    mb=$(( $(wc -c < "$1/fill") / 1048576 )); rm -f "$1/fill"; r "fill-$2" "$rc $mb"
}
"#;

/// Root in the VM, before the attacks: the container's root, and what root may still see
/// (including the token, which proves the scan would find it).
const SETUP: &str = r#"
mkdir -p /ctr/bin /ctr/proc /ctr/dev /ctr/tmp /ctr/run /ctr/etc /ctr/sys
cp /bin/busybox /ctr/bin/busybox
for a in $(busybox --list); do [ "$a" = busybox ] || ln -s busybox "/ctr/bin/$a"; done
r root-cmdline-token $(grep -c maitred.token= /proc/cmdline)
r root-cmdline-mode "$(stat -c '%a %u' /proc/cmdline)"
r root-dmesg-cmdline $(dmesg | grep -c 'Kernel command line')
r pid1-cmdline-token $(tr '\0' '\n' < /proc/1/cmdline | grep -c maitred)
r pid1-environ-token $(tr '\0' '\n' < /proc/1/environ | grep -c maitred)
r dmesg-restrict $(cat /proc/sys/kernel/dmesg_restrict)
r kptr-restrict $(cat /proc/sys/kernel/kptr_restrict)
hexscan
"#;

/// An unprivileged user (uid/gid 65534) in the VM, outside any container.
const UNPRIVILEGED: &str = r#"
r uid $(id -u)
try cmdline cat /proc/cmdline
try private-copy cat /run/maitred/cmdline
try dmesg dmesg
try kmsg dd if=/dev/kmsg of=/dev/null bs=8192 count=1
try pid1-environ cat /proc/1/environ
try new-proc unshare -Urpf --mount-proc cat /proc/cmdline
fill /tmp vm-tmp
fill /dev/shm vm-shm
hexscan
"#;

/// Root in a container.
const CONTAINER: &str = r#"
r uid $(id -u)
r cmdline-bytes $(cat /proc/cmdline | wc -c)
try dmesg dmesg
try kmsg dd if=/dev/kmsg of=/dev/null bs=8192 count=1
r proc-kmsg-bytes $(timeout 5 cat /proc/kmsg | wc -c)
try mknod-dev mknod /dev/kmsg c 1 11
try mknod-tmp mknod /tmp/kmsg c 1 11
try dev-null sh -c 'echo x > /dev/null && head -c 4 /dev/urandom | wc -c | grep -qx 4'
r dev-nodev $(grep -c '^[^ ]* /dev tmpfs [^ ]*nodev' /proc/mounts)
r proc-dirs $(find /proc/irq /proc/bus /proc/acpi -mindepth 1 2>/dev/null | wc -l)
r sys-mounted $(grep -c ' /sys ' /proc/mounts)
[ -e /proc/sysrq-trigger ] && echo b > /proc/sysrq-trigger
try userns unshare -U true
try userns-root unshare -Ur true
try setns nsenter -t 1 -m true
try log-rm rm -f /dev/.syslog/log
try log-ln ln -s /tmp/evil /dev/.syslog/evil
try log-mv sh -c 'touch /tmp/f && mv -f /tmp/f /dev/.syslog/log'
try log-touch touch /dev/.syslog/new
r log-socket $([ -S /dev/.syslog/log ] && echo present || echo gone)
logger -t attack-ctr "$MARKER-ctr"
fill /tmp tmp
fill /run run
fill /dev/shm shm
sh -c 'printf %s -h > /proc/self/comm; kill -SEGV $$'
sh -c 'printf %s "--host unix:x" > /proc/self/comm; kill -SEGV $$'
hexscan
"#;

/// Root in the VM, afterwards: the VM's syslog socket and Maitred still work.
const AFTER: &str = r#"
r vm-log-socket $([ -S /run/syslog/log ] && echo present || echo gone)
logger -t attack-after "$MARKER-after"
r alive yes
"#;

/// Root in a container floods the host: crash reports past the per-minute limit, and a burst
/// of log lines.
const FLOOD: &str = r#"
i=0; while [ $i -lt 24 ]; do sh -c 'kill -SEGV $$'; i=$((i+1)); done
seq 1 20000 | logger -t flood
logger -t attack-flood "$MARKER-flood"
r flood done
"#;

fn request(script: &str, marker: &str) -> LaunchProcessRequest {
    let mut r = wait_req(&["sh", "-c", &format!("{HELPERS}\n{script}")]);
    r.set_env(
        [
            ("PATH".to_string(), "/bin:/sbin".to_string()),
            ("MARKER".to_string(), marker.to_string()),
        ]
        .into(),
    );
    r
}

/// `sh -c SCRIPT` as uid/gid 65534 (busybox has no setuidgid: nsenter switches ids).
fn unprivileged(script: &str, marker: &str) -> LaunchProcessRequest {
    let mut r = request(script, marker);
    let inner = r.get_argv()[2].clone();
    let argv = [
        "nsenter", "-t", "1", "-S", "65534", "-G", "65534", "sh", "-c",
    ];
    let mut argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    argv.push(inner);
    r.set_argv(argv.into());
    r
}

fn in_container(script: &str, marker: &str) -> LaunchProcessRequest {
    let mut r = request(script, marker);
    let mut c = ContainerSpec::new();
    c.set_rootfs_dir("/ctr".into());
    r.set_container(c);
    r
}

/// What one attacker printed: its RESULT lines and every 64-hex string it found.
struct Report {
    results: BTreeMap<String, String>,
    hexes: Vec<String>,
    text: String,
}

impl Report {
    fn get(&self, name: &str) -> &str {
        self.results
            .get(name)
            .unwrap_or_else(|| panic!("no RESULT {name}:\n{}", self.text))
    }

    fn expect(&self, name: &str, want: &str) {
        assert_eq!(self.get(name), want, "RESULT {name}:\n{}", self.text);
    }

    /// `fill-NAME`: dd stopped at ENOSPC (status 1) having written something, at most
    /// `limit_mib` (+1 for rounding).
    fn expect_bounded(&self, name: &str, limit_mib: u64) {
        let value = self.get(name);
        let (rc, mib) = value.split_once(' ').unwrap_or((value, "0"));
        let mib: u64 = mib.parse().unwrap_or(u64::MAX);
        assert_eq!(rc, "1", "{name}: dd did not hit ENOSPC:\n{}", self.text);
        assert!(
            mib > 0 && mib <= limit_mib + 1,
            "{name}: wrote {mib} MiB, limit {limit_mib}:\n{}",
            self.text
        );
    }

    fn expect_token_absent(&self, token: &str) {
        assert!(
            !self.hexes.iter().any(|h| h == token),
            "the token was readable:\n{}",
            self.text
        );
        // The scan ran to its end (0: found lines, 1: none, 2: some unreadable), not killed.
        assert!(
            ["0", "1", "2"].contains(&self.get("scan-grep")),
            "{}",
            self.text
        );
    }
}

fn attack(vm: &StartedVm, conn: &Connector, who: &str, req: &LaunchProcessRequest) -> Report {
    let r = conn
        .call(ATTACK_TIMEOUT, |ch, o| {
            MaitredClient::new(ch).launch_process_opt(req, o)
        })
        .unwrap_or_else(|e| panic!("{who}: LaunchProcess failed: {e}; VM list: {}", vm.list()));
    let stdout = String::from_utf8_lossy(r.get_stdout()).replace('\r', "");
    let text = format!(
        "--- {who}: {:?} {} {}\n--- stdout\n{stdout}--- stderr\n{}",
        r.get_status(),
        r.get_code(),
        r.get_reason(),
        String::from_utf8_lossy(r.get_stderr())
    );
    assert_eq!(r.get_status(), ProcessStatus::EXITED, "{text}");
    eprintln!("{text}"); // shown with --nocapture or on failure
    let mut results = BTreeMap::new();
    let mut hexes = Vec::new();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("RESULT ") {
            let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
            results.insert(k.to_string(), v.to_string());
        } else if let Some(hex) = line.strip_prefix("HEX ") {
            hexes.push(hex.to_string());
        }
    }
    Report {
        results,
        hexes,
        text,
    }
}

/// Waits until `count` reports sit in `dir`, complete; returns their `.meta` texts.
fn wait_for_reports(dir: &Path, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metas: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "meta"))
                    .filter_map(|p| std::fs::read_to_string(p).ok())
                    .filter(|m| m.ends_with("done=1\n"))
                    .collect()
            })
            .unwrap_or_default();
        if metas.len() >= count || Instant::now() > deadline {
            return metas;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn attacks_from_an_unprivileged_user_and_a_container_fail_and_the_vm_keeps_working() {
    let host = tempfile::tempdir().unwrap();
    let sink_path = host.path().join("syslog.sock");
    let spool = host.path().join("spool");
    let stop = Arc::new(AtomicBool::new(false));
    let (reader, seen) = collect_logs(UnixDatagram::bind(&sink_path).unwrap(), stop.clone());
    let dest = format!("unix:{}", sink_path.display());
    let vm = StartedVm::start_with(
        "attacks",
        &[
            "--log-dest",
            &dest,
            "--crash-spool",
            spool.to_str().unwrap(),
        ],
    );
    let token = vm.token();
    let hex_token = token.to_hex();
    let conn = vm.maitred(token);
    let marker = format!("attack-{}", std::process::id());

    let root = attack(
        &vm,
        &conn,
        "setup (root in the VM)",
        &request(SETUP, &marker),
    );
    // Root keeps its view: the restrictions below are restrictions, not broken tools.
    root.expect("root-cmdline-token", "1");
    root.expect("root-cmdline-mode", "400 0");
    root.expect("root-dmesg-cmdline", "1");
    // The kernel passes dotted (maitred.*) keys to neither init's argv nor its environment.
    root.expect("pid1-cmdline-token", "0");
    root.expect("pid1-environ-token", "0");
    root.expect("dmesg-restrict", "1");
    root.expect("kptr-restrict", "1");
    // The scan finds the token where it is readable: its silence below means something.
    assert!(
        root.hexes.contains(&hex_token),
        "root's scan missed the token:\n{}",
        root.text
    );

    let user = attack(
        &vm,
        &conn,
        "unprivileged user in the VM",
        &unprivileged(UNPRIVILEGED, &marker),
    );
    user.expect("uid", "65534");
    for denied in [
        "cmdline",
        "private-copy",
        "dmesg",
        "kmsg",
        "pid1-environ",
        "new-proc",
    ] {
        user.expect(denied, "denied");
    }
    user.expect_bounded("fill-vm-tmp", MEM_MIB / 4);
    user.expect_bounded("fill-vm-shm", MEM_MIB / 10);
    user.expect_token_absent(&hex_token);

    let ctr = attack(
        &vm,
        &conn,
        "root in a container",
        &in_container(CONTAINER, &marker),
    );
    ctr.expect("uid", "0");
    ctr.expect("cmdline-bytes", "0");
    ctr.expect("proc-kmsg-bytes", "0");
    ctr.expect("dev-null", "allowed");
    ctr.expect("dev-nodev", "1");
    ctr.expect("proc-dirs", "0");
    ctr.expect("sys-mounted", "0");
    for denied in [
        "dmesg",
        "kmsg",
        "mknod-dev",
        "mknod-tmp",
        "userns",
        "userns-root",
        "setns",
        "log-rm",
        "log-ln",
        "log-mv",
        "log-touch",
    ] {
        ctr.expect(denied, "denied");
    }
    ctr.expect("log-socket", "present");
    ctr.expect_bounded("fill-tmp", MEM_MIB / 4);
    ctr.expect_bounded("fill-run", MEM_MIB / 10);
    ctr.expect_bounded("fill-shm", 64);
    ctr.expect_token_absent(&hex_token);

    // Afterwards: Maitred serves, the VM's syslog socket is intact, and both the container's
    // log line (through the read-only bind) and root's reach the host.
    let after = attack(
        &vm,
        &conn,
        "after (root in the VM)",
        &request(AFTER, &marker),
    );
    after.expect("vm-log-socket", "present");
    after.expect("alive", "yes");

    // Processes that named themselves like crash_collector's flags still get their reports
    // delivered, under those names (on kernels < 5.3 the second one arrives split in two).
    let metas = wait_for_reports(&spool.join("attacks"), 2);
    for name in ["-h", "--host unix:x"] {
        assert!(
            metas.iter().any(|m| m.contains(&format!("\nexe={name}\n"))
                || m.starts_with(&format!("exe={name}\n"))),
            "no crash report for a process named {name:?}: {metas:#?}\n{}",
            ctr.text
        );
    }

    // The floods: the host refuses crash reports past its per-minute limit (they stay in
    // the guest's spool for later) and says so once; the VM and its services keep working.
    let flood = attack(
        &vm,
        &conn,
        "flood (root in a container)",
        &in_container(FLOOD, &marker),
    );
    flood.expect("flood", "done");
    attack(&vm, &conn, "after the flood", &request(AFTER, &marker)).expect("alive", "yes");
    let launcher_log = vm.runtime.path().join("logs").join("attacks.log");
    let refused = "refused a crash report over the rate limit";
    let deadline = Instant::now() + Duration::from_secs(60);
    let said = || std::fs::read_to_string(&launcher_log).is_ok_and(|t| t.contains(refused));
    while !said() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        said(),
        "{} does not say {refused:?}:\n{}",
        launcher_log.display(),
        std::fs::read_to_string(&launcher_log).unwrap_or_default()
    );

    let wanted = [
        format!("{marker}-ctr"),
        format!("{marker}-after"),
        format!("{marker}-flood"),
    ];
    let deadline = Instant::now() + Duration::from_secs(90);
    let logged = |w: &String| seen.lock().unwrap().iter().any(|l| l.contains(w.as_str()));
    while Instant::now() < deadline && !wanted.iter().all(logged) {
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(vm);
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    let lines = seen.lock().unwrap().clone();
    for w in &wanted {
        assert!(
            lines.iter().any(|l| l.contains(w.as_str())),
            "{w} never reached the host: {lines:#?}\n{}",
            ctr.text
        );
    }
    assert!(
        !lines.iter().any(|l| l.contains(&hex_token)),
        "the token reached the host's log"
    );
}

/// Every datagram arriving at `sink`, readable while they arrive, until `stop` is set.
/// Drained all along: the host's datagram queue holds only 10 (max_dgram_qlen).
fn collect_logs(
    sink: UnixDatagram,
    stop: Arc<AtomicBool>,
) -> (std::thread::JoinHandle<()>, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let lines = seen.clone();
    let reader = std::thread::spawn(move || {
        sink.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::SeqCst) {
            if let Ok(n) = sink.recv(&mut buf) {
                let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                lines.lock().unwrap().push(line);
            }
        }
    });
    (reader, seen)
}
