//! One VM's life: reclaim leftovers → lease → token → run dir → host services → vsock
//! helper → TAP → hypervisor → VmReady → application → teardown. Each boot step returns a
//! guard that undoes it on drop (see `steps`), so a failed boot leaves nothing behind.
//! Every child also dies with the launcher (PR_SET_PDEATHSIG), and teardown runs in
//! order: Shutdown RPC, the hypervisor's own stop, SIGTERM, SIGKILL.

mod children;
mod reclaim;
mod steps;

pub use children::print_console_tail;
pub use reclaim::reclaim;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use nix::sys::signal::Signal;
use vm_proto::protos::common::EmptyMessage;
use vm_proto::protos::guest::{
    IPv4Config, LaunchProcessRequest, LaunchProcessResponse, NetworkConfigRequest,
};
use vm_proto::protos::guest_grpc::MaitredClient;
use vm_proto::{CallError, Connector, Token};

use crate::backend::{self, Backend};
use crate::host_services::{CrashConfig, HostServices, VmEvent};
use crate::hypervisor::{Disk, HypervisorError, Rootfs, Stop};
use crate::log_forward::LogSink;
use crate::pool::{Lease, Pool, PoolConfig, PoolError};
use crate::port_forward::{ForwardSpec, PortError, PortForwards, PublishSpec};
use crate::tap::Tap;
use crate::volume::Volume;
use children::{request_stop, Helper, Hypervisor};
use steps::{HvStart, RunDir};

