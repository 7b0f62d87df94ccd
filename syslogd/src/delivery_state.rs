//! What vm_syslog must remember across its own restarts, in a small file (in /run by
//! default) that names the boot it belongs to (`/proc/sys/kernel/random/boot_id`; after a
//! reboot the kernel counts from 0 again and old numbers mean nothing):
//!
//! - the last kmsg sequence number the host acknowledged, so a restart skips kernel records
//!   already delivered;
//! - the batch numbering for exactly-once delivery: every batch goes out with a
//!   (stream, number) pair, the host writes each pair once, and a retry re-sends the same
//!   pair. The stream is the boot id plus a random nonce chosen when the numbering began.
//!   Numbers are reserved [`RESERVE`] at a time (one file write per [`RESERVE`] batches):
//!   a restart continues after the reservation, and the gap is harmless, since the host
//!   only drops numbers at or below the last it wrote. A number is never sent before its
//!   reservation is saved; if saving fails, the numbering moves to a fresh stream that
//!   only lives in memory, so a restart can never reuse a number the host already has.
//!
//! Format: `boot_id=<id>\nstream=<id>.<nonce>\nbatch=<n>\nseq=<kmsg>\n`, replaced
//! atomically (write, then rename). A file without `stream` (older vm_syslog) keeps its
//! kmsg position and starts a new stream.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
/// Batch numbers reserved per file write.
pub const RESERVE: u64 = 64;

#[derive(Debug)]
pub struct StateError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot save the delivery state to {}: {}",
            self.path.display(),
            self.source
        )
    }
}

impl std::error::Error for StateError {}

