//! One address syntax for every program and flag:
//! `vsock:CID:PORT` (kernel AF_VSOCK; `vsock:-1:PORT` listens on any CID),
//! `unix:PATH` (Unix stream socket) and `hybrid:UDS_PATH:PORT` (the hybrid vsock of
//! Firecracker, Cloud Hypervisor and vhost-device-vsock: connect to UDS_PATH and ask for PORT;
//! listening on it means listening on `UDS_PATH_PORT`, where guest→host connections arrive).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::ANY_CID;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Vsock { cid: u32, port: u32 },
    Unix(PathBuf),
    Hybrid { uds: PathBuf, port: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    UnknownScheme(String),
    MissingPort(String),
    BadCid(String),
    BadPort(String),
    EmptyPath(String),
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const FORMS: &str = "expected vsock:CID:PORT, unix:PATH or hybrid:UDS_PATH:PORT";
        match self {
            Self::UnknownScheme(a) => write!(f, "address {a:?}: unknown kind; {FORMS}"),
            Self::MissingPort(a) => write!(f, "address {a:?}: no port; {FORMS}"),
            Self::BadCid(a) => write!(
                f,
                "address {a:?}: the CID must be a number from 0 to 4294967294, or -1 for any"
            ),
            Self::BadPort(a) => write!(
                f,
                "address {a:?}: the port must be a number from 1 to 4294967294"
            ),
            Self::EmptyPath(a) => write!(f, "address {a:?}: the socket path is empty"),
        }
    }
}

impl std::error::Error for AddressError {}

impl Address {
    /// The Unix socket path a listener on this address binds, if it is a Unix one.
    pub fn listen_path(&self) -> Option<PathBuf> {
        match self {
            Self::Vsock { .. } => None,
            Self::Unix(path) => Some(path.clone()),
            Self::Hybrid { uds, port } => Some(hybrid_host_path(uds, *port)),
        }
    }
}

/// Where the hybrid vsock back-end connects when the guest dials the host's `port`.
pub fn hybrid_host_path(uds: &std::path::Path, port: u32) -> PathBuf {
    let mut path = uds.as_os_str().to_owned();
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

fn parse_port(text: &str, addr: &str) -> Result<u32, AddressError> {
    match text.parse::<u32>() {
        Ok(port) if port != 0 && port != u32::MAX => Ok(port),
        _ => Err(AddressError::BadPort(addr.to_string())),
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(addr: &str) -> Result<Self, AddressError> {
        let (scheme, rest) = addr
            .split_once(':')
            .ok_or_else(|| AddressError::UnknownScheme(addr.to_string()))?;
        match scheme {
            "unix" if rest.is_empty() => Err(AddressError::EmptyPath(addr.to_string())),
            "unix" => Ok(Self::Unix(PathBuf::from(rest))),
            "vsock" => {
                let (cid, port) = rest
                    .split_once(':')
                    .ok_or_else(|| AddressError::MissingPort(addr.to_string()))?;
                let cid = match cid {
                    "-1" => ANY_CID,
                    _ => match cid.parse::<u32>() {
                        Ok(cid) if cid != ANY_CID => cid,
                        _ => return Err(AddressError::BadCid(addr.to_string())),
                    },
                };
                Ok(Self::Vsock {
                    cid,
                    port: parse_port(port, addr)?,
                })
            }
            "hybrid" => {
                // The path may itself hold colons; the port is after the last one.
                let (uds, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| AddressError::MissingPort(addr.to_string()))?;
                if uds.is_empty() {
                    return Err(AddressError::EmptyPath(addr.to_string()));
                }
                Ok(Self::Hybrid {
                    uds: PathBuf::from(uds),
                    port: parse_port(port, addr)?,
                })
            }
            _ => Err(AddressError::UnknownScheme(addr.to_string())),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vsock { cid, port } if *cid == ANY_CID => write!(f, "vsock:-1:{port}"),
            Self::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Hybrid { uds, port } => write!(f, "hybrid:{}:{port}", uds.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_each_kind_round_trips() {
        for text in [
            "vsock:3:8888",
            "vsock:-1:8888",
            "unix:/tmp/a b:c.sock",
            "hybrid:/run/vm:1/vsock.sock:1024",
        ] {
            let addr: Address = text.parse().unwrap();
            assert_eq!(addr.to_string(), text);
        }
        assert_eq!(
            "vsock:-1:7".parse::<Address>().unwrap(),
            Address::Vsock {
                cid: ANY_CID,
                port: 7
            }
        );
    }

    #[test]
    fn parse_bad_input_names_the_problem() {
        let cases = [
            ("vsock:x:1", AddressError::BadCid("vsock:x:1".into())),
            ("vsock:3", AddressError::MissingPort("vsock:3".into())),
            ("vsock:3:0", AddressError::BadPort("vsock:3:0".into())),
            ("vsock:3:-5", AddressError::BadPort("vsock:3:-5".into())),
            (
                "vsock:4294967295:1",
                AddressError::BadCid("vsock:4294967295:1".into()),
            ),
            (
                "hybrid:/nope",
                AddressError::MissingPort("hybrid:/nope".into()),
            ),
            ("hybrid::5", AddressError::EmptyPath("hybrid::5".into())),
            ("unix:", AddressError::EmptyPath("unix:".into())),
            (
                "tcp:1.2.3.4:5",
                AddressError::UnknownScheme("tcp:1.2.3.4:5".into()),
            ),
            ("", AddressError::UnknownScheme("".into())),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Address>(), Err(want.clone()), "{text}");
            assert!(want.to_string().contains(text));
        }
    }

    #[test]
    fn listen_path_of_hybrid_is_the_port_socket() {
        let addr: Address = "hybrid:/run/vm.vsock:9999".parse().unwrap();
        assert_eq!(
            addr.listen_path(),
            Some(PathBuf::from("/run/vm.vsock_9999"))
        );
    }
}
