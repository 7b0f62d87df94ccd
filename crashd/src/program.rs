//! crash_collector's program: parse → [`Config`] → `run`. Before anything else it makes
//! itself non-dumpable (see `sys`) and gives itself a stdout and stderr (the kernel starts a
//! pipe helper with neither; stderr becomes /dev/kmsg). The standalone `crash_collector`
//! binary and the guest's multi-call `vm_tools_guest` (as /sbin/crash_collector) both call
//! [`run_main`].
//!
//! Exit codes: 0 report sent (or written with --output), 1 kept in the guest spool for a later
//! run, 2 usage error, 3 the report could be neither sent nor kept.

use std::fmt;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::args::{self, ArgsError, Config};
use crate::collect::{capture, Options};
use crate::deliver::{deliver, keep, Delivery};
use crate::log;
use crate::proc_info::ProcSource;
use crate::report::keys;
use crate::send::Sender;
use crate::spool::{Spool, SpoolError};
use crate::sys;
use vm_proto::{AddressError, GuestParams};

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
    BadHost {
        addr: String,
        source: AddressError,
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
            Self::BadHost { addr, source } => write!(f, "--host {addr}: {source}"),
            Self::Spool(e) => write!(f, "the report is lost: {e}"),
        }
    }
}

enum Outcome {
    Sent,
    Written(PathBuf),
    Spooled(String),
}

impl From<Delivery> for Outcome {
    fn from(d: Delivery) -> Outcome {
        match d {
            Delivery::Sent => Outcome::Sent,
            Delivery::Spooled(why) => Outcome::Spooled(why),
        }
    }
}

fn run(config: Config) -> Result<Outcome, MainError> {
    // /proc first: it is alive while the kernel writes the core (core_pipe_limit > 0).
    let proc = ProcSource::new(&config.proc_root).snapshot(config.crash.pid);
    let opts = Options {
        max_size: config.max_size,
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
    let mut report = collected.render(config.max_size);
    let params = GuestParams::from_proc_cmdline(&config.cmdline);
    if let Ok(p) = &params {
        report.metadata.insert(keys::VM_ID.into(), p.vm_id.clone());
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
    let params = match params {
        Ok(p) => p,
        Err(why) => {
            return keep(&spool, &report, format!("no host to send to ({why})"))
                .map(Outcome::from)
                .map_err(MainError::Spool)
        }
    };
    let addr = match &config.host {
        Some(text) => text.parse().map_err(|source| MainError::BadHost {
            addr: text.clone(),
            source,
        })?,
        None => params.host_address(),
    };
    let sender = Sender::new(addr, params.token);
    deliver(&spool, &sender, &collected, report)
        .map(Outcome::from)
        .map_err(MainError::Spool)
}

/// crash_collector's `main`, given its arguments after argv[0]. The gRPC environment is
/// made only once a report exists and is to be sent (in `Sender::new`, after the capture):
/// `--help`, usage errors, `--output` and a VM without host parameters never start one.
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
    match run(config) {
        Ok(Outcome::Sent) => {
            log::line(format!("crash report for pid {pid} sent to the host"));
            ExitCode::SUCCESS
        }
        Ok(Outcome::Written(path)) => {
            log::line(format!(
                "crash report for pid {pid} written to {}",
                path.display()
            ));
            ExitCode::SUCCESS
        }
        Ok(Outcome::Spooled(why)) => {
            log::line(format!("crash report for pid {pid} not sent: {why}"));
            ExitCode::from(1)
        }
        Err(e) => {
            log::line(e);
            ExitCode::from(3)
        }
    }
}
