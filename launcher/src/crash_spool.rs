//! The host's crash spool: each report becomes `<spool>/<vm>/<exe>.<YYYYMMDD.HHMMSS>.<pid>.dmp`
//! plus a `.meta` of `key=value` lines that ends with `done=1`, written last (and the file
//! renamed into place) so a reader never sees half a report. Then the configured
//! crash-reporter command is run with the two paths. Each VM's directory keeps only the
//! newest N reports (`--crash-keep`, default 10): older pairs are removed after each store.
//!
//! Minidumps hold the guest's environment and stack memory: the spool and each VM's directory
//! are 0700 and owned by the launcher's user (an existing one of another user, writable by
//! others, or a symlink is refused: see `pool::private`), and every file is created 0600.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::pool::private;

use vm_proto::protos::host::CrashReport;
use vm_proto::spool::{meta_line, safe_name, stamp, DONE_LINE};

#[derive(Debug)]
pub struct SpoolError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "crash spool {}: {}", self.path.display(), self.source)
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    write_atomic_with_time(path, bytes, None)
}

/// Writes `path` whole or not at all (a new 0600 file renamed over it), with `modified` as
/// its write time when given (an upload's `.meta` rewrite keeps the report's place in
/// [`prune`]'s order).
pub fn write_atomic_with_time(
    path: &Path,
    bytes: &[u8],
    modified: Option<SystemTime>,
) -> Result<(), SpoolError> {
    let err = |source| SpoolError {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    // A fresh file, so its mode is ours (0600) and never a left-over's or a symlink's target.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let mut file = private::create_new_file(&tmp).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    if let Some(time) = modified {
        file.set_modified(time).map_err(err)?;
    }
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Keys of the `.meta` only the host writes (and every `upload_*` key: the uploader's).
const HOST_KEYS: [&str; 5] = ["done", "vm_id", "payload", "payload_size", "process_tree"];

fn host_only(key: &str) -> bool {
    HOST_KEYS.contains(&key) || key.starts_with(crate::crash_upload::STATE_KEY_PREFIX)
}

/// Whether an uploader holds `dmp` (an `flock` on it): pruning leaves such a report be.
fn being_uploaded(dmp: &Path) -> bool {
    let Ok(file) = std::fs::File::open(dmp) else {
        return false;
    };
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(_unlocked_on_drop) => false,
        Err((_, errno)) => errno == nix::errno::Errno::EWOULDBLOCK,
    }
}

/// Default number of reports kept per VM.
pub const DEFAULT_KEEP: usize = 10;

/// Removes all but the `keep` newest reports in `<spool>/<vm>` (by the `.meta`'s write time,
/// then name); a `.dmp` without its `.meta` (one being written) or one being uploaded is
/// left alone. Returns the removed `.dmp` paths.
pub fn prune(spool: &Path, vm_id: &str, keep: usize) -> Result<Vec<PathBuf>, SpoolError> {
    let dir = spool.join(safe_name(vm_id, "vm"));
    let entries = std::fs::read_dir(&dir).map_err(|source| SpoolError {
        path: dir.clone(),
        source,
    })?;
    let mut reports: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            if path.extension()? != "meta" {
                return None;
            }
            let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
            Some((modified, path))
        })
        .collect();
    reports.sort();
    let excess = reports.len().saturating_sub(keep);
    let mut removed = Vec::with_capacity(excess);
    for (_, meta) in reports.into_iter().take(excess) {
        let dmp = meta.with_extension("dmp");
        if being_uploaded(&dmp) {
            continue;
        }
        for path in [&meta, &dmp] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(SpoolError {
                        path: path.clone(),
                        source,
                    })
                }
            }
        }
        removed.push(dmp);
    }
    Ok(removed)
}

/// A `.meta` line of a value the guest chose: escaped as the format says, then any other
/// control character or invalid UTF-8 scrubbed (a crash reporter reads this file).
fn guest_line(key: &str, value: &str) -> String {
    let line = meta_line(key, value);
    format!(
        "{}\n",
        crate::log_forward::scrub(line.trim_end_matches('\n').as_bytes())
    )
}

