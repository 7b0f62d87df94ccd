//! What the pool hands out ([`PoolConfig`]) and the flags that change it: `--cid-range`,
//! `--subnet`, `--host-port-range` (on `run` and `start`), checked by [`PoolConfig::validate`]
//! before anything is leased.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use super::PoolError;

pub const DEFAULT_RUNTIME_DIR: &str = "/run/vm_launcher";
/// Overrides [`DEFAULT_RUNTIME_DIR`] (a `--runtime-dir` flag overrides both).
pub const RUNTIME_DIR_ENV: &str = "VM_LAUNCHER_RUNTIME_DIR";
pub const FLAG_RUNTIME_DIR: &str = "--runtime-dir";
pub const FLAG_CID_RANGE: &str = "--cid-range";
pub const FLAG_SUBNET: &str = "--subnet";
pub const FLAG_HOST_PORT_RANGE: &str = "--host-port-range";

/// Where the pool lives and what it hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub runtime_dir: PathBuf,
    /// vsock CIDs; never 0–2 (hypervisor, local, host) nor u32::MAX (any).
    pub cids: RangeInclusive<u32>,
    /// Split into /30s: gateway (host) = .4n+1, guest = .4n+2.
    pub subnet_base: Ipv4Addr,
    pub subnet_prefix: u8,
    /// Host vsock ports for each VM's host services.
    pub host_ports: RangeInclusive<u32>,
}

/// `$VM_LAUNCHER_RUNTIME_DIR` if set and not empty, else `/run/vm_launcher`.
pub fn default_runtime_dir() -> PathBuf {
    std::env::var_os(RUNTIME_DIR_ENV)
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR), PathBuf::from)
}

/// A range as the flags take it: `FIRST-LAST`.
pub fn range_text(range: &RangeInclusive<u32>) -> String {
    format!("{}-{}", range.start(), range.end())
}

/// `FIRST-LAST` (both included), as `--cid-range` and `--host-port-range` take it. Only the
/// syntax: [`PoolConfig::validate`] judges the values.
pub fn parse_range(flag: &str, text: &str) -> Result<RangeInclusive<u32>, String> {
    let bad = || format!("{flag} {text:?}: expected FIRST-LAST, e.g. 3-1026");
    let (first, last) = text.split_once('-').ok_or_else(bad)?;
    let number = |s: &str| s.parse::<u32>().map_err(|_| bad());
    Ok(number(first)?..=number(last)?)
}

/// `A.B.C.D/N`, as `--subnet` takes it (validated by [`PoolConfig::validate`]).
pub fn parse_subnet(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = || format!("{FLAG_SUBNET} {text:?}: expected a network like 100.115.92.0/24");
    let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
    Ok((
        addr.parse().map_err(|_| bad())?,
        prefix.parse().map_err(|_| bad())?,
    ))
}

impl PoolConfig {
    /// The default pools under `runtime_dir`: CIDs 3-1026, 100.115.92.0/24 (64 × /30),
    /// host ports 10000-10999.
    pub fn new(runtime_dir: impl Into<PathBuf>) -> PoolConfig {
        PoolConfig {
            runtime_dir: runtime_dir.into(),
            cids: 3..=1026,
            subnet_base: Ipv4Addr::new(100, 115, 92, 0),
            subnet_prefix: 24,
            host_ports: 10000..=10999,
        }
    }

    /// How many /30 subnets the base network holds.
    pub fn subnet_count(&self) -> u32 {
        1u32 << (30 - u32::from(self.subnet_prefix.min(30)))
    }

    /// Every range non-empty and usable; the error names the flag that fixes it.
    pub fn validate(&self) -> Result<(), PoolError> {
        let bad = |what, value: String, why, flag| {
            Err(PoolError::BadConfig {
                what,
                value,
                why,
                flag,
            })
        };
        let (c0, c1) = (*self.cids.start(), *self.cids.end());
        if c0 < 3 || c1 == u32::MAX || c0 > c1 {
            let why = "must be a non-empty range within 3-4294967294 (0-2 are reserved)";
            return bad("cid range", range_text(&self.cids), why, FLAG_CID_RANGE);
        }
        let base = u32::from(self.subnet_base);
        let host_bits = 32 - u32::from(self.subnet_prefix.min(32));
        let aligned = host_bits == 32 || base & ((1u32 << host_bits) - 1) == 0;
        if !(8..=30).contains(&self.subnet_prefix) || !aligned {
            let why = "must be a network address with a prefix length from /8 to /30";
            let value = format!("{}/{}", self.subnet_base, self.subnet_prefix);
            return bad("subnet", value, why, FLAG_SUBNET);
        }
        let (p0, p1) = (*self.host_ports.start(), *self.host_ports.end());
        if p0 == 0 || p1 == u32::MAX || p0 > p1 {
            let why = "must be a non-empty range within 1-4294967294";
            let value = range_text(&self.host_ports);
            return bad("host port range", value, why, FLAG_HOST_PORT_RANGE);
        }
        Ok(())
    }
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig::new(default_runtime_dir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_range_first_last_only() {
        assert_eq!(parse_range("--cid-range", "3-4"), Ok(3..=4));
        // Reversed parses (into an empty range); validate refuses it.
        assert_eq!(
            parse_range("--cid-range", "9-8"),
            Ok(RangeInclusive::new(9, 8))
        );
        for bad in ["", "3", "3-", "-4", "a-4", "3..=4", "3-4-5", "-1-4"] {
            let err = parse_range("--cid-range", bad).unwrap_err();
            assert!(
                err.starts_with("--cid-range") && err.contains("FIRST-LAST"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn parse_subnet_network_and_prefix() {
        assert_eq!(
            parse_subnet("10.0.0.0/16"),
            Ok((Ipv4Addr::new(10, 0, 0, 0), 16))
        );
        for bad in ["10.0.0.0", "10.0.0/16", "10.0.0.0/x", "/16", "10.0.0.0/300"] {
            let err = parse_subnet(bad).unwrap_err();
            assert!(err.starts_with("--subnet"), "{bad}: {err}");
        }
    }

    #[test]
    fn validate_names_the_value_in_flag_syntax() {
        let config = PoolConfig {
            cids: 1..=4,
            ..PoolConfig::new("/x")
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("cid range 1-4: must be"), "{err}");
        assert!(err.ends_with("fix it with --cid-range"), "{err}");
        assert!(PoolConfig::new("/x").validate().is_ok());
    }
}
