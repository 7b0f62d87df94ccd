//! The subcommands: `run`, `start`, `exec`, `crash-upload`; `stop` and `list`, which act on
//! VMs already running, are in `commands_manage.rs`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use crossbeam_channel::Receiver;
use nix::sys::signal::{SigSet, Signal};
use vm_proto::protos::guest::{ContainerSpec, ExecRequest, LaunchProcessRequest, ProcessStatus};
use vm_proto::stream;

use crate::attach;
use crate::backend::Backend;
use crate::cli::{CrashUploadArgs, ExecArgs, HypervisorName, RunArgs, UploadArgs};
use crate::container_image;
use crate::crash_upload::{self, UploadConfig, Uploader};
use crate::disk_config::{self, VmFiles};
use crate::exec_broker;
use crate::host_services::CrashConfig;
use crate::hypervisor::accel::Probe;
use crate::hypervisor::{Accel, Crosvm, CrosvmFlags, Lkvm, Qemu};
use crate::log_forward::LogSink;
use crate::pool::default_runtime_dir;
use crate::stream_client;
use crate::sys;
use crate::vm::{Ended, LaunchError, RunningVm, VmOptions};
use crate::vm_info;
use crate::volume;

#[path = "commands_manage.rs"]
mod manage;
pub use manage::{list, stop};

/// Exit status when the VM could not run the application to its end.
pub const EXIT_LAUNCHER_FAILED: u8 = 125;
/// Set in the environment of the detached child `start` leaves running.
const DETACHED_ENV: &str = "VM_LAUNCHER_DETACHED";
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("vm_launcher: {message}");
    ExitCode::from(EXIT_LAUNCHER_FAILED)
}

/// SIGINT, SIGTERM, SIGHUP, SIGQUIT and SIGWINCH arrive on a channel; blocked first, so
/// call before any thread.
fn signal_channel() -> Receiver<i32> {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    let _ = set.thread_block();
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || loop {
        if let Ok(signal) = set.wait() {
            if tx.send(signal as i32).is_err() {
                return;
            }
        }
    });
    rx
}

fn runtime_dir(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(default_runtime_dir)
}

fn upload_config(args: UploadArgs, runtime: &std::path::Path) -> UploadConfig {
    UploadConfig::new(args.url, args.gzip, args.limit, runtime)
}

