//! The host end of a VM's network: a TAP device named after the VM's CID, holding the
//! gateway address of the VM's /30, created with iproute2 (root only) and removed at
//! teardown. A tap left by a killed launcher is replaced by the next VM with that CID, or
//! reclaimed sooner by any launcher that starts: each tap's alias names its owner (runtime
//! dir and VM id), so a launcher can tell which taps are its pool's and whose lease is gone.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
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

/// Whose a tap is: recorded as the link's alias (`ip link set … alias`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub runtime_dir: PathBuf,
    pub vm_id: String,
}

const ALIAS_PREFIX: &str = "vm_launcher id=";

impl Owner {
    /// `vm_launcher id=<id> runtime=<dir>` (the dir last: it may hold spaces).
    fn alias(&self) -> String {
        format!(
            "{ALIAS_PREFIX}{} runtime={}",
            self.vm_id,
            self.runtime_dir.display()
        )
    }

    fn parse(alias: &str) -> Option<Owner> {
        let rest = alias.trim_end_matches('\n').strip_prefix(ALIAS_PREFIX)?;
        let (id, dir) = rest.split_once(" runtime=")?;
        Some(Owner {
            runtime_dir: PathBuf::from(dir),
            vm_id: id.to_string(),
        })
    }
}

/// A tap on this host that a launcher made: its CID and, if it says, its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingTap {
    pub name: String,
    pub cid: u32,
    pub owner: Option<Owner>,
}

/// Every `vmtap<cid>` link on the host (from /sys/class/net).
pub fn existing() -> Vec<ExistingTap> {
    let net = Path::new("/sys/class/net");
    let Ok(entries) = std::fs::read_dir(net) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let cid = name.strip_prefix("vmtap")?.parse().ok()?;
            Some(ExistingTap {
                cid,
                owner: owner_of(&name),
                name,
            })
        })
        .collect()
}

/// The owner a tap's alias records, read afresh.
pub fn owner_of(name: &str) -> Option<Owner> {
    let alias = std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("ifalias"));
    Owner::parse(&alias.ok()?)
}

/// Deletes a tap found by [`existing`].
pub fn delete(name: &str) -> Result<(), TapError> {
    ip(&["link", "del", "dev", name])
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
    pub fn create(cid: u32, net: &Ipv4Subnet, owner: &Owner) -> Result<Tap, TapError> {
        let name = tap_name(cid);
        // A killed launcher's tap: ours now, since we hold this CID's lease.
        let _ = ip(&["tuntap", "del", "dev", &name, "mode", "tap"]);
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"])?;
        let tap = Tap {
            name,
            host_ip: net.gateway,
            netmask: net.netmask,
        };
        // Best effort (an alias is at most 255 bytes): without it the tap is only reclaimed
        // when its CID is next used.
        let _ = ip(&["link", "set", "dev", &tap.name, "alias", &owner.alias()]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_alias_round_trips_with_spaces_in_the_dir() {
        let owner = Owner {
            runtime_dir: "/tmp/a dir/run".into(),
            vm_id: "vm-3".into(),
        };
        assert_eq!(Owner::parse(&format!("{}\n", owner.alias())), Some(owner));
        assert_eq!(Owner::parse("something else"), None);
    }
}
