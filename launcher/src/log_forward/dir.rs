//! `--log-dest dir:PATH`: one file per VM, `<PATH>/<id>.log`, one RFC 5424 line a record,
//! rotated by size (`--log-rotate-size`, `--log-rotate-keep`).
//!
//! Rotation happens only between records: a batch is written up to the last whole line that
//! fits under the limit, then `<id>.log` is renamed to `<id>.log.1` (`.1` to `.2`, and so
//! on; the oldest beyond `keep` is removed), a new `<id>.log` is opened and the rest goes
//! there. Every write is whole lines (`O_APPEND`), and this writer is the only one, so a
//! line is never split across files, lost in the rename, or written twice. A single line
//! longer than the limit gets a file of its own. An existing `<id>.log` (a restarted VM of
//! the same name) is appended to, its size counted.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Rotate once the file would pass this size (bytes).
pub const DEFAULT_ROTATE_SIZE: u64 = 10 << 20;
/// Rotated files kept: `<id>.log.1` … `<id>.log.5`.
pub const DEFAULT_ROTATE_KEEP: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_bytes: u64,
    /// Rotated files kept beside the live one; 0 keeps none (the old file is removed).
    pub keep: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: DEFAULT_ROTATE_SIZE,
            keep: DEFAULT_ROTATE_KEEP,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeError(pub String);

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: expected a size like 1048576, 512K or 10M", self.0)
    }
}

impl std::error::Error for SizeError {}

/// `N`, `NK` or `NM` (binary multiples), at least 1.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let (digits, unit) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&text[..i], 1 << 20),
        _ => (text, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|&n| n > 0)
        .ok_or_else(|| SizeError(text.to_string()))
}

/// The file `dir/<vm_id>.log`, rotated by size.
pub struct RotatingFile {
    path: PathBuf,
    rotation: Rotation,
    /// Open, with its current size.
    file: Option<(File, u64)>,
}

impl RotatingFile {
    pub fn new(dir: &Path, vm_id: &str, rotation: Rotation) -> RotatingFile {
        // VM ids are validated names, but a path separator must never reach here.
        let name = vm_id.replace('/', "_");
        RotatingFile {
            path: dir.join(format!("{name}.log")),
            rotation,
            file: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<id>.log.<n>`
    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn open(&mut self) -> io::Result<(&mut File, &mut u64)> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o640)
                .open(&self.path)?;
            let size = file.metadata()?.len();
            self.file = Some((file, size));
        }
        match self.file.as_mut() {
            Some((file, size)) => Ok((file, size)),
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    /// Shifts `<id>.log` to `.1`, `.1` to `.2` … and drops the oldest past `keep`.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let keep = self.rotation.keep;
        if keep == 0 {
            return remove_if_present(&self.path);
        }
        remove_if_present(&self.rotated(keep))?;
        for n in (1..keep).rev() {
            rename_if_present(&self.rotated(n), &self.rotated(n + 1))?;
        }
        rename_if_present(&self.path, &self.rotated(1))
    }

    /// Appends `lines` (each ending in `\n`), rotating between lines as the size demands.
    /// Returns how many lines were written; on an error, the lines after those were not.
    pub fn append(&mut self, lines: &[String]) -> (usize, io::Result<()>) {
        let max = self.rotation.max_bytes;
        let mut written = 0;
        while written < lines.len() {
            let size = match self.open() {
                Ok((_, size)) => *size,
                Err(e) => return (written, Err(e)),
            };
            // The lines that fit now; at least one into an empty file.
            let mut chunk = 0u64;
            let mut end = written;
            for line in &lines[written..] {
                let len = line.len() as u64;
                if size + chunk + len > max && (size + chunk > 0) {
                    break;
                }
                chunk += len;
                end += 1;
            }
            if end > written {
                let text = lines[written..end].concat();
                let result = self.open().and_then(|(file, size)| {
                    file.write_all(text.as_bytes())?;
                    *size += chunk;
                    Ok(())
                });
                if let Err(e) = result {
                    self.file = None; // reopen next time
                    return (written, Err(e));
                }
                written = end;
            }
            if written < lines.len() {
                if let Err(e) = self.rotate() {
                    return (written, Err(e));
                }
            }
        }
        (written, Ok(()))
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_present(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("line {i:04}\n")).collect()
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn parse_size_suffixes_and_errors() {
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("100"), Ok(100));
        for bad in ["", "0", "M", "1G", "-1", "99999999999999999999M"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn append_rotates_between_lines_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        // Each line is 10 bytes: 3 lines per 35-byte file.
        let rotation = Rotation {
            max_bytes: 35,
            keep: 2,
        };
        let mut f = RotatingFile::new(dir.path(), "vm1", rotation);
        let (n, result) = f.append(&lines(0..10));
        assert_eq!(n, 10);
        result.unwrap();
        let live = dir.path().join("vm1.log");
        assert_eq!(read(&live), "line 0009\n");
        assert_eq!(read(&dir.path().join("vm1.log.1")), lines(6..9).concat());
        assert_eq!(read(&dir.path().join("vm1.log.2")), lines(3..6).concat());
        assert!(!dir.path().join("vm1.log.3").exists(), "0..3 rotated away");
    }

    #[test]
    fn append_oversized_line_gets_a_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = Rotation {
            max_bytes: 15,
            keep: 3,
        };
        let mut f = RotatingFile::new(dir.path(), "v", rotation);
        let big = format!("{}\n", "x".repeat(40));
        let batch = vec!["a\n".to_string(), big.clone(), "b\n".to_string()];
        assert_eq!(f.append(&batch).0, 3);
        assert_eq!(read(&dir.path().join("v.log")), "b\n");
        assert_eq!(read(&dir.path().join("v.log.1")), big);
        assert_eq!(read(&dir.path().join("v.log.2")), "a\n");
    }

    #[test]
    fn append_existing_file_counts_its_size() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("v.log"), "0123456789012345678\n").unwrap();
        let rotation = Rotation {
            max_bytes: 25,
            keep: 1,
        };
        let mut f = RotatingFile::new(dir.path(), "v", rotation);
        f.append(&lines(0..1)).1.unwrap();
        assert_eq!(read(&dir.path().join("v.log")), "line 0000\n");
        assert!(read(&dir.path().join("v.log.1")).starts_with("0123"));
    }

    #[test]
    fn append_keep_zero_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let rotation = Rotation {
            max_bytes: 10,
            keep: 0,
        };
        let mut f = RotatingFile::new(dir.path(), "v", rotation);
        f.append(&lines(0..3)).1.unwrap();
        assert_eq!(read(&dir.path().join("v.log")), "line 0002\n");
        assert!(!dir.path().join("v.log.1").exists());
    }

    #[test]
    fn append_into_missing_dir_fails_with_nothing_written() {
        let mut f = RotatingFile::new(Path::new("/nonexistent-dir"), "v", Rotation::default());
        let (n, result) = f.append(&lines(0..2));
        assert_eq!(n, 0);
        assert!(result.is_err());
    }
}