/// `crash-upload`: one pass over the spool, then a summary line.
pub fn crash_upload(args: CrashUploadArgs) -> ExitCode {
    let runtime = runtime_dir(args.runtime_dir);
    let spool = args.spool.unwrap_or_else(|| runtime.join("crash"));
    let summary = match crash_upload::drain(&spool, upload_config(args.upload, &runtime)) {
        Ok(summary) => summary,
        Err(e) => return fail(e),
    };
    let limited = summary
        .limited_until
        .map(|t| format!("; the host's upload limit is reached until Unix time {t}"))
        .unwrap_or_default();
    println!(
        "{} uploaded, {} refused, {} to retry, {} given up{limited}",
        summary.uploaded, summary.refused, summary.failed, summary.given_up
    );
    match summary.failed {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

/// QEMU's accelerator: the forced one, or `--accel auto` decided now (see
/// `hypervisor::accel`), with one line on stderr when it was not already decided this boot.
fn choose_accel(forced: Option<Accel>, kernel: Option<&std::path::Path>) -> Accel {
    match (forced, kernel) {
        (Some(accel), _) => accel,
        // No kernel: the VM cannot boot anyway, and says why.
        (None, None) => Accel::Tcg,
        (None, Some(kernel)) => {
            let choice = Probe::new(&Qemu::new(Accel::Kvm), kernel).choose();
            if choice.fresh {
                eprintln!("{}", choice.line());
            }
            choice.accel
        }
    }
}

fn options(
    args: RunArgs,
    files: VmFiles,
    logs: LogSink,
    console_to_stdout: bool,
    signals: &Receiver<i32>,
) -> Result<VmOptions, String> {
    let runtime = runtime_dir(args.runtime_dir.clone());
    let pool = args.pool(runtime.clone());
    let volumes = volume::resolve(&args.volumes).map_err(|e| e.to_string())?;
    let backend = match args.hypervisor {
        HypervisorName::Qemu => {
            Backend::Qemu(Qemu::new(choose_accel(args.accel, files.kernel.as_deref())))
        }
        HypervisorName::Crosvm => Backend::Crosvm(Crosvm::new(CrosvmFlags::Current)),
        HypervisorName::Lkvm => Backend::Lkvm(Lkvm::default()),
        HypervisorName::Process => Backend::Process {
            maitred: match args.maitred {
                Some(path) => path,
                None => std::env::current_exe()
                    .map_err(|e| format!("cannot find vm_launcher's own path: {e}"))?
                    .with_file_name("maitred"),
            },
        },
    };
    let spool = args.crash_spool.unwrap_or_else(|| runtime.join("crash"));
    let upload = match args.crash_upload {
        Some(upload) => Some(
            Uploader::start(spool.clone(), upload_config(upload, &runtime))
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    Ok(VmOptions {
        name: args.name,
        kernel: files.kernel,
        initrd: files.initrd,
        rootfs: files.rootfs,
        disks: files.disks,
        volumes,
        mem_mib: args.mem_mib,
        cpus: args.cpus,
        params: args.params,
        net: args.net,
        backend,
        pool,
        boot_timeout: args.boot_timeout,
        crash: CrashConfig {
            spool,
            reporter: args.crash_reporter,
            keep: args.crash_keep,
            upload,
        },
        logs,
        console_to_stdout,
        interrupt: Some(signals.clone()),
        vhost_device_vsock: args.vhost_device_vsock,
        use_vhost: std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/vhost-vsock")
            .is_ok(),
        publish: args.publish,
        forward: args.forward,
    })
}

/// What `list` shows of a VM that is known before it boots (the rest comes from the VM).
struct Listed {
    hypervisor: String,
    app: Vec<String>,
    publish: Vec<String>,
    forward: Vec<String>,
}

impl Listed {
    fn of(args: &RunArgs, app: &[String]) -> Listed {
        Listed {
            hypervisor: format!("{:?}", args.hypervisor).to_lowercase(),
            app: app.to_vec(),
            publish: args.publish.iter().map(ToString::to_string).collect(),
            forward: args.forward.iter().map(ToString::to_string).collect(),
        }
    }

    /// Writes the VM's vm.info, which also marks it running.
    fn record(&self, vm: &RunningVm) {
        vm_info::write(
            &vm.rundir,
            &self.hypervisor,
            &self.app,
            (&self.publish, &self.forward),
            &vm.volumes,
        );
    }
}

/// The container the application runs in, and the scratch disk image to delete afterwards.
struct Container {
    spec: ContainerSpec,
    scratch: Option<PathBuf>,
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(path) = &self.scratch {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `--container ROOTFS`: the rootfs as the VM's `container` disk (or, for the process
/// back-end, a directory maitred uses as it is) and the spec for LaunchProcess.
fn prepare_container(args: &RunArgs, files: &mut VmFiles) -> Result<Option<Container>, String> {
    let Some(rootfs) = args.container.clone() else {
        return Ok(None);
    };
    let mut spec = ContainerSpec::new();
    spec.set_writable(args.container_rw);
    if args.hypervisor == HypervisorName::Process {
        let dir = std::fs::canonicalize(&rootfs)
            .map_err(|e| format!("--container {}: {e}", rootfs.display()))?;
        spec.set_rootfs_dir(dir.to_string_lossy().into_owned());
        return Ok(Some(Container {
            spec,
            scratch: None,
        }));
    }
    let runtime = runtime_dir(args.runtime_dir.clone());
    std::fs::create_dir_all(&runtime)
        .map_err(|e| format!("creating {}: {e}", runtime.display()))?;
    let scratch = runtime.join(format!("container-{}.img", std::process::id()));
    let (disk, temporary) = container_image::disk_for(&rootfs, scratch)?;
    let scratch = temporary.then_some(disk.clone());
    files.add_container(disk, !args.container_rw);
    // maitred finds the disk by its serial, whatever its place among the VM's disks.
    let source = format!(
        "{}{}",
        vm_proto::disks::SOURCE_PREFIX,
        vm_proto::disks::CONTAINER
    );
    spec.set_rootfs_device(source);
    Ok(Some(Container { spec, scratch }))
}

/// The VM's files, checked before anything starts, and the container (its disk among them).
fn prepare(args: &RunArgs) -> Result<(VmFiles, Option<Container>), String> {
    let mut files = disk_config::resolve(args).map_err(|e| e.to_string())?;
    let container = prepare_container(args, &mut files)?;
    Ok((files, container))
}

/// Options from the command line, then a booted VM; a failure is reported on stderr.
fn boot(
    args: RunArgs,
    files: VmFiles,
    logs: LogSink,
    console_to_stdout: bool,
    signals: &Receiver<i32>,
) -> Result<RunningVm, ExitCode> {
    let opts = options(args, files, logs, console_to_stdout, signals).map_err(fail)?;
    RunningVm::boot(opts).map_err(|e| match e {
        LaunchError::Interrupted { signal, .. } => {
            eprintln!("vm_launcher: {e}");
            ExitCode::from((128 + signal).clamp(0, 255) as u8)
        }
        e => fail(e),
    })
}

/// Where guest logs go unless --log-dest says: the host's syslog if it has one. Never the
/// terminal by default: the application's stderr carries only what the application wrote.
fn default_log_dest() -> LogSink {
    let syslog = LogSink::host_syslog();
    let listening = |path: &std::path::Path| {
        std::os::unix::net::UnixDatagram::unbound().is_ok_and(|s| s.connect(path).is_ok())
    };
    match &syslog {
        LogSink::Syslog(path) if listening(path) => syslog,
        _ => LogSink::Discard,
    }
}

pub fn run(args: RunArgs) -> ExitCode {
    let signals = signal_channel();
    let app = args.app.clone();
    let tty = attach::wants_tty(args.tty);
    let (files, container) = match prepare(&args) {
        Ok(prepared) => prepared,
        Err(e) => return fail(e),
    };
    let logs = args.log_dest.clone().unwrap_or_else(default_log_dest);
    let listed = Listed::of(&args, &app);
    let console = args.console;
    let vm = match boot(args, files, logs, console, &signals) {
        Ok(vm) => vm,
        Err(code) => return code,
    };
    listed.record(&vm);
    vm.host.expect_application();
    let mut req = ExecRequest::new();
    req.set_argv(app.clone().into());
    req.set_is_application(true);
    if let Some(container) = &container {
        req.set_container(container.spec.clone());
    }
    let addr = stream::exec_address(&vm.maitred_addr);
    let ended = match stream_client::open(&addr, &vm.token) {
        Ok(conn) => {
            let vm_end = vm.end_signal();
            attach::run_session(conn, &addr.to_string(), req, tty, &signals, Some(&vm_end))
        }
        Err(e) => attach::Ended::Failed(e.to_string()),
    };
    let code = attach::exit_code(&ended, &format!("{:?}", app[0]), vm.id());
    let guest_running = !matches!(ended, attach::Ended::VmStopped(_));
    vm.teardown(guest_running);
    ExitCode::from(code)
}

/// `exec ID -- CMD`: a process in a started VM, attached like `run`'s application.
pub fn exec(args: ExecArgs) -> ExitCode {
    let signals = signal_channel();
    if vm_proto::cmdline::validate_vm_id(&args.id).is_err() {
        return fail(format!("no running VM {:?}", args.id));
    }
    let rundir = runtime_dir(args.runtime_dir).join("vms").join(&args.id);
    let conn = match exec_broker::connect(&rundir, &args.id) {
        Ok(conn) => conn,
        Err(e) => return fail(e),
    };
    let tty = attach::wants_tty(args.tty);
    let mut req = ExecRequest::new();
    req.set_argv(args.argv.clone().into());
    for (key, value) in args.env {
        req.mut_env().insert(key, value);
    }
    if let Some(dir) = args.workdir {
        req.set_working_dir(dir);
    }
    req.set_enter_container(!args.in_vm);
    let ended = attach::run_session(conn, &args.id, req, tty, &signals, None);
    ExitCode::from(attach::exit_code(
        &ended,
        &format!("{:?}", args.argv[0]),
        &args.id,
    ))
}

pub fn start(args: RunArgs) -> ExitCode {
    if std::env::var_os(DETACHED_ENV).is_some() {
        return serve_detached(args);
    }
    // Bad files are reported here, before a background launcher exists.
    let files = match disk_config::resolve(&args) {
        Ok(files) => files,
        Err(e) => return fail(e),
    };
    if let Err(e) = volume::resolve(&args.volumes) {
        return fail(e);
    }
    let mut child_args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.hypervisor == HypervisorName::Qemu && args.accel.is_none() {
        // Decided here, so its line reaches the user; the background launcher is told.
        let accel = choose_accel(None, files.kernel.as_deref());
        child_args.splice(1..1, ["--accel".into(), accel.to_string().into()]);
    }
    // Re-run ourselves in a new session; it prints "ready <id>" once the VM is up.
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return fail(format!("cannot find vm_launcher's own path: {e}")),
    };
    let mut command = Command::new(exe);
    command
        .args(child_args)
        .env(DETACHED_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    sys::new_session(&mut command);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start the background launcher: {e}")),
    };
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    // Once ready, its stderr is closed on our side (later writes fail harmlessly), so no
    // caller waiting for our output waits for the VM's whole life.
    let errors = child.stderr.take();
    match line.trim().strip_prefix("ready ") {
        Some(id) => {
            println!("{id}");
            ExitCode::SUCCESS
        }
        None => {
            if let Some(mut errors) = errors {
                let _ = std::io::copy(&mut errors, &mut std::io::stderr());
            }
            let _ = child.wait();
            ExitCode::from(EXIT_LAUNCHER_FAILED)
        }
    }
}

/// Points stdout and stderr at `path` (created afresh), or at /dev/null if that fails.
fn redirect_output(path: &std::path::Path) {
    let file = path
        .parent()
        .map(std::fs::create_dir_all)
        .and_then(|_| std::fs::File::create(path).ok())
        .or_else(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .ok()
        });
    if let Some(file) = file {
        let _ = nix::unistd::dup2_stdout(&file);
        let _ = nix::unistd::dup2_stderr(&file);
    }
}

fn serve_detached(args: RunArgs) -> ExitCode {
    let signals = signal_channel();
    let app = args.app.clone();
    let (files, container) = match prepare(&args) {
        Ok(prepared) => prepared,
        Err(e) => return fail(e),
    };
    let logs = args.log_dest.clone().unwrap_or_else(LogSink::host_syslog);
    let listed = Listed::of(&args, &app);
    let console = args.console;
    let mut vm = match boot(args, files, logs, console, &signals) {
        Ok(vm) => vm,
        Err(code) => return code,
    };
    listed.record(&vm);
    let guest = stream::exec_address(&vm.maitred_addr);
    if let Err(e) = exec_broker::serve(&vm.rundir, guest, vm.token.clone()) {
        vm.teardown(true);
        return fail(format!("cannot serve exec for VM: {e}"));
    }
    if !app.is_empty() {
        // The VM's main process: its output goes to the console log, its end stops the VM.
        let mut req = LaunchProcessRequest::new();
        req.set_argv(app.clone().into());
        req.set_is_application(true);
        req.set_use_console(true);
        if let Some(container) = &container {
            req.set_container(container.spec.clone());
        }
        vm.host.expect_application();
        let failed = match vm.launch(&req, LAUNCH_TIMEOUT) {
            Ok(resp) if resp.get_status() == ProcessStatus::FAILED => {
                Some(resp.get_reason().to_string())
            }
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = failed {
            vm.teardown(true);
            return fail(format!("cannot run {:?} in VM: {why}", app[0]));
        }
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready {}", vm.id());
    let _ = out.flush();
    // `start` has returned and closed its ends of our stdout and stderr; from here on our
    // messages go to <runtime-dir>/logs/<id>.log (writing to a closed pipe would fail).
    if let Some(runtime) = vm.rundir.parent().and_then(|vms| vms.parent()) {
        redirect_output(&runtime.join("logs").join(format!("{}.log", vm.id())));
    }
    let ended = vm.wait_end(&signals);
    let guest_running = !matches!(ended, Ended::VmStopped(_));
    vm.teardown(guest_running);
    ExitCode::SUCCESS
}
