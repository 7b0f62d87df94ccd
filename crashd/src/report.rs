//! One crash report as the collector keeps it before it reaches the host: metadata
//! (`key=value`), the minidump and the process tree. Written to disk (the guest spool,
//! `--output`) as `<stem>.dmp` plus `<stem>.meta`, whose last line is `done=1`; the `.meta` is
//! renamed into place last, so a reader that sees it sees a whole report.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use vm_proto::spool;

/// The most minidump bytes a report may carry: what the host takes in one message (the
/// contract's limit, [`vm_proto::MAX_MESSAGE_BYTES`]), less room for the metadata.
pub const TRANSPORT_MAX_DUMP: u64 = vm_proto::MAX_MESSAGE_BYTES as u64 - (64 << 10);

/// Metadata keys the host and tests rely on.
pub mod keys {
    pub const EXE: &str = "exe";
    pub const PID: &str = "pid";
    pub const SIGNAL: &str = "signal";
    pub const SIGNAL_NAME: &str = "signal_name";
    pub const TIME: &str = "time";
    pub const VM_ID: &str = "vm_id";
    pub const CRASH_TID: &str = "crash_tid";
    pub const FAULT_ADDR: &str = "fault_addr";
    pub const THREADS: &str = "threads";
    pub const MODULES: &str = "modules";
    pub const MINIDUMP_SIZE: &str = "minidump_size";
    /// The core's size, when it was read to its end.
    pub const CORE_SIZE: &str = "core_size";
    pub const CORE_BYTES_READ: &str = "core_bytes_read";
    /// Where the memory came from: proc (/proc/PID/mem), core, or proc+core.
    pub const MEMORY_SOURCE: &str = "memory_source";
    /// "yes" when the minidump was cut to its size cap; `memory_trimmed_bytes` says how much.
    pub const SIZE_CAPPED: &str = "size_capped";
    pub const MEMORY_TRIMMED: &str = "memory_trimmed_bytes";
    /// Text streams (environ, maps, cpuinfo) left out to fit the size cap.
    pub const SIZE_CAPPED_STREAMS: &str = "size_capped_streams";
    /// Threads (after the crashing one) and modules (after the main one) left out to fit.
    pub const THREADS_DROPPED: &str = "threads_dropped";
    pub const MODULES_DROPPED: &str = "modules_dropped";
    /// "yes" when the core was truncated or corrupt; `problems` says what was wrong.
    pub const PARTIAL: &str = "partial";
    pub const PROBLEMS: &str = "problems";
    /// What /proc could not give (the process may have gone).
    pub const PROC_PROBLEMS: &str = "proc_problems";
    pub const COLLECTOR: &str = "collector";
    /// Only on disk: the process tree travels in its own field on the wire.
    pub const PROCESS_TREE: &str = "process_tree";
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashReportData {
    pub metadata: BTreeMap<String, String>,
    pub minidump: Vec<u8>,
    pub process_tree: String,
}

impl CrashReportData {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// `<exe>.<YYYYMMDD.HHMMSS>.<pid>`.
    pub fn file_stem(&self) -> String {
        let time = self
            .get(keys::TIME)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        format!(
            "{}.{}.{}",
            spool::safe_name(self.get(keys::EXE).unwrap_or(""), "unknown"),
            spool::stamp(time),
            self.get(keys::PID).unwrap_or("0")
        )
    }

    /// The `.meta` text: sorted `key=value` lines (newlines escaped), `done=1` last.
    pub fn meta_text(&self) -> String {
        let mut text = String::new();
        for (k, v) in &self.metadata {
            if k != "done" && k != keys::PROCESS_TREE {
                text.push_str(&spool::meta_line(k, v));
            }
        }
        text.push_str(&spool::meta_line(keys::PROCESS_TREE, &self.process_tree));
        text.push_str(spool::DONE_LINE);
        text
    }

    /// Parses a `.meta` text back (without the minidump); `None` unless it ends with done=1.
    pub fn from_meta_text(text: &str) -> Option<CrashReportData> {
        let mut report = CrashReportData::default();
        for (k, v) in spool::parse_meta(text)? {
            match k.as_str() {
                keys::PROCESS_TREE => report.process_tree = v,
                _ => {
                    report.metadata.insert(k, v);
                }
            }
        }
        Some(report)
    }

    /// Writes `<dir>/<stem>.dmp` then `<dir>/<stem>.meta`; returns the `.dmp` path. With
    /// `durable` each file is synced before it is renamed into place (the spool must survive
    /// a power-off; `--output` does not pay for that).
    pub fn write_to(&self, dir: &Path, stem: &str, durable: bool) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let dmp = dir.join(format!("{stem}.dmp"));
        write_atomic(&dmp, &self.minidump, durable)?;
        write_atomic(
            &dir.join(format!("{stem}.meta")),
            self.meta_text().as_bytes(),
            durable,
        )?;
        Ok(dmp)
    }
}

/// Writes a temporary file, syncs it if `durable`, and renames it into place.
pub fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    if durable {
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CrashReportData {
        let mut r = CrashReportData {
            minidump: b"MDMP".to_vec(),
            process_tree: "7 sh: sh -c x\n1 init: /init".into(),
            ..Default::default()
        };
        r.metadata.insert(keys::EXE.into(), "../evil app".into());
        r.metadata.insert(keys::PID.into(), "7".into());
        r.metadata.insert(keys::TIME.into(), "0".into());
        r.metadata.insert(keys::PROBLEMS.into(), "a\\b\nc".into());
        r
    }

    #[test]
    fn meta_text_round_trips_and_ends_with_done() {
        let r = sample();
        let text = r.meta_text();
        assert!(text.ends_with("done=1\n"));
        assert_eq!(text.matches('\n').count(), 6, "{text}");
        let back = CrashReportData::from_meta_text(&text).unwrap();
        assert_eq!(back.metadata, r.metadata);
        assert_eq!(back.process_tree, r.process_tree);
        assert!(CrashReportData::from_meta_text(&text[..text.len() - 3]).is_none());
    }

    #[test]
    fn file_stem_is_safe_and_dated() {
        assert_eq!(sample().file_stem(), "_evil_app.19700101.000000.7");
    }

    #[test]
    fn write_to_puts_dump_and_meta_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let dmp = sample().write_to(dir.path(), "x", true).unwrap();
        assert_eq!(std::fs::read(&dmp).unwrap(), b"MDMP");
        assert!(dir.path().join("x.meta").exists());
        assert!(!dir.path().join("x.tmp").exists());
    }
}
