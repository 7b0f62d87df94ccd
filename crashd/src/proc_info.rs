//! What /proc says about the crashed process, read while the kernel is still writing the core
//! (core_pipe_limit > 0 keeps /proc/PID alive until we exit). The root is a parameter so tests
//! can point it at a directory snapshot; every read is bounded and every missing file is a
//! noted problem, never an error: a minidump can be written from the core alone.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Per-file read caps: a hostile or huge process must not make the collector allocate much.
pub const MAX_MAPS_BYTES: u64 = 1 << 20;
pub const MAX_TEXT_BYTES: u64 = 128 << 10;
/// Ancestors followed at most, and command line bytes shown per ancestor.
const MAX_TREE_DEPTH: usize = 64;
const TREE_CMDLINE_CHARS: usize = 200;

/// Places to look for the distribution's identity, first found wins.
pub const OS_RELEASE_PATHS: [&str; 3] =
    ["/etc/os-release", "/usr/lib/os-release", "/etc/lsb-release"];

/// One line of /proc/PID/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsEntry {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    pub path: String,
}

impl MapsEntry {
    pub fn executable(&self) -> bool {
        self.perms.as_bytes().get(2) == Some(&b'x')
    }
}

/// Parses /proc/PID/maps; malformed lines are skipped.
pub fn parse_maps(text: &[u8]) -> Vec<MapsEntry> {
    String::from_utf8_lossy(text)
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(6, ' ');
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?.to_string();
            let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
            let _dev = fields.next()?;
            let _inode = fields.next()?;
            let path = fields.next().unwrap_or("").trim_start().to_string();
            Some(MapsEntry {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                perms,
                offset,
                path,
            })
        })
        .collect()
}

/// The value of `key:` in a /proc/PID/status text.
pub fn status_field(status: &[u8], key: &str) -> Option<String> {
    String::from_utf8_lossy(status).lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then(|| v.trim().to_string())
    })
}

/// Kernel identity, from /proc/sys/kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelInfo {
    pub ostype: String,
    pub release: String,
    pub version: String,
}

/// Everything read from /proc (and os-release) for one crash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcSnapshot {
    pub pid: u32,
    pub maps: Option<Vec<u8>>,
    pub cmdline: Option<Vec<u8>>,
    pub environ: Option<Vec<u8>>,
    pub status: Option<Vec<u8>>,
    pub auxv: Option<Vec<u8>>,
    pub exe: Option<String>,
    pub cpuinfo: Option<Vec<u8>>,
    pub os_release: Option<Vec<u8>>,
    pub kernel: KernelInfo,
    /// One line per process, the crashed one first, then its parent, up to PID 1.
    pub process_tree: String,
    /// Where the mapped files can be opened (`<root>/<pid>/map_files`), if anywhere.
    pub map_files: Option<PathBuf>,
    /// The process's memory (`<root>/<pid>/mem`), if it exists.
    pub mem: Option<PathBuf>,
    /// Files that were missing, unreadable or cut, as sentences.
    pub problems: Vec<String>,
    /// Files cut at their cap (the stream name), for the metadata.
    pub truncated: Vec<&'static str>,
}

impl ProcSnapshot {
    pub fn maps_entries(&self) -> Vec<MapsEntry> {
        self.maps.as_deref().map(parse_maps).unwrap_or_default()
    }
}

/// Reads /proc under `root` (normally "/proc").
#[derive(Debug, Clone)]
pub struct ProcSource {
    pub root: PathBuf,
    pub os_release_paths: Vec<PathBuf>,
}

impl ProcSource {
    pub fn new(root: impl Into<PathBuf>) -> ProcSource {
        ProcSource {
            root: root.into(),
            os_release_paths: OS_RELEASE_PATHS.iter().map(PathBuf::from).collect(),
        }
    }

    /// Reads everything about `pid`; missing pieces become problems.
    pub fn snapshot(&self, pid: u32) -> ProcSnapshot {
        let dir = self.root.join(pid.to_string());
        let mut snap = ProcSnapshot {
            pid,
            ..ProcSnapshot::default()
        };
        snap.maps = read_capped(&dir.join("maps"), MAX_MAPS_BYTES, "maps", &mut snap);
        snap.cmdline = read_capped(&dir.join("cmdline"), MAX_TEXT_BYTES, "cmdline", &mut snap);
        snap.environ = read_capped(&dir.join("environ"), MAX_TEXT_BYTES, "environ", &mut snap);
        snap.status = read_capped(&dir.join("status"), MAX_TEXT_BYTES, "status", &mut snap);
        snap.auxv = read_capped(&dir.join("auxv"), MAX_TEXT_BYTES, "auxv", &mut snap);
        snap.exe = match std::fs::read_link(dir.join("exe")) {
            Ok(p) => Some(p.to_string_lossy().into_owned()),
            Err(e) => {
                snap.problems
                    .push(format!("{}: {e}", dir.join("exe").display()));
                None
            }
        };
        snap.cpuinfo = read_capped(
            &self.root.join("cpuinfo"),
            MAX_TEXT_BYTES,
            "cpuinfo",
            &mut snap,
        );
        snap.kernel = KernelInfo {
            ostype: read_line(&self.root.join("sys/kernel/ostype")),
            release: read_line(&self.root.join("sys/kernel/osrelease")),
            version: read_line(&self.root.join("sys/kernel/version")),
        };
        snap.os_release = self
            .os_release_paths
            .iter()
            .find_map(|p| read_bounded(p, MAX_TEXT_BYTES).ok().map(|(b, _)| b));
        let map_files = dir.join("map_files");
        snap.map_files = map_files.is_dir().then_some(map_files);
        let mem = dir.join("mem");
        snap.mem = mem.exists().then_some(mem);
        snap.process_tree = self.process_tree(pid);
        snap
    }

