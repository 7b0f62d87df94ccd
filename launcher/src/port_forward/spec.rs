//! `--publish [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp]` and
//! `--forward GUEST_PORT:HOST_ADDR:HOST_PORT`: parsing, and the checks across all of them
//! (no host address published twice, no guest port used twice) made before anything starts.
//! HOST_ADDR is an IPv4 address, an IPv6 address in brackets, or `localhost`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

/// `--publish`: the host listens on `host`, each connection reaches 127.0.0.1:`guest_port`
/// in the guest (or its application's container).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishSpec {
    pub host: SocketAddr,
    pub guest_port: u16,
}

/// `--forward`: the guest's 127.0.0.1:`guest_port` reaches `host`, and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardSpec {
    pub guest_port: u16,
    pub host: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    Malformed {
        flag: &'static str,
        spec: String,
        why: String,
    },
    /// Two specs that cannot both hold.
    Overlap {
        first: String,
        second: String,
        why: &'static str,
    },
    TooMany(usize),
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed { flag, spec, why } => write!(f, "{flag} {spec:?}: {why}"),
            Self::Overlap { first, second, why } => write!(f, "{first} and {second}: {why}"),
            Self::TooMany(n) => write!(
                f,
                "{n} --forward flags; a VM takes at most {}",
                vm_proto::forward::MAX_FORWARDS
            ),
        }
    }
}

impl std::error::Error for SpecError {}

const PUBLISH: &str = "--publish";
const FORWARD: &str = "--forward";

fn malformed(flag: &'static str, spec: &str, why: impl Into<String>) -> SpecError {
    SpecError::Malformed {
        flag,
        spec: spec.to_string(),
        why: why.into(),
    }
}

fn port(flag: &'static str, spec: &str, text: &str, which: &str) -> Result<u16, SpecError> {
    match text.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(malformed(
            flag,
            spec,
            format!("{which} {text:?} is not a port from 1 to 65535"),
        )),
    }
}

fn address(flag: &'static str, spec: &str, text: &str) -> Result<IpAddr, SpecError> {
    if text == "localhost" {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let parsed = match text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().map(IpAddr::V6).ok(),
        None => text.parse::<Ipv4Addr>().map(IpAddr::V4).ok(),
    };
    parsed.ok_or_else(|| {
        malformed(
            flag,
            spec,
            format!("{text:?} is not an IPv4 address, [IPv6] address or localhost"),
        )
    })
}

/// Splits `ADDR:PORT` at the last colon (an IPv6 address holds colons, in brackets).
fn split_last(text: &str) -> Option<(&str, &str)> {
    text.rsplit_once(':')
}

impl FromStr for PublishSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let bad = |why: &str| malformed(PUBLISH, spec, why);
        let body = match spec.split_once('/') {
            Some((body, "tcp")) => body,
            Some((_, proto)) => {
                return Err(bad(&format!("protocol {proto:?}: only tcp is forwarded")))
            }
            None => spec,
        };
        let (rest, guest) = split_last(body)
            .ok_or_else(|| bad("expected [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp]"))?;
        let guest_port = port(PUBLISH, spec, guest, "guest port")?;
        let (host_ip, host_port) = match split_last(rest) {
            Some((addr, host_port)) => (address(PUBLISH, spec, addr)?, host_port),
            None => (IpAddr::V4(Ipv4Addr::LOCALHOST), rest),
        };
        let host_port = port(PUBLISH, spec, host_port, "host port")?;
        Ok(PublishSpec {
            host: SocketAddr::new(host_ip, host_port),
            guest_port,
        })
    }
}

impl fmt::Display for PublishSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/tcp", self.host, self.guest_port)
    }
}

impl FromStr for ForwardSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let shape = || malformed(FORWARD, spec, "expected GUEST_PORT:HOST_ADDR:HOST_PORT");
        let (guest, rest) = spec.split_once(':').ok_or_else(shape)?;
        let (addr, host_port) = split_last(rest).ok_or_else(shape)?;
        Ok(ForwardSpec {
            guest_port: port(FORWARD, spec, guest, "guest port")?,
            host: SocketAddr::new(
                address(FORWARD, spec, addr)?,
                port(FORWARD, spec, host_port, "host port")?,
            ),
        })
    }
}

impl fmt::Display for ForwardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.guest_port, self.host)
    }
}

