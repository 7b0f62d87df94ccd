//! vm_launcher's command line: `run`, `start`, `exec`, `shell`, `stop`, `list`, each with
//! `--help`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::disk_config::DiskArg;
use crate::hypervisor::{accel, Accel};
use crate::log_forward::LogSink;

pub const USAGE: &str = "\
usage: vm_launcher <command> [options]

commands:
  run    boot a VM, run an application in it as if it ran here (stdin, stdout, stderr,
         terminal, signals, exit code), then stop the VM
  start  boot a VM in the background and print its id
  exec   run a command in a started VM: exec [-t|-T] [-e K=V]... [-w DIR] [--vm] ID -- CMD...
  shell  an interactive shell in a started VM: shell ID (exec -t ID -- /bin/sh)
  stop   stop a VM started with `start`: stop ID | stop --all
  list   list running VMs (id, cid, pid, guest ip, host port); list --json for scripts

`vm_launcher <command> --help` describes each command.";

pub const RUN_USAGE: &str = "\
usage: vm_launcher run [options] -- APP [ARGS...]
       vm_launcher start [options] [-- APP [ARGS...]]

The application's stdin, stdout and stderr are this command's, byte for byte (over vsock,
not the serial console). It gets a terminal when stdin is one (or with -t).
  -t, --tty              give the application a terminal (raw mode here, window size sent)
  -T, --no-tty           never a terminal, even when stdin is one
  --console              copy the guest's serial console (kernel, maitred) to stderr

  --vm-path DIR          a component directory: DIR/vm_kernel, DIR/vm_rootfs.img (the root
                         disk) and, if there, DIR/vm_tools.img (read-only, mounted at
                         /opt/google/cros-containers); the flags below override each file
  --kernel PATH          guest kernel (bzImage)
  --initrd PATH          initramfs (needed unless there is a root disk)
  --rootfs PATH          raw disk image (ext4 or squashfs) to boot from: /dev/vda, read-only
  --rootfs-rw            attach the rootfs read-write
  --container ROOTFS     run APP in a container whose root is ROOTFS: an ext4 image, or a
                         directory (turned into an image with mke2fs -d); read-only.
                         With start, APP is the container's main process and `exec`
                         enters the container
  --container-rw         the container's root is writable
  --disk PATH[:ro|rw]    one more disk (default read-only), up to 10: the guest finds the
                         Nth as disk:diskN (its virtio-blk serial; lkvm has no serials,
                         its guests see disks in the order rootfs, container, vm_tools,
                         disk0, …)
  --hypervisor NAME      qemu (default), crosvm, lkvm, or process: no hypervisor at all,
                         host-mode maitred as a child process (tests and demos)
  --accel auto|kvm|tcg   QEMU accelerator. auto (default): KVM when /dev/kvm works, which
                         a probe guest checks once per boot; TCG otherwise, with one line
                         on stderr saying why when it is decided
  --mem MIB              guest memory (default 512)
  --cpus N               vCPUs the guest can use (default 1)
  --name ID              VM id (default: generated); also the guest's hostname
  --params TEXT          extra guest kernel command line (repeatable)
  --net tap|none         tap: a TAP device with the VM's /30 (root only), configured in the
                         guest with ConfigureNetwork once it is ready (default none)
  --boot-timeout SECS    how long to wait for the guest to report ready (default 120)
  --runtime-dir DIR      pool and per-VM state (default $VM_LAUNCHER_RUNTIME_DIR or /run/vm_launcher)
  --crash-spool DIR      where crash reports go (default <runtime-dir>/crash)
  --crash-reporter CMD   run CMD DMP META after each crash report (split on spaces)
  --crash-keep N         crash reports kept per VM in the spool, newest first (default 10)
  --log-dest DEST        guest logs: syslog (the host's /dev/log; the default when it
                         exists, else none), terminal (stderr; kernel records only from
                         warning up), unix:PATH (a syslog socket), file:PATH (RFC 5424
                         lines) or none
  --maitred PATH         host-mode maitred for --hypervisor process (default: beside vm_launcher)
  --vhost-device-vsock PATH  the vhost-user vsock back-end (default: from PATH)

Without a terminal, SIGINT, SIGTERM, SIGHUP and SIGQUIT are passed on to the application;
a second SIGINT within 3 s, or SIGTERM unanswered for 10 s, stops the VM.

Exit status of run: the application's exit code, 128+N if a signal N killed it, 127 if it
was not found, 126 if it could not run, 125 if the VM could not be started (a kernel,
initrd or disk missing or unreadable, a file given twice, …) or stopped before the
application ended; 2 for a malformed command line.";

