//! The steps of [`super::RunningVm::boot`], one thing acquired each, in boot order. Every
//! step returns a guard whose Drop undoes it, so an error at any later step (an early `?`)
//! leaves nothing behind: the run dir is removed, children are killed and reaped, the TAP
//! is deleted, the host services stop, and the lease (dropped last) frees the id.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use vm_proto::{GuestParams, Listener, Token};

use super::children::{tee_console, write_private, Helper, Hypervisor};
use super::{io, LaunchError};
use crate::backend::{self, Backend, Wiring};
use crate::host_services::{CrashConfig, HostServices};
use crate::hypervisor::{Disk, HvCommand, NetSpec, Rootfs, Share, Stop, VmSpec, VsockBackend};
use crate::log_forward::{LogForwarder, LogSink};
use crate::pool::Lease;
use crate::tap::Tap;

/// `<runtime>/vms`: one run dir per VM id.
pub(super) fn vms_dir(runtime: &Path) -> PathBuf {
    runtime.join("vms")
}

/// A VM's private (0700) run directory: console log, sockets, the token-bearing hypervisor
/// config. Removed with everything in it when dropped.
pub(super) struct RunDir(PathBuf);

impl RunDir {
    /// Creates `<runtime>/vms/<id>` afresh (a dead launcher's copy, if any, is replaced:
    /// we hold the id's lease now).
    pub(super) fn create(runtime: &Path, lease: &Lease) -> Result<RunDir, LaunchError> {
        use std::os::unix::fs::DirBuilderExt;
        let vms = vms_dir(runtime);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&vms)
            .map_err(io(format!("creating {}", vms.display())))?;
        let path = vms.join(lease.id());
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io(format!("creating {}", path.display())))?;
        Ok(RunDir(path))
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The guest kernel's command line: console, the caller's params, then the VM's keys.
pub(super) fn kernel_cmdline(
    params: &[String],
    quiet: bool,
    lease: &Lease,
    token: &Token,
) -> String {
    let keys = GuestParams {
        token: token.clone(),
        host_port: lease.host_port(),
        vm_id: lease.id().to_string(),
    };
    let mut cmdline = vec!["console=ttyS0".to_string(), "panic=-1".to_string()];
    if quiet {
        cmdline.push("quiet".to_string());
    }
    cmdline.extend(params.iter().cloned());
    cmdline.push(keys.to_cmdline());
    cmdline.join(" ")
}

/// The host services (VmReady, logs, crashes) on the VM's host port; only the VM's CID or
/// the process in `trusted_pid` may call them.
pub(super) fn start_host_services(
    lease: &Lease,
    token: &Token,
    wiring: &Wiring,
    trusted_pid: Arc<AtomicI32>,
    logs: LogSink,
    crash: CrashConfig,
) -> Result<HostServices, LaunchError> {
    let listener = Listener::bind(&wiring.host_listen).map_err(LaunchError::Transport)?;
    HostServices::start(
        lease.id(),
        token.clone(),
        listener,
        backend::peer_filter(lease.cid(), trusted_pid),
        LogForwarder::new(lease.id(), logs).with_cid(lease.cid()),
        crash,
    )
    .map_err(LaunchError::Server)
}

/// vhost-device-vsock, when this wiring needs it, started and ready.
pub(super) fn start_helper(
    program: &Path,
    wiring: &Wiring,
    trusted_pid: &AtomicI32,
) -> Result<Option<Helper>, LaunchError> {
    let Some(args) = &wiring.vsock_helper else {
        return Ok(None);
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut helper = Helper::spawn(command, &program.display().to_string())?;
    trusted_pid.store(helper.pid() as i32, Ordering::SeqCst);
    if let VsockBackend::VhostUser { socket } = &wiring.vsock {
        helper.wait_for_socket(socket)?;
    }
    Ok(Some(helper))
}

/// The VM's TAP device, when it has a network.
pub(super) fn create_tap(
    net: bool,
    lease: &Lease,
    runtime: &Path,
) -> Result<Option<Tap>, LaunchError> {
    if !net {
        return Ok(None);
    }
    let owner = crate::tap::Owner {
        runtime_dir: runtime.to_path_buf(),
        vm_id: lease.id().to_string(),
    };
    Tap::create(lease.cid(), &lease.net(), &owner)
        .map(Some)
        .map_err(LaunchError::Tap)
}

/// What [`start_hypervisor`] needs.
pub(super) struct HvStart<'a> {
    pub backend: &'a Backend,
    pub kernel: Option<&'a PathBuf>,
    pub initrd: Option<&'a PathBuf>,
    pub rootfs: Option<&'a Rootfs>,
    pub disks: &'a [Disk],
    pub shares: Vec<Share>,
    pub mem_mib: u32,
    pub cpus: u32,
    pub console_to_stdout: bool,
    pub lease: &'a Lease,
    pub rundir: &'a Path,
    pub wiring: &'a Wiring,
    pub cmdline: String,
    pub tap: Option<&'a Tap>,
    pub serial_log: &'a Path,
    pub show_console: Arc<AtomicBool>,
    pub trusted_pid: &'a AtomicI32,
}

