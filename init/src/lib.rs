//! maitred: the guest's PID 1 and its authenticated `Maitred` gRPC service.
//!
//! - `config`: the command line (host-mode flags for tests).
//! - `pid1`: init-only setup: stdio, `mounts`, limits, console, lo, core_pattern.
//! - `reaper`: the single waiter that owns every exit status.
//! - `spawn`: fork/exec with exec errors reported back; `services`: boot services, respawn;
//!   `service_sockets`: the sockets maitred binds for them.
//! - `launch`, `network`, `guest_ops`: the work behind each RPC; `rpc`: the gRPC service.
//! - `disks`: disks by identity (`disk:<ID>` → /dev/<name> by virtio-blk serial), and the
//!   `vm_tools` disk mounted at boot.
//! - `host`: calls to the host (VmReady, ApplicationExited); `shutdown`: the orderly end.
//! - `container`: LaunchProcess in a container (mount, checks); `container_init`: the
//!   re-executed `maitred --container-init` that builds the namespaces and reaps inside;
//!   `container_enter`: `maitred --container-enter`, which runs `exec` inside it.
//! - `exec_server`, `exec_session`, `exec_io`: process I/O streams (stdin, stdout, stderr,
//!   terminal, signals, exit) on the exec port; `stream_accept`: the one thread accepting
//!   for every service, and the connection threads and counted refusals the stream
//!   services share.
//! - `port_forward`: `--publish` and `--forward` (connections relayed to and from guest
//!   TCP ports) on the forward port.
//! - `volumes`: `--volume` shares (virtio-9p) mounted at boot and bound into containers.
//! - `sys`: the raw system calls, each with its safety argument.
//!
//! [`run_main`] is the whole program: `main.rs` (the standalone `maitred`, which the host
//! tests run) and the guest's multi-call binary (`vm_tools_guest`, as /init) both call it.

mod config;
mod container;
mod container_enter;
mod container_init;
mod context;
mod disks;
mod exec_io;
mod exec_server;
mod exec_session;
mod guest_ops;
mod host;
mod launch;
mod log;
mod mounts;
mod network;
mod oneshot;
mod pid1;
mod port_forward;
mod reaper;
mod rpc;
mod service_sockets;
mod services;
mod shutdown;
mod spawn;
mod stream_accept;
mod sys;
mod volumes;

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crossbeam_channel::Receiver;
use nix::sys::signal::{SigSet, Signal};
use vm_proto::protos::guest_grpc::create_maitred;
use vm_proto::server::PeerFilter;
use vm_proto::{Address, Connector, GrpcServer, GuestParams, Listener, Peer, HOST_CID};

use crate::config::{Config, ConfigError, USAGE};
use crate::context::{Context, Shutdown};
use crate::shutdown::fatal;

/// maitred's `main`, given its arguments after argv[0]. As PID 1, and whenever it serves,
/// it never returns (shutdown ends the process); it returns only for `--help` (0) and a
/// usage error (2). `--container-init` and `--container-enter` (the re-executions of
/// itself that `container` and `container_enter` make) never return either.
pub fn run_main(args: &[String]) -> ExitCode {
    let pid1 = std::process::id() == 1;
    if !pid1 && args.first().map(String::as_str) == Some(container_init::FLAG) {
        container_init::main(&args[1..]);
    }
    if !pid1 && args.first().map(String::as_str) == Some(container_enter::FLAG) {
        container_enter::main(&args[1..]);
    }
    match Config::from_args(pid1, args) {
        Ok(config) => run(config),
        Err(ConfigError::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("maitred: {e}");
            ExitCode::from(2)
        }
    }
}

/// The first argument of maitred's re-executions of itself (`container`, `container_enter`).
/// They run `std::env::current_exe()` (or /proc/self/exe), whose name may be any link to
/// the binary: a multi-call binary sends these to maitred whatever argv[0] says.
pub const REEXEC_FLAGS: [&str; 2] = [container_init::FLAG, container_enter::FLAG];

/// The signals maitred handles, blocked in every thread and taken with sigwait.
fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGPWR,
        Signal::SIGHUP,
        context::WAKE_SIGNAL,
    ] {
        set.add(signal);
    }
    set
}

