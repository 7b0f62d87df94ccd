//! A boot that fails at any step leaves nothing behind, and a launcher that starts reclaims
//! what a `kill -9`'d launcher left. These drive the real vm_launcher binary (and, where a
//! child's death must be told apart from PR_SET_PDEATHSIG, `RunningVm::boot` in-process)
//! with a private runtime dir and fake helper and hypervisor scripts: no guest boots.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vm_launcher::backend::Backend;
use vm_launcher::host_services::CrashConfig;
use vm_launcher::hypervisor::{Accel, Qemu};
use vm_launcher::log_forward::LogSink;
use vm_launcher::pool::PoolConfig;
use vm_launcher::vm::{LaunchError, RunningVm, VmOptions};

const LAUNCHER: &str = env!("CARGO_BIN_EXE_vm_launcher");
/// Longer than any failing boot here takes (the slowest waits out a 1 s boot timeout and
/// the 5 s + 5 s stop and SIGTERM waits).
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// A private runtime dir, a bin dir for fake programs, and a file the fakes append their
/// pids to.
struct Env {
    _dir: tempfile::TempDir,
    runtime: PathBuf,
    bin: PathBuf,
    pids: PathBuf,
    kernel: PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("run");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let kernel = dir.path().join("bzImage");
    std::fs::write(&kernel, b"not a kernel: no hypervisor here reads it").unwrap();
    Env {
        pids: dir.path().join("pids"),
        runtime,
        bin,
        kernel,
        _dir: dir,
    }
}

