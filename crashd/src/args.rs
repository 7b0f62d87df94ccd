//! crash_collector's command line → [`Config`]. The kernel runs it as
//! `|/sbin/crash_collector -- %P %s %t %e` (global pid, signal, Unix time, executable name);
//! the flags exist for tests and for converting a saved core by hand.
//!
//! Flags come first and the kernel's values only after the `--` marker, where nothing is a
//! flag: `%e` is a name the crashing process chose itself (`prctl(PR_SET_NAME)`), so a
//! process named `-h` or `--host` must not be able to change what happens to its report.

use std::fmt;
use std::path::PathBuf;

use crate::collect::{CrashArgs, MemorySource, DEFAULT_MAX_SIZE};

/// The smallest cap accepted: room for the crashing thread, its stack and the main module.
pub const MIN_MAX_SIZE: u64 = 64 << 10;

pub const USAGE: &str = "\
usage: crash_collector [options] -- PID SIGNAL TIME EXE

The kernel's core_pattern pipe helper: reads an ELF core on stdin, writes a minidump with
its metadata into the spool, then becomes crash_sender, which sends the spool to the host's
CrashListener, oldest first (what cannot be sent waits for the next run).

  --host ADDR        host address, passed to crash_sender
                     (default vsock:2:<maitred.host_port from --cmdline>)
  --cmdline FILE     kernel command line with the maitred.* keys (default /proc/cmdline)
  --proc DIR         /proc root to read the crashed process from (default /proc)
  --core FILE        read the core from FILE instead of stdin
  --spool DIR        where unsent reports wait (default /var/spool/crash)
  --memory-source S  auto: memory from /proc/PID/mem, the core for what it lacks, and the
                     rest of the core is not read (the kernel's dump ends when we exit);
                     core: only from the core, read to its end (default auto)
  --max-size BYTES   minidump size cap, suffix K or M allowed (default 8M, at least 64K)
  --output DIR       write <exe>.<date>.<pid>.dmp/.meta to DIR instead of sending
  --sender PATH      crash_sender to run (default: crash_sender beside this binary)

Everything after -- is a value, never a flag. EXE may be split into several arguments (older
kernels split %e at spaces): they are joined with spaces.

Exit status: 0 sent or written, 1 kept in the spool, 2 usage error, 3 nothing could be kept.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub crash: CrashArgs,
    pub host: Option<String>,
    pub cmdline: PathBuf,
    pub proc_root: PathBuf,
    pub core: Option<PathBuf>,
    pub spool: PathBuf,
    pub max_size: u64,
    pub memory_source: MemorySource,
    pub output: Option<PathBuf>,
    /// crash_sender, which this process becomes once the report is in the spool.
    pub sender: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgsError {
    Help,
    MissingValue(String),
    UnknownOption(String),
    BadNumber {
        what: &'static str,
        value: String,
    },
    Positional(usize),
    /// A value before `--` (or no `--` at all).
    NoMarker(Option<String>),
    BadChoice {
        flag: &'static str,
        value: String,
    },
}

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Help => write!(f, "{USAGE}"),
            Self::MissingValue(flag) => write!(f, "{flag} needs a value"),
            Self::UnknownOption(flag) => write!(f, "unknown option {flag:?}"),
            Self::BadNumber { what, value } => write!(f, "{what} {value:?} is not a valid number"),
            Self::Positional(n) => {
                write!(
                    f,
                    "expected PID SIGNAL TIME EXE after --, got {n} arguments"
                )
            }
            Self::NoMarker(Some(arg)) => {
                write!(f, "unexpected {arg:?}: PID SIGNAL TIME EXE go after --")
            }
            Self::NoMarker(None) => write!(f, "missing -- before PID SIGNAL TIME EXE"),
            Self::BadChoice { flag, value } => write!(f, "{flag} {value:?}: expected auto or core"),
        }
    }
}

impl std::error::Error for ArgsError {}

fn number<T: std::str::FromStr>(what: &'static str, value: &str) -> Result<T, ArgsError> {
    value.parse().map_err(|_| ArgsError::BadNumber {
        what,
        value: value.to_string(),
    })
}

