//! The host end of a VM's network: a TAP device named after the VM's CID, holding the
//! gateway address of the VM's /30, created with iproute2 (root only) and removed at
//! teardown. A tap left by a killed launcher is replaced by the next VM with that CID.

use std::fmt;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::pool::Ipv4Subnet;

#[derive(Debug)]
pub struct TapError {
    pub step: String,
    pub detail: String,
}

impl fmt::Display for TapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot set up the VM's network ({}): {}; --net tap needs root and /dev/net/tun",
            self.step, self.detail
        )
    }
}

/// A TAP device that is deleted when dropped.
#[derive(Debug)]
pub struct Tap {
    pub name: String,
    pub host_ip: Ipv4Addr,
    pub netmask: Ipv4Addr,
}

pub fn tap_name(cid: u32) -> String {
    format!("vmtap{cid}")
}

fn ip(args: &[&str]) -> Result<(), TapError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TapError {
            step: format!("ip {}", args.join(" ")),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TapError {
            step: format!("ip {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

impl Tap {
    pub fn create(cid: u32, net: &Ipv4Subnet) -> Result<Tap, TapError> {
        let name = tap_name(cid);
        // A killed launcher's tap: ours now, since we hold this CID's lease.
        let _ = ip(&["tuntap", "del", "dev", &name, "mode", "tap"]);
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"])?;
        let tap = Tap {
            name,
            host_ip: net.gateway,
            netmask: net.netmask,
        };
        let address = format!("{}/30", net.gateway);
        ip(&["addr", "add", &address, "dev", &tap.name])?;
        ip(&["link", "set", &tap.name, "up"])?;
        Ok(tap)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = ip(&["tuntap", "del", "dev", &self.name, "mode", "tap"]);
    }
}
