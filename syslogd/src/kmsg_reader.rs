//! The /dev/kmsg source. Reads records from the oldest the kernel still holds, skips those
//! a previous run already delivered (the saved sequence number), and counts records lost
//! from gaps in the sequence numbers: an EPIPE read (the ring buffer overwrote what we had
//! not read yet) or a gap across a restart becomes one record saying how many were lost.
//!
//! A regular file works too (tests): at its end the reader waits and reads on, like
//! `tail -f`.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::time::{clock_gettime, ClockId};

use crate::buffer::Buffer;
use crate::kmsg_format::{self, KmsgEntry};
use crate::record::{Kind, Record, Timestamp};

/// Larger than any record the kernel returns (a smaller read fails with EINVAL).
const READ_BYTES: usize = 64 << 10;
const EOF_POLL: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct KmsgOpenError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for KmsgOpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot open the kernel log {}: {}",
            self.path.display(),
            self.source
        )
    }
}

impl std::error::Error for KmsgOpenError {}

/// Sequence bookkeeping, separate from I/O so it can be tested alone.
#[derive(Debug, Default)]
pub struct Sequencer {
    /// Records up to this one were delivered by an earlier run.
    delivered: Option<u64>,
    /// The next sequence number expected.
    expected: Option<u64>,
}

impl Sequencer {
    pub fn new(delivered: Option<u64>) -> Sequencer {
        Sequencer {
            delivered,
            expected: delivered.map(|d| d + 1),
        }
    }

    /// Whether to send `seq`, and how many records were lost just before it.
    pub fn admit(&mut self, seq: u64) -> Option<u64> {
        if self.delivered.is_some_and(|d| seq <= d) {
            return None;
        }
        let lost = match self.expected {
            Some(expected) if seq > expected => seq - expected,
            _ => 0,
        };
        self.expected = Some(seq + 1);
        Some(lost)
    }
}

/// The record reporting `lost` kernel records.
pub fn lost_report(lost: u64) -> Record {
    let mut record = Record::new(4, Timestamp::now()); // kern.warning
    record.app_name = "vm_syslog".into();
    record.pid = std::process::id();
    record.set_content(
        format!("vm_syslog: {lost} kernel log records lost (overwritten before they were read)")
            .as_bytes(),
    );
    record
}

/// Wall-clock time at boot: now minus the monotonic clock kmsg timestamps count from.
fn boot_time() -> Timestamp {
    let now = Timestamp::now();
    let Ok(up) = clock_gettime(ClockId::CLOCK_MONOTONIC) else {
        return now;
    };
    let (mut secs, mut nanos) = (now.secs - up.tv_sec(), i64::from(now.nanos) - up.tv_nsec());
    if nanos < 0 {
        secs -= 1;
        nanos += 1_000_000_000;
    }
    Timestamp {
        secs,
        nanos: nanos as u32,
    }
}

pub struct KmsgReader {
    file: File,
    path: PathBuf,
    sequencer: Sequencer,
}

impl KmsgReader {
    /// `delivered`: the last sequence number an earlier run delivered, if any.
    pub fn open(path: &Path, delivered: Option<u64>) -> Result<KmsgReader, KmsgOpenError> {
        let file = File::open(path).map_err(|source| KmsgOpenError {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(KmsgReader {
            file,
            path: path.to_path_buf(),
            sequencer: Sequencer::new(delivered),
        })
    }

    fn handle(&mut self, entry: &KmsgEntry, buffer: &Buffer) {
        let Some(lost) = self.sequencer.admit(entry.seq) else {
            return;
        };
        if lost > 0 {
            buffer.push(Kind::Kernel, lost_report(lost), None);
        }
        buffer.push(Kind::Kernel, entry.to_record(boot_time()), Some(entry.seq));
    }

    /// Reads until an unexpected error, pushing each record into `buffer`.
    pub fn run(mut self, buffer: Arc<Buffer>) -> io::Result<()> {
        let mut buf = vec![0u8; READ_BYTES];
        let mut filled = 0;
        let mut malformed = 0u64;
        loop {
            let n = match self.file.read(&mut buf[filled..]) {
                Ok(0) => {
                    std::thread::sleep(EOF_POLL);
                    continue;
                }
                Ok(n) => n,
                // Overwritten before we read them: the sequence gap counts them.
                Err(e) if e.raw_os_error() == Some(Errno::EPIPE as i32) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    crate::warn!("vm_syslog: reading {} failed: {e}", self.path.display());
                    return Err(e);
                }
            };
            filled += n;
            let (records, used) = kmsg_format::split_records(&buf[..filled]);
            for raw in records {
                match kmsg_format::parse_record(raw) {
                    Ok(entry) => self.handle(&entry, &buffer),
                    Err(e) => {
                        malformed += 1;
                        if malformed.is_power_of_two() {
                            crate::warn!(
                                "vm_syslog: {}: skipped {malformed} malformed records: {e}",
                                self.path.display()
                            );
                        }
                    }
                }
            }
            let used = if used == 0 && filled == buf.len() {
                filled // one line longer than the buffer: give it up whole
            } else {
                used
            };
            buf.copy_within(used..filled, 0);
            filled -= used;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequencer_fresh_start_reports_no_gap_before_the_first_record() {
        let mut s = Sequencer::new(None);
        assert_eq!(s.admit(40), Some(0));
        assert_eq!(s.admit(41), Some(0));
        assert_eq!(s.admit(45), Some(3));
    }

    #[test]
    fn sequencer_restart_skips_delivered_and_counts_the_gap() {
        let mut s = Sequencer::new(Some(10));
        assert_eq!(s.admit(3), None);
        assert_eq!(s.admit(10), None);
        assert_eq!(s.admit(11), Some(0));
        let mut s = Sequencer::new(Some(10));
        assert_eq!(
            s.admit(15),
            Some(4),
            "11 to 14 overwritten while we were down"
        );
    }

    #[test]
    fn run_file_source_pushes_records_and_gap_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kmsg");
        std::fs::write(
            &path,
            b"6,1,10,-;one\n SUBSYSTEM=x\n6,2,20,-;two\n6,5,30,-;five\ngarbage\n",
        )
        .unwrap();
        let buffer = Arc::new(Buffer::new(1 << 20, 1 << 20));
        let reader = KmsgReader::open(&path, Some(1)).unwrap();
        let b = buffer.clone();
        std::thread::spawn(move || reader.run(b));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while buffer.waiting().0 < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                buffer.waiting()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        buffer.stop();
        let batch = buffer.next_batch(Duration::ZERO).unwrap();
        let texts: Vec<String> = batch
            .entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.record.content).into_owned())
            .collect();
        assert_eq!(texts[0], "two");
        assert!(texts[1].contains("2 kernel log records lost"), "{texts:?}");
        assert_eq!(texts[2], "five");
        assert_eq!(batch.last_kmsg_seq(), Some(5));
    }

    #[test]
    fn open_missing_path_names_it() {
        let err = KmsgReader::open(Path::new("/no/such/kmsg"), None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("/no/such/kmsg"), "{err}");
    }
}