/// Do two host listening addresses take the same port (a wildcard overlaps every address)?
fn same_listener(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The checks across every flag: each host address published once, each guest port used
/// once (a published guest port is the application's; a forwarded one is maitred's), and
/// no more forwards than a VM takes.
pub fn check(publish: &[PublishSpec], forward: &[ForwardSpec]) -> Result<(), SpecError> {
    let overlap = |first: String, second: String, why| SpecError::Overlap { first, second, why };
    for (i, a) in publish.iter().enumerate() {
        if let Some(b) = publish[..i].iter().find(|b| same_listener(a.host, b.host)) {
            return Err(overlap(
                format!("{PUBLISH} {b}"),
                format!("{PUBLISH} {a}"),
                "both listen on the same host port",
            ));
        }
    }
    if forward.len() > vm_proto::forward::MAX_FORWARDS {
        return Err(SpecError::TooMany(forward.len()));
    }
    for (i, a) in forward.iter().enumerate() {
        if let Some(b) = forward[..i].iter().find(|b| b.guest_port == a.guest_port) {
            return Err(overlap(
                format!("{FORWARD} {b}"),
                format!("{FORWARD} {a}"),
                "both listen on the same guest port",
            ));
        }
        if let Some(p) = publish.iter().find(|p| p.guest_port == a.guest_port) {
            return Err(overlap(
                format!("{PUBLISH} {p}"),
                format!("{FORWARD} {a}"),
                "the application listens on a published guest port, maitred on a forwarded one",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_parses_every_form() {
        let cases = [
            ("8080:80", "127.0.0.1:8080:80/tcp"),
            ("8080:80/tcp", "127.0.0.1:8080:80/tcp"),
            ("0.0.0.0:8080:80", "0.0.0.0:8080:80/tcp"),
            ("localhost:1:65535", "127.0.0.1:1:65535/tcp"),
            ("[::1]:8443:443", "[::1]:8443:443/tcp"),
        ];
        for (text, shown) in cases {
            let spec: PublishSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), shown, "{text}");
            assert_eq!(shown.parse::<PublishSpec>(), Ok(spec));
        }
    }

    #[test]
    fn forward_parses_every_form() {
        let cases = [
            ("5432:127.0.0.1:5432", "5432:127.0.0.1:5432"),
            ("80:localhost:8080", "80:127.0.0.1:8080"),
            ("9:[::1]:9", "9:[::1]:9"),
        ];
        for (text, shown) in cases {
            let spec: ForwardSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), shown, "{text}");
        }
    }

    #[test]
    fn malformed_specs_name_flag_spec_and_problem() {
        let publish = [
            ("", "expected"),
            ("80", "expected"),
            ("8080:0", "guest port"),
            ("0:80", "host port"),
            ("70000:80", "host port"),
            ("8080:80/udp", "only tcp"),
            ("8080:80/", "only tcp"),
            ("1.2.3:8080:80", "not an IPv4"),
            ("::1:8080:80", "not an IPv4"),
            ("example.com:8080:80", "not an IPv4"),
            (":8080:80", "not an IPv4"),
            ("a:b:c:d", "guest port"),
            ("8080:-1", "guest port"),
        ];
        for (text, why) in publish {
            let err = text.parse::<PublishSpec>().unwrap_err().to_string();
            assert!(err.starts_with("--publish"), "{text}: {err}");
            assert!(err.contains(why), "{text}: {err}");
        }
        let forward = [
            ("5432", "expected"),
            ("5432:5432", "expected"),
            ("0:127.0.0.1:1", "guest port"),
            ("1:127.0.0.1:0", "host port"),
            ("1:nowhere:2", "not an IPv4"),
            ("1::2", "not an IPv4"),
        ];
        for (text, why) in forward {
            let err = text.parse::<ForwardSpec>().unwrap_err().to_string();
            assert!(err.starts_with("--forward"), "{text}: {err}");
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn check_refuses_overlaps() {
        let p = |s: &str| s.parse::<PublishSpec>().unwrap();
        let f = |s: &str| s.parse::<ForwardSpec>().unwrap();
        assert!(check(&[p("8080:80"), p("8081:80")], &[f("81:127.0.0.1:1")]).is_ok());
        let bad = [
            (vec![p("8080:80"), p("8080:81")], vec![]),
            (vec![p("0.0.0.0:8080:80"), p("127.0.0.1:8080:81")], vec![]),
            (vec![], vec![f("5:127.0.0.1:1"), f("5:127.0.0.1:2")]),
            (vec![p("8080:5")], vec![f("5:127.0.0.1:1")]),
        ];
        for (publish, forward) in bad {
            let err = check(&publish, &forward).unwrap_err();
            assert!(matches!(err, SpecError::Overlap { .. }), "{err}");
        }
        assert!(check(&[p("1.2.3.4:8080:80"), p("1.2.3.5:8080:81")], &[]).is_ok());
        let many: Vec<ForwardSpec> = (1..=65).map(|i| f(&format!("{i}:127.0.0.1:1"))).collect();
        assert_eq!(check(&[], &many), Err(SpecError::TooMany(65)));
    }
}
