//! crash_collector's program: parse → [`Config`] → `run`. Before anything else it makes
//! itself non-dumpable (see `sys`) and gives itself a stdout and stderr (the kernel starts a
//! pipe helper with neither; stderr becomes /dev/kmsg).
//!
//! Collecting and sending are two stages, as ChromeOS splits crash_reporter and
//! crash_sender: this stage reads the core and /proc, writes the report into the guest
//! spool and then *becomes* crash_sender (execve, same pid, the core pipe still open, so the
//! kernel still holds the crashed process until the report is sent). This stage links no
//! gRPC: the C-core's start-up (its C++ constructors, ~5 MiB of the binary paged in) is paid
//! only once there is a report to send, and the collector itself is a small static binary.
//!
//! Exit codes (the sender's, after the hand-off): 0 report sent (or written with --output),
//! 1 kept in the guest spool for a later run, 2 usage error, 3 the report could be neither
//! sent nor kept.

use std::fmt;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::args::{self, ArgsError, Config};
use crate::collect::{capture, Options};
use crate::log;
use crate::proc_info::ProcSource;
use crate::report::{keys, TRANSPORT_MAX_DUMP};
use crate::spool::{Spool, SpoolError};
use crate::sys;
use vm_proto::GuestParams;

/// The sender's file name, looked for beside this binary unless `--sender` names one.
pub const SENDER_NAME: &str = "crash_sender";

#[derive(Debug)]
enum MainError {
    OpenCore {
        path: PathBuf,
        source: std::io::Error,
    },
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    Spool(SpoolError),
}

impl fmt::Display for MainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OpenCore { path, source } => {
                write!(f, "cannot open the core {}: {source}", path.display())
            }
            Self::Output { path, source } => {
                write!(f, "cannot write the report to {}: {source}", path.display())
            }
            Self::Spool(e) => write!(f, "the report is lost: {e}"),
        }
    }
}

enum Outcome {
    Written(PathBuf),
    /// In the spool; the sender takes it from there.
    Spooled {
        dir: PathBuf,
    },
}

fn run(config: &Config) -> Result<Outcome, MainError> {
    // /proc first: it is alive while the kernel writes the core (core_pipe_limit > 0).
    let proc = ProcSource::new(&config.proc_root).snapshot(config.crash.pid);
    // Capped once, under what the host takes in one message: the sender can then send the
    // spooled report as it is.
    let max_size = config.max_size.min(TRANSPORT_MAX_DUMP);
    let opts = Options {
        max_size,
        read_module_files: true,
        memory_source: config.memory_source,
    };
    let collected = match &config.core {
        Some(path) => {
            let file = File::open(path).map_err(|source| MainError::OpenCore {
                path: path.clone(),
                source,
            })?;
            capture(file, proc, &config.crash, &opts)
        }
        None => {
            // An unbuffered File over fd 0, so seeking (stdin redirected from a file) and
            // reading share one position; on a pipe it simply cannot seek.
            let fd = std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| MainError::OpenCore {
                    path: PathBuf::from("stdin"),
                    source,
                })?;
            // The pipe stays open until we exit, even when the rest of the core is not read:
            // the kernel holds the crashed process until then (core_pipe_limit), so the
            // report reaches the host before anyone sees the process end.
            capture(File::from(fd), proc, &config.crash, &opts)
        }
    };
    let mut report = collected.render(max_size);
    if let Ok(p) = GuestParams::from_proc_cmdline(&config.cmdline) {
        report.metadata.insert(keys::VM_ID.into(), p.vm_id);
    }
    if let Some(dir) = &config.output {
        let dmp = report
            .write_to(dir, &report.file_stem(), false)
            .map_err(|source| MainError::Output {
                path: dir.clone(),
                source,
            })?;
        return Ok(Outcome::Written(dmp));
    }
    let spool = Spool::new(&config.spool);
    for stem in spool.store(&report).map_err(MainError::Spool)? {
        log::line(format!("spool full: dropped the oldest report {stem}"));
    }
    Ok(Outcome::Spooled {
        dir: spool.dir.clone(),
    })
}

/// Where crash_sender is: `--sender`, else beside this executable.
fn sender_path(config: &Config) -> PathBuf {
    if let Some(path) = &config.sender {
        return path.clone();
    }
    let own = std::fs::read_link("/proc/self/exe").unwrap_or_default();
    own.parent().unwrap_or(Path::new("/sbin")).join(SENDER_NAME)
}

/// Becomes crash_sender for the spool (returns only if that fails): same pid, same stdin
/// (the core pipe), so the kernel keeps holding the crashed process until it is sent.
fn hand_off_to_sender(config: &Config, spool: &Path) -> std::io::Error {
    let mut sender = Command::new(sender_path(config));
    sender.arg0(SENDER_NAME).arg("--spool").arg(spool);
    sender.arg("--cmdline").arg(&config.cmdline);
    if let Some(host) = &config.host {
        sender.arg("--host").arg(host);
    }
    sender.exec()
}

/// crash_collector's `main`, given its arguments after argv[0].
pub fn run_main(argv: &[String]) -> ExitCode {
    let dumpable = sys::disable_core_dumps();
    sys::ensure_stdio();
    if let Err(e) = dumpable {
        log::line(format!("prctl(PR_SET_DUMPABLE, 0): {}", e.desc()));
    }
    let config = match args::parse(argv) {
        Ok(c) => c,
        Err(ArgsError::Help) => {
            println!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            log::line(format!("{e}; see --help"));
            return ExitCode::from(2);
        }
    };
    let pid = config.crash.pid;
    match run(&config) {
        Ok(Outcome::Written(path)) => {
            log::line(format!(
                "crash report for pid {pid} written to {}",
                path.display()
            ));
            ExitCode::SUCCESS
        }
        Ok(Outcome::Spooled { dir }) => {
            let e = hand_off_to_sender(&config, &dir);
            log::line(format!(
                "crash report for pid {pid} kept in {}: cannot run {}: {e}",
                dir.display(),
                sender_path(&config).display()
            ));
            ExitCode::from(1)
        }
        Err(e) => {
            log::line(e);
            ExitCode::from(3)
        }
    }
}
