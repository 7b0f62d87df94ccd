//! The values a lease hands out besides numbers: a locally administered MAC and a
//! point-to-point IPv4 /30.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::str::FromStr;

/// A MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random locally administered unicast MAC, `02:xx:xx:xx:xx:xx`.
    pub fn random_local() -> io::Result<MacAddr> {
        let mut bytes = [0u8; 6];
        File::open("/dev/urandom")?.read_exact(&mut bytes[1..])?;
        bytes[0] = 0x02;
        Ok(MacAddr(bytes))
    }

    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<MacAddr, String> {
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().filter(|p| p.len() == 2);
            *byte = part
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| {
                    format!("MAC {text:?}: expected six hex pairs like 02:00:5e:10:00:01")
                })?;
        }
        match parts.next() {
            None => Ok(MacAddr(bytes)),
            Some(_) => Err(format!("MAC {text:?}: more than six parts")),
        }
    }
}

/// One VM's point-to-point IPv4 /30: the host end (gateway) and the guest end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Subnet {
    pub network: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub guest: Ipv4Addr,
    pub netmask: Ipv4Addr,
}

impl Ipv4Subnet {
    pub const PREFIX_LEN: u8 = 30;

    /// The `index`-th /30 after `base`: network .4n, gateway .4n+1, guest .4n+2.
    pub fn nth(base: Ipv4Addr, index: u32) -> Ipv4Subnet {
        let network = u32::from(base).wrapping_add(index.wrapping_mul(4));
        Ipv4Subnet {
            network: Ipv4Addr::from(network),
            gateway: Ipv4Addr::from(network.wrapping_add(1)),
            guest: Ipv4Addr::from(network.wrapping_add(2)),
            netmask: Ipv4Addr::new(255, 255, 255, 252),
        }
    }
}

impl fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, Self::PREFIX_LEN)
    }
}
