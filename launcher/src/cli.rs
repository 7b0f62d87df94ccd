//! vm_launcher's command line: `run`, `start`, `exec`, `shell`, `stop`, `list`,
//! `crash-upload`, each with `--help`.

use std::fmt;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use crate::disk_config::DiskArg;
use crate::hypervisor::{accel, Accel};
use crate::log_forward::LogSink;
use crate::pool::{self, PoolConfig};
use crate::port_forward::{ForwardSpec, PublishSpec, SpecError};
use crate::volume::VolumeArg;

#[path = "cli_usage.rs"]
mod usage;
pub use usage::{EXEC_USAGE, RUN_USAGE, USAGE};

#[path = "cli_upload.rs"]
mod upload;
use upload::{parse_crash_upload, UploadFlags};
pub use upload::{CrashUploadArgs, UploadArgs, CRASH_UPLOAD_USAGE};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HypervisorName {
    Qemu,
    Crosvm,
    Lkvm,
    Process,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// `--vm-path DIR`: a component directory (vm_kernel, vm_rootfs.img, vm_tools.img).
    pub vm_path: Option<PathBuf>,
    pub rootfs: Option<PathBuf>,
    pub rootfs_rw: bool,
    pub container: Option<PathBuf>,
    pub container_rw: bool,
    /// `--disk`, in command-line order (disk0, disk1, …).
    pub disks: Vec<DiskArg>,
    /// `--volume`, in command-line order (tags vmvol0, vmvol1, …).
    pub volumes: Vec<VolumeArg>,
    pub hypervisor: HypervisorName,
    /// `--accel`; None is auto (decided by `hypervisor::accel::Probe` before boot).
    pub accel: Option<Accel>,
    pub mem_mib: u32,
    pub cpus: u32,
    /// `--cid-range`, `--subnet`, `--host-port-range`: None keeps the pool's default.
    pub cid_range: Option<RangeInclusive<u32>>,
    pub subnet: Option<(Ipv4Addr, u8)>,
    pub host_ports: Option<RangeInclusive<u32>>,
    pub name: Option<String>,
    pub params: Vec<String>,
    pub net: bool,
    pub boot_timeout: Duration,
    pub runtime_dir: Option<PathBuf>,
    pub crash_spool: Option<PathBuf>,
    pub crash_reporter: Option<Vec<String>>,
    pub crash_keep: usize,
    pub crash_upload: Option<UploadArgs>,
    /// None: the command's default (terminal for run, the host's syslog for start).
    pub log_dest: Option<LogSink>,
    pub maitred: Option<PathBuf>,
    pub vhost_device_vsock: PathBuf,
    pub app: Vec<String>,
    /// Some(true): -t; Some(false): -T; None: a terminal when stdin is one.
    pub tty: Option<bool>,
    /// Copy the serial console to stderr.
    pub console: bool,
    /// `--publish` and `--forward`, in command-line order.
    pub publish: Vec<PublishSpec>,
    pub forward: Vec<ForwardSpec>,
}

