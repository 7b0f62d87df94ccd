//! Volumes (`vm_launcher --volume HOST:GUEST[:ro|rw]`): host directories shared over
//! virtio-9p, each attached with a mount tag, and the one kernel command line key that tells
//! maitred where to mount each tag:
//!
//! `maitred.volumes=vmvol0:rw:/data,vmvol1:ro:/srv/my%20site`
//!
//! One entry per volume, `TAG:MODE:PATH`, separated by commas. The guest path is
//! percent-encoded (every byte outside `A-Z a-z 0-9 / . _ -` as `%XX`), so no space, quote,
//! comma, colon or `=` of a hostile path can split the command line or the list. The same
//! rules for a guest path ([`check_guest_path`]) run in the launcher before boot and in
//! maitred on what it reads, so neither trusts the other.

use std::fmt;

/// The kernel command line key.
pub const KEY_VOLUMES: &str = "maitred.volumes";
/// At most this many volumes per VM.
pub const MAX_VOLUMES: usize = 8;
/// A guest path is at most this many bytes (before encoding).
pub const GUEST_PATH_MAX: usize = 200;
/// The key's encoded value is at most this long: the whole command line must fit QEMU's
/// `-readconfig` line (see the launcher's `hypervisor::qemu`).
pub const VALUE_MAX: usize = 480;
/// The 9p message size maitred mounts with. Linux 6.1's virtio transport caps it at
/// about 500 KiB (it clamps a larger one, with a log line); QEMU accepts it.
pub const MSIZE: u32 = 512_000;
/// Guest paths a volume may not cover or sit under: the VM's own mounts (maitred's private
/// state is in /run) and those a container mounts afresh over its root (/tmp, /dev, /proc).
pub const RESERVED: &[&str] = &["/proc", "/sys", "/dev", "/run", "/tmp"];

/// The mount tag of the `index`th volume (0-based, in command-line order).
pub fn tag(index: usize) -> String {
    format!("vmvol{index}")
}

/// One volume as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestVolume {
    /// The 9p mount tag: 1 to 31 of A-Z a-z 0-9 _ -.
    pub tag: String,
    /// Absolute and normalized (see [`check_guest_path`]).
    pub path: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeError {
    /// The guest path breaks a rule; `why` says which.
    GuestPath {
        path: String,
        why: &'static str,
    },
    TooMany(usize),
    /// Two volumes at the same guest path, or one inside another.
    Overlap {
        first: String,
        second: String,
    },
    /// The encoded list would not fit on the command line.
    TooLong(usize),
    /// A command line entry is malformed (bad tag, mode or encoding).
    Entry {
        entry: String,
        why: &'static str,
    },
}

/// At most this much of a hostile value is echoed back in an error.
const ECHO_MAX: usize = 64;

fn echo(value: &str) -> String {
    let cut: String = value.chars().take(ECHO_MAX).collect();
    let more = if cut.len() < value.len() { "…" } else { "" };
    format!("\"{}{more}\"", cut.escape_debug())
}

impl fmt::Display for VolumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::GuestPath { path, why } => write!(f, "guest path {}: {why}", echo(path)),
            Self::TooMany(n) => write!(f, "{n} volumes; a VM takes at most {MAX_VOLUMES}"),
            Self::Overlap { first, second } => write!(
                f,
                "guest paths {} and {} overlap; give each volume its own directory",
                echo(first),
                echo(second)
            ),
            Self::TooLong(n) => write!(
                f,
                "the volumes' guest paths take {n} bytes on the kernel command line, at most {VALUE_MAX}: use shorter guest paths"
            ),
            Self::Entry { entry, why } => {
                write!(f, "kernel command line {KEY_VOLUMES} entry {}: {why}", echo(entry))
            }
        }
    }
}

impl std::error::Error for VolumeError {}

/// A guest path must be absolute and normalized (no `.`, `..` or empty components, no
/// trailing `/`), at most [`GUEST_PATH_MAX`] bytes without NUL or control characters, and
/// neither `/` nor in a [`RESERVED`] tree.
pub fn check_guest_path(path: &str) -> Result<(), VolumeError> {
    let bad = |why| {
        Err(VolumeError::GuestPath {
            path: path.to_string(),
            why,
        })
    };
    if !path.starts_with('/') {
        return bad("must be absolute (start with /)");
    }
    if path == "/" {
        return bad("cannot be / itself");
    }
    if path.len() > GUEST_PATH_MAX {
        return bad("is longer than 200 bytes");
    }
    if path.chars().any(char::is_control) {
        return bad("holds a control character");
    }
    for component in path[1..].split('/') {
        match component {
            "" => return bad("has an empty component (// or a trailing /)"),
            "." | ".." => return bad("has a . or .. component"),
            _ => {}
        }
    }
    if RESERVED.iter().any(|r| within(path, r)) {
        return bad("is in /proc, /sys, /dev, /run or /tmp, which the VM or its container mount themselves; use another directory such as /mnt/NAME");
    }
    Ok(())
}