/// "8M", "512K", "1000".
pub fn parse_size(value: &str) -> Result<u64, ArgsError> {
    let (digits, shift) = match value.as_bytes().last() {
        Some(b'K' | b'k') => (&value[..value.len() - 1], 10),
        Some(b'M' | b'm') => (&value[..value.len() - 1], 20),
        _ => (value, 0),
    };
    let n: u64 = number("--max-size", digits)?;
    n.checked_mul(1 << shift).ok_or(ArgsError::BadNumber {
        what: "--max-size",
        value: value.to_string(),
    })
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Config, ArgsError> {
    let mut config = Config {
        crash: CrashArgs::default(),
        host: None,
        cmdline: PathBuf::from("/proc/cmdline"),
        proc_root: PathBuf::from("/proc"),
        core: None,
        spool: PathBuf::from(crate::spool::DEFAULT_DIR),
        max_size: DEFAULT_MAX_SIZE,
        memory_source: MemorySource::Auto,
        output: None,
        sender: None,
    };
    let mut positional = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let flag = arg.as_str();
        if flag == "--" {
            positional = Some(it.as_slice());
            break;
        }
        if flag == "--help" || flag == "-h" {
            return Err(ArgsError::Help);
        }
        if !flag.starts_with("--") {
            return Err(ArgsError::NoMarker(Some(arg.clone())));
        }
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| ArgsError::MissingValue(flag.to_string()))
        };
        match flag {
            "--host" => config.host = Some(value()?),
            "--cmdline" => config.cmdline = value()?.into(),
            "--proc" => config.proc_root = value()?.into(),
            "--core" => config.core = Some(value()?.into()),
            "--spool" => config.spool = value()?.into(),
            "--max-size" => config.max_size = parse_size(&value()?)?.max(MIN_MAX_SIZE),
            "--output" => config.output = Some(value()?.into()),
            "--sender" => config.sender = Some(value()?.into()),
            "--memory-source" => {
                config.memory_source = match value()?.as_str() {
                    "auto" => MemorySource::Auto,
                    "core" => MemorySource::Core,
                    other => {
                        return Err(ArgsError::BadChoice {
                            flag: "--memory-source",
                            value: other.into(),
                        })
                    }
                }
            }
            other => return Err(ArgsError::UnknownOption(other.to_string())),
        }
    }
    let positional = positional.ok_or(ArgsError::NoMarker(None))?;
    if positional.len() < 4 {
        return Err(ArgsError::Positional(positional.len()));
    }
    config.crash = CrashArgs {
        pid: number("PID", &positional[0])?,
        signal: number("SIGNAL", &positional[1])?,
        time: number("TIME", &positional[2])?,
        // Older kernels split %e at spaces: whatever follows is the rest of the name.
        exe: positional[3..].join(" "),
    };
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parse_core_pattern_arguments() {
        let c = parse(&args(&["--", "123", "11", "1700000000", "my", "app"])).unwrap();
        assert_eq!(
            c.crash,
            CrashArgs {
                pid: 123,
                signal: 11,
                time: 1_700_000_000,
                exe: "my app".into()
            }
        );
        assert_eq!(c.max_size, DEFAULT_MAX_SIZE);
        assert_eq!(c.proc_root, PathBuf::from("/proc"));
        assert!(c.host.is_none() && c.output.is_none());
    }

    #[test]
    fn parse_flags_before_the_marker() {
        let c = parse(&args(&[
            "--host",
            "unix:/tmp/x",
            "--max-size",
            "512K",
            "--proc",
            "/snap",
            "--",
            "1",
            "6",
            "0",
            "sh",
        ]))
        .unwrap();
        assert_eq!(c.host.as_deref(), Some("unix:/tmp/x"));
        assert_eq!(c.max_size, 512 << 10);
        assert_eq!(c.proc_root, PathBuf::from("/snap"));
        assert_eq!(c.crash.exe, "sh");
    }

    /// `%e` is the crashing process's own choice: whatever it is, it stays the name.
    #[test]
    fn parse_process_names_that_look_like_flags_are_names() {
        let core_pattern = |name: &[&str]| {
            let mut a = vec!["--", "42", "11", "1700000000"];
            a.extend_from_slice(name);
            parse(&args(&a))
        };
        for name in ["-h", "--help", "--host", "--", "--output", "--spool", "-"] {
            let c = core_pattern(&[name]).unwrap();
            assert_eq!(c.crash.exe, name);
            assert_eq!(c.crash.pid, 42);
        }
        // A kernel older than 5.3 splits `%e` at spaces: still one name, nothing redirected.
        let c = core_pattern(&["--host", "unix:/evil", "--output", "/tmp"]).unwrap();
        assert_eq!(c.crash.exe, "--host unix:/evil --output /tmp");
        assert!(c.host.is_none() && c.output.is_none());
        assert_eq!(c.spool, PathBuf::from(crate::spool::DEFAULT_DIR));
    }

    #[test]
    fn parse_values_without_the_marker_are_refused() {
        assert_eq!(
            parse(&args(&["1", "2", "3", "e"])),
            Err(ArgsError::NoMarker(Some("1".into())))
        );
        assert_eq!(
            parse(&args(&["--spool", "/s"])),
            Err(ArgsError::NoMarker(None))
        );
        assert_eq!(
            parse(&args(&["--host", "unix:/x", "1", "--", "2", "3", "e"])),
            Err(ArgsError::NoMarker(Some("1".into())))
        );
    }

    #[test]
    fn parse_bad_input_is_a_clear_error() {
        assert_eq!(
            parse(&args(&["--", "1", "2"])),
            Err(ArgsError::Positional(2))
        );
        assert!(matches!(
            parse(&args(&["--", "x", "2", "3", "e"])),
            Err(ArgsError::BadNumber { what: "PID", .. })
        ));
        assert_eq!(
            parse(&args(&["--spool"])),
            Err(ArgsError::MissingValue("--spool".into()))
        );
        assert!(matches!(
            parse(&args(&["--frob", "1"])),
            Err(ArgsError::UnknownOption(_))
        ));
        assert!(parse_size("8G").is_err());
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse(&args(&["-h"])), Err(ArgsError::Help));
        assert!(matches!(
            parse(&args(&[
                "--memory-source",
                "disk",
                "--",
                "1",
                "2",
                "3",
                "e"
            ])),
            Err(ArgsError::BadChoice { .. })
        ));
        let c = parse(&args(&[
            "--memory-source",
            "core",
            "--",
            "1",
            "2",
            "3",
            "e",
        ]))
        .unwrap();
        assert_eq!(c.memory_source, MemorySource::Core);
        assert!(ArgsError::NoMarker(None).to_string().contains("--"));
    }
}
