//! The loaded modules (executable, shared libraries, the vDSO) of the crashed process: found
//! from the core's NT_FILE table (or /proc/PID/maps when the core has none), grouped into
//! one module per mapped image, then identified by their build ids.

use std::path::PathBuf;

use crate::build_id::{self, FileIdentity};
use crate::memory::MemoryImage;
use crate::notes::FileMapping;
use crate::proc_info::MapsEntry;

/// Modules kept at most; past this they are dropped (noted).
pub const MAX_MODULES: usize = 1024;
/// `AT_SYSINFO_EHDR`: where the kernel mapped the vDSO.
pub const AT_SYSINFO_EHDR: u64 = 33;
pub const VDSO_NAME: &str = "linux-gate.so";

/// One mapped image, before identification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub base: u64,
    pub end: u64,
    pub path: String,
    /// The range of its first mapping (for /proc/PID/map_files).
    pub first_mapping: (u64, u64),
    /// Some mapping of it is executable; `None` when permissions are unknown (NT_FILE only).
    pub executable: Option<bool>,
}

/// An identified module, ready for the minidump's module list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub base: u64,
    pub size: u64,
    pub path: String,
    pub build_id: Option<Vec<u8>>,
}

fn is_file_path(path: &str) -> bool {
    path.starts_with('/') && !path.starts_with("/dev/") && !path.starts_with("/memfd:")
}

/// Groups file-backed mappings into images: a mapping at file offset 0 starts one, later
/// mappings of the same path extend it. `maps` (permissions) refines NT_FILE when present.
pub fn candidates(files: &[FileMapping], maps: &[MapsEntry]) -> Vec<Candidate> {
    let mappings: Vec<(u64, u64, u64, &str, Option<bool>)> = if files.is_empty() {
        maps.iter()
            .map(|m| {
                (
                    m.start,
                    m.end,
                    m.offset,
                    m.path.as_str(),
                    Some(m.executable()),
                )
            })
            .collect()
    } else {
        files
            .iter()
            .map(|f| {
                let exec = (!maps.is_empty()).then(|| {
                    maps.iter()
                        .any(|m| m.start < f.end && f.start < m.end && m.executable())
                });
                (f.start, f.end, f.offset, f.path.as_str(), exec)
            })
            .collect()
    };
    let mut sorted = mappings;
    sorted.sort_by_key(|m| m.0);
    let mut out: Vec<Candidate> = Vec::new();
    for (start, end, offset, path, exec) in sorted {
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        if !is_file_path(path) || end <= start {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.path == path && offset != 0 && start >= last.end => {
                last.end = end;
                last.executable = match (last.executable, exec) {
                    (Some(a), Some(b)) => Some(a || b),
                    (a, b) => a.or(b),
                };
            }
            _ if offset == 0 => out.push(Candidate {
                base: start,
                end,
                path: path.to_string(),
                first_mapping: (start, end),
                executable: exec,
            }),
            _ => {}
        }
    }
    out.truncate(MAX_MODULES);
    out
}

/// Where the collector may read a candidate's file: /proc/PID/map_files (the very file
/// mapped, even if deleted or in another mount namespace), then the path itself.
pub fn file_paths(candidate: &Candidate, map_files: Option<&PathBuf>) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(dir) = map_files {
        let (s, e) = candidate.first_mapping;
        paths.push(dir.join(format!("{s:x}-{e:x}")));
    }
    paths.push(PathBuf::from(&candidate.path));
    paths
}

/// Identifies candidates: ELF images only (and, when permissions are known, only those with
/// code), with the build id from captured memory first, then from the file.
pub fn identify(
    candidates: &[Candidate],
    image: &MemoryImage,
    map_files: Option<&PathBuf>,
    read_files: bool,
) -> Vec<Module> {
    let mut modules = Vec::new();
    for c in candidates {
        if c.executable == Some(false) {
            continue;
        }
        let in_memory = build_id::is_elf_in_memory(image, c.base);
        let mut build_id = build_id::from_memory(image, c.base);
        let mut is_elf = in_memory;
        if build_id.is_none() && read_files {
            for path in file_paths(c, map_files) {
                match build_id::from_file(&path) {
                    Ok(FileIdentity::Elf { build_id: id }) => {
                        is_elf = true;
                        build_id = id;
                        break;
                    }
                    Ok(FileIdentity::NotElf) => break,
                    Err(_) => continue,
                }
            }
        }
        if is_elf {
            modules.push(Module {
                base: c.base,
                size: c.end.saturating_sub(c.base),
                path: c.path.clone(),
                build_id,
            });
        }
    }
    modules
}