fn run(config: Config) -> ! {
    let pid1 = config.pid1;
    if pid1 {
        // PID 1 must not die: a panic anywhere is a bug, reported once, then power-off.
        std::panic::set_hook(Box::new(|info| {
            error!("fatal: {info}");
            shutdown::power_off();
        }));
        if let Err(e) = pid1::early_setup() {
            fatal(true, &e);
        }
    } else {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            fatal(
                false,
                &format!("cannot become a child subreaper: {}", e.desc()),
            );
        }
    }
    // Before any thread exists, so every thread inherits the mask.
    let signals = handled_signals();
    if let Err(e) = signals.thread_block() {
        fatal(pid1, &format!("cannot block signals: {}", e.desc()));
    }

    let params = GuestParams::from_proc_cmdline(&config.cmdline)
        .unwrap_or_else(|e| fatal(pid1, &e.to_string()));
    if pid1 {
        pid1::set_hostname(&params.vm_id);
        // Before any service or the application: the user asked for these files.
        if let Err(e) = volumes::mount_all(&config.cmdline) {
            fatal(pid1, &e.to_string());
        }
    }

    let env = vm_proto::grpc_environment("maitred");
    let host_addr = config.host.clone().unwrap_or_else(|| params.host_address());
    let (shutdown_tx, shutdown_rx) = crossbeam_channel::unbounded();
    let ctx = Arc::new(Context {
        reaper: reaper::Reaper::new(),
        host: host::HostLink::new(Connector::new(env.clone(), host_addr, params.token.clone())),
        pid1,
        vm_id: params.vm_id.clone(),
        stopping: AtomicBool::new(false),
        shutdown: shutdown_tx,
        app_container: std::sync::Mutex::new(None),
    });

    // The connection to the host is made while maitred starts serving (on a vsock it takes
    // round trips through the host); VmReady goes as soon as the server runs.
    let (serving, ready_to_tell) = crossbeam_channel::bounded::<()>(1);
    let (told, host_told) = crossbeam_channel::bounded::<()>(1);
    let ready_ctx = ctx.clone();
    let _ = std::thread::Builder::new()
        .name("vm-ready".into())
        .spawn(move || {
            ready_ctx.host.connect_ahead();
            if ready_to_tell.recv().is_err() {
                return; // not serving after all: maitred is ending
            }
            match ready_ctx.host.vm_ready() {
                Ok(()) => info!(
                    "told the host at {} that the VM is ready",
                    ready_ctx.host.address()
                ),
                Err(e) => error!("VmReady failed: {e}"),
            }
            let _ = told.send(());
            context::wake_main_thread();
        });
    // Boot services (vm_syslog) start once the host was told (on a VM with one CPU, starting
    // them first made VmReady wait for their start-up), from the main thread (in host mode
    // a child dies with the thread that started it). Their sockets are bound now, so
    // nothing sent to them in between is lost.
    let boot_services = services::prepare_all(&config.services);

    let bind =
        |address: &Address| Listener::bind(address).unwrap_or_else(|e| fatal(pid1, &e.to_string()));
    let listener = bind(&config.listen);
    let exec_listener = bind(&config.exec_listen());
    let forward_listener = bind(&vm_proto::forward::forward_address(&config.listen));
    // Over vsock only the host may call; a Unix socket is guarded by its file permissions.
    let host_only: PeerFilter = Arc::new(|peer| match peer {
        Peer::Vsock { cid, .. } => *cid == HOST_CID,
        Peer::Unix { .. } => true,
    });
    let server = GrpcServer::start(
        env,
        vec![create_maitred(rpc::MaitredService::new(ctx.clone()))],
        params.token.clone(),
        Vec::new(),
        host_only.clone(),
    )
    .unwrap_or_else(|e| fatal(pid1, &e.to_string()));
    let grpc = server.admission();
    let grpc_address = listener.address().clone();
    let services: Vec<(Listener, stream_accept::Admit)> = vec![
        (
            listener,
            Box::new(move |fd, peer| grpc.admit(fd, peer, &grpc_address)),
        ),
        (
            exec_listener,
            exec_server::service(ctx.clone(), params.token.clone(), host_only.clone()),
        ),
        (
            forward_listener,
            port_forward::service(ctx.clone(), params.token.clone(), host_only),
        ),
    ];
    if let Err(e) = stream_accept::start(services) {
        fatal(pid1, &format!("cannot start the accepting thread: {e}"));
    }
    info!(
        "serving Maitred on {} for VM {}",
        config.listen, params.vm_id
    );
    let _ = serving.send(());

    // The main thread is the signal loop (and so the reaper) until a shutdown.
    let why = serve_signals(&ctx, &signals, &shutdown_rx, &host_told, boot_services);
    shutdown::shutdown(&ctx, &why);
    server.shutdown();
    info!("exiting ({why:?})");
    std::process::exit(0);
}

/// Reaps on SIGCHLD until a signal or a request asks for a shutdown; returns why. Starts
/// the boot services once `host_told` says VmReady was sent.
fn serve_signals(
    ctx: &Arc<Context>,
    signals: &SigSet,
    requests: &Receiver<Shutdown>,
    host_told: &Receiver<()>,
    boot_services: Vec<services::Prepared>,
) -> Shutdown {
    let mut boot_services = Some(boot_services);
    loop {
        if let Ok(why) = requests.try_recv() {
            return why;
        }
        if boot_services.is_some() && host_told.try_recv().is_ok() {
            services::start_all(ctx, boot_services.take().unwrap_or_default());
        }
        match signals.wait() {
            Ok(Signal::SIGCHLD) => ctx.reaper.reap(),
            Ok(Signal::SIGHUP) => {}
            Ok(signal) if signal == context::WAKE_SIGNAL => {}
            Ok(signal) => return Shutdown::Signal(signal as i32),
            Err(_) => {}
        }
    }
}
