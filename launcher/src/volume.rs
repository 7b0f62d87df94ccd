//! `--volume HOST_PATH:GUEST_PATH[:ro|rw]`: host directories the guest (and the application's
//! container) sees at GUEST_PATH, read-write unless `:ro` (as `docker run -v`).
//!
//! [`VolumeArg::parse`] reads one flag (syntax only, in `cli`); [`resolve`] checks them all
//! against the host before anything starts: the host path must be a directory (it is
//! canonicalized, so a symlink in it is followed once, here, and never again), the guest
//! paths follow `vm_proto::volumes` (absolute, normalized, not reserved, not nested, at most
//! `MAX_VOLUMES`, short enough for the kernel command line). The result is the hypervisor's
//! shares (virtio-9p devices by mount tag) and the `maitred.volumes` key that tells maitred
//! where to mount each tag.

use std::fmt;
use std::path::PathBuf;

use vm_proto::volumes::{self, GuestVolume, VolumeError};

use crate::hypervisor::Share;

/// One `--volume` as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeArg {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

impl VolumeArg {
    /// `HOST:GUEST`, `HOST:GUEST:ro` or `HOST:GUEST:rw`. Neither path may hold a `:`.
    pub fn parse(text: &str) -> Result<VolumeArg, String> {
        let bad =
            |why: &str| format!("--volume {text:?}: {why}; expected HOST_PATH:GUEST_PATH[:ro|rw]");
        let parts: Vec<&str> = text.split(':').collect();
        let (host, guest, read_only) = match parts[..] {
            [host, guest] => (host, guest, false),
            [host, guest, "ro"] => (host, guest, true),
            [host, guest, "rw"] => (host, guest, false),
            [_, _, mode] => return Err(bad(&format!("mode {mode:?} is neither ro nor rw"))),
            [_] => return Err(bad("no guest path")),
            _ => return Err(bad("too many ':' (paths cannot hold one)")),
        };
        if host.is_empty() {
            return Err(bad("no host path"));
        }
        volumes::check_guest_path(guest).map_err(|e| format!("--volume {text:?}: {e}"))?;
        Ok(VolumeArg {
            host: host.into(),
            guest: guest.to_string(),
            read_only,
        })
    }
}

/// A volume checked against the host, with its mount tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub tag: String,
    /// Canonical.
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

impl Volume {
    pub fn share(&self) -> Share {
        Share {
            tag: self.tag.clone(),
            path: self.host.clone(),
            read_only: self.read_only,
        }
    }

    fn guest_volume(&self) -> GuestVolume {
        GuestVolume {
            tag: self.tag.clone(),
            path: self.guest.clone(),
            read_only: self.read_only,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum VolumeSetupError {
    /// The host path is missing, not a directory, or cannot be resolved.
    Host { path: PathBuf, why: String },
    /// The guest paths (one or all together) break `vm_proto::volumes`' rules.
    Guest(VolumeError),
}

impl fmt::Display for VolumeSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host { path, why } => write!(f, "--volume {}: {why}", path.display()),
            Self::Guest(e) => write!(f, "--volume: {e}"),
        }
    }
}

impl std::error::Error for VolumeSetupError {}

/// Checks every `--volume` against the host and against each other; tags follow the
/// command-line order (`vm_proto::volumes::tag`).
pub fn resolve(args: &[VolumeArg]) -> Result<Vec<Volume>, VolumeSetupError> {
    volumes::check_set(args.iter().map(|a| a.guest.as_str())).map_err(VolumeSetupError::Guest)?;
    let mut resolved = Vec::with_capacity(args.len());
    for (index, arg) in args.iter().enumerate() {
        let host_err = |why: String| VolumeSetupError::Host {
            path: arg.host.clone(),
            why,
        };
        let host = std::fs::canonicalize(&arg.host).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => host_err("no such directory on the host".into()),
            _ => host_err(e.to_string()),
        })?;
        if !host.is_dir() {
            return Err(host_err(
                "not a directory (a volume shares a directory)".into(),
            ));
        }
        resolved.push(Volume {
            tag: volumes::tag(index),
            host,
            guest: arg.guest.clone(),
            read_only: arg.read_only,
        });
    }
    // The same check maitred will make, so a list too long for the command line fails here.
    cmdline_key(&resolved).map_err(VolumeSetupError::Guest)?;
    Ok(resolved)
}