impl RunArgs {
    /// The pool under `runtime_dir`, with the ranges the flags gave.
    pub fn pool(&self, runtime_dir: PathBuf) -> PoolConfig {
        let default = PoolConfig::new(runtime_dir);
        let (subnet_base, subnet_prefix) = self
            .subnet
            .unwrap_or((default.subnet_base, default.subnet_prefix));
        PoolConfig {
            cids: self.cid_range.clone().unwrap_or(default.cids.clone()),
            subnet_base,
            subnet_prefix,
            host_ports: self
                .host_ports
                .clone()
                .unwrap_or(default.host_ports.clone()),
            ..default
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecArgs {
    pub id: String,
    pub tty: Option<bool>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    /// Run in the VM, not in the application's container.
    pub in_vm: bool,
    pub argv: Vec<String>,
    pub runtime_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cli {
    Help(&'static str),
    Run(RunArgs),
    Start(RunArgs),
    Exec(ExecArgs),
    Stop {
        ids: Vec<String>,
        all: bool,
        runtime_dir: Option<PathBuf>,
    },
    List {
        runtime_dir: Option<PathBuf>,
        json: bool,
    },
    CrashUpload(CrashUploadArgs),
}

#[derive(Debug, PartialEq, Eq)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; see --help", self.0)
    }
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, CliError> {
    value
        .parse()
        .map_err(|_| CliError(format!("{flag} {value:?}: not a valid number")))
}

fn parse_run(args: &[String], allow_app: bool) -> Result<Cli, CliError> {
    let mut run = RunArgs {
        kernel: None,
        initrd: None,
        vm_path: None,
        rootfs: None,
        rootfs_rw: false,
        container: None,
        container_rw: false,
        disks: Vec::new(),
        volumes: Vec::new(),
        hypervisor: HypervisorName::Qemu,
        accel: None,
        mem_mib: 512,
        cpus: 1,
        cid_range: None,
        subnet: None,
        host_ports: None,
        name: None,
        params: Vec::new(),
        net: false,
        boot_timeout: Duration::from_secs(120),
        runtime_dir: None,
        crash_spool: None,
        crash_reporter: None,
        crash_keep: crate::crash_spool::DEFAULT_KEEP,
        crash_upload: None,
        log_dest: None,
        maitred: None,
        vhost_device_vsock: PathBuf::from("vhost-device-vsock"),
        app: Vec::new(),
        tty: None,
        console: false,
        publish: Vec::new(),
        forward: Vec::new(),
    };
    // --log-rotate-size, --log-rotate-keep: applied to a dir: --log-dest at the end.
    let mut rotate: (Option<u64>, Option<usize>) = (None, None);
    let mut upload = UploadFlags::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let flag = flag.as_str();
        if upload.take(flag, &mut it)? {
            continue;
        }
        match flag {
            "--help" | "-h" => return Ok(Cli::Help(RUN_USAGE)),
            "--" => {
                run.app = it.by_ref().cloned().collect();
                break;
            }
            "-t" | "--tty" => {
                run.tty = Some(true);
                continue;
            }
            "-T" | "--no-tty" => {
                run.tty = Some(false);
                continue;
            }
            "--console" => {
                run.console = true;
                continue;
            }
            "--rootfs-rw" => {
                run.rootfs_rw = true;
                continue;
            }
            "--container-rw" => {
                run.container_rw = true;
                continue;
            }
            _ => {}
        }
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| CliError(format!("{flag} needs a value")))
        };
        match flag {
            "--kernel" => run.kernel = Some(value()?.into()),
            "--initrd" => run.initrd = Some(value()?.into()),
            "--container" => run.container = Some(value()?.into()),
            "--rootfs" => run.rootfs = Some(value()?.into()),
            "--vm-path" => run.vm_path = Some(value()?.into()),
            "--disk" => run.disks.push(DiskArg::parse(&value()?).map_err(CliError)?),
            "--volume" => run
                .volumes
                .push(VolumeArg::parse(&value()?).map_err(CliError)?),
            "--hypervisor" => {
                run.hypervisor = match value()?.as_str() {
                    "qemu" => HypervisorName::Qemu,
                    "crosvm" => HypervisorName::Crosvm,
                    "lkvm" => HypervisorName::Lkvm,
                    "process" => HypervisorName::Process,
                    other => {
                        return Err(CliError(format!(
                            "--hypervisor {other:?}: expected qemu, crosvm, lkvm or process"
                        )))
                    }
                }
            }
            "--accel" => run.accel = accel::parse_flag(&value()?).map_err(CliError)?,
            "--mem" => run.mem_mib = number(flag, &value()?)?,
            "--cpus" => run.cpus = number(flag, &value()?)?,
            pool::FLAG_CID_RANGE => {
                run.cid_range = Some(pool::parse_range(flag, &value()?).map_err(CliError)?)
            }
            pool::FLAG_SUBNET => {
                run.subnet = Some(pool::parse_subnet(&value()?).map_err(CliError)?)
            }
            pool::FLAG_HOST_PORT_RANGE => {
                run.host_ports = Some(pool::parse_range(flag, &value()?).map_err(CliError)?)
            }
            "--name" => {
                let name = value()?;
                vm_proto::cmdline::validate_vm_id(&name).map_err(|_| {
                    CliError(format!("--name {name:?}: use 1 to 63 of A-Z a-z 0-9 . _ -"))
                })?;
                run.name = Some(name);
            }
            "--params" => run.params.push(value()?),
            "-p" | "--publish" => run.publish.push(
                value()?
                    .parse()
                    .map_err(|e: SpecError| CliError(e.to_string()))?,
            ),
            "--forward" => run.forward.push(
                value()?
                    .parse()
                    .map_err(|e: SpecError| CliError(e.to_string()))?,
            ),
            "--net" => {
                run.net = match value()?.as_str() {
                    "tap" => true,
                    "none" => false,
                    other => {
                        return Err(CliError(format!("--net {other:?}: expected tap or none")))
                    }
                }
            }
            "--boot-timeout" => run.boot_timeout = Duration::from_secs(number(flag, &value()?)?),
            "--runtime-dir" => run.runtime_dir = Some(value()?.into()),
            "--crash-spool" => run.crash_spool = Some(value()?.into()),
            "--crash-keep" => run.crash_keep = number(flag, &value()?)?,
            "--crash-reporter" => {
                run.crash_reporter = Some(value()?.split_whitespace().map(String::from).collect())
            }
            "--log-dest" => {
                let dest = value()?;
                let sink = dest
                    .parse()
                    .map_err(|e| CliError(format!("--log-dest: {e}")))?;
                run.log_dest = Some(sink);
            }
            "--log-rotate-size" => {
                let size = crate::log_forward::dir::parse_size(&value()?)
                    .map_err(|e| CliError(format!("{flag} {e}")))?;
                rotate.0 = Some(size);
            }
            "--log-rotate-keep" => rotate.1 = Some(number(flag, &value()?)?),
            "--maitred" => run.maitred = Some(value()?.into()),
            "--vhost-device-vsock" => run.vhost_device_vsock = value()?.into(),
            other => return Err(CliError(format!("unknown option {other:?}"))),
        }
    }
    if rotate != (None, None) {
        let sink = run.log_dest.take().unwrap_or(LogSink::Discard);
        let sink = sink.with_rotation(rotate.0, rotate.1).map_err(CliError)?;
        run.log_dest = Some(sink);
    }
    run.crash_upload = upload.finish()?;
    if run.params.iter().any(|p| p.contains("maitred.")) {
        return Err(CliError("--params may not set maitred.* keys".into()));
    }
    if run.container.is_some() && run.app.is_empty() {
        return Err(CliError(
            "--container needs an application after --: it is what runs in the container".into(),
        ));
    }
    if run.net && run.hypervisor == HypervisorName::Process {
        return Err(CliError(
            "--net tap needs a hypervisor, not --hypervisor process".into(),
        ));
    }
    if allow_app && run.app.is_empty() {
        return Err(CliError("run needs an application after --".into()));
    }
    check_disks(&run)?;
    crate::port_forward::check(&run.publish, &run.forward).map_err(|e| CliError(e.to_string()))?;
    run.pool(PathBuf::new())
        .validate()
        .map_err(|e| CliError(e.to_string()))?;
    if allow_app {
        Ok(Cli::Run(run))
    } else {
        Ok(Cli::Start(run))
    }
}

/// What the disk and volume flags need: a kernel and a root filesystem, at most
/// `vm_proto::disks::MAX_EXTRA_DISKS` extra disks, volumes at distinct guest paths
/// (`vm_proto::volumes::check_set`), and a hypervisor (the process back-end has neither).
fn check_disks(run: &RunArgs) -> Result<(), CliError> {
    let max = vm_proto::disks::MAX_EXTRA_DISKS;
    if run.disks.len() > max {
        return Err(CliError(format!(
            "--disk given {} times; a VM takes at most {max} extra disks",
            run.disks.len()
        )));
    }
    vm_proto::volumes::check_set(run.volumes.iter().map(|v| v.guest.as_str()))
        .map_err(|e| CliError(format!("--volume: {e}")))?;
    if run.hypervisor == HypervisorName::Process && !run.volumes.is_empty() {
        return Err(CliError(
            "--volume: --hypervisor process has no volumes (they are virtio-9p devices)".into(),
        ));
    }
    if run.hypervisor == HypervisorName::Process {
        let given = [
            ("--vm-path", run.vm_path.is_some()),
            ("--rootfs", run.rootfs.is_some()),
            ("--rootfs-rw", run.rootfs_rw),
            ("--disk", !run.disks.is_empty()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, given)| *given) {
            return Err(CliError(format!(
                "{flag}: --hypervisor process has no disks (--container takes a directory there)"
            )));
        }
        return Ok(());
    }
    if run.rootfs_rw && run.rootfs.is_none() && run.vm_path.is_none() {
        return Err(CliError("--rootfs-rw needs --rootfs or --vm-path".into()));
    }
    if run.kernel.is_none() && run.vm_path.is_none() {
        return Err(CliError(
            "--kernel is required (or --vm-path DIR holding vm_kernel)".into(),
        ));
    }
    if run.initrd.is_none() && run.rootfs.is_none() && run.vm_path.is_none() {
        return Err(CliError(
            "the guest needs a root filesystem: give --initrd, --rootfs or --vm-path".into(),
        ));
    }
    Ok(())
}

fn parse_exec(args: &[String], shell: bool) -> Result<Cli, CliError> {
    let mut exec = ExecArgs {
        id: String::new(),
        tty: shell.then_some(true),
        env: Vec::new(),
        workdir: None,
        in_vm: false,
        argv: Vec::new(),
        runtime_dir: None,
    };
    let mut id = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let flag = arg.as_str();
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| CliError(format!("{flag} needs a value")))
        };
        match flag {
            "--help" | "-h" => return Ok(Cli::Help(EXEC_USAGE)),
            "--" if !shell => {
                exec.argv = it.by_ref().cloned().collect();
                break;
            }
            "-t" | "--tty" if !shell => exec.tty = Some(true),
            "-T" | "--no-tty" if !shell => exec.tty = Some(false),
            "--vm" => exec.in_vm = true,
            "--runtime-dir" => exec.runtime_dir = Some(value()?.into()),
            "-w" | "--workdir" if !shell => exec.workdir = Some(value()?),
            "-e" | "--env" if !shell => {
                let pair = value()?;
                match pair.split_once('=') {
                    Some((k, v)) if !k.is_empty() => exec.env.push((k.into(), v.into())),
                    _ => return Err(CliError(format!("{flag} {pair:?}: expected NAME=VALUE"))),
                }
            }
            other if other.starts_with('-') => {
                return Err(CliError(format!("unknown option {other:?}")))
            }
            other if id.is_none() => id = Some(other.to_string()),
            other => return Err(CliError(format!("unexpected argument {other:?}"))),
        }
    }
    exec.id = id.ok_or_else(|| CliError("which VM? give its id".into()))?;
    if shell {
        exec.argv = vec!["/bin/sh".into()];
    }
    if exec.argv.is_empty() {
        return Err(CliError("exec needs a command after --".into()));
    }
    Ok(Cli::Exec(exec))
}