const SHUTDOWN_RPC_DEADLINE: Duration = Duration::from_secs(2);
/// A TCG guest needs a few seconds to power off after Shutdown.
const POWER_OFF_WAIT: Duration = Duration::from_secs(15);
const STOP_WAIT: Duration = Duration::from_secs(5);
const TERM_WAIT: Duration = Duration::from_secs(5);
const HELPER_START: Duration = Duration::from_secs(10);
/// How long vhost-device-vsock gets to exit on SIGTERM.
const HELPER_STOP: Duration = Duration::from_secs(2);
const CONFIGURE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct VmOptions {
    pub name: Option<String>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub rootfs: Option<Rootfs>,
    /// Disks after the root disk, in attach order (see `disk_config`).
    pub disks: Vec<Disk>,
    /// `--volume` directories, checked (see `volume::resolve`).
    pub volumes: Vec<Volume>,
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
    /// Copy the serial console to stderr once the VM is ready (`--console`).
    pub console_to_stdout: bool,
    /// Signals that abandon the boot (the caller's SIGINT/SIGTERM channel), if any.
    pub interrupt: Option<Receiver<i32>>,
    pub vhost_device_vsock: PathBuf,
    pub use_vhost: bool,
    /// `--publish` (host listeners bound before boot) and `--forward`.
    pub publish: Vec<PublishSpec>,
    pub forward: Vec<ForwardSpec>,
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
    /// A signal (SIGINT, SIGTERM, …) arrived while the VM was booting.
    Interrupted {
        id: String,
        signal: i32,
    },
    DiedDuringBoot {
        id: String,
        status: String,
    },
    Missing(&'static str),
    Call(CallError),
    Tap(crate::tap::TapError),
    Ports(PortError),
    Volume(vm_proto::volumes::VolumeError),
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
            Self::Interrupted { id, signal } => {
                write!(f, "signal {signal} while VM {id} was booting: stopped it")
            }
            Self::DiedDuringBoot { id, status } => write!(
                f,
                "VM {id} stopped during boot ({status}); its console is shown above"
            ),
            Self::Missing(what) => write!(f, "{what} is required; see --help"),
            Self::Call(e) => e.fmt(f),
            Self::Tap(e) => e.fmt(f),
            Self::Ports(e) => e.fmt(f),
            Self::Volume(e) => write!(f, "--volume: {e}"),
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

/// A booted VM. Its fields drop in declaration order, which is teardown order: the
/// hypervisor is killed and reaped first, the lease is released last.
pub struct RunningVm {
    /// Published and forwarded ports: stopped first.
    ports: PortForwards,
    hv: Hypervisor,
    helper: Option<Helper>,
    tap: Option<Tap>,
    pub host: HostServices,
    /// Removes the run dir (console log, sockets, the token-bearing config) when dropped.
    _dir: RunDir,
    pub rundir: PathBuf,
    pub serial_log: PathBuf,
    /// Where maitred listens (its gRPC port); other guest ports are on the same transport.
    pub maitred_addr: vm_proto::Address,
    /// The VM's access token, for streams that are not gRPC calls (process I/O).
    pub token: Token,
    /// Its `--volume` directories (for `list`).
    pub volumes: Vec<Volume>,
    maitred: Connector,
    stop: Option<Stop>,
    show_console: Arc<AtomicBool>,
    pub lease: Lease,
}

impl RunningVm {
    /// Boots a VM and waits until maitred reports ready. On any error everything acquired
    /// so far is released again (each step's guard drops).
    pub fn boot(opts: VmOptions) -> Result<RunningVm, LaunchError> {
        let clock = steps::BootClock::start();
        // First: a host port in use is an error before anything else is acquired.
        let ports = PortForwards::bind(&opts.publish, &opts.forward).map_err(LaunchError::Ports)?;
        let pool = Pool::open(opts.pool.clone()).map_err(LaunchError::Pool)?;
        reclaim(&pool);
        let lease = pool
            .allocate(opts.name.as_deref())
            .map_err(LaunchError::Pool)?;
        let token = Token::generate().map_err(LaunchError::Token)?;
        clock.mark("lease and token");
        let runtime = &opts.pool.runtime_dir;
        let dir = RunDir::create(runtime, &lease)?;
        let rundir = dir.path().to_path_buf();
        let wiring = backend::wiring(
            &opts.backend,
            &rundir,
            lease.cid(),
            lease.host_port(),
            opts.use_vhost,
        );
        let mut cmdline =
            steps::kernel_cmdline(&opts.params, opts.console_to_stdout, &lease, &token);
        // maitred mounts each share by its tag (volume::resolve has checked the list).
        if let Some(key) = crate::volume::cmdline_key(&opts.volumes).map_err(LaunchError::Volume)? {
            cmdline = format!("{cmdline} {key}");
        }
        let trusted_pid = Arc::new(AtomicI32::new(0));
        let host = steps::start_host_services(
            &lease,
            &token,
            &wiring,
            trusted_pid.clone(),
            opts.logs,
            opts.crash,
        )?;
        clock.mark("host services");
        let helper = steps::start_helper(&opts.vhost_device_vsock, &wiring, &trusted_pid)?;
        clock.mark("vsock helper ready");
        let tap = steps::create_tap(opts.net, &lease, runtime)?;
        let serial_log = rundir.join("console.log");
        let show_console = Arc::new(AtomicBool::new(false));
        let (hv, stop) = steps::start_hypervisor(HvStart {
            backend: &opts.backend,
            kernel: opts.kernel.as_ref(),
            initrd: opts.initrd.as_ref(),
            rootfs: opts.rootfs.as_ref(),
            disks: &opts.disks,
            shares: opts.volumes.iter().map(Volume::share).collect(),
            mem_mib: opts.mem_mib,
            cpus: opts.cpus,
            console_to_stdout: opts.console_to_stdout,
            lease: &lease,
            rundir: &rundir,
            wiring: &wiring,
            cmdline,
            tap: tap.as_ref(),
            serial_log: &serial_log,
            show_console: show_console.clone(),
            trusted_pid: &trusted_pid,
        })?;
        clock.mark("hypervisor started");
        let maitred = Connector::new(
            vm_proto::grpc_environment("launcher"),
            wiring.maitred.clone(),
            token.clone(),
        );
        let mut vm = RunningVm {
            ports,
            hv,
            helper,
            tap,
            host,
            _dir: dir,
            rundir,
            serial_log,
            maitred_addr: wiring.maitred,
            token,
            volumes: opts.volumes,
            maitred,
            stop,
            show_console,
            lease,
        };
        let ready = vm.wait_ready(
            opts.boot_timeout,
            opts.console_to_stdout,
            opts.interrupt.as_ref(),
        );
        if let Err(e) = ready {
            if !matches!(e, LaunchError::Interrupted { .. }) {
                // The run directory goes with the teardown: show the console now.
                print_console_tail(&vm.serial_log, 40);
            }
            vm.teardown(false);
            return Err(e);
        }
        clock.mark("VmReady");
        let configured = vm.configure_network().and_then(|()| {
            vm.ports
                .start(&vm.maitred_addr, &vm.token)
                .map_err(LaunchError::Ports)
        });
        if let Err(e) = configured {
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

    fn wait_ready(
        &mut self,
        timeout: Duration,
        show_console: bool,
        interrupt: Option<&Receiver<i32>>,
    ) -> Result<(), LaunchError> {
        let deadline = crossbeam_channel::after(timeout);
        let none = crossbeam_channel::never();
        let interrupt = interrupt.unwrap_or(&none);
        loop {
            crossbeam_channel::select! {
                recv(self.host.events) -> event => match event {
                    Ok(VmEvent::Ready) => break,
                    Ok(_) => {}
                    Err(_) => return Err(LaunchError::Missing("the host services")),
                },
                recv(self.hv.exit) -> status => {
                    let status = self.hv.exited(status.unwrap_or_else(|_| "unknown".into()));
                    return Err(LaunchError::DiedDuringBoot {
                        id: self.lease.id().to_string(),
                        status,
                    });
                },
                recv(deadline) -> _ => return Err(LaunchError::BootTimeout {
                    id: self.lease.id().to_string(),
                    secs: timeout.as_secs(),
                }),
                recv(interrupt) -> signal => {
                    if let Ok(signal) = signal {
                        if signal != libc::SIGWINCH {
                            return Err(LaunchError::Interrupted {
                                id: self.lease.id().to_string(),
                                signal,
                            });
                        }
                    }
                }
            }
        }
        self.show_console.store(show_console, Ordering::SeqCst);
        Ok(())
    }

    /// Delivers once, when the hypervisor exits: for waiting on it beside other things (a
    /// process stream). Teardown still sees the exit (the channel is then disconnected).
    pub fn end_signal(&self) -> Receiver<String> {
        self.hv.exit.clone()
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
                recv(self.hv.exit) -> status => {
                    let status = self.hv.exited(status.unwrap_or_else(|_| "unknown".into()));
                    return Ended::VmStopped(status);
                },
                recv(signals) -> signal => return Ended::Signal(signal.unwrap_or(0)),
            }
        }
    }

    /// Stops everything and releases every resource. `ask_guest`: try the Shutdown RPC first.
    pub fn teardown(mut self, ask_guest: bool) {
        self.show_console.store(false, Ordering::SeqCst);
        self.ports.stop();
        if ask_guest && !self.hv.wait_exit(Duration::ZERO) {
            let _ = self.maitred.call(SHUTDOWN_RPC_DEADLINE, |ch, opt| {
                MaitredClient::new(ch).shutdown_opt(&EmptyMessage::new(), opt)
            });
        }
        let graceful = if ask_guest {
            POWER_OFF_WAIT
        } else {
            Duration::ZERO
        };
        if !self.hv.wait_exit(graceful) {
            if let Some(stop) = self.stop.take() {
                request_stop(&stop);
            }
            if !self.hv.wait_exit(STOP_WAIT) {
                self.hv.signal(Signal::SIGTERM);
                if !self.hv.wait_exit(TERM_WAIT) {
                    self.hv.signal(Signal::SIGKILL);
                    self.hv.wait_exit(TERM_WAIT);
                }
            }
        }
        if let Some(helper) = self.helper.take() {
            // vhost-device-vsock does not exit with the hypervisor.
            helper.stop(HELPER_STOP);
        }
        self.host.server.shutdown();
        // The rest goes as the fields drop, in order: the hypervisor is reaped, the tap
        // deleted, the run dir removed, and last the lease frees the id, CID, MAC, subnet
        // and port.
    }
}
