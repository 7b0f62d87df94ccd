//! One VM's life: lease → token → host services → vsock helper → hypervisor → VmReady →
//! application → teardown. Every child dies with the launcher (PR_SET_PDEATHSIG), and
//! teardown runs in order: Shutdown RPC, the hypervisor's own stop, SIGTERM, SIGKILL.

mod children;

pub use children::print_console_tail;
use children::{
    describe, request_stop, signal, spawn_child, tee_console, wait_for_socket, write_private,
};
use std::fmt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver};
use vm_proto::protos::common::EmptyMessage;
use vm_proto::protos::guest::{
    IPv4Config, LaunchProcessRequest, LaunchProcessResponse, NetworkConfigRequest,
};
use vm_proto::protos::guest_grpc::MaitredClient;
use vm_proto::{CallError, Connector, GuestParams, Listener, Token};

use crate::backend::{self, Backend};
use crate::host_services::{CrashConfig, HostServices, VmEvent};
use crate::hypervisor::{HvCommand, HypervisorError, NetSpec, Rootfs, Stop, VmSpec};
use crate::log_forward::{LogForwarder, LogSink};
use crate::pool::{Lease, Pool, PoolConfig, PoolError};
use crate::tap::Tap;

const SHUTDOWN_RPC_DEADLINE: Duration = Duration::from_secs(2);
/// A TCG guest needs a few seconds to power off after Shutdown.
const POWER_OFF_WAIT: Duration = Duration::from_secs(15);
const STOP_WAIT: Duration = Duration::from_secs(5);
const TERM_WAIT: Duration = Duration::from_secs(5);
const HELPER_START: Duration = Duration::from_secs(10);
const CONFIGURE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct VmOptions {
    pub name: Option<String>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub rootfs: Option<Rootfs>,
    pub mem_mib: u32,
    pub cpus: u32,
    pub params: Vec<String>,
    /// A TAP device and ConfigureNetwork once the guest is ready.
    pub net: bool,
    pub backend: Backend,
    pub pool: PoolConfig,
    pub boot_timeout: Duration,
    pub crash: CrashConfig,
    pub logs: LogSink,
    /// Copy the serial console to stdout once the VM is ready (`run`).
    pub console_to_stdout: bool,
    pub vhost_device_vsock: PathBuf,
    pub use_vhost: bool,
}

