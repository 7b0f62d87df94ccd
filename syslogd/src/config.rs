//! vm_syslog's command line → [`Config`]. Every path can be moved so tests run without root
//! and without a VM.

use std::fmt;
use std::path::PathBuf;

use vm_proto::Address;

pub const USAGE: &str = "\
usage: vm_syslog [options]

  --socket PATH        the syslog datagram socket to serve (default /dev/log)
  --stream-socket PATH the syslog stream socket, for SOCK_STREAM-only clients
                       (default /dev/log-stream; octet-counted or newline-framed)
  --socket-fd N        serve the datagram socket inherited as fd N instead of binding
                       one (maitred binds it at boot: what is sent before vm_syslog runs,
                       or while it restarts, waits in the socket); the path is kept
  --stream-socket-fd N the same for the stream socket
  --kmsg PATH          the kernel log to read (default /dev/kmsg)
  --no-kmsg            do not read a kernel log
  --host ADDR          the host's LogCollector (default vsock:2:<maitred.host_port>)
  --cmdline FILE       kernel command line with maitred.token (default /proc/cmdline)
  --buffer-bytes N     records kept while the host is away; K and M suffixes (default 8M)
  --state FILE         the delivered kmsg position and the batch numbering
                       (default /run/vm_syslog.state)

Exit status: 0 after SIGTERM (everything flushed), 1 on a runtime error, 2 on a usage error.";

pub const DEFAULT_BUFFER_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub socket: PathBuf,
    pub stream_socket: PathBuf,
    /// An inherited, already bound datagram socket to serve instead of binding `socket`.
    pub socket_fd: Option<i32>,
    /// The same for the stream socket.
    pub stream_socket_fd: Option<i32>,
    /// None: no kernel log (`--no-kmsg`).
    pub kmsg: Option<PathBuf>,
    /// None: `vsock:2:<maitred.host_port>` from the command line.
    pub host: Option<Address>,
    pub cmdline: PathBuf,
    pub buffer_bytes: usize,
    pub state: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: PathBuf::from("/dev/log"),
            stream_socket: PathBuf::from("/dev/log-stream"),
            socket_fd: None,
            stream_socket_fd: None,
            kmsg: Some(PathBuf::from("/dev/kmsg")),
            host: None,
            cmdline: PathBuf::from("/proc/cmdline"),
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            state: PathBuf::from("/run/vm_syslog.state"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Run(Config),
}

/// A usage error: exit status 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; see --help", self.0)
    }
}

impl std::error::Error for UsageError {}

/// `N`, `NK` or `NM` (binary multiples), at least 1.
fn parse_bytes(flag: &str, value: &str) -> Result<usize, UsageError> {
    let bad = || {
        UsageError(format!(
            "{flag} {value:?}: expected a size like 65536, 64K or 8M"
        ))
    };
    let (digits, unit) = match value.char_indices().last() {
        Some((i, 'k' | 'K')) => (&value[..i], 1usize << 10),
        Some((i, 'm' | 'M')) => (&value[..i], 1 << 20),
        _ => (value, 1),
    };
    let n: usize = digits.parse().map_err(|_| bad())?;
    match n.checked_mul(unit) {
        Some(bytes) if bytes > 0 => Ok(bytes),
        _ => Err(bad()),
    }
}

/// An inherited descriptor: 3 or more (0-2 are stdio).
fn parse_fd(flag: &str, value: &str) -> Result<i32, UsageError> {
    match value.parse::<i32>() {
        Ok(fd) if fd >= 3 => Ok(fd),
        _ => Err(UsageError(format!(
            "{flag} {value:?}: expected an inherited descriptor number, 3 or more"
        ))),
    }
}