pub const EXEC_USAGE: &str = "\
usage: vm_launcher exec [options] ID -- CMD [ARGS...]
       vm_launcher shell [--runtime-dir DIR] ID          (exec -t ID -- /bin/sh)

Runs CMD in the VM ID (started with `start`) with this command's stdin, stdout, stderr,
terminal and signals, and exits with its status, like `run`. When the VM's application
runs in a container, CMD runs inside that container (like `docker exec`). Only the user
who started the VM, or root, may exec into it.

  -t, --tty              give CMD a terminal (default: when stdin is one)
  -T, --no-tty           never a terminal
  -e, --env K=V          set an environment variable (repeatable)
  -w, --workdir DIR      working directory (default /)
  --vm                   run in the VM itself, not in the application's container
  --runtime-dir DIR      where the VM's launcher keeps its state (as for start)

Exit status: CMD's exit code, 128+N if signal N killed it, 127 not found, 126 not
runnable, 125 if the VM could not run it to its end.";

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
    pub hypervisor: HypervisorName,
    /// `--accel`; None is auto (decided by `hypervisor::accel::Probe` before boot).
    pub accel: Option<Accel>,
    pub mem_mib: u32,
    pub cpus: u32,
    pub name: Option<String>,
    pub params: Vec<String>,
    pub net: bool,
    pub boot_timeout: Duration,
    pub runtime_dir: Option<PathBuf>,
    pub crash_spool: Option<PathBuf>,
    pub crash_reporter: Option<Vec<String>>,
    pub crash_keep: usize,
    /// None: the command's default (terminal for run, the host's syslog for start).
    pub log_dest: Option<LogSink>,
    pub maitred: Option<PathBuf>,
    pub vhost_device_vsock: PathBuf,
    pub app: Vec<String>,
    /// Some(true): -t; Some(false): -T; None: a terminal when stdin is one.
    pub tty: Option<bool>,
    /// Copy the serial console to stderr.
    pub console: bool,
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
        hypervisor: HypervisorName::Qemu,
        accel: None,
        mem_mib: 512,
        cpus: 1,
        name: None,
        params: Vec::new(),
        net: false,
        boot_timeout: Duration::from_secs(120),
        runtime_dir: None,
        crash_spool: None,
        crash_reporter: None,
        crash_keep: crate::crash_spool::DEFAULT_KEEP,
        log_dest: None,
        maitred: None,
        vhost_device_vsock: PathBuf::from("vhost-device-vsock"),
        app: Vec::new(),
        tty: None,
        console: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let flag = flag.as_str();
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
            "--name" => {
                let name = value()?;
                vm_proto::cmdline::validate_vm_id(&name).map_err(|_| {
                    CliError(format!("--name {name:?}: use 1 to 63 of A-Z a-z 0-9 . _ -"))
                })?;
                run.name = Some(name);
            }
            "--params" => run.params.push(value()?),
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
            "--maitred" => run.maitred = Some(value()?.into()),
            "--vhost-device-vsock" => run.vhost_device_vsock = value()?.into(),
            other => return Err(CliError(format!("unknown option {other:?}"))),
        }
    }
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
    if allow_app {
        Ok(Cli::Run(run))
    } else {
        Ok(Cli::Start(run))
    }
}

