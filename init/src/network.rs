//! ConfigureNetwork: give eth0 the host-assigned IPv4 address, bring lo and eth0 up, and route
//! everything through the gateway.

use std::fmt;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use vm_proto::protos::guest::IPv4Config;

use crate::sys;

pub const GUEST_INTERFACE: &str = "eth0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Settings {
    pub address: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

#[derive(Debug, PartialEq, Eq)]
pub enum NetworkError {
    Missing(&'static str),
    Invalid(String),
    Syscall { what: String, errno: Errno },
}

impl fmt::Display for NetworkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(field) => write!(f, "ipv4_config.{field} is missing or zero"),
            Self::Invalid(why) => f.write_str(why),
            Self::Syscall { what, errno } => write!(f, "{what} failed: {}", errno.desc()),
        }
    }
}

/// The proto carries addresses as fixed32 in network byte order: the in-memory bytes of the
/// u32 are the address octets.
fn from_wire(value: u32) -> Ipv4Addr {
    Ipv4Addr::from(value.to_ne_bytes())
}

pub fn validate(config: Option<&IPv4Config>) -> Result<Ipv4Settings, NetworkError> {
    let config = config.ok_or(NetworkError::Missing("(all)"))?;
    let nonzero = |value: u32, field| {
        if value == 0 {
            Err(NetworkError::Missing(field))
        } else {
            Ok(from_wire(value))
        }
    };
    let settings = Ipv4Settings {
        address: nonzero(config.get_address(), "address")?,
        netmask: nonzero(config.get_netmask(), "netmask")?,
        gateway: nonzero(config.get_gateway(), "gateway")?,
    };
    let mask = u32::from(settings.netmask);
    if mask.leading_ones() + mask.trailing_zeros() != 32 {
        return Err(NetworkError::Invalid(format!(
            "netmask {} is not contiguous",
            settings.netmask
        )));
    }
    let same_net = |a: Ipv4Addr| u32::from(a) & mask == u32::from(settings.address) & mask;
    if !same_net(settings.gateway) || settings.gateway == settings.address {
        return Err(NetworkError::Invalid(format!(
            "gateway {} is not another host on {}/{}",
            settings.gateway,
            settings.address,
            mask.leading_ones()
        )));
    }
    Ok(settings)
}

fn inet_socket() -> Result<OwnedFd, NetworkError> {
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|errno| NetworkError::Syscall {
        what: "socket(AF_INET)".into(),
        errno,
    })
}

fn call(what: &str, result: Result<(), Errno>) -> Result<(), NetworkError> {
    result.map_err(|errno| NetworkError::Syscall {
        what: what.to_string(),
        errno,
    })
}

/// Brings the loopback interface up (at boot).
pub fn loopback_up() -> Result<(), NetworkError> {
    let sock = inet_socket()?;
    call("bringing lo up", sys::set_interface_up(&sock, "lo"))
}

pub fn apply(settings: &Ipv4Settings) -> Result<(), NetworkError> {
    let sock = inet_socket()?;
    let eth = GUEST_INTERFACE;
    call("bringing lo up", sys::set_interface_up(&sock, "lo"))?;
    call(
        &format!("setting the address of {eth}"),
        sys::set_interface_ipv4(&sock, eth, libc::SIOCSIFADDR, settings.address),
    )?;
    call(
        &format!("setting the netmask of {eth}"),
        sys::set_interface_ipv4(&sock, eth, libc::SIOCSIFNETMASK, settings.netmask),
    )?;
    call(
        &format!("bringing {eth} up"),
        sys::set_interface_up(&sock, eth),
    )?;
    call(
        "adding the default route",
        sys::add_default_route(&sock, settings.gateway),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    fn config(address: [u8; 4], netmask: [u8; 4], gateway: [u8; 4]) -> IPv4Config {
        let mut c = IPv4Config::new();
        c.set_address(wire(address));
        c.set_netmask(wire(netmask));
        c.set_gateway(wire(gateway));
        c
    }

    #[test]
    fn validate_launcher_subnet() {
        let c = config([100, 115, 92, 6], [255, 255, 255, 252], [100, 115, 92, 5]);
        let s = validate(Some(&c)).unwrap();
        assert_eq!(s.address, Ipv4Addr::new(100, 115, 92, 6));
        assert_eq!(s.gateway, Ipv4Addr::new(100, 115, 92, 5));
    }

    #[test]
    fn validate_rejects_zero_and_nonsense() {
        let ok = ([10, 0, 0, 2], [255, 255, 255, 0], [10, 0, 0, 1]);
        assert_eq!(validate(None), Err(NetworkError::Missing("(all)")));
        assert_eq!(
            validate(Some(&config([0; 4], ok.1, ok.2))),
            Err(NetworkError::Missing("address"))
        );
        assert_eq!(
            validate(Some(&config(ok.0, [0; 4], ok.2))),
            Err(NetworkError::Missing("netmask"))
        );
        assert_eq!(
            validate(Some(&config(ok.0, ok.1, [0; 4]))),
            Err(NetworkError::Missing("gateway"))
        );
        assert!(validate(Some(&config(ok.0, [255, 0, 255, 0], ok.2))).is_err());
        assert!(validate(Some(&config(ok.0, ok.1, [10, 0, 1, 1]))).is_err());
        assert!(validate(Some(&config(ok.0, ok.1, ok.0))).is_err());
    }
}