impl Env {
    /// A shell script `bin/<name>` that records its pid, then runs `body`.
    fn fake(&self, name: &str, body: &str) -> PathBuf {
        let path = self.bin.join(name);
        let script = format!(
            "#!/bin/sh\nPATH=/usr/bin:/bin\necho $$ >> '{}'\n{body}\n",
            self.pids.display()
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A vhost-device-vsock that creates its vhost-user socket file and waits forever.
    fn fake_helper(&self) -> PathBuf {
        self.fake(
            "vhost-device-vsock",
            "sock=$(echo \"$2\" | sed 's/.*socket=\\([^,]*\\).*/\\1/')\n: > \"$sock\"\nexec sleep 1000",
        )
    }

    fn recorded_pids(&self) -> Vec<i32> {
        std::fs::read_to_string(&self.pids)
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect()
    }

    fn command(&self, path: &str) -> Command {
        let mut command = Command::new(LAUNCHER);
        command
            .env_clear()
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// `vm_launcher run` on the qemu back-end with `args` added; PATH is `path`.
    fn run(&self, path: &str, args: &[&str]) -> Output {
        let mut command = self.command(path);
        command
            .args(["run", "--runtime-dir"])
            .arg(&self.runtime)
            .arg("--kernel")
            .arg(&self.kernel)
            .arg("--initrd")
            .arg(&self.kernel)
            // The fake QEMU is no hypervisor: no `--accel auto` probe of it.
            .args(["--log-dest", "none", "--accel", "tcg"])
            .args(args)
            .args(["--", "true"]);
        finish(command.spawn().unwrap(), RUN_LIMIT)
    }

    fn bin_only(&self) -> String {
        self.bin.display().to_string()
    }

    /// Nothing of a VM is left: no run dir, no lease, no fake child alive.
    fn assert_nothing_left(&self) {
        let vms = self.runtime.join("vms");
        let left: Vec<_> = std::fs::read_dir(&vms)
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "run dirs left in {}: {left:?}",
            vms.display()
        );
        let listed = self.list();
        assert_eq!(listed.lines().count(), 1, "list shows a VM:\n{listed}");
        for file in lease_files(&self.runtime.join("leases")) {
            assert!(lock_is_free(&file), "{} is still locked", file.display());
        }
        for pid in self.recorded_pids() {
            assert_gone(pid);
        }
    }

    fn list(&self) -> String {
        let mut command = self.command("/usr/bin:/bin");
        command.arg("list").arg("--runtime-dir").arg(&self.runtime);
        let out = finish(command.spawn().unwrap(), RUN_LIMIT);
        assert!(out.status.success(), "list failed: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Waits for `child` up to `limit` (then kills it and fails).
fn finish(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vm_launcher did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = Output {
        status: child.wait().unwrap(),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    if let Some(mut s) = child.stdout.take() {
        s.read_to_end(&mut out.stdout).unwrap();
    }
    if let Some(mut s) = child.stderr.take() {
        s.read_to_end(&mut out.stderr).unwrap();
    }
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_failed_with(out: &Output, what: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains(what), "expected {what:?} in:\n{err}");
}

fn lease_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(lease_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn lock_is_free(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return true; // released and unlinked meanwhile
    };
    // SAFETY: flock takes an fd number and flags; `file` is open for the whole call.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// A process that is gone, or a zombie waiting for init: not running.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

fn assert_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn helper_missing_leaves_nothing() {
    let env = env();
    let out = env.run(
        &env.bin_only(),
        &["--vhost-device-vsock", "/nonexistent/vhost-device-vsock"],
    );
    assert_failed_with(&out, "cannot start /nonexistent/vhost-device-vsock");
    env.assert_nothing_left();
}

#[test]
fn helper_dying_at_start_leaves_nothing() {
    let env = env();
    let helper = env.fake("vhost-device-vsock", "exit 3");
    let out = env.run(
        &env.bin_only(),
        &["--vhost-device-vsock", helper.to_str().unwrap()],
    );
    assert_failed_with(&out, "exited during start-up");
    assert_eq!(env.recorded_pids().len(), 1, "the fake helper did not run");
    env.assert_nothing_left();
}

#[test]
fn tap_refused_leaves_nothing() {
    let env = env();
    let helper = env.fake_helper();
    // No `ip` on PATH: the TAP cannot be made, whoever we are.
    let out = env.run(
        &env.bin_only(),
        &[
            "--net",
            "tap",
            "--vhost-device-vsock",
            helper.to_str().unwrap(),
        ],
    );
    assert_failed_with(&out, "cannot set up the VM's network");
    assert_eq!(env.recorded_pids().len(), 1, "the helper never started");
    env.assert_nothing_left();
}

#[test]
fn hypervisor_missing_leaves_nothing() {
    let env = env();
    let helper = env.fake_helper();
    let out = env.run(
        &env.bin_only(),
        &["--vhost-device-vsock", helper.to_str().unwrap()],
    );
    assert_failed_with(&out, "cannot start qemu-system-x86_64");
    assert_eq!(env.recorded_pids().len(), 1, "the helper never started");
    env.assert_nothing_left();
}

#[test]
fn hypervisor_that_never_gets_ready_is_killed_and_nothing_is_left() {
    let env = env();
    let helper = env.fake_helper();
    // Deaf to SIGTERM: only the SIGKILL at the end of teardown stops it.
    env.fake(
        "qemu-system-x86_64",
        "trap '' TERM\nwhile :; do sleep 1; done",
    );
    let start = Instant::now();
    let out = env.run(
        &env.bin_only(),
        &[
            "--boot-timeout",
            "1",
            "--vhost-device-vsock",
            helper.to_str().unwrap(),
        ],
    );
    assert_failed_with(&out, "did not report ready within 1s");
    eprintln!(
        "failed boot with a stubborn hypervisor took {:?}",
        start.elapsed()
    );
    assert_eq!(
        env.recorded_pids().len(),
        2,
        "helper and hypervisor both ran"
    );
    env.assert_nothing_left();
}

/// In-process, so PR_SET_PDEATHSIG cannot be what killed the children: the boot's guards
/// must have killed and reaped them before `boot` returned.
fn boot_in_process(env: &Env, qemu: &Path, helper: &Path) -> LaunchError {
    let mut hv = Qemu::new(Accel::Tcg);
    hv.program = qemu.to_path_buf();
    let opts = VmOptions {
        name: None,
        kernel: Some(env.kernel.clone()),
        initrd: Some(env.kernel.clone()),
        rootfs: None,
        disks: Vec::new(),
        volumes: Vec::new(),
        mem_mib: 128,
        cpus: 1,
        params: Vec::new(),
        net: false,
        backend: Backend::Qemu(hv),
        pool: PoolConfig::new(&env.runtime),
        boot_timeout: Duration::from_secs(1),
        crash: CrashConfig {
            spool: env.runtime.join("crash"),
            reporter: None,
            keep: 1,
            upload: None,
        },
        logs: LogSink::Discard,
        console_to_stdout: false,
        interrupt: None,
        vhost_device_vsock: helper.to_path_buf(),
        use_vhost: false,
        publish: Vec::new(),
        forward: Vec::new(),
    };
    match RunningVm::boot(opts) {
        Ok(vm) => {
            vm.teardown(false);
            panic!("a boot with a fake hypervisor succeeded");
        }
        Err(e) => e,
    }
}

/// Gone for good: reaped by the launcher itself (we are its parent, nobody else reaps).
fn assert_reaped(pid: i32) {
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "child {pid} is still there (running or an unreaped zombie)"
    );
}

#[test]
fn in_process_spawn_failure_kills_and_reaps_the_helper() {
    let env = env();
    let helper = env.fake_helper();
    let err = boot_in_process(&env, Path::new("/nonexistent/qemu"), &helper);
    assert!(matches!(err, LaunchError::Spawn { .. }), "{err}");
    let pids = env.recorded_pids();
    assert_eq!(pids.len(), 1, "the helper never started");
    assert_reaped(pids[0]);
    env.assert_nothing_left();
}

#[test]
fn in_process_boot_timeout_kills_and_reaps_hypervisor_and_helper() {
    let env = env();
    let helper = env.fake_helper();
    let qemu = env.fake("qemu", "exec sleep 1000");
    let err = boot_in_process(&env, &qemu, &helper);
    assert!(matches!(err, LaunchError::BootTimeout { .. }), "{err}");
    let pids = env.recorded_pids();
    assert_eq!(pids.len(), 2, "helper and hypervisor both ran");
    for pid in pids {
        assert_reaped(pid);
    }
    env.assert_nothing_left();
}

/// `vm_launcher run` that is stuck waiting for a fake hypervisor; returns once its run dir
/// and console log exist.
fn stuck_launcher(env: &Env, extra: &[&str]) -> Child {
    let helper = env.fake_helper();
    env.fake("qemu-system-x86_64", "exec sleep 1000");
    let mut command = env.command(&format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", env.bin_only()));
    command
        .args(["run", "--runtime-dir"])
        .arg(&env.runtime)
        .arg("--kernel")
        .arg(&env.kernel)
        .arg("--initrd")
        .arg(&env.kernel)
        .args(["--log-dest", "none", "--boot-timeout", "120"])
        .args(["--accel", "tcg"]) // no `--accel auto` probe of the fake QEMU
        .arg("--vhost-device-vsock")
        .arg(&helper)
        .args(extra)
        .args(["--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = command.spawn().unwrap();
    let console = env.runtime.join("vms/vm-1/console.log");
    let deadline = Instant::now() + RUN_LIMIT;
    while !(console.exists() && env.recorded_pids().len() == 2) {
        assert!(
            Instant::now() < deadline,
            "the launcher never got to the hypervisor"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn kill_9_leftovers_are_reclaimed_by_the_next_launcher() {
    let env = env();
    let rootfs = env.runtime.with_file_name("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::write(rootfs.join("bin/app"), b"#!/bin/sh\n").unwrap();
    let mut victim = stuck_launcher(&env, &["--container", rootfs.to_str().unwrap()]);
    let image = env.runtime.join(format!("container-{}.img", victim.id()));
    assert!(image.exists(), "the launcher made no container image");
    victim.kill().unwrap(); // SIGKILL: no teardown runs
    victim.wait().unwrap();
    assert!(
        env.runtime.join("vms/vm-1").exists(),
        "kill -9 left no run dir to reclaim"
    );

    // The next launcher reclaims before it leases; this one then fails at its helper.
    let out = env.run(
        &env.bin_only(),
        &["--vhost-device-vsock", "/nonexistent/helper"],
    );
    assert_failed_with(&out, "cannot start /nonexistent/helper");
    let err = stderr(&out);
    assert!(err.contains("reclaimed") && err.contains("vm-1"), "{err}");
    assert!(
        !image.exists(),
        "{} was not reclaimed:\n{err}",
        image.display()
    );
    env.assert_nothing_left();
}

#[test]
fn a_live_launchers_run_dir_and_image_are_not_reclaimed() {
    let env = env();
    let rootfs = env.runtime.with_file_name("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let mut live = stuck_launcher(&env, &["--container", rootfs.to_str().unwrap()]);
    let image = env.runtime.join(format!("container-{}.img", live.id()));
    let out = env.run(&env.bin_only(), &["--vhost-device-vsock", "/nonexistent/h"]);
    assert_failed_with(&out, "cannot start /nonexistent/h");
    let kept = env.runtime.join("vms/vm-1").exists() && image.exists();
    // Its hypervisor dies: the launcher tears down by itself (it takes no SIGTERM while
    // booting).
    let hypervisor = env.recorded_pids()[1];
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hypervisor),
        nix::sys::signal::Signal::SIGKILL,
    );
    let status = finish_child(&mut live);
    assert_eq!(status.code(), Some(125));
    assert!(
        kept,
        "a live launcher's files were reclaimed:\n{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("reclaimed"), "{}", stderr(&out));
    env.assert_nothing_left();
    assert!(
        !image.exists(),
        "the launcher's own teardown left its image"
    );
}

fn finish_child(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the launcher did not stop within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A real TAP whose alias says a VM of this runtime dir owns it, with no launcher alive.
struct TestTap(String);

impl TestTap {
    fn create(name: &str, alias: &str) -> TestTap {
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("ip (iproute2)");
            assert!(
                out.status.success(),
                "ip {}: {} (this test needs root and /dev/net/tun)",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip")
            .args(["link", "del", "dev", name])
            .stderr(Stdio::null())
            .status();
        ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
        let tap = TestTap(name.to_string());
        ip(&["link", "set", "dev", name, "alias", alias]);
        tap
    }

    fn exists(&self) -> bool {
        Path::new("/sys/class/net").join(&self.0).exists()
    }
}

impl Drop for TestTap {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", "dev", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn dead_launchers_tap_is_reclaimed_and_other_pools_taps_are_not() {
    let env = env();
    std::fs::create_dir_all(&env.runtime).unwrap();
    // CIDs far above any pool's range, so no real VM's tap has these names.
    let n = 3_999_000_000u32 + std::process::id() % 100_000;
    let runtime = std::fs::canonicalize(&env.runtime).unwrap();
    let ours = TestTap::create(
        &format!("vmtap{n}"),
        &format!("vm_launcher id=vm-9 runtime={}", runtime.display()),
    );
    let theirs = TestTap::create(
        &format!("vmtap{}", n + 1),
        "vm_launcher id=vm-9 runtime=/some/other/runtime",
    );
    // The reclaim deletes taps with `ip`: this launcher's PATH has it.
    let path = format!("{}:/usr/sbin:/sbin", env.bin_only());
    let out = env.run(&path, &["--vhost-device-vsock", "/nonexistent/h"]);
    assert_failed_with(&out, "cannot start /nonexistent/h");
    assert!(!ours.exists(), "the dead VM's tap stays:\n{}", stderr(&out));
    assert!(theirs.exists(), "another pool's tap was deleted");
    env.assert_nothing_left();
}