/// The vDSO as a module, identified from memory (the kernel always dumps it).
pub fn vdso(image: &MemoryImage, base: Option<u64>, size: u64) -> Option<Module> {
    let base = base.filter(|&b| b != 0)?;
    build_id::is_elf_in_memory(image, base).then(|| Module {
        base,
        size,
        path: VDSO_NAME.to_string(),
        build_id: build_id::from_memory(image, base),
    })
}

/// Puts the main executable first (the minidump convention readers rely on), then the rest
/// by address. The executable is the module holding `entry` (AT_ENTRY), else `exe`'s path.
pub fn order(mut modules: Vec<Module>, entry: Option<u64>, exe: Option<&str>) -> Vec<Module> {
    modules.sort_by_key(|m| m.base);
    let main = entry
        .and_then(|e| {
            modules
                .iter()
                .position(|m| m.base <= e && e - m.base < m.size)
        })
        .or_else(|| exe.and_then(|x| modules.iter().position(|m| m.path == x)));
    if let Some(i) = main {
        let m = modules.remove(i);
        modules.insert(0, m);
    }
    modules
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc_info::parse_maps;

    fn fm(start: u64, end: u64, offset: u64, path: &str) -> FileMapping {
        FileMapping {
            start,
            end,
            offset,
            path: path.into(),
        }
    }

    #[test]
    fn candidates_group_mappings_of_one_image() {
        let files = [
            fm(0x7000, 0x8000, 0, "/lib/libc.so.6"),
            fm(0x1000, 0x2000, 0, "/bin/app"),
            fm(0x2000, 0x3000, 0x1000, "/bin/app"),
            fm(0x4000, 0x5000, 0x2000, "/bin/app"),
            fm(0x8000, 0x9000, 0x1000, "/lib/libc.so.6"),
            fm(0x9000, 0xa000, 0, "/dev/zero"),
            fm(0xa000, 0xb000, 0x3000, "/lib/orphan.so"),
        ];
        let got = candidates(&files, &[]);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].base, got[0].end, got[0].path.as_str()),
            (0x1000, 0x5000, "/bin/app")
        );
        assert_eq!((got[1].base, got[1].end), (0x7000, 0x9000));
        assert_eq!(got[0].executable, None);
    }

    #[test]
    fn candidates_from_maps_know_permissions() {
        let maps = parse_maps(
            b"1000-2000 r--p 00000000 08:01 1 /bin/app\n\
              2000-3000 r-xp 00001000 08:01 1 /bin/app\n\
              5000-6000 r--p 00000000 08:01 2 /usr/share/font.ttf\n\
              7000-8000 r-xp 00000000 08:01 3 /lib/gone.so (deleted)\n",
        );
        let got = candidates(&[], &maps);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].executable, Some(true));
        assert_eq!(got[1].executable, Some(false));
        assert_eq!(got[2].path, "/lib/gone.so");
    }

    #[test]
    fn identify_non_elf_and_data_files_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("data.bin");
        std::fs::write(&text, b"not elf").unwrap();
        let c = Candidate {
            base: 0x1000,
            end: 0x2000,
            path: text.to_string_lossy().into_owned(),
            first_mapping: (0x1000, 0x2000),
            executable: None,
        };
        let got = identify(&[c], &MemoryImage::default(), None, true);
        assert!(got.is_empty());
    }

    #[test]
    fn order_puts_entry_module_first() {
        let m = |base, path: &str| Module {
            base,
            size: 0x1000,
            path: path.into(),
            build_id: None,
        };
        let got = order(
            vec![
                m(0x1000, "/lib/a"),
                m(0x5000, "/bin/app"),
                m(0x3000, "/lib/b"),
            ],
            Some(0x5010),
            None,
        );
        let paths: Vec<&str> = got.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(paths, ["/bin/app", "/lib/a", "/lib/b"]);
        let got = order(got, None, Some("/lib/b"));
        assert_eq!(got[0].path, "/lib/b");
    }
}
