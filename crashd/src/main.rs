//! crash_collector: parse → [`Config`] → [`run`]. Before anything else it makes itself
//! non-dumpable (see `sys`) and gives itself a stdout and stderr (the kernel starts a pipe
//! helper with neither; stderr becomes /dev/kmsg).
//!
//! Exit codes: 0 report sent (or written with --output), 1 kept in the guest spool for a later
//! run, 2 usage error, 3 the report could be neither sent nor kept.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use crash_collector::args::{self, ArgsError, Config};
use crash_collector::collect::{capture, Collected, Options};
use crash_collector::report::{keys, CrashReportData};
use crash_collector::send::{Sender, TRANSPORT_MAX_DUMP};
use crash_collector::spool::{Spool, SpoolError};
use crash_collector::{sys, ProcSource};
use vm_proto::{Address, AddressError, GuestParams};

/// One line on stderr, written with a single write (stderr may be /dev/kmsg: one record).
fn log(message: impl fmt::Display) {
    let line = format!("crash_collector: {message}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

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

fn read_params(config: &Config) -> Result<GuestParams, String> {
    let text = std::fs::read_to_string(&config.cmdline)
        .map_err(|e| format!("cannot read {}: {e}", config.cmdline.display()))?;
    GuestParams::from_cmdline(&text).map_err(|e| e.to_string())
}

fn keep(
    spool: &Spool,
    report: &CrashReportData,
    why: impl fmt::Display,
) -> Result<Outcome, MainError> {
    let evicted = spool.store(report).map_err(MainError::Spool)?;
    for stem in evicted {
        log(format!("spool full: dropped the oldest report {stem}"));
    }
    Ok(Outcome::Spooled(format!(
        "{why}; kept in {}",
        spool.dir.display()
    )))
}

/// Sends what the spool holds, oldest first; false if the host cannot be reached.
fn flush_spool(spool: &Spool, sender: &Sender) -> bool {
    for entry in spool.pending() {
        let old = match spool.load(&entry) {
            Ok(old) => old,
            Err(e) => {
                log(format!("dropping an unreadable spooled report: {e}"));
                spool.remove(&entry.stem);
                continue;
            }
        };
        match sender.send(&old) {
            Ok(()) => {
                log(format!("sent the spooled report {}", entry.stem));
                spool.remove(&entry.stem);
            }
            Err(e) if e.too_large() => {
                log(format!("dropping the spooled report {}: {e}", entry.stem));
                spool.remove(&entry.stem);
            }
            Err(e) => {
                log(e);
                return false;
            }
        }
    }
    true
}

fn send_new(
    sender: &Sender,
    collected: &Collected,
    report: CrashReportData,
    vm_id: &str,
) -> Result<(), (CrashReportData, String)> {
    match sender.send(&report) {
        Ok(()) => Ok(()),
        Err(e) if e.too_large() => {
            // The host's gRPC server takes 4 MiB messages: render again under that.
            let mut smaller = collected.render(TRANSPORT_MAX_DUMP);
            smaller.metadata.insert(keys::VM_ID.into(), vm_id.into());
            smaller
                .metadata
                .insert(keys::SIZE_CAPPED.into(), "yes".into());
            sender.send(&smaller).map_err(|e| (smaller, e.to_string()))
        }
        Err(e) => Err((report, e.to_string())),
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
    let params = read_params(&config);
    let vm_id = params.as_ref().map(|p| p.vm_id.clone()).unwrap_or_default();
    if !vm_id.is_empty() {
        report.metadata.insert(keys::VM_ID.into(), vm_id.clone());
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
        Err(why) => return keep(&spool, &report, format!("no host to send to ({why})")),
    };
    let addr = match &config.host {
        Some(text) => text.parse().map_err(|source| MainError::BadHost {
            addr: text.clone(),
            source,
        })?,
        None => Address::Vsock {
            cid: vm_proto::HOST_CID,
            port: params.host_port,
        },
    };
    let sender = Sender::new(addr, params.token);
    if !flush_spool(&spool, &sender) {
        return keep(&spool, &report, "the host cannot be reached");
    }
    match send_new(&sender, &collected, report, &vm_id) {
        Ok(()) => Ok(Outcome::Sent),
        Err((report, why)) => keep(&spool, &report, why),
    }
}

fn main() -> ExitCode {
    let dumpable = sys::disable_core_dumps();
    sys::ensure_stdio();
    if let Err(e) = dumpable {
        log(format!("prctl(PR_SET_DUMPABLE, 0): {}", e.desc()));
    }
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let config = match args::parse(&argv) {
        Ok(c) => c,
        Err(ArgsError::Help) => {
            println!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            log(format!("{e}; see --help"));
            return ExitCode::from(2);
        }
    };
    let pid = config.crash.pid;
    match run(config) {
        Ok(Outcome::Sent) => {
            log(format!("crash report for pid {pid} sent to the host"));
            ExitCode::SUCCESS
        }
        Ok(Outcome::Written(path)) => {
            log(format!(
                "crash report for pid {pid} written to {}",
                path.display()
            ));
            ExitCode::SUCCESS
        }
        Ok(Outcome::Spooled(why)) => {
            log(format!("crash report for pid {pid} not sent: {why}"));
            ExitCode::from(1)
        }
        Err(e) => {
            log(e);
            ExitCode::from(3)
        }
    }
}
