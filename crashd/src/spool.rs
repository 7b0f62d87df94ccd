//! The guest's crash spool (/var/spool/crash): reports the host could not take yet, kept
//! within a bound (count and bytes; the oldest go first) and retried, oldest first, by the
//! next run of crash_sender. Each report is `<stem>.dmp` + `<stem>.meta` (see `report`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::report::CrashReportData;

pub const DEFAULT_DIR: &str = "/var/spool/crash";
pub const DEFAULT_MAX_REPORTS: usize = 4;
pub const DEFAULT_MAX_BYTES: u64 = 32 << 20;

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

impl std::error::Error for SpoolError {}

/// A complete report waiting in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    pub stem: String,
    pub bytes: u64,
    modified: SystemTime,
}

pub struct Spool {
    pub dir: PathBuf,
    pub max_reports: usize,
    pub max_bytes: u64,
}

impl Spool {
    pub fn new(dir: impl Into<PathBuf>) -> Spool {
        Spool {
            dir: dir.into(),
            max_reports: DEFAULT_MAX_REPORTS,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    fn path(&self, stem: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{stem}.{ext}"))
    }

    fn err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
        move |source| SpoolError {
            path: path.to_path_buf(),
            source,
        }
    }

    /// An exclusive lock on the spool for one sender (blocks while another holds it); a
    /// missing spool directory is made.
    pub fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>, SpoolError> {
        std::fs::create_dir_all(&self.dir).map_err(Self::err(&self.dir))?;
        let dir = std::fs::File::open(&self.dir).map_err(Self::err(&self.dir))?;
        nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, errno)| {
            SpoolError {
                path: self.dir.clone(),
                source: errno.into(),
            }
        })
    }

    /// Complete reports, oldest first. A missing spool directory is an empty spool.
    pub fn pending(&self) -> Vec<Spooled> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<Spooled> = entries
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let stem = name.strip_suffix(".meta")?.to_string();
                let meta = std::fs::metadata(self.path(&stem, "meta")).ok()?;
                let dmp = std::fs::metadata(self.path(&stem, "dmp")).ok()?;
                Some(Spooled {
                    bytes: meta.len() + dmp.len(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    stem,
                })
            })
            .collect();
        out.sort_by(|a, b| {
            a.modified
                .cmp(&b.modified)
                .then_with(|| a.stem.cmp(&b.stem))
        });
        out
    }

    pub fn load(&self, entry: &Spooled) -> Result<CrashReportData, SpoolError> {
        let meta_path = self.path(&entry.stem, "meta");
        let text = std::fs::read_to_string(&meta_path).map_err(Self::err(&meta_path))?;
        let mut report = CrashReportData::from_meta_text(&text).ok_or_else(|| SpoolError {
            path: meta_path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "incomplete .meta"),
        })?;
        let dmp = self.path(&entry.stem, "dmp");
        report.minidump = std::fs::read(&dmp).map_err(Self::err(&dmp))?;
        Ok(report)
    }

    /// Removes a report (the `.meta` first, so a half-removed report is never "complete").
    pub fn remove(&self, stem: &str) {
        let _ = std::fs::remove_file(self.path(stem, "meta"));
        let _ = std::fs::remove_file(self.path(stem, "dmp"));
    }

    /// Stores `report`, evicting the oldest reports to stay within the bounds; returns the
    /// stems evicted. A report larger than the whole byte bound is refused.
    pub fn store(&self, report: &CrashReportData) -> Result<Vec<String>, SpoolError> {
        let size = report.minidump.len() as u64 + report.meta_text().len() as u64;
        if size > self.max_bytes || self.max_reports == 0 {
            return Err(SpoolError {
                path: self.dir.clone(),
                source: std::io::Error::other(format!(
                    "a {size}-byte report does not fit a spool of {} bytes",
                    self.max_bytes
                )),
            });
        }
        self.remove_leftovers();
        let mut pending = self.pending();
        let mut evicted = Vec::new();
        while !pending.is_empty()
            && (pending.len() + 1 > self.max_reports
                || pending.iter().map(|p| p.bytes).sum::<u64>() + size > self.max_bytes)
        {
            let oldest = pending.remove(0);
            self.remove(&oldest.stem);
            evicted.push(oldest.stem);
        }
        let mut stem = report.file_stem();
        let mut n = 1;
        while self.path(&stem, "meta").exists() {
            n += 1;
            stem = format!("{}.{n}", report.file_stem());
        }
        report
            .write_to(&self.dir, &stem, true)
            .map_err(Self::err(&self.dir))?;
        Ok(evicted)
    }

    /// Removes `.tmp` files and `.dmp` files without a `.meta` (a run that died mid-write).
    fn remove_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let orphan = match path.extension().and_then(|e| e.to_str()) {
                Some("tmp") => true,
                Some("dmp") => !path.with_extension("meta").exists(),
                _ => false,
            };
            if orphan {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::keys;

    fn report(pid: u32, dump_len: usize) -> CrashReportData {
        let mut r = CrashReportData {
            minidump: vec![7; dump_len],
            ..Default::default()
        };
        r.metadata.insert(keys::EXE.into(), "app".into());
        r.metadata.insert(keys::PID.into(), pid.to_string());
        r.metadata.insert(keys::TIME.into(), "100".into());
        r
    }

    fn pids(spool: &Spool) -> Vec<String> {
        spool
            .pending()
            .iter()
            .map(|p| spool.load(p).unwrap().metadata[keys::PID].clone())
            .collect()
    }

    #[test]
    fn lock_makes_the_spool_and_lets_one_sender_in_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("spool"));
        let first = spool.lock().unwrap();
        assert!(spool.dir.is_dir());
        let (tx, rx) = std::sync::mpsc::channel();
        let dir_again = spool.dir.clone();
        let waiter = std::thread::spawn(move || {
            let _second = Spool::new(dir_again).lock().unwrap();
            tx.send(()).unwrap();
        });
        let waited = rx.recv_timeout(std::time::Duration::from_millis(300));
        assert!(
            waited.is_err(),
            "a second sender got in while the first held the lock"
        );
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("the second sender gets the lock once the first is done");
        waiter.join().unwrap();
    }

    #[test]
    fn store_over_count_bound_evicts_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path());
        for pid in 1..=6 {
            spool.store(&report(pid, 10)).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(pids(&spool), ["3", "4", "5", "6"]);
    }

    #[test]
    fn store_over_byte_bound_evicts_until_it_fits() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::new(dir.path());
        spool.max_bytes = 3000;
        for pid in 1..=3 {
            spool.store(&report(pid, 1000)).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(pids(&spool), ["2", "3"]);
        assert!(spool.store(&report(9, 5000)).is_err());
        assert_eq!(pids(&spool), ["2", "3"]);
    }

    #[test]
    fn load_round_trips_and_remove_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("new"));
        assert!(spool.pending().is_empty());
        let mut r = report(5, 3);
        r.process_tree = "5 app: app\n1 init: /init".into();
        spool.store(&r).unwrap();
        spool.store(&r).unwrap();
        let pending = spool.pending();
        assert_eq!(pending.len(), 2);
        assert_ne!(pending[0].stem, pending[1].stem);
        let back = spool.load(&pending[0]).unwrap();
        assert_eq!(back.minidump, r.minidump);
        assert_eq!(back.process_tree, r.process_tree);
        spool.remove(&pending[0].stem);
        assert_eq!(spool.pending().len(), 1);
    }

    #[test]
    fn store_cleans_half_written_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.dmp"), b"half").unwrap();
        std::fs::write(dir.path().join("y.tmp"), b"half").unwrap();
        let spool = Spool::new(dir.path());
        spool.store(&report(1, 1)).unwrap();
        assert!(!dir.path().join("x.dmp").exists());
        assert!(!dir.path().join("y.tmp").exists());
        assert_eq!(spool.pending().len(), 1);
    }
}