pub fn parse(args: &[String]) -> Result<Cli, CliError> {
    let Some((command, rest)) = args.split_first() else {
        return Ok(Cli::Help(USAGE));
    };
    let runtime_dir = |rest: &[String]| -> Result<(Option<PathBuf>, Vec<String>), CliError> {
        let mut dir = None;
        let mut others = Vec::new();
        let mut it = rest.iter();
        while let Some(a) = it.next() {
            if a == "--runtime-dir" {
                dir = Some(
                    it.next()
                        .ok_or_else(|| CliError("--runtime-dir needs a value".into()))?
                        .into(),
                );
            } else {
                others.push(a.clone());
            }
        }
        Ok((dir, others))
    };
    match command.as_str() {
        "--help" | "-h" | "help" => Ok(Cli::Help(USAGE)),
        "run" => parse_run(rest, true),
        "start" => parse_run(rest, false),
        "exec" => parse_exec(rest, false),
        "shell" => parse_exec(rest, true),
        "crash-upload" => parse_crash_upload(rest),
        "stop" => {
            let (runtime_dir, others) = runtime_dir(rest)?;
            if others.iter().any(|a| a == "--help" || a == "-h") {
                return Ok(Cli::Help(
                    "usage: vm_launcher stop ID... | --all [--runtime-dir DIR]",
                ));
            }
            let all = others.iter().any(|a| a == "--all");
            let ids: Vec<String> = others.into_iter().filter(|a| a != "--all").collect();
            if let Some(bad) = ids.iter().find(|a| a.starts_with('-')) {
                return Err(CliError(format!("unknown option {bad:?}")));
            }
            if all != ids.is_empty() {
                return Err(CliError("stop takes VM ids or --all".into()));
            }
            Ok(Cli::Stop {
                ids,
                all,
                runtime_dir,
            })
        }
        "list" => {
            let (runtime_dir, others) = runtime_dir(rest)?;
            if others.iter().any(|a| a == "--help" || a == "-h") {
                return Ok(Cli::Help(
                    "usage: vm_launcher list [--json] [--runtime-dir DIR]\n\n--json: one JSON array of objects: id, cid, pid, state, started (Unix\nseconds), guest_ip, host_port, hypervisor, app, publish, forward,\nvolumes ([{host, guest, mode}])",
                ));
            }
            let json = others.iter().any(|a| a == "--json");
            if let Some(bad) = others.iter().find(|a| *a != "--json") {
                return Err(CliError(format!("unknown argument {bad:?}")));
            }
            Ok(Cli::List { runtime_dir, json })
        }
        other => Err(CliError(format!("unknown command {other:?}"))),
    }
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;
