//! Shared by the QEMU end-to-end tests: the kernel and image, `vm_launcher` commands on a
//! private runtime dir, and a VM started with `vm_launcher start` that stops when dropped.
#![allow(dead_code)] // each test file uses a different part

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use vm_proto::protos::guest::{LaunchProcessRequest, LaunchProcessResponse};
use vm_proto::protos::guest_grpc::MaitredClient;
use vm_proto::{grpc_environment, Address, CallError, Connector, Token};

pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The vm_launcher binary under test.
pub fn launcher() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vm_launcher"))
}

/// The process back-end runs maitred from beside vm_launcher: build it, once per test binary
/// (cargo is quick when it is up to date, and a stale maitred would test old code).
pub fn ensure_maitred() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "maitred"])
            .current_dir(workspace())
            .status()
            .expect("run cargo build -p maitred");
        assert!(status.success(), "cannot build maitred");
    });
}

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The last stdout line of a build script, which is the artifact's path.
pub fn script_output(script: &str) -> PathBuf {
    script_output_args(script, &[])
}

/// The last stdout line of `scripts/SCRIPT ARGS…`.
pub fn script_output_args(script: &str, args: &[&str]) -> PathBuf {
    let out = Command::new(workspace().join("scripts").join(script))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/{script}: {e}"));
    assert!(out.status.success(), "scripts/{script} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(text.lines().last().expect("a path").trim())
}

/// (kernel, initrd), built once per test run.
pub fn artifacts() -> &'static (PathBuf, PathBuf) {
    static ARTIFACTS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    ARTIFACTS.get_or_init(|| {
        for tool in ["qemu-system-x86_64", "vhost-device-vsock"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                found,
                "{tool} is missing: run scripts/test, which installs it"
            );
        }
        let kernel = std::env::var_os("VM_TOOLS_KERNEL")
            .map(PathBuf::from)
            .unwrap_or_else(|| script_output("build-kernel"));
        let initrd = std::env::var_os("VM_TOOLS_INITRD")
            .map(PathBuf::from)
            .unwrap_or_else(|| script_output("build-image"));
        warm_accel_cache(&kernel);
        (kernel, initrd)
    })
}

/// Decides `--accel auto` for `kernel` once, as every vm_launcher of this run would (same
/// cache), so its one line on stderr does not land in a test that asserts an application's
/// exact stderr. The line itself is tested on a cache of its own (e2e_qemu).
fn warm_accel_cache(kernel: &Path) {
    use vm_launcher::hypervisor::{accel::Probe, Accel, Qemu};
    let choice = Probe::new(&Qemu::new(Accel::Kvm), kernel).choose();
    if choice.fresh {
        eprintln!("{}", choice.line());
    }
}

/// A component directory (`vm_kernel`, `vm_rootfs.img`: the Chromium OS layout), built once
/// per test run: $VM_TOOLS_COMPONENT, or `scripts/build-image --component` into the cache.
pub fn component() -> &'static PathBuf {
    static COMPONENT: OnceLock<PathBuf> = OnceLock::new();
    COMPONENT.get_or_init(|| {
        artifacts(); // the tools, and the kernel the directory copies
        if let Some(dir) = std::env::var_os("VM_TOOLS_COMPONENT") {
            return PathBuf::from(dir);
        }
        let cache = std::env::var_os("VM_TOOLS_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/vm_tools")
            });
        let dir = cache.join("e2e-component");
        script_output_args("build-image", &["--component", dir.to_str().unwrap()])
    })
}

/// `vm_launcher SUB --kernel K --initrd I --boot-timeout T ARGS…` on a private runtime dir.
pub fn vm_cmd(runtime: &Path, sub: &str, args: &[&str]) -> Command {
    let (kernel, initrd) = artifacts();
    let image = [
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
    ];
    vm_cmd_image(runtime, sub, &image, args)
}

/// `vm_launcher SUB IMAGE… --boot-timeout T ARGS…`: the image flags given (e.g. `--vm-path`).
pub fn vm_cmd_image(runtime: &Path, sub: &str, image: &[&str], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vm_launcher"));
    cmd.env("VM_LAUNCHER_RUNTIME_DIR", runtime)
        .arg(sub)
        .args(image)
        .args(["--boot-timeout", &BOOT_TIMEOUT.as_secs().to_string()])
        .args(args);
    cmd
}

/// An ext4 image at `path` holding `files` (path inside, contents), made without root
/// with `mke2fs -d`, as scripts/build-image makes the rootfs.
pub fn ext4_image(path: &Path, files: &[(&str, &str)]) {
    let staging = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let file = staging.path().join(name);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    }
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(staging.path())
        .arg(path)
        .arg("4M")
        .output()
        .unwrap_or_else(|e| panic!("cannot run mke2fs (e2fsprogs is missing?): {e}"));
    assert!(out.status.success(), "mke2fs: {}", show(&out));
}

pub fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A VM started with `vm_launcher start`, stopped again when dropped.
pub struct StartedVm {
    pub runtime: tempfile::TempDir,
    pub id: String,
}

impl StartedVm {
    pub fn start(name: &str) -> StartedVm {
        Self::start_with(name, &[])
    }

