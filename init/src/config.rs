//! maitred's command line. As PID 1 it takes no flags (the kernel passes init whatever it
//! did not understand, which is ignored); in host mode the flags point it at test sockets.

use std::fmt;
use std::path::PathBuf;

use vm_proto::{Address, MAITRED_PORT};

pub const USAGE: &str = "\
usage: maitred [--listen ADDR] [--cmdline FILE] [--host ADDR] [--services DIR]

The guest's init and Maitred service. As PID 1 it takes no flags. Run as an ordinary
process (tests, demos) it skips mounts, hostname, core_pattern and power-off, acts as a
child subreaper, and Shutdown ends the process.

  --listen ADDR    serve Maitred here (default vsock:-1:8888); process I/O streams are
                   served on the same transport's port 8889 (a Unix PATH: PATH.exec),
                   port forwards on port 8890 (PATH.forward)
  --cmdline FILE   read the kernel command line from FILE (default /proc/cmdline)
  --host ADDR      the host services (default vsock:2:<maitred.host_port>)
  --services DIR   boot service files (default /etc/maitred)

ADDR is vsock:CID:PORT, unix:PATH or hybrid:UDS_PATH:PORT.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub pid1: bool,
    pub listen: Address,
    pub cmdline: PathBuf,
    /// None: vsock:2:<maitred.host_port>, known once the command line is read.
    pub host: Option<Address>,
    pub services: PathBuf,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    Help,
    MissingValue(String),
    Unknown(String),
    BadAddress(String, vm_proto::AddressError),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Help => f.write_str(USAGE),
            Self::MissingValue(flag) => write!(f, "{flag} needs a value; see --help"),
            Self::Unknown(arg) => write!(f, "unknown argument {arg:?}; see --help"),
            Self::BadAddress(flag, e) => write!(f, "{flag}: {e}"),
        }
    }
}

impl Config {
    /// Where process I/O streams are served: beside `listen` (see vm_proto::stream).
    pub fn exec_listen(&self) -> Address {
        vm_proto::stream::exec_address(&self.listen)
    }

    pub fn defaults(pid1: bool) -> Config {
        Config {
            pid1,
            listen: Address::Vsock {
                cid: vm_proto::ANY_CID,
                port: MAITRED_PORT,
            },
            cmdline: PathBuf::from(vm_proto::cmdline::PROC_CMDLINE),
            host: None,
            services: PathBuf::from("/etc/maitred"),
        }
    }

    pub fn from_args(pid1: bool, args: &[String]) -> Result<Config, ConfigError> {
        let mut config = Config::defaults(pid1);
        if pid1 {
            return Ok(config);
        }
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                return Err(ConfigError::Help);
            }
            let known = ["--listen", "--cmdline", "--host", "--services"];
            if !known.contains(&flag.as_str()) {
                return Err(ConfigError::Unknown(flag.clone()));
            }
            let value = args
                .next()
                .ok_or_else(|| ConfigError::MissingValue(flag.clone()))?;
            let address = || {
                value
                    .parse::<Address>()
                    .map_err(|e| ConfigError::BadAddress(flag.clone(), e))
            };
            match flag.as_str() {
                "--listen" => config.listen = address()?,
                "--host" => config.host = Some(address()?),
                "--cmdline" => config.cmdline = PathBuf::from(value),
                _ => config.services = PathBuf::from(value),
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn from_args_pid1_ignores_kernel_leftovers() {
        let c = Config::from_args(true, &args(&["quiet", "--bogus"])).unwrap();
        assert_eq!(c, Config::defaults(true));
        assert_eq!(c.listen.to_string(), "vsock:-1:8888");
    }

    #[test]
    fn from_args_host_mode_flags() {
        let c = Config::from_args(
            false,
            &args(&[
                "--listen",
                "unix:/tmp/m",
                "--cmdline",
                "/tmp/c",
                "--host",
                "unix:/tmp/h",
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, Address::Unix("/tmp/m".into()));
        assert_eq!(c.cmdline, PathBuf::from("/tmp/c"));
        assert_eq!(c.host, Some(Address::Unix("/tmp/h".into())));
    }

    #[test]
    fn from_args_bad_input_is_a_clear_error() {
        assert_eq!(
            Config::from_args(false, &args(&["--help"])),
            Err(ConfigError::Help)
        );
        assert_eq!(
            Config::from_args(false, &args(&["--listen"])),
            Err(ConfigError::MissingValue("--listen".into()))
        );
        assert!(matches!(
            Config::from_args(false, &args(&["--listen", "vsock:x:1"])),
            Err(ConfigError::BadAddress(..))
        ));
        assert_eq!(
            Config::from_args(false, &args(&["extra"])),
            Err(ConfigError::Unknown("extra".into()))
        );
    }
}