/// Starts the hypervisor (or host-mode maitred); also how to ask it to stop.
pub(super) fn start_hypervisor(s: HvStart<'_>) -> Result<(Hypervisor, Option<Stop>), LaunchError> {
    let log_file = std::fs::File::create(s.serial_log)
        .map_err(io(format!("creating {}", s.serial_log.display())))?;
    if let Backend::Process { maitred } = s.backend {
        let cmdline_file = s.rundir.join("cmdline");
        write_private(&cmdline_file, &s.cmdline)?;
        let mut command = Command::new(maitred);
        command
            .arg("--listen")
            .arg(s.wiring.maitred.to_string())
            .arg("--host")
            .arg(s.wiring.host_listen.to_string())
            .arg("--cmdline")
            .arg(&cmdline_file)
            .arg("--services")
            .arg(s.rundir.join("services"))
            .stdin(Stdio::null())
            .stderr(log_file);
        let child = Hypervisor::spawn(command, &maitred.display().to_string())?;
        s.trusted_pid.store(child.pid() as i32, Ordering::SeqCst);
        s.show_console.store(s.console_to_stdout, Ordering::SeqCst);
        return Ok((child, None));
    }
    let kernel = s.kernel.cloned().ok_or(LaunchError::Missing("--kernel"))?;
    let spec = VmSpec {
        name: s.lease.id().to_string(),
        kernel,
        initrd: s.initrd.cloned(),
        rootfs: s.rootfs.cloned(),
        disks: s.disks.to_vec(),
        shares: s.shares,
        mem_mib: s.mem_mib,
        cpus: s.cpus,
        cmdline: s.cmdline,
        control_socket: s.rundir.join("control.sock"),
        vsock: s.wiring.vsock.clone(),
        net: s.tap.map(|t| NetSpec {
            tap: t.name.clone(),
            mac: s.lease.mac(),
            host_ip: t.host_ip,
            netmask: t.netmask,
        }),
        private_dir: s.rundir.to_path_buf(),
    };
    let hv = s
        .backend
        .hypervisor()
        .ok_or(LaunchError::Missing("a hypervisor"))?;
    let command: HvCommand = hv.command(&spec).map_err(LaunchError::Hypervisor)?;
    // In the run dir: removed with it if anything below fails.
    command
        .write_private_files()
        .map_err(LaunchError::Hypervisor)?;
    let mut std_command = command.to_command();
    std_command.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = Hypervisor::spawn(std_command, &command.program.to_string_lossy())?;
    if let Some(out) = child.take_stdout() {
        tee_console(out, log_file, s.show_console);
    }
    Ok((child, Some(hv.stop(&spec))))
}

/// Where a boot's time goes: with `VM_TOOLS_BOOT_TIMING` set in the environment, each step
/// prints its time since the start of the boot on stderr (scripts/bench-boot uses it).
pub(super) struct BootClock {
    start: std::time::Instant,
    on: bool,
}

impl BootClock {
    pub(super) fn start() -> BootClock {
        BootClock {
            start: std::time::Instant::now(),
            on: std::env::var_os("VM_TOOLS_BOOT_TIMING").is_some(),
        }
    }

    pub(super) fn mark(&self, step: &str) {
        if self.on {
            let ms = self.start.elapsed().as_secs_f64() * 1e3;
            eprintln!("boot timing: {ms:8.1} ms  {step}");
        }
    }
}