/// This boot's id, or an empty string where there is none (then any saved state matches).
pub fn read_boot_id(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// 64 random bits as hex, from the kernel; the time and pid where that fails.
fn nonce() -> String {
    let mut bytes = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mixed = now.as_nanos() as u64 ^ (u64::from(std::process::id()) << 40);
        bytes = mixed.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file's content, as far as it belongs to this boot.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Saved {
    kmsg: Option<u64>,
    stream: Option<String>,
    batch: u64,
}

fn parse(text: &str, boot_id: &str) -> Saved {
    let (mut boot, mut saved) = (None, Saved::default());
    for line in text.lines() {
        match line.split_once('=') {
            Some(("boot_id", v)) => boot = Some(v),
            Some(("seq", v)) => saved.kmsg = v.parse().ok(),
            Some(("stream", v)) if !v.is_empty() => saved.stream = Some(v.to_string()),
            Some(("batch", v)) => saved.batch = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    if boot != Some(boot_id) {
        return Saved::default();
    }
    if saved.stream.is_none() {
        saved.batch = 0;
    }
    saved
}

/// The batch a record travels in: the host writes each pair once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchId {
    pub stream: String,
    pub number: u64,
}

#[derive(Debug)]
pub struct DeliveryState {
    /// None: nothing is saved (tests, or a fresh stream after a failed save).
    path: Option<PathBuf>,
    boot_id: String,
    kmsg: Option<u64>,
    stream: String,
    /// The last number handed out, and the last one saved as reserved.
    batch: u64,
    reserved: u64,
}

impl DeliveryState {
    /// Loads `path` (a missing or foreign file is a fresh start).
    pub fn open(path: PathBuf, boot_id: String) -> DeliveryState {
        let saved = std::fs::read_to_string(&path)
            .map(|text| parse(&text, &boot_id))
            .unwrap_or_default();
        let stream = saved
            .stream
            .unwrap_or_else(|| format!("{boot_id}.{}", nonce()));
        DeliveryState {
            path: Some(path),
            kmsg: saved.kmsg,
            stream,
            batch: saved.batch,
            reserved: saved.batch,
            boot_id,
        }
    }

    /// Numbering that lives in memory only (a fresh stream).
    pub fn in_memory(boot_id: &str) -> DeliveryState {
        DeliveryState {
            path: None,
            boot_id: boot_id.to_string(),
            kmsg: None,
            stream: format!("{boot_id}.{}", nonce()),
            batch: 0,
            reserved: 0,
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The last kmsg sequence number delivered in this boot, if one was saved.
    pub fn kmsg_delivered(&self) -> Option<u64> {
        self.kmsg
    }

    /// The next batch's id. On a failed save the numbering moves to a fresh in-memory
    /// stream (still exactly-once while this process lives) and the error is returned
    /// alongside, to be reported.
    pub fn next_batch(&mut self) -> (BatchId, Option<StateError>) {
        self.batch += 1;
        let mut error = None;
        if self.path.is_some() && self.batch > self.reserved {
            let reserved = self.batch + RESERVE - 1;
            match self.save(self.kmsg, reserved) {
                Ok(()) => self.reserved = reserved,
                Err(e) => {
                    error = Some(e);
                    let kmsg = self.kmsg;
                    *self = DeliveryState::in_memory(&self.boot_id);
                    self.kmsg = kmsg;
                    self.batch = 1;
                }
            }
        }
        let id = BatchId {
            stream: self.stream.clone(),
            number: self.batch,
        };
        (id, error)
    }

    /// Records that the host acknowledged kernel records up to `seq`.
    pub fn kmsg_acknowledged(&mut self, seq: u64) -> Result<(), StateError> {
        self.kmsg = Some(seq);
        match self.path {
            Some(_) => self.save(Some(seq), self.reserved),
            None => Ok(()),
        }
    }

    fn save(&self, kmsg: Option<u64>, reserved: u64) -> Result<(), StateError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let err = |source| StateError {
            path: path.clone(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut text = format!(
            "boot_id={}\nstream={}\nbatch={reserved}\n",
            self.boot_id, self.stream
        );
        if let Some(seq) = kmsg {
            text.push_str(&format!("seq={seq}\n"));
        }
        let mut file = std::fs::File::create(&tmp).map_err(err)?;
        file.write_all(text.as_bytes()).map_err(err)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmsg_acknowledged_then_open_same_boot_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = DeliveryState::open(dir.path().join("s"), "boot-a".into());
        assert_eq!(state.kmsg_delivered(), None);
        state.kmsg_acknowledged(41).unwrap();
        state.kmsg_acknowledged(42).unwrap();
        let again = DeliveryState::open(dir.path().join("s"), "boot-a".into());
        assert_eq!(again.kmsg_delivered(), Some(42));
        assert!(!dir.path().join("s.tmp").exists());
    }

    #[test]
    fn open_other_boot_starts_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = DeliveryState::open(dir.path().join("s"), "boot-a".into());
        state.kmsg_acknowledged(42).unwrap();
        state.next_batch();
        let other = DeliveryState::open(dir.path().join("s"), "boot-b".into());
        assert_eq!(other.kmsg_delivered(), None);
        assert!(other.stream.starts_with("boot-b."));
        assert_eq!(other.batch, 0);
    }

    #[test]
    fn next_batch_numbers_continue_after_a_restart_past_the_reservation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut first = DeliveryState::open(path.clone(), "b".into());
        let ids: Vec<BatchId> = (0..3).map(|_| first.next_batch().0).collect();
        assert_eq!(ids.iter().map(|i| i.number).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(ids.iter().all(|i| i.stream == ids[0].stream));
        let mut second = DeliveryState::open(path.clone(), "b".into());
        let (next, error) = second.next_batch();
        assert!(error.is_none());
        assert_eq!(next.stream, ids[0].stream, "the same stream goes on");
        assert_eq!(
            next.number,
            RESERVE + 1,
            "after everything the first run reserved"
        );
        // A restart within the second reservation continues after it.
        let mut third = DeliveryState::open(path, "b".into());
        assert_eq!(third.next_batch().0.number, 2 * RESERVE + 1);
    }

    #[test]
    fn next_batch_failed_save_moves_to_a_fresh_stream() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("no-such-dir").join("s");
        let mut state = DeliveryState::open(blocked.clone(), "b".into());
        let before = state.stream.clone();
        let (id, error) = state.next_batch();
        assert!(error.unwrap().to_string().contains("no-such-dir"));
        assert_ne!(id.stream, before);
        assert_eq!(id.number, 1);
        let (id2, error) = state.next_batch();
        assert!(
            error.is_none(),
            "no second report: nothing is saved any more"
        );
        assert_eq!((id2.stream, id2.number), (id.stream, 2));
    }

    #[test]
    fn parse_old_and_garbage_files() {
        let old = parse("boot_id=b\nseq=12\n", "b");
        assert_eq!((old.kmsg, old.stream, old.batch), (Some(12), None, 0));
        assert_eq!(parse("seq=12\n", ""), Saved::default());
        let bad = parse("boot_id=\nseq=x\nbatch=y\nstream=s\n", "");
        assert_eq!((bad.kmsg, bad.batch), (None, 0));
        assert_eq!(parse("boot_id=\nstream=s.1\nbatch=70\n", "").batch, 70);
    }

    #[test]
    fn nonce_is_16_hex_digits_and_differs() {
        let (a, b) = (nonce(), nonce());
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