    /// The chain of ancestors of `pid`, one `PID NAME: CMDLINE` line each.
    pub fn process_tree(&self, pid: u32) -> String {
        let mut lines = Vec::new();
        let mut seen = Vec::new();
        let mut current = pid;
        while current != 0 && !seen.contains(&current) && seen.len() < MAX_TREE_DEPTH {
            seen.push(current);
            let dir = self.root.join(current.to_string());
            let Ok((status, _)) = read_bounded(&dir.join("status"), MAX_TEXT_BYTES) else {
                lines.push(format!("{current} (gone)"));
                break;
            };
            let name = status_field(&status, "Name").unwrap_or_default();
            let cmdline = read_bounded(&dir.join("cmdline"), TREE_CMDLINE_CHARS as u64)
                .map(|(b, _)| printable_cmdline(&b))
                .unwrap_or_default();
            lines.push(format!("{current} {name}: {cmdline}"));
            current = status_field(&status, "PPid")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
        }
        lines.join("\n")
    }
}

/// A NUL-separated command line as one line of text.
pub fn printable_cmdline(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let words: Vec<&str> = text.split('\0').filter(|w| !w.is_empty()).collect();
    let joined = words.join(" ");
    let cut: String = joined
        .chars()
        .take(TREE_CMDLINE_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    cut
}

/// Reads at most `cap` bytes; the flag says whether there was more.
fn read_bounded(path: &Path, cap: u64) -> std::io::Result<(Vec<u8>, bool)> {
    let mut file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.by_ref().take(cap).read_to_end(&mut bytes)?;
    let mut probe = [0u8; 1];
    let more = file.read(&mut probe)? > 0;
    Ok((bytes, more))
}

fn read_capped(
    path: &Path,
    cap: u64,
    name: &'static str,
    snap: &mut ProcSnapshot,
) -> Option<Vec<u8>> {
    match read_bounded(path, cap) {
        Ok((bytes, more)) => {
            if more {
                snap.truncated.push(name);
            }
            Some(bytes)
        }
        Err(e) => {
            snap.problems.push(format!("{}: {e}", path.display()));
            None
        }
    }
}

fn read_line(path: &Path) -> String {
    read_bounded(path, 4096)
        .map(|(b, _)| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
00400000-00401000 r--p 00000000 08:01 1234                               /usr/bin/crash me
00401000-00402000 r-xp 00001000 08:01 1234                               /usr/bin/crash me
7ffd0000-7ffd2000 rw-p 00000000 00:00 0                                  [stack]
garbage line
7ffe0000-7ffe1000 r--p 00000000 00:00 0
";

    fn write_proc(root: &Path, pid: u32, ppid: u32, name: &str, cmdline: &[u8]) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("status"),
            format!("Name:\t{name}\nPPid:\t{ppid}\n"),
        )
        .unwrap();
        std::fs::write(dir.join("cmdline"), cmdline).unwrap();
    }

    #[test]
    fn parse_maps_spaces_in_path_and_garbage_lines() {
        let maps = parse_maps(MAPS.as_bytes());
        assert_eq!(maps.len(), 4);
        assert_eq!(maps[1].path, "/usr/bin/crash me");
        assert!(maps[1].executable());
        assert!(!maps[0].executable());
        assert_eq!((maps[1].start, maps[1].offset), (0x401000, 0x1000));
        assert_eq!(maps[3].path, "");
    }

    #[test]
    fn snapshot_directory_root_reads_files_and_notes_missing_ones() {
        let root = tempfile::tempdir().unwrap();
        write_proc(root.path(), 7, 1, "app", b"app\0--flag\0");
        write_proc(root.path(), 1, 0, "init", b"/init\0");
        std::fs::write(root.path().join("7/maps"), MAPS).unwrap();
        std::fs::write(
            root.path().join("7/environ"),
            vec![b'x'; MAX_TEXT_BYTES as usize + 5],
        )
        .unwrap();
        std::fs::create_dir_all(root.path().join("sys/kernel")).unwrap();
        std::fs::write(root.path().join("sys/kernel/osrelease"), "6.1.0\n").unwrap();
        let mut source = ProcSource::new(root.path());
        source.os_release_paths = vec![root.path().join("nope")];

        let snap = source.snapshot(7);

        assert_eq!(snap.maps_entries().len(), 4);
        assert_eq!(
            snap.environ.as_ref().unwrap().len(),
            MAX_TEXT_BYTES as usize
        );
        assert_eq!(snap.truncated, vec!["environ"]);
        assert_eq!(snap.kernel.release, "6.1.0");
        assert!(snap.auxv.is_none());
        assert!(
            snap.problems.iter().any(|p| p.contains("auxv")),
            "{:?}",
            snap.problems
        );
        assert_eq!(snap.process_tree, "7 app: app --flag\n1 init: /init");
    }

    #[test]
    fn process_tree_cycle_and_gone_parent_end_the_chain() {
        let root = tempfile::tempdir().unwrap();
        write_proc(root.path(), 5, 6, "a", b"a\0");
        write_proc(root.path(), 6, 5, "b", b"b\0");
        write_proc(root.path(), 9, 77, "c", b"c\n\0");
        let source = ProcSource::new(root.path());
        assert_eq!(source.process_tree(5), "5 a: a\n6 b: b");
        assert_eq!(source.process_tree(9), "9 c: c?\n77 (gone)");
    }

    #[test]
    fn status_field_finds_key() {
        let status = b"Name:\tsh\nPPid:\t12\nThreads:\t3\n";
        assert_eq!(status_field(status, "PPid").as_deref(), Some("12"));
        assert_eq!(status_field(status, "Nope"), None);
    }
}
