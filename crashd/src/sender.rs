//! crash_sender: the second stage of crash_collector (see `program`). It sends what the
//! guest spool holds to the host's CrashListener, oldest first, and removes each report the
//! host took; what cannot be sent waits for the next run. One sender at a time per spool
//! (an flock on the spool directory), so two crashes at once never send a report twice.
//!
//! ```text
//! crash_sender [--spool DIR] [--cmdline FILE] [--host ADDR]
//! ```
//!
//! Exit codes: 0 the spool is empty, 1 reports wait in the spool, 2 usage error.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::log;
use crate::send::Sender;
use crate::spool::Spool;
use crate::sys;
use vm_proto::GuestParams;

pub const USAGE: &str = "\
usage: crash_sender [--spool DIR] [--cmdline FILE] [--host ADDR]

Sends the crash reports in the spool to the host's CrashListener, oldest first; crash_collector
becomes crash_sender once it has spooled a report. What cannot be sent stays for the next run.

  --spool DIR      the spool (default /var/spool/crash)
  --cmdline FILE   kernel command line with the maitred.* keys (default /proc/cmdline)
  --host ADDR      host address (default vsock:2:<maitred.host_port from --cmdline>)

Exit status: 0 all sent, 1 reports wait in the spool, 2 usage error.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderConfig {
    pub spool: PathBuf,
    pub cmdline: PathBuf,
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderArgsError {
    Help,
    MissingValue(String),
    Unknown(String),
}

impl fmt::Display for SenderArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Help => write!(f, "{USAGE}"),
            Self::MissingValue(flag) => write!(f, "{flag} needs a value"),
            Self::Unknown(arg) => write!(f, "unexpected argument {arg:?}"),
        }
    }
}

pub fn parse_args(args: &[String]) -> Result<SenderConfig, SenderArgsError> {
    let mut config = SenderConfig {
        spool: PathBuf::from(crate::spool::DEFAULT_DIR),
        cmdline: PathBuf::from("/proc/cmdline"),
        host: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| SenderArgsError::MissingValue(arg.clone()))
        };
        match arg.as_str() {
            "--help" | "-h" => return Err(SenderArgsError::Help),
            "--spool" => config.spool = value()?.into(),
            "--cmdline" => config.cmdline = value()?.into(),
            "--host" => config.host = Some(value()?),
            _ => return Err(SenderArgsError::Unknown(arg.clone())),
        }
    }
    Ok(config)
}

/// Sends what the spool holds, oldest first; false if the host cannot be reached.
pub fn flush_spool(spool: &Spool, sender: &Sender) -> bool {
    for entry in spool.pending() {
        let report = match spool.load(&entry) {
            Ok(report) => report,
            Err(e) => {
                log::line(format!("dropping an unreadable spooled report: {e}"));
                spool.remove(&entry.stem);
                continue;
            }
        };
        match sender.send(&report) {
            Ok(()) => {
                log::line(format!("crash report {} sent to the host", entry.stem));
                spool.remove(&entry.stem);
            }
            Err(e) if e.too_large() => {
                log::line(format!("dropping the spooled report {}: {e}", entry.stem));
                spool.remove(&entry.stem);
            }
            Err(e) => {
                log::line(format!(
                    "{e}; {} kept in {}",
                    entry.stem,
                    spool.dir.display()
                ));
                return false;
            }
        }
    }
    true
}

fn run(config: &SenderConfig) -> Result<(), String> {
    let spool = Spool::new(&config.spool);
    // Held until exit: the next sender waits, then finds only what is left.
    let _lock = spool
        .lock()
        .map_err(|e| format!("cannot lock the spool: {e}"))?;
    if spool.pending().is_empty() {
        return Ok(());
    }
    let params = GuestParams::from_proc_cmdline(&config.cmdline)
        .map_err(|why| format!("no host to send to ({why}); reports kept in the spool"))?;
    let addr = match &config.host {
        Some(text) => text
            .parse()
            .map_err(|e| format!("--host {text}: {e}; reports kept in the spool"))?,
        None => params.host_address(),
    };
    if flush_spool(&spool, &Sender::new(addr, params.token)) {
        Ok(())
    } else {
        Err("the host cannot be reached".into())
    }
}

/// crash_sender's `main`, given its arguments after argv[0].
pub fn run_main(argv: &[String]) -> ExitCode {
    let dumpable = sys::disable_core_dumps();
    sys::ensure_stdio();
    if let Err(e) = dumpable {
        log::line(format!("prctl(PR_SET_DUMPABLE, 0): {}", e.desc()));
    }
    let config = match parse_args(argv) {
        Ok(c) => c,
        Err(SenderArgsError::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            log::line(format!("{e}; see crash_sender --help"));
            return ExitCode::from(2);
        }
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            log::line(why);
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parse_args_defaults_to_the_guest_spool() {
        let c = parse_args(&[]).unwrap();
        assert_eq!(c.spool, PathBuf::from(crate::spool::DEFAULT_DIR));
        assert_eq!(c.cmdline, PathBuf::from("/proc/cmdline"));
        assert_eq!(c.host, None);
    }

    #[test]
    fn parse_args_takes_every_flag() {
        let c = parse_args(&args(&[
            "--spool",
            "/s",
            "--cmdline",
            "/c",
            "--host",
            "unix:/h",
        ]));
        assert_eq!(
            c.unwrap(),
            SenderConfig {
                spool: "/s".into(),
                cmdline: "/c".into(),
                host: Some("unix:/h".into()),
            }
        );
    }

    #[test]
    fn parse_args_refuses_strays_and_missing_values() {
        assert_eq!(
            parse_args(&args(&["--spool"])),
            Err(SenderArgsError::MissingValue("--spool".into()))
        );
        assert_eq!(
            parse_args(&args(&["x"])),
            Err(SenderArgsError::Unknown("x".into()))
        );
    }
}