#[derive(Debug)]
pub enum LaunchError {
    Pool(PoolError),
    Token(vm_proto::TokenError),
    Io {
        what: String,
        source: std::io::Error,
    },
    Hypervisor(HypervisorError),
    Server(vm_proto::ServerError),
    Transport(vm_proto::TransportError),
    Spawn {
        program: String,
        source: std::io::Error,
    },
    BootTimeout {
        id: String,
        secs: u64,
    },
    DiedDuringBoot {
        id: String,
        status: String,
    },
    Missing(&'static str),
    Call(CallError),
    Tap(crate::tap::TapError),
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pool(e) => e.fmt(f),
            Self::Token(e) => e.fmt(f),
            Self::Io { what, source } => write!(f, "{what}: {source}"),
            Self::Hypervisor(e) => e.fmt(f),
            Self::Server(e) => e.fmt(f),
            Self::Transport(e) => e.fmt(f),
            Self::Spawn { program, source } => write!(f, "cannot start {program}: {source}"),
            Self::BootTimeout { id, secs } => write!(
                f,
                "VM {id} did not report ready within {secs}s (its console is shown above); raise --boot-timeout if the host is slow"
            ),
            Self::DiedDuringBoot { id, status } => write!(
                f,
                "VM {id} stopped during boot ({status}); its console is shown above"
            ),
            Self::Missing(what) => write!(f, "{what} is required; see --help"),
            Self::Call(e) => e.fmt(f),
            Self::Tap(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LaunchError {}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Io { what, source }
}

/// Why the main loop stopped waiting.
pub enum Ended {
    Application {
        status: vm_proto::protos::guest::ProcessStatus,
        code: i32,
    },
    VmStopped(String),
    Signal(i32),
}

pub struct RunningVm {
    pub lease: Lease,
    pub rundir: PathBuf,
    pub serial_log: PathBuf,
    pub host: HostServices,
    maitred: Connector,
    hv_pid: i32,
    hv_exit: Receiver<String>,
    hv_status: Option<String>,
    helper: Option<Child>,
    stop: Option<Stop>,
    tap: Option<Tap>,
    show_console: Arc<AtomicBool>,
}

impl RunningVm {
    /// Boots a VM and waits until maitred reports ready.
    pub fn boot(opts: VmOptions) -> Result<RunningVm, LaunchError> {
        let pool = Pool::open(opts.pool.clone()).map_err(LaunchError::Pool)?;
        let lease = pool
            .allocate(opts.name.as_deref())
            .map_err(LaunchError::Pool)?;
        let token = Token::generate().map_err(LaunchError::Token)?;
        let rundir = opts.pool.runtime_dir.join("vms").join(lease.id());
        let _ = std::fs::remove_dir_all(&rundir); // a crashed launcher's leftovers
        std::fs::create_dir_all(&rundir).map_err(io(format!("creating {}", rundir.display())))?;
        std::fs::set_permissions(&rundir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io(format!("securing {}", rundir.display())))?;

        let wiring = backend::wiring(
            &opts.backend,
            &rundir,
            lease.cid(),
            lease.host_port(),
            opts.use_vhost,
        );
        let params = GuestParams {
            token: token.clone(),
            host_port: lease.host_port(),
            vm_id: lease.id().to_string(),
        };
        let mut cmdline = vec!["console=ttyS0".to_string(), "panic=-1".to_string()];
        if opts.console_to_stdout {
            cmdline.push("quiet".to_string());
        }
        cmdline.extend(opts.params.iter().cloned());
        cmdline.push(params.to_cmdline());
        let cmdline = cmdline.join(" ");

        let trusted_pid = Arc::new(AtomicI32::new(0));
        let listener = Listener::bind(&wiring.host_listen).map_err(LaunchError::Transport)?;
        let host = HostServices::start(
            lease.id(),
            token.clone(),
            listener,
            backend::peer_filter(lease.cid(), trusted_pid.clone()),
            LogForwarder::new(lease.id(), opts.logs),
            opts.crash,
        )
        .map_err(LaunchError::Server)?;

        let mut helper = None;
        if let Some(args) = &wiring.vsock_helper {
            let mut command = Command::new(&opts.vhost_device_vsock);
            command
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            let mut child = spawn_child(command, &opts.vhost_device_vsock.display().to_string())?;
            trusted_pid.store(child.id() as i32, Ordering::SeqCst);
            if let crate::hypervisor::VsockBackend::VhostUser { socket } = &wiring.vsock {
                if let Err(e) = wait_for_socket(socket, &mut child) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
            }
            helper = Some(child);
        }

        let tap = match opts.net {
            true => Some(Tap::create(lease.cid(), &lease.net()).map_err(LaunchError::Tap)?),
            false => None,
        };
        let net = tap.as_ref().map(|t| NetSpec {
            tap: t.name.clone(),
            mac: lease.mac(),
            host_ip: t.host_ip,
            netmask: t.netmask,
        });

        let serial_log = rundir.join("console.log");
        let log_file = std::fs::File::create(&serial_log)
            .map_err(io(format!("creating {}", serial_log.display())))?;
        let show_console = Arc::new(AtomicBool::new(false));
        let (mut hypervisor, stop) = match &opts.backend {
            Backend::Process { maitred } => {
                let cmdline_file = rundir.join("cmdline");
                write_private(&cmdline_file, &cmdline)?;
                let mut command = Command::new(maitred);
                command
                    .arg("--listen")
                    .arg(wiring.maitred.to_string())
                    .arg("--host")
                    .arg(wiring.host_listen.to_string())
                    .arg("--cmdline")
                    .arg(&cmdline_file)
                    .arg("--services")
                    .arg(rundir.join("services"))
                    .stdin(Stdio::null())
                    .stderr(log_file);
                let child = spawn_child(command, &maitred.display().to_string())?;
                trusted_pid.store(child.id() as i32, Ordering::SeqCst);
                show_console.store(opts.console_to_stdout, Ordering::SeqCst);
                (child, None)
            }
            _ => {
                let kernel = opts
                    .kernel
                    .clone()
                    .ok_or(LaunchError::Missing("--kernel"))?;
                let spec = VmSpec {
                    name: lease.id().to_string(),
                    kernel,
                    initrd: opts.initrd.clone(),
                    rootfs: opts.rootfs.clone(),
                    mem_mib: opts.mem_mib,
                    cpus: opts.cpus,
                    cmdline,
                    serial_log: None,
                    control_socket: rundir.join("control.sock"),
                    vsock: wiring.vsock.clone(),
                    net,
                    private_dir: rundir.clone(),
                };
                let hv = opts
                    .backend
                    .hypervisor()
                    .ok_or(LaunchError::Missing("a hypervisor"))?;
                let command: HvCommand = hv.command(&spec).map_err(LaunchError::Hypervisor)?;
                command
                    .write_private_files()
                    .map_err(LaunchError::Hypervisor)?;
                let mut std_command = command.to_command();
                std_command.stdin(Stdio::null()).stdout(Stdio::piped());
                let spawned = spawn_child(std_command, &command.program.to_string_lossy());
                let mut child = spawned?;
                if let Some(out) = child.stdout.take() {
                    tee_console(out, log_file, show_console.clone());
                }
                (child, Some(hv.stop(&spec)))
            }
        };

        let (tx, hv_exit) = bounded(1);
        let hv_pid = hypervisor.id() as i32;
        // The only waiter for the hypervisor; teardown signals it by pid.
        std::thread::spawn(move || {
            let status = hypervisor.wait().map_or_else(|e| e.to_string(), describe);
            let _ = tx.send(status);
        });

        let maitred = Connector::new(
            vm_proto::grpc_environment("launcher"),
            wiring.maitred,
            token,
        );
        let mut vm = RunningVm {
            lease,
            rundir,
            serial_log,
            host,
            maitred,
            hv_pid,
            hv_exit,
            hv_status: None,
            helper,
            stop,
            tap,
            show_console,
        };
        if let Err(e) = vm.wait_ready(opts.boot_timeout, opts.console_to_stdout) {
            // The run directory goes with the teardown: show the console now.
            print_console_tail(&vm.serial_log, 40);
            vm.teardown(false);
            return Err(e);
        }
        if let Err(e) = vm.configure_network() {
            vm.teardown(true);
            return Err(e);
        }
        Ok(vm)
    }

    /// Gives the guest its half of the /30 (ConfigureNetwork), if it has a network.
    fn configure_network(&self) -> Result<(), LaunchError> {
        if self.tap.is_none() {
            return Ok(());
        }
        let net = self.lease.net();
        // The proto wants network byte order: the address octets as the u32's bytes.
        let wire = |a: std::net::Ipv4Addr| u32::from_ne_bytes(a.octets());
        let mut config = IPv4Config::new();
        config.set_address(wire(net.guest));
        config.set_netmask(wire(net.netmask));
        config.set_gateway(wire(net.gateway));
        let mut req = NetworkConfigRequest::new();
        req.set_ipv4_config(config);
        self.maitred
            .call(CONFIGURE_TIMEOUT, |ch, opt| {
                MaitredClient::new(ch).configure_network_opt(&req, opt)
            })
            .map(drop)
            .map_err(LaunchError::Call)
    }

    fn wait_ready(&mut self, timeout: Duration, show_console: bool) -> Result<(), LaunchError> {
        let deadline = crossbeam_channel::after(timeout);
        loop {
            crossbeam_channel::select! {
                recv(self.host.events) -> event => match event {
                    Ok(VmEvent::Ready) => break,
                    Ok(_) => {}
                    Err(_) => return Err(LaunchError::Missing("the host services")),
                },
                recv(self.hv_exit) -> status => {
                    let status = status.unwrap_or_else(|_| "unknown".into());
                    self.hv_status = Some(status.clone());
                    return Err(LaunchError::DiedDuringBoot {
                        id: self.lease.id().to_string(),
                        status,
                    });
                },
                recv(deadline) -> _ => return Err(LaunchError::BootTimeout {
                    id: self.lease.id().to_string(),
                    secs: timeout.as_secs(),
                }),
            }
        }
        self.show_console.store(show_console, Ordering::SeqCst);
        Ok(())
    }

    pub fn id(&self) -> &str {
        self.lease.id()
    }

    /// LaunchProcess with the token, through the re-dialling connection.
    pub fn launch(
        &self,
        req: &LaunchProcessRequest,
        timeout: Duration,
    ) -> Result<LaunchProcessResponse, CallError> {
        self.maitred.call(timeout, |ch, opt| {
            MaitredClient::new(ch).launch_process_opt(req, opt)
        })
    }

    /// Waits for the application's exit, the VM's end, or a signal from `signals`.
    pub fn wait_end(&mut self, signals: &Receiver<i32>) -> Ended {
        loop {
            crossbeam_channel::select! {
                recv(self.host.events) -> event => match event {
                    Ok(VmEvent::ApplicationExited { status, code }) => {
                        return Ended::Application { status, code }
                    }
                    Ok(_) => {}
                    Err(_) => return Ended::VmStopped("host services ended".into()),
                },
                recv(self.hv_exit) -> status => {
                    let status = status.unwrap_or_else(|_| "unknown".into());
                    self.hv_status = Some(status.clone());
                    return Ended::VmStopped(status);
                },
                recv(signals) -> signal => return Ended::Signal(signal.unwrap_or(0)),
            }
        }
    }

    fn hypervisor_exited(&mut self, within: Duration) -> bool {
        if self.hv_status.is_some() {
            return true;
        }
        match self.hv_exit.recv_timeout(within) {
            Ok(status) => {
                self.hv_status = Some(status);
                true
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => true,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => false,
        }
    }

    /// Stops everything and releases every resource. `ask_guest`: try the Shutdown RPC first.
    pub fn teardown(mut self, ask_guest: bool) {
        self.show_console.store(false, Ordering::SeqCst);
        if ask_guest && !self.hypervisor_exited(Duration::ZERO) {
            let _ = self.maitred.call(SHUTDOWN_RPC_DEADLINE, |ch, opt| {
                MaitredClient::new(ch).shutdown_opt(&EmptyMessage::new(), opt)
            });
        }
        let graceful = if ask_guest {
            POWER_OFF_WAIT
        } else {
            Duration::ZERO
        };
        if !self.hypervisor_exited(graceful) {
            if let Some(stop) = self.stop.take() {
                request_stop(&stop);
            }
            if !self.hypervisor_exited(STOP_WAIT) {
                signal(self.hv_pid, libc::SIGTERM);
                if !self.hypervisor_exited(TERM_WAIT) {
                    signal(self.hv_pid, libc::SIGKILL);
                    self.hypervisor_exited(TERM_WAIT);
                }
            }
        }
        if let Some(mut helper) = self.helper.take() {
            // vhost-device-vsock does not exit with the hypervisor.
            signal(helper.id() as i32, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(helper.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = helper.kill();
            let _ = helper.wait();
        }
        self.host.server.shutdown();
        let _ = std::fs::remove_dir_all(&self.rundir);
        // Dropping the lease (last) frees the id, CID, MAC, subnet and port.
    }
}