/// `maitred.volumes=…` for the guest kernel command line, or None without volumes.
pub fn cmdline_key(volumes: &[Volume]) -> Result<Option<String>, VolumeError> {
    let guest: Vec<GuestVolume> = volumes.iter().map(Volume::guest_volume).collect();
    volumes::to_cmdline(&guest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(host: &std::path::Path, guest: &str, read_only: bool) -> VolumeArg {
        VolumeArg {
            host: host.to_path_buf(),
            guest: guest.into(),
            read_only,
        }
    }

    #[test]
    fn parse_reads_paths_and_mode_defaulting_to_rw() {
        let parsed = VolumeArg::parse("/h/src:/src").unwrap();
        assert_eq!(parsed, arg("/h/src".as_ref(), "/src", false));
        assert!(VolumeArg::parse("/h:/g:ro").unwrap().read_only);
        assert!(!VolumeArg::parse("/h:/g:rw").unwrap().read_only);
        let relative = VolumeArg::parse("h/dir:/g").unwrap();
        assert_eq!(relative.host, PathBuf::from("h/dir"));
    }

    #[test]
    fn parse_malformed_specs_fail_with_one_clear_line() {
        for (text, want) in [
            ("/h", "no guest path"),
            (":/g", "no host path"),
            ("/h:/g:rx", "neither ro nor rw"),
            ("/h:/g:ro:x", "too many ':'"),
            ("/h:g", "must be absolute"),
            ("/h:/a/../etc", ". or .."),
            ("/h:/", "cannot be /"),
            ("/h:/proc/x", "/proc"),
            ("/h:", "must be absolute"),
        ] {
            let err = VolumeArg::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
            assert!(err.starts_with("--volume ") && !err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn resolve_canonicalizes_and_tags_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::os::unix::fs::symlink(&b, dir.path().join("link")).unwrap();
        let volumes = resolve(&[
            arg(&a, "/data", false),
            arg(&dir.path().join("link"), "/ro", true),
        ])
        .unwrap();
        assert_eq!(volumes[0].tag, "vmvol0");
        assert_eq!(volumes[1].tag, "vmvol1");
        assert_eq!(volumes[1].host, b.canonicalize().unwrap());
        assert!(volumes[1].share().read_only);
        let key = cmdline_key(&volumes).unwrap().unwrap();
        assert_eq!(key, "maitred.volumes=vmvol0:rw:/data,vmvol1:ro:/ro");
        assert_eq!(resolve(&[]), Ok(Vec::new()));
        assert_eq!(cmdline_key(&[]), Ok(None));
    }

    #[test]
    fn resolve_refuses_missing_or_non_directory_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let missing = dir.path().join("missing");
        for (host, want) in [(&missing, "no such directory"), (&file, "not a directory")] {
            let err = resolve(&[arg(host, "/g", false)]).unwrap_err().to_string();
            assert!(
                err.contains(want) && err.contains(&*host.to_string_lossy()),
                "{err}"
            );
        }
    }

    #[test]
    fn resolve_refuses_overlapping_too_many_or_too_long_guest_paths() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let err = resolve(&[arg(d, "/a", false), arg(d, "/a/b", true)]).unwrap_err();
        assert!(err.to_string().contains("overlap"), "{err}");
        let err = resolve(&[arg(d, "/a", false), arg(d, "/a", true)]).unwrap_err();
        assert!(err.to_string().contains("overlap"), "{err}");
        let many: Vec<VolumeArg> = (0..=volumes::MAX_VOLUMES)
            .map(|i| arg(d, &format!("/v{i}"), false))
            .collect();
        let err = resolve(&many).unwrap_err().to_string();
        assert!(err.contains("at most 8"), "{err}");
        let long: Vec<VolumeArg> = (0..4)
            .map(|i| arg(d, &format!("/{i}{}", "x".repeat(150)), false))
            .collect();
        let err = resolve(&long).unwrap_err().to_string();
        assert!(err.contains("shorter guest paths"), "{err}");
    }
}
