//! One log record as vm_syslog holds it between a source and the host: what the parsers
//! produce, what the buffer stores and what becomes a protobuf `LogRecord` on the wire.

use std::time::{SystemTime, UNIX_EPOCH};

/// The longest content kept. Anything longer is cut here and the record marked truncated:
/// never dropped.
pub const MAX_CONTENT: usize = 8192;

/// `user.notice`: what a record without a valid `<PRI>` gets (RFC 3164 §4.3.3).
pub const DEFAULT_PRI: u8 = 13;
/// The largest valid PRI: facility 23 (local7), severity 7 (debug).
pub const MAX_PRI: u8 = 191;

/// The kernel command line key of the VM's access token (`vm_proto::cmdline::KEY_TOKEN`).
/// The kernel logs its command line at boot; the token must not reach the host's logs.
pub const TOKEN_KEY: &[u8] = b"maitred.token=";

/// Bookkeeping bytes a record costs beyond its text, for the buffer's accounting.
const RECORD_OVERHEAD: usize = 64;

/// Seconds and nanoseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from_system(SystemTime::now())
    }

    pub fn from_system(time: SystemTime) -> Timestamp {
        match time.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            // Before 1970: a guest without a clock. Keep it ordered, roughly.
            Err(e) => Timestamp {
                secs: -(e.duration().as_secs() as i64),
                nanos: 0,
            },
        }
    }
}

/// Which host call a record travels in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// From /dev/log: `CollectUserLogs`.
    User,
    /// From /dev/kmsg: `CollectKernelLogs`.
    Kernel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Syslog severity, 0 (emerg) to 7 (debug).
    pub severity: u8,
    /// Syslog facility, 0 (kern) to 23 (local7).
    pub facility: u8,
    pub timestamp: Timestamp,
    /// The sender's TAG / APP-NAME; empty if it gave none.
    pub app_name: String,
    /// The sender's pid; 0 if unknown.
    pub pid: u32,
    pub content: Vec<u8>,
    pub truncated: bool,
    /// A kmsg record's device dictionary (` KEY=value` lines), in order: sent to the host
    /// as the structured-data element `vm_proto::KMSG_SD_ID`.
    pub kernel_dict: Vec<(String, String)>,
}

impl Record {
    pub fn new(pri: u8, timestamp: Timestamp) -> Record {
        let pri = pri.min(MAX_PRI);
        Record {
            severity: pri & 7,
            facility: pri >> 3,
            timestamp,
            app_name: String::new(),
            pid: 0,
            content: Vec::new(),
            truncated: false,
            kernel_dict: Vec::new(),
        }
    }

    /// Sets the content, with any access token redacted, cutting it at [`MAX_CONTENT`]
    /// (and marking the record) if longer.
    pub fn set_content(&mut self, content: &[u8]) {
        let redacted = redact_token(content);
        let content = redacted.as_deref().unwrap_or(content);
        if content.len() > MAX_CONTENT {
            self.content = content[..MAX_CONTENT].to_vec();
            self.truncated = true;
        } else {
            self.content = content.to_vec();
        }
    }

    /// Sets the program name (invalid UTF-8 replaced, any access token redacted).
    pub fn set_app_name(&mut self, name: &[u8]) {
        let redacted = redact_token(name);
        self.app_name = String::from_utf8_lossy(redacted.as_deref().unwrap_or(name)).into_owned();
    }

    /// What the record costs the buffer, roughly what it costs on the wire.
    pub fn cost(&self) -> usize {
        let dict: usize = self
            .kernel_dict
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        self.content.len() + self.app_name.len() + dict + RECORD_OVERHEAD
    }
}

/// `content` with every `maitred.token=VALUE` turned into `maitred.token=<redacted>`, or
/// None if there is none (the contract's one rule: `vm_proto::redact`).
pub fn redact_token(content: &[u8]) -> Option<Vec<u8>> {
    vm_proto::redact::redact_token_bytes(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_pri_splits_into_facility_and_severity() {
        let r = Record::new(28, Timestamp::default());
        assert_eq!((r.facility, r.severity), (3, 4));
        let r = Record::new(255, Timestamp::default());
        assert_eq!((r.facility, r.severity), (23, 7), "clamped to local7.debug");
    }

    #[test]
    fn set_content_over_limit_is_cut_and_marked() {
        let mut r = Record::new(DEFAULT_PRI, Timestamp::default());
        r.set_content(&vec![b'x'; MAX_CONTENT]);
        assert!(!r.truncated);
        r.set_content(&vec![b'y'; MAX_CONTENT + 1]);
        assert!(r.truncated);
        assert_eq!(r.content.len(), MAX_CONTENT);
    }

    #[test]
    fn set_content_redacts_the_access_token() {
        let mut r = Record::new(DEFAULT_PRI, Timestamp::default());
        r.set_content(
            b"Command line: console=ttyS0 maitred.token=0123abcd maitred.vm_id=vm1 \
              \"maitred.token=ffff\" maitred.token=",
        );
        assert_eq!(
            r.content,
            b"Command line: console=ttyS0 maitred.token=<redacted> maitred.vm_id=vm1 \
              \"maitred.token=<redacted>\" maitred.token=<redacted>"
        );
        assert_eq!(redact_token(b"no secrets here"), None);
    }

    #[test]
    fn set_content_redacts_before_cutting() {
        let mut r = Record::new(DEFAULT_PRI, Timestamp::default());
        let mut long = vec![b'x'; MAX_CONTENT - 20];
        long.extend_from_slice(b" maitred.token=");
        long.extend_from_slice(&[b'a'; 64]);
        r.set_content(&long);
        assert!(r.truncated);
        assert!(!r.content.ends_with(b"aaaa"), "no piece of the token left");
    }

    #[test]
    fn timestamp_from_system_before_epoch_is_negative() {
        let t = UNIX_EPOCH - std::time::Duration::from_secs(5);
        assert_eq!(Timestamp::from_system(t).secs, -5);
    }
}