/// Is `path` equal to `dir` or below it (component-wise)?
pub fn within(path: &str, dir: &str) -> bool {
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Refuses too many volumes and guest paths that are equal or nested.
pub fn check_set<'a>(paths: impl IntoIterator<Item = &'a str>) -> Result<(), VolumeError> {
    let paths: Vec<&str> = paths.into_iter().collect();
    if paths.len() > MAX_VOLUMES {
        return Err(VolumeError::TooMany(paths.len()));
    }
    for (i, first) in paths.iter().enumerate() {
        for second in &paths[i + 1..] {
            if within(first, second) || within(second, first) {
                return Err(VolumeError::Overlap {
                    first: first.to_string(),
                    second: second.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// A 9p mount tag we use: 1 to 31 of A-Z a-z 0-9 _ -.
pub fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 31
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'/' | b'.' | b'_' | b'-')
}

fn percent_encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for &byte in path.as_bytes() {
        if plain(byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            byte if plain(byte) => {
                out.push(byte);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// The key's value for `volumes`, checked as maitred will check it.
pub fn encode(volumes: &[GuestVolume]) -> Result<String, VolumeError> {
    check_set(volumes.iter().map(|v| v.path.as_str()))?;
    let mut entries = Vec::with_capacity(volumes.len());
    for volume in volumes {
        check_guest_path(&volume.path)?;
        if !valid_tag(&volume.tag) {
            return Err(VolumeError::Entry {
                entry: volume.tag.clone(),
                why: "the tag must be 1 to 31 of A-Z a-z 0-9 _ -",
            });
        }
        let mode = if volume.read_only { "ro" } else { "rw" };
        entries.push(format!(
            "{}:{mode}:{}",
            volume.tag,
            percent_encode(&volume.path)
        ));
    }
    let value = entries.join(",");
    if value.len() > VALUE_MAX {
        return Err(VolumeError::TooLong(value.len()));
    }
    Ok(value)
}

/// `KEY=value` for the kernel command line, or nothing when there are no volumes.
pub fn to_cmdline(volumes: &[GuestVolume]) -> Result<Option<String>, VolumeError> {
    if volumes.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!("{KEY_VOLUMES}={}", encode(volumes)?)))
}

/// Parses the key's value (as [`crate::cmdline::lookup`] returns it). Everything is checked
/// again: tags, modes, the encoding, each path and the set.
pub fn parse(value: &str) -> Result<Vec<GuestVolume>, VolumeError> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    if value.len() > VALUE_MAX {
        return Err(VolumeError::TooLong(value.len()));
    }
    let mut volumes = Vec::new();
    for entry in value.split(',') {
        let bad = |why| VolumeError::Entry {
            entry: entry.to_string(),
            why,
        };
        let mut parts = entry.splitn(3, ':');
        let (Some(tag), Some(mode), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected TAG:MODE:PATH"));
        };
        if !valid_tag(tag) {
            return Err(bad("the tag must be 1 to 31 of A-Z a-z 0-9 _ -"));
        }
        if volumes.iter().any(|v: &GuestVolume| v.tag == tag) {
            return Err(bad("the tag is given twice"));
        }
        let read_only = match mode {
            "ro" => true,
            "rw" => false,
            _ => return Err(bad("the mode must be ro or rw")),
        };
        let path =
            percent_decode(path).ok_or_else(|| bad("the path is not percent-encoded UTF-8"))?;
        check_guest_path(&path)?;
        volumes.push(GuestVolume {
            tag: tag.to_string(),
            path,
            read_only,
        });
    }
    check_set(volumes.iter().map(|v| v.path.as_str()))?;
    Ok(volumes)
}

/// The volumes named on a kernel command line (none when the key is absent).
pub fn from_cmdline(cmdline: &str) -> Result<Vec<GuestVolume>, VolumeError> {
    match crate::cmdline::lookup(cmdline, KEY_VOLUMES) {
        Some(value) => parse(&value),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(index: usize, path: &str, read_only: bool) -> GuestVolume {
        GuestVolume {
            tag: tag(index),
            path: path.into(),
            read_only,
        }
    }

    #[test]
    fn encode_parse_round_trips_hostile_paths() {
        let volumes = vec![
            vol(0, "/data", false),
            vol(1, "/srv/my site,\"x\":y=z", true),
            vol(2, "/mnt/ünï%20code", false),
        ];
        let line = to_cmdline(&volumes).unwrap().unwrap();
        assert!(!line.contains([' ', '"']), "{line}");
        assert_eq!(line.matches(',').count(), 2, "{line}");
        let cmdline = format!("console=ttyS0 {line} maitred.vm_id=x");
        assert_eq!(from_cmdline(&cmdline).unwrap(), volumes);
        assert_eq!(
            encode(&volumes[..1]).unwrap(),
            "vmvol0:rw:/data".to_string()
        );
    }

    #[test]
    fn from_cmdline_without_the_key_is_empty() {
        assert_eq!(from_cmdline("console=ttyS0"), Ok(Vec::new()));
        assert_eq!(to_cmdline(&[]), Ok(None));
        assert_eq!(parse(""), Ok(Vec::new()));
    }

    #[test]
    fn check_guest_path_refuses_each_bad_shape() {
        for (path, why) in [
            ("data", "absolute"),
            ("", "absolute"),
            ("/", "cannot be /"),
            ("/a/../etc", ". or .."),
            ("/a/./b", ". or .."),
            ("/..", ". or .."),
            ("/a//b", "empty component"),
            ("/a/", "empty component"),
            ("/a\nb", "control"),
            ("/a\0b", "control"),
            ("/proc", "/proc"),
            ("/run/maitred", "/proc"),
            ("/tmp/x", "/proc"),
            ("/dev/shm/x", "/proc"),
        ] {
            let err = check_guest_path(path).unwrap_err().to_string();
            assert!(err.contains(why), "{path:?}: {err}");
        }
        let long = format!("/{}", "a".repeat(GUEST_PATH_MAX));
        assert!(check_guest_path(&long).is_err());
        for good in ["/data", "/mnt/x y", "/procfs", "/runner/x", "/opt/a.b-c_d"] {
            assert_eq!(check_guest_path(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn check_set_refuses_duplicates_nesting_and_too_many() {
        assert!(check_set(["/a", "/ab", "/b/c"]).is_ok());
        for set in [["/a", "/a"], ["/a", "/a/b"], ["/a/b", "/a"]] {
            let err = check_set(set).unwrap_err();
            assert!(matches!(err, VolumeError::Overlap { .. }), "{set:?}");
        }
        let many: Vec<String> = (0..=MAX_VOLUMES).map(|i| format!("/v{i}")).collect();
        let err = check_set(many.iter().map(String::as_str)).unwrap_err();
        assert_eq!(err, VolumeError::TooMany(MAX_VOLUMES + 1));
    }

    #[test]
    fn encode_refuses_a_list_too_long_for_the_command_line() {
        let long: Vec<GuestVolume> = (0..4)
            .map(|i| vol(i, &format!("/{i}{}", "x".repeat(150)), false))
            .collect();
        assert!(matches!(encode(&long), Err(VolumeError::TooLong(_))));
    }

    #[test]
    fn parse_refuses_hostile_entries() {
        for (value, want) in [
            ("vmvol0:rw", "TAG:MODE:PATH"),
            ("vmvol0:rx:/a", "mode"),
            ("vm/vol:rw:/a", "tag"),
            (":rw:/a", "tag"),
            ("vmvol0:rw:/a,vmvol0:rw:/b", "twice"),
            ("vmvol0:rw:/a%2", "percent"),
            ("vmvol0:rw:/a%zz", "percent"),
            ("vmvol0:rw:/a b", "percent"),
            ("vmvol0:rw:/a%FF", "percent"),
            ("vmvol0:rw:/a%2F..%2Fetc", ". or .."),
            ("vmvol0:rw:%2Fproc", "/proc"),
            ("vmvol0:rw:/a,vmvol1:ro:/a/b", "overlap"),
            ("vmvol0:rw:/a,", "TAG:MODE:PATH"),
        ] {
            let err = parse(value).unwrap_err().to_string();
            assert!(err.contains(want), "{value}: {err}");
        }
        let huge = format!("vmvol0:rw:/{}", "a".repeat(VALUE_MAX));
        assert!(matches!(parse(&huge), Err(VolumeError::TooLong(_))));
    }

    #[test]
    fn errors_echo_bounded_and_escaped() {
        let hostile = format!("vmvol0:rw:/{}\u{1b}[31m", "a".repeat(1000));
        let msg = VolumeError::Entry {
            entry: hostile,
            why: "x",
        }
        .to_string();
        assert!(msg.len() < 200 && !msg.contains('\u{1b}'), "{msg}");
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn valid_paths_round_trip(
            paths in proptest::collection::vec("[a-z ,:=\"%é]{1,12}", 1..4),
            ro in proptest::bool::ANY,
        ) {
            let volumes: Vec<GuestVolume> = paths
                .iter()
                .enumerate()
                .map(|(i, p)| vol(i, &format!("/v{i}/{}", p.replace('/', "_")), ro))
                .filter(|v| check_guest_path(&v.path).is_ok())
                .collect();
            let value = encode(&volumes).unwrap();
            proptest::prop_assert_eq!(parse(&value).unwrap(), volumes);
        }
    }
}