/// What the disk flags need: a kernel and a root filesystem, at most
/// `vm_proto::disks::MAX_EXTRA_DISKS` extra disks, and a hypervisor (the process back-end
/// has no disks).
fn check_disks(run: &RunArgs) -> Result<(), CliError> {
    let max = vm_proto::disks::MAX_EXTRA_DISKS;
    if run.disks.len() > max {
        return Err(CliError(format!(
            "--disk given {} times; a VM takes at most {max} extra disks",
            run.disks.len()
        )));
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
                    "usage: vm_launcher list [--json] [--runtime-dir DIR]\n\n--json: one JSON array of objects: id, cid, pid, state, started (Unix\nseconds), guest_ip, host_port, hypervisor, app",
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
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parse_run_full() {
        let cli = parse(&args(&[
            "run",
            "--kernel",
            "k",
            "--initrd",
            "i",
            "--mem",
            "256",
            "--cpus",
            "2",
            "--name",
            "vm1",
            "--params",
            "quiet",
            "--rootfs",
            "r.img",
            "--rootfs-rw",
            "--",
            "sh",
            "-c",
            "exit 3",
        ]))
        .unwrap();
        let Cli::Run(run) = cli else {
            panic!("{cli:?}")
        };
        assert_eq!(run.kernel, Some("k".into()));
        assert_eq!((run.mem_mib, run.cpus), (256, 2));
        assert_eq!(run.name.as_deref(), Some("vm1"));
        assert_eq!(run.app, args(&["sh", "-c", "exit 3"]));
        assert_eq!((run.rootfs, run.rootfs_rw), (Some("r.img".into()), true));
    }

    #[test]
    fn parse_vm_path_and_disks_in_order() {
        let Cli::Run(run) = parse(&args(&[
            "run",
            "--vm-path",
            "/c",
            "--disk",
            "/a.img",
            "--disk",
            "/b:c.img:rw",
            "--disk",
            "/d.img:ro",
            "--container",
            "/ctr.img",
            "--",
            "x",
        ]))
        .unwrap() else {
            panic!()
        };
        assert_eq!(run.vm_path, Some("/c".into()));
        assert_eq!((run.kernel, run.initrd, run.rootfs), (None, None, None));
        let disks: Vec<(String, bool)> = run
            .disks
            .iter()
            .map(|d| (d.path.display().to_string(), d.read_only))
            .collect();
        let want = [("/a.img", true), ("/b:c.img", false), ("/d.img", true)];
        let want: Vec<(String, bool)> = want.iter().map(|(p, r)| (p.to_string(), *r)).collect();
        assert_eq!(disks, want);
        assert_eq!(run.container, Some("/ctr.img".into()));
    }

    #[test]
    fn parse_rootfs_without_initrd_is_enough() {
        let Cli::Run(run) =
            parse(&args(&["run", "--kernel", "k", "--rootfs", "r", "--", "x"])).unwrap()
        else {
            panic!()
        };
        assert_eq!((run.initrd, run.rootfs_rw), (None, false));
    }

    #[test]
    fn parse_bad_disk_specs_are_one_clear_error_each() {
        let eleven: Vec<&str> = (0..11).flat_map(|_| ["--disk", "d.img"]).collect();
        let mut too_many = vec!["run", "--kernel", "k", "--initrd", "i"];
        too_many.extend(eleven);
        too_many.extend(["--", "x"]);
        for (a, want) in [
            (
                too_many,
                "--disk given 11 times; a VM takes at most 10 extra disks",
            ),
            (
                vec!["run", "--kernel", "k", "--", "x"],
                "give --initrd, --rootfs or --vm-path",
            ),
            (
                vec!["run", "--initrd", "i", "--", "x"],
                "--kernel is required",
            ),
            (
                vec![
                    "run", "--kernel", "k", "--initrd", "i", "--disk", ":rw", "--", "x",
                ],
                "--disk \":rw\": no path",
            ),
            (
                vec!["run", "--kernel", "k", "--initrd", "i", "--disk"],
                "--disk needs a value",
            ),
            (
                vec![
                    "run",
                    "--kernel",
                    "k",
                    "--initrd",
                    "i",
                    "--rootfs-rw",
                    "--",
                    "x",
                ],
                "--rootfs-rw needs --rootfs",
            ),
            (
                vec!["run", "--hypervisor", "process", "--disk", "d", "--", "x"],
                "--disk: --hypervisor process has no disks",
            ),
            (
                vec!["run", "--hypervisor", "process", "--rootfs", "r", "--", "x"],
                "--rootfs: --hypervisor process has no disks",
            ),
            (
                vec![
                    "run",
                    "--hypervisor",
                    "process",
                    "--vm-path",
                    "d",
                    "--",
                    "x",
                ],
                "--vm-path: --hypervisor process has no disks",
            ),
        ] {
            let err = parse(&args(&a)).unwrap_err().to_string();
            assert!(err.contains(want), "{a:?}: {err}");
        }
        let ten: Vec<&str> = (0..10).flat_map(|_| ["--disk", "d.img"]).collect();
        let mut max = vec!["start", "--vm-path", "c"];
        max.extend(ten);
        assert!(parse(&args(&max)).is_ok());
        let process = [
            "run",
            "--hypervisor",
            "process",
            "--container",
            "d",
            "--",
            "x",
        ];
        assert!(parse(&args(&process)).is_ok());
    }

    #[test]
    fn parse_bad_input_is_a_clear_error() {
        for (a, want) in [
            (vec!["run", "--kernel", "k"], "application"),
            (vec!["run", "--", "true"], "--kernel"),
            (
                vec!["run", "--kernel", "k", "--mem", "lots", "--", "x"],
                "--mem",
            ),
            (
                vec!["run", "--kernel", "k", "--name", "../x", "--", "x"],
                "--name",
            ),
            (
                vec![
                    "run",
                    "--kernel",
                    "k",
                    "--params",
                    "maitred.token=00",
                    "--",
                    "x",
                ],
                "maitred",
            ),
            (vec!["run", "--hypervisor", "xen", "--", "x"], "xen"),
            (vec!["stop"], "ids or --all"),
            (vec!["stop", "a", "--all"], "ids or --all"),
            (vec!["frobnicate"], "unknown command"),
        ] {
            let err = parse(&args(&a)).unwrap_err().to_string();
            assert!(err.contains(want), "{a:?}: {err}");
        }
    }

    #[test]
    fn parse_log_dest_every_form_and_default() {
        let dest = |v: &str| -> Result<Option<LogSink>, CliError> {
            match parse(&args(&["start", "--vm-path", "c", "--log-dest", v]))? {
                Cli::Start(run) => Ok(run.log_dest),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(dest("terminal"), Ok(Some(LogSink::Terminal)));
        assert_eq!(dest("syslog"), Ok(Some(LogSink::host_syslog())));
        assert_eq!(
            dest("unix:/tmp/log"),
            Ok(Some(LogSink::Syslog("/tmp/log".into())))
        );
        assert_eq!(
            dest("file:/tmp/vm.log"),
            Ok(Some(LogSink::File("/tmp/vm.log".into())))
        );
        let err = dest("tcp:x").unwrap_err().to_string();
        assert!(err.contains("--log-dest") && err.contains("tcp:x"), "{err}");
        let Cli::Start(run) = parse(&args(&["start", "--vm-path", "c"])).unwrap() else {
            panic!()
        };
        assert_eq!(run.log_dest, None);
    }

    #[test]
    fn parse_exec_and_shell() {
        let cli = parse(&args(&[
            "exec", "-T", "-e", "A=b=c", "-w", "/srv", "--vm", "vm1", "--", "ls", "-l",
        ]))
        .unwrap();
        let Cli::Exec(exec) = cli else {
            panic!("{cli:?}")
        };
        assert_eq!(exec.id, "vm1");
        assert_eq!(exec.tty, Some(false));
        assert_eq!(exec.env, vec![("A".to_string(), "b=c".to_string())]);
        assert_eq!(exec.workdir.as_deref(), Some("/srv"));
        assert!(exec.in_vm);
        assert_eq!(exec.argv, args(&["ls", "-l"]));

        let Cli::Exec(shell) = parse(&args(&["shell", "vm1"])).unwrap() else {
            panic!()
        };
        assert_eq!((shell.tty, shell.argv), (Some(true), args(&["/bin/sh"])));

        for (a, want) in [
            (vec!["exec", "vm1"], "command after --"),
            (vec!["exec", "--", "ls"], "which VM"),
            (
                vec!["exec", "-e", "novalue", "vm1", "--", "ls"],
                "NAME=VALUE",
            ),
            (vec!["exec", "-x", "vm1", "--", "ls"], "unknown option"),
            (vec!["shell", "a", "b"], "unexpected argument"),
            (vec!["shell", "-t", "a"], "unknown option"),
        ] {
            let err = parse(&args(&a)).unwrap_err().to_string();
            assert!(err.contains(want), "{a:?}: {err}");
        }
    }

    #[test]
    fn parse_run_tty_console_and_start_app() {
        let Cli::Run(run) = parse(&args(&[
            "run",
            "--vm-path",
            "c",
            "-t",
            "--console",
            "--",
            "sh",
        ]))
        .unwrap() else {
            panic!()
        };
        assert_eq!((run.tty, run.console), (Some(true), true));
        let Cli::Start(start) = parse(&args(&[
            "start",
            "--vm-path",
            "c",
            "--container",
            "r",
            "--",
            "srv",
        ]))
        .unwrap() else {
            panic!()
        };
        assert_eq!(start.app, args(&["srv"]));
        let err = parse(&args(&["start", "--kernel", "k", "--container", "r"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs an application"), "{err}");
        let Cli::List { json, .. } = parse(&args(&["list", "--json"])).unwrap() else {
            panic!()
        };
        assert!(json);
    }

    #[test]
    fn run_usage_names_the_contracts_paths_and_limits() {
        assert!(RUN_USAGE.contains(vm_proto::disks::VM_TOOLS_MOUNT));
        let max = format!("up to {}", vm_proto::disks::MAX_EXTRA_DISKS);
        assert!(RUN_USAGE.contains(&max));
    }

    #[test]
    fn parse_help_everywhere() {
        assert_eq!(parse(&[]).unwrap(), Cli::Help(USAGE));
        assert_eq!(
            parse(&args(&["run", "--help"])).unwrap(),
            Cli::Help(RUN_USAGE)
        );
        assert!(matches!(
            parse(&args(&["stop", "--help"])).unwrap(),
            Cli::Help(_)
        ));
        assert!(matches!(
            parse(&args(&["list", "-h"])).unwrap(),
            Cli::Help(_)
        ));
    }
}
