//! What `list` shows beyond the lease: `<run dir>/vm.info`, written once the VM is ready
//! (so its presence also means "running"): the hypervisor, the application and when it
//! started, its published and forwarded ports and its volumes. One `key=value` line each (a
//! port list is comma-separated: the specs hold no commas; `volume=` once per volume); the
//! application's arguments are NUL-separated inside their value's hex, and a volume's paths
//! are hex too, so no argument or path can break the format.

use std::path::{Path, PathBuf};

use crate::volume::Volume;

const FILE: &str = "vm.info";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInfo {
    pub hypervisor: String,
    pub app: Vec<String>,
    /// Unix seconds.
    pub started: u64,
    /// `--publish` and `--forward` specs, as `port_forward` shows them.
    pub publish: Vec<String>,
    pub forward: Vec<String>,
    pub volumes: Vec<VolumeInfo>,
}

/// A volume as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

impl VolumeInfo {
    /// `{"host":…,"guest":…,"mode":"ro"|"rw"}`.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"host\":{},\"guest\":{},\"mode\":\"{}\"}}",
            json_string(&self.host.to_string_lossy()),
            json_string(&self.guest),
            if self.read_only { "ro" } else { "rw" }
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

pub fn render(info: &VmInfo) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut text = format!(
        "hypervisor={}\nstarted={}\napp={}\npublish={}\nforward={}\n",
        info.hypervisor,
        info.started,
        hex(info.app.join("\0").as_bytes()),
        info.publish.join(","),
        info.forward.join(","),
    );
    for v in &info.volumes {
        let mode = if v.read_only { "ro" } else { "rw" };
        let (host, guest) = (hex(v.host.as_os_str().as_bytes()), hex(v.guest.as_bytes()));
        text.push_str(&format!("volume={mode}:{host}:{guest}\n"));
    }
    text
}

fn parse_volume(value: &str) -> Option<VolumeInfo> {
    use std::os::unix::ffi::OsStringExt;
    let mut parts = value.split(':');
    let read_only = match parts.next()? {
        "ro" => true,
        "rw" => false,
        _ => return None,
    };
    let host = std::ffi::OsString::from_vec(unhex(parts.next()?)?).into();
    let guest = String::from_utf8(unhex(parts.next()?)?).ok()?;
    Some(VolumeInfo {
        host,
        guest,
        read_only,
    })
}

pub fn parse(text: &str) -> Option<VmInfo> {
    let mut info = VmInfo {
        hypervisor: String::new(),
        app: Vec::new(),
        started: 0,
        publish: Vec::new(),
        forward: Vec::new(),
        volumes: Vec::new(),
    };
    for line in text.lines() {
        let (key, value) = line.split_once('=')?;
        match key {
            "hypervisor" => info.hypervisor = value.to_string(),
            "started" => info.started = value.parse().ok()?,
            "publish" | "forward" if value.is_empty() => {}
            "publish" => info.publish = value.split(',').map(String::from).collect(),
            "forward" => info.forward = value.split(',').map(String::from).collect(),
            "app" if value.is_empty() => {}
            "app" => {
                let joined = String::from_utf8(unhex(value)?).ok()?;
                info.app = joined.split('\0').map(String::from).collect();
            }
            "volume" => info.volumes.push(parse_volume(value)?),
            _ => {}
        }
    }
    Some(info)
}

/// Records the VM's facts in its run dir (best effort: `list` shows "-" without them).
pub fn write(
    rundir: &Path,
    hypervisor: &str,
    app: &[String],
    ports: (&[String], &[String]),
    volumes: &[Volume],
) {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let info = VmInfo {
        hypervisor: hypervisor.to_string(),
        app: app.to_vec(),
        started,
        publish: ports.0.to_vec(),
        forward: ports.1.to_vec(),
        volumes: volumes
            .iter()
            .map(|v| VolumeInfo {
                host: v.host.clone(),
                guest: v.guest.clone(),
                read_only: v.read_only,
            })
            .collect(),
    };
    let _ = std::fs::write(rundir.join(FILE), render(&info));
}

pub fn read(rundir: &Path) -> Option<VmInfo> {
    parse(&std::fs::read_to_string(rundir.join(FILE)).ok()?)
}

/// A JSON array of string literals.
pub fn json_strings(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| json_string(s)).collect();
    format!("[{}]", items.join(","))
}

/// A JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_parse_round_trips_hostile_arguments() {
        let info = VmInfo {
            hypervisor: "qemu".into(),
            app: vec!["sh".into(), "-c".into(), "echo a=b\nhypervisor=x".into()],
            started: 1_700_000_000,
            publish: vec!["127.0.0.1:8080:80/tcp".into(), "[::1]:1:2/tcp".into()],
            forward: vec!["5432:127.0.0.1:5432".into()],
            volumes: vec![
                VolumeInfo {
                    host: "/h/a:b\nvolume=x".into(),
                    guest: "/data".into(),
                    read_only: false,
                },
                VolumeInfo {
                    host: "/h/ro".into(),
                    guest: "/srv/my site".into(),
                    read_only: true,
                },
            ],
        };
        assert_eq!(parse(&render(&info)), Some(info.clone()));
        assert_eq!(
            info.volumes[1].to_json(),
            r#"{"host":"/h/ro","guest":"/srv/my site","mode":"ro"}"#
        );
        assert_eq!(parse("volume=rx:00:00"), None);
        assert_eq!(parse("garbage"), None);
        assert_eq!(parse("app=zz"), None);
    }

    #[test]
    fn json_string_escapes_quotes_and_controls() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