    pub fn start_with(name: &str, extra: &[&str]) -> StartedVm {
        let (kernel, initrd) = artifacts();
        let image = [
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
        ];
        Self::start_image(name, &image, extra)
    }

    /// `start` with the image flags given (e.g. `--vm-path DIR`) instead of kernel + initrd.
    pub fn start_image(name: &str, image: &[&str], extra: &[&str]) -> StartedVm {
        let runtime = tempfile::tempdir().unwrap();
        let mut args = vec!["--name", name];
        args.extend_from_slice(extra);
        let out = vm_cmd_image(runtime.path(), "start", image, &args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "start failed: {}", show(&out));
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(id, name);
        StartedVm { runtime, id }
    }

    pub fn rundir(&self) -> PathBuf {
        self.runtime.path().join("vms").join(&self.id)
    }

    /// The token, read as root from the VM's private QEMU config (mode 0600 in a 0700 dir).
    pub fn token(&self) -> Token {
        let cfg =
            std::fs::read_to_string(self.rundir().join(format!("{}.qemu.cfg", self.id))).unwrap();
        let at = cfg.find("maitred.token=").expect("token in the config") + "maitred.token=".len();
        Token::parse(&cfg[at..at + 64]).unwrap()
    }

    pub fn maitred(&self, token: Token) -> Connector {
        let uds = self.rundir().join("vsock.sock");
        let addr: Address = format!("hybrid:{}:8888", uds.display()).parse().unwrap();
        Connector::new(grpc_environment("e2e"), addr, token)
    }

    pub fn launch(
        &self,
        conn: &Connector,
        req: &LaunchProcessRequest,
    ) -> Result<LaunchProcessResponse, CallError> {
        conn.call(CALL_TIMEOUT, |ch, o| {
            MaitredClient::new(ch).launch_process_opt(req, o)
        })
    }

    pub fn list(&self) -> String {
        let out = vm_cmd_plain(self.runtime.path(), &["list"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for StartedVm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.rundir().join("console.log");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            eprintln!(
                "--- guest console of {} ({}) ---\n{text}--- end ---",
                self.id,
                log.display()
            );
        }
        let _ = vm_cmd_plain(self.runtime.path(), &["stop", "--all"]);
    }
}

/// stop/list take no image flags.
pub fn vm_cmd_plain(runtime: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vm_launcher"))
        .env("VM_LAUNCHER_RUNTIME_DIR", runtime)
        .args(args)
        .output()
        .unwrap()
}

pub fn wait_req(argv: &[&str]) -> LaunchProcessRequest {
    let mut r = LaunchProcessRequest::new();
    r.set_argv(argv.iter().map(|s| s.to_string()).collect());
    r.set_wait_for_exit(true);
    r.set_capture_output(true);
    r
}

/// Processes whose command line mentions `needle` (our VM's run directory).
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            (cmd.contains(needle) && !stat.contains(") Z ")).then_some((pid, cmd))
        })
        .collect()
}

/// Reads every datagram arriving at `sink` until `stop` is set and it has been quiet.
pub fn drain(sink: UnixDatagram, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        sink.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut lines = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            match sink.recv(&mut buf) {
                Ok(n) => lines.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(_) if stop.load(Ordering::SeqCst) => return lines,
                Err(_) => {}
            }
        }
    })
}

/// `len` random bytes from the kernel.
/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn random_bytes(len: usize) -> Vec<u8> {
    use std::io::Read;
    let mut data = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    data
}

/// Runs `command` with `input` on stdin and collects everything, like a shell pipeline.
pub fn pipe_through(mut command: Command, input: Vec<u8>) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// A container root at `dir`: /bin/busybox with links for `applets`, and the directories a
/// container needs (proc, dev, tmp, etc).
pub fn busybox_root(dir: &Path, applets: &[&str]) {
    for d in ["bin", "proc", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    assert!(
        Path::new("/bin/busybox").exists(),
        "busybox-static is missing: run scripts/test"
    );
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for applet in applets {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
}

/// An application that prints `ready`, then answers SIGTERM with `got-term` and exit 7.
pub const TERM_TRAP_APP: &str =
    "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done";

/// Starts `command` (stdin /dev/null, stdout and stderr piped) and waits until the
/// application has printed its `ready` line.
pub fn spawn_until_ready(mut command: Command) -> std::process::Child {
    use std::io::Read;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 6];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    assert_eq!(&ready, b"ready\n");
    child
}

/// Sends `signal` to `child` (the launcher).
pub fn send_signal(child: &std::process::Child, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
}

/// `command` runs [`TERM_TRAP_APP`]: SIGTERM to the launcher reaches the application, whose
/// answer and exit code come back.
pub fn assert_sigterm_reaches_the_application(command: Command) {
    use std::io::Read;
    let mut child = spawn_until_ready(command);
    send_signal(&child, nix::sys::signal::Signal::SIGTERM);
    let mut rest = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(rest, "got-term\n");
    assert_eq!(status.code(), Some(7));
}

/// A TCP server on 127.0.0.1 (a port of its own) that runs `serve` on a thread per
/// connection, the connection in blocking mode; stops accepting when dropped.
pub struct TcpServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl TcpServer {
    pub fn start(serve: fn(std::net::TcpStream)) -> TcpServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        std::thread::spawn(move || serve(conn));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        TcpServer { port, stop }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