/// Writes one report; returns the `.dmp` and `.meta` paths.
pub fn store(
    spool: &Path,
    vm_id: &str,
    report: &CrashReport,
    now_unix: i64,
) -> Result<(PathBuf, PathBuf), SpoolError> {
    let meta = report.get_metadata();
    let exe = safe_name(meta.get("exe").map_or("", |s| s.as_str()), "unknown");
    let pid = meta
        .get("pid")
        .and_then(|p| p.parse::<u32>().ok())
        .unwrap_or(0);
    let dir = spool.join(safe_name(vm_id, "vm"));
    for (path, parents) in [(spool, true), (dir.as_path(), false)] {
        private::ensure_dir(path, parents).map_err(|e| SpoolError {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
    }
    let base = format!("{exe}.{}.{pid}", stamp(now_unix));
    let dmp = dir.join(format!("{base}.dmp"));
    let meta_path = dir.join(format!("{base}.meta"));
    write_atomic(&dmp, report.get_minidump())?;

    let mut keys: Vec<(&String, &String)> = meta.iter().collect();
    keys.sort();
    let mut text = String::new();
    for (k, v) in keys {
        let k = safe_name(k, "key");
        // The host writes these itself; a guest may not forge them.
        if !host_only(&k) {
            text.push_str(&guest_line(&k, v));
        }
    }
    // The ancestors, one per line in the report, escaped onto one line like every value.
    text.push_str(&guest_line("process_tree", report.get_process_tree()));
    text.push_str(&meta_line("vm_id", vm_id));
    text.push_str(&meta_line("payload", &dmp.display().to_string()));
    text.push_str(&meta_line(
        "payload_size",
        &report.get_minidump().len().to_string(),
    ));
    text.push_str(DONE_LINE);
    write_atomic(&meta_path, text.as_bytes())?;
    Ok((dmp, meta_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_writes_dump_and_meta_ending_with_done() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = CrashReport::new();
        r.set_minidump(b"MDMP....".to_vec());
        r.mut_metadata()
            .insert("exe".into(), "../../evil/app".into());
        r.mut_metadata().insert("pid".into(), "42".into());
        r.mut_metadata().insert("done".into(), "1".into());
        r.set_process_tree("42 app: app a\\b\n1 init: /init\x07".into());
        let (dmp, meta) = store(dir.path(), "vm1", &r, 0).unwrap();
        assert_eq!(
            dmp,
            dir.path().join("vm1/_.._evil_app.19700101.000000.42.dmp")
        );
        assert_eq!(std::fs::read(&dmp).unwrap(), b"MDMP....");
        let text = std::fs::read_to_string(meta).unwrap();
        assert!(text.ends_with("payload_size=8\ndone=1\n"), "{text}");
        assert_eq!(text.matches("done=").count(), 1);
        assert!(
            text.contains("process_tree=42 app: app a\\\\b\\n1 init: /init#007\n"),
            "{text}"
        );
    }

    #[test]
    fn store_guest_cannot_forge_host_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = CrashReport::new();
        r.set_minidump(b"MDMP".to_vec());
        for (k, v) in [
            ("vm_id", "other-vm"),
            ("payload", "/etc/passwd"),
            ("payload_size", "1"),
            ("upload_state", "uploaded"),
            ("upload_id", "forged"),
        ] {
            r.mut_metadata().insert(k.into(), v.into());
        }
        let (_, meta) = store(dir.path(), "vm1", &r, 0).unwrap();
        let text = std::fs::read_to_string(meta).unwrap();
        assert_eq!(text.matches("vm_id=").count(), 1, "{text}");
        assert!(text.contains("vm_id=vm1\n"), "{text}");
        assert!(!text.contains("/etc/passwd"), "{text}");
        assert!(text.contains("payload_size=4\n"), "{text}");
        assert!(!text.contains("upload_"), "{text}");
    }

    #[test]
    fn prune_leaves_a_report_being_uploaded() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = CrashReport::new();
        r.set_minidump(b"MDMP".to_vec());
        r.mut_metadata().insert("pid".into(), "1".into());
        let (oldest, _) = store(dir.path(), "vm1", &r, 1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(15));
        r.mut_metadata().insert("pid".into(), "2".into());
        let (newer, _) = store(dir.path(), "vm1", &r, 2).unwrap();
        // An uploader's lock on the oldest.
        let held = nix::fcntl::Flock::lock(
            std::fs::File::open(&oldest).unwrap(),
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        )
        .unwrap();
        assert_eq!(prune(dir.path(), "vm1", 0).unwrap(), vec![newer]);
        assert!(oldest.exists());
        drop(held);
        assert_eq!(prune(dir.path(), "vm1", 0).unwrap(), vec![oldest]);
    }

    #[test]
    fn prune_keeps_the_newest_per_vm() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = CrashReport::new();
        r.set_minidump(b"MDMP".to_vec());
        for pid in 1..=5 {
            r.mut_metadata().insert("pid".into(), pid.to_string());
            store(dir.path(), "vm1", &r, 1_700_000_000 + pid).unwrap();
            // Distinct write times even on coarse-timestamp file systems.
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
        store(dir.path(), "vm2", &r, 0).unwrap();
        std::fs::write(dir.path().join("vm1/half.dmp"), b"being written").unwrap();

        let removed = prune(dir.path(), "vm1", 2).unwrap();

        assert_eq!(removed.len(), 3);
        let mut left: Vec<String> = std::fs::read_dir(dir.path().join("vm1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "half.dmp",
                "unknown.20231114.221324.4.dmp",
                "unknown.20231114.221324.4.meta",
                "unknown.20231114.221325.5.dmp",
                "unknown.20231114.221325.5.meta"
            ]
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("vm2")).unwrap().count(),
            2
        );
        assert!(prune(dir.path(), "vm1", 0).unwrap().len() == 2);
    }
}
