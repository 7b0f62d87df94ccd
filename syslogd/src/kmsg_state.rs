//! The kmsg sequence number the host has acknowledged, kept in a small file (in /run by
//! default) so a restarted vm_syslog skips kernel records it already delivered. The file
//! names the boot it belongs to (`/proc/sys/kernel/random/boot_id`): after a reboot the
//! kernel counts from 0 again and an old number means nothing.
//!
//! Format: `boot_id=<id>\nseq=<n>\n`, replaced atomically (write, then rename).

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

#[derive(Debug)]
pub struct StateError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot save the kmsg position to {}: {}",
            self.path.display(),
            self.source
        )
    }
}

impl std::error::Error for StateError {}

#[derive(Debug, Clone)]
pub struct KmsgState {
    path: PathBuf,
    boot_id: String,
}

/// This boot's id, or an empty string where there is none (then any saved state matches).
pub fn read_boot_id(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn parse(text: &str, boot_id: &str) -> Option<u64> {
    let mut saved_boot = None;
    let mut seq = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("boot_id", v)) => saved_boot = Some(v),
            Some(("seq", v)) => seq = v.parse().ok(),
            _ => {}
        }
    }
    (saved_boot? == boot_id).then_some(seq?)
}

impl KmsgState {
    pub fn new(path: PathBuf, boot_id: String) -> KmsgState {
        KmsgState { path, boot_id }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last delivered sequence number of this boot, if one was saved.
    pub fn load(&self) -> Option<u64> {
        parse(&std::fs::read_to_string(&self.path).ok()?, &self.boot_id)
    }

    pub fn save(&self, seq: u64) -> Result<(), StateError> {
        let err = |source| StateError {
            path: self.path.clone(),
            source,
        };
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut file = std::fs::File::create(&tmp).map_err(err)?;
        file.write_all(format!("boot_id={}\nseq={seq}\n", self.boot_id).as_bytes())
            .map_err(err)?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_same_boot_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = KmsgState::new(dir.path().join("s"), "boot-a".into());
        assert_eq!(state.load(), None);
        state.save(41).unwrap();
        state.save(42).unwrap();
        assert_eq!(state.load(), Some(42));
        assert!(!dir.path().join("s.tmp").exists());
    }

    #[test]
    fn load_other_boot_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        KmsgState::new(dir.path().join("s"), "boot-a".into())
            .save(42)
            .unwrap();
        assert_eq!(
            KmsgState::new(dir.path().join("s"), "boot-b".into()).load(),
            None
        );
    }

    #[test]
    fn load_garbage_is_none() {
        assert_eq!(parse("seq=12\n", ""), None);
        assert_eq!(parse("boot_id=\nseq=x\n", ""), None);
        assert_eq!(parse("boot_id=\nseq=12\n", ""), Some(12));
    }

    #[test]
    fn save_into_missing_dir_names_the_path() {
        let state = KmsgState::new(PathBuf::from("/nonexistent-dir/s"), String::new());
        let err = state.save(1).unwrap_err().to_string();
        assert!(err.contains("/nonexistent-dir/s"), "{err}");
    }
}