pub fn parse_args(args: &[String]) -> Result<Command, UsageError> {
    let mut config = Config::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let flag = flag.as_str();
        match flag {
            "--help" | "-h" => return Ok(Command::Help),
            "--no-kmsg" => {
                config.kmsg = None;
                continue;
            }
            _ => {}
        }
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| UsageError(format!("{flag} needs a value")))
        };
        match flag {
            "--socket" => config.socket = value()?.into(),
            "--stream-socket" => config.stream_socket = value()?.into(),
            "--socket-fd" => config.socket_fd = Some(parse_fd(flag, &value()?)?),
            "--stream-socket-fd" => config.stream_socket_fd = Some(parse_fd(flag, &value()?)?),
            "--kmsg" => config.kmsg = Some(value()?.into()),
            "--host" => {
                let text = value()?;
                let addr = text
                    .parse()
                    .map_err(|e| UsageError(format!("--host: {e}")))?;
                config.host = Some(addr);
            }
            "--cmdline" => config.cmdline = value()?.into(),
            "--buffer-bytes" => config.buffer_bytes = parse_bytes(flag, &value()?)?,
            "--state" => config.state = value()?.into(),
            other => return Err(UsageError(format!("unknown option {other:?}"))),
        }
    }
    Ok(Command::Run(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn socket_fds_are_descriptors_from_3_up() {
        let Ok(Command::Run(c)) =
            parse_args(&args(&["--socket-fd", "3", "--stream-socket-fd", "4"]))
        else {
            panic!("parse failed")
        };
        assert_eq!((c.socket_fd, c.stream_socket_fd), (Some(3), Some(4)));
        for bad in ["2", "-1", "x", ""] {
            let err = parse_args(&args(&["--socket-fd", bad])).unwrap_err();
            assert!(err.0.contains("inherited descriptor"), "{err}");
        }
    }

    #[test]
    fn parse_args_none_gives_guest_defaults() {
        assert_eq!(parse_args(&[]), Ok(Command::Run(Config::default())));
    }

    #[test]
    fn parse_args_every_flag_is_applied() {
        let got = parse_args(&args(&[
            "--socket",
            "/tmp/log",
            "--stream-socket",
            "/tmp/log-stream",
            "--kmsg",
            "/tmp/kmsg",
            "--host",
            "unix:/tmp/host.sock",
            "--cmdline",
            "/tmp/cmdline",
            "--buffer-bytes",
            "64K",
            "--state",
            "/tmp/state",
        ]))
        .unwrap();
        assert_eq!(
            got,
            Command::Run(Config {
                socket: "/tmp/log".into(),
                stream_socket: "/tmp/log-stream".into(),
                socket_fd: None,
                stream_socket_fd: None,
                kmsg: Some("/tmp/kmsg".into()),
                host: Some(Address::Unix("/tmp/host.sock".into())),
                cmdline: "/tmp/cmdline".into(),
                buffer_bytes: 65536,
                state: "/tmp/state".into(),
            })
        );
        let Ok(Command::Run(c)) = parse_args(&args(&["--no-kmsg"])) else {
            panic!()
        };
        assert_eq!(c.kmsg, None);
    }

    #[test]
    fn parse_args_bad_input_is_a_usage_error_naming_it() {
        for (a, want) in [
            (vec!["--frobnicate"], "unknown option \"--frobnicate\""),
            (vec!["--socket"], "--socket needs a value"),
            (vec!["--host", "tcp:1"], "--host"),
            (vec!["--buffer-bytes", "lots"], "--buffer-bytes \"lots\""),
            (vec!["--buffer-bytes", "0"], "--buffer-bytes"),
            (
                vec!["--buffer-bytes", "99999999999999999999M"],
                "--buffer-bytes",
            ),
        ] {
            let err = parse_args(&args(&a)).unwrap_err().to_string();
            assert!(err.contains(want), "{a:?}: {err}");
        }
    }

    #[test]
    fn parse_bytes_suffixes() {
        assert_eq!(parse_bytes("f", "8M"), Ok(8 << 20));
        assert_eq!(parse_bytes("f", "1k"), Ok(1024));
        assert_eq!(parse_bytes("f", "100"), Ok(100));
    }

    #[test]
    fn parse_args_help() {
        assert_eq!(parse_args(&args(&["--help"])), Ok(Command::Help));
    }
}
