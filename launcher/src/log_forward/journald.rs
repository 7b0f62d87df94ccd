//! `--log-dest journald`: the journal's native protocol, one datagram per record to
//! /run/systemd/journal/socket (or `journald:PATH`), as `sd_journal_send(3)` writes it.
//!
//! An entry is a list of fields. A value without a newline goes as `NAME=value\n`; one with
//! a newline in the binary-safe form `NAME\n`, its length as 64-bit little-endian, the
//! bytes, `\n`, so a guest's text can never start a field of its own. An entry larger than
//! [`DATAGRAM_MAX`] goes the way `sd_journal_send` sends what does not fit a datagram: into
//! a sealed memfd, whose descriptor travels alone in an empty datagram (SCM_RIGHTS).
//!
//! Fields: `MESSAGE` (the content; newlines kept, other control characters escaped as
//! `#ooo`), `PRIORITY`, `SYSLOG_FACILITY`, `SYSLOG_IDENTIFIER`, `SYSLOG_PID`, and
//! `SYSLOG_TIMESTAMP`, the guest's own time as text, as journald keeps a syslog sender's
//! timestamp "as in the original datagram" (journald's own `_SOURCE_REALTIME_TIMESTAMP` is
//! a trusted field no client may set), with `VM_TIMESTAMP_USEC` the same in microseconds
//! since the epoch for programs. `VM_ID` and `VM_CID` name the VM
//! (`journalctl VM_ID=myvm`), `VM_LOG=kernel|user` says which host call brought the record,
//! and each structured-data parameter becomes `VM_<SD-ID>_<NAME>` (`VM_KMSG_SUBSYSTEM=pci`).

use std::ffi::CStr;
use std::os::fd::AsFd;
use std::path::Path;

use vm_proto::protos::host::LogRecord;

use super::datagram::{DatagramOut, Outcome};
use super::{rfc5424, scrub};

/// journald's native socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// Entries larger than this go in a memfd.
pub const DATAGRAM_MAX: usize = 64 << 10;
/// journald accepts field names of at most 64 characters.
const FIELD_NAME_MAX: usize = 64;
const MEMFD_NAME: &CStr = c"vm_launcher-journal";

/// Appends one field in the form journald reads.
pub fn push_field(entry: &mut Vec<u8>, name: &str, value: &[u8]) {
    entry.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        entry.push(b'\n');
        entry.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        entry.push(b'=');
    }
    entry.extend_from_slice(value);
    entry.push(b'\n');
}

/// A valid journal field name made of `text`: upper-case letters, digits and `_`, not
/// starting with `_` or a digit (those are journald's trusted fields), at most 64 long.
pub fn field_name(text: &str) -> String {
    let mut name: String = text
        .chars()
        .map(|c| match c.to_ascii_uppercase() {
            c @ ('A'..='Z' | '0'..='9') => c,
            _ => '_',
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_uppercase()) {
        name.insert(0, 'X');
    }
    name.truncate(FIELD_NAME_MAX);
    name
}

/// The content with its lines kept and everything else [`scrub`]bed.
fn message(record: &LogRecord) -> String {
    let content = record.get_content();
    let mut text: Vec<String> = content.split(|&c| c == b'\n').map(scrub).collect();
    if record.get_truncated() {
        if let Some(last) = text.last_mut() {
            last.push_str(" [truncated]");
        }
    }
    text.join("\n")
}

/// The entry of one record.
pub fn entry(vm_id: &str, cid: Option<u32>, kernel: bool, record: &LogRecord) -> Vec<u8> {
    let mut e = Vec::with_capacity(record.get_content().len() + 256);
    push_field(&mut e, "MESSAGE", message(record).as_bytes());
    let priority = rfc5424::severity_number(record.get_severity());
    push_field(&mut e, "PRIORITY", priority.to_string().as_bytes());
    let facility = record.get_facility().min(23);
    push_field(&mut e, "SYSLOG_FACILITY", facility.to_string().as_bytes());
    let ident = match record.get_app_name() {
        "" if kernel => "kernel".to_string(),
        name => scrub(name.as_bytes()),
    };
    if !ident.is_empty() {
        push_field(&mut e, "SYSLOG_IDENTIFIER", ident.as_bytes());
    }
    if record.get_pid() != 0 {
        push_field(
            &mut e,
            "SYSLOG_PID",
            record.get_pid().to_string().as_bytes(),
        );
    }
    let stamp = rfc5424::timestamp(record);
    if stamp != "-" {
        let ts = record.get_timestamp();
        let usec = ts.get_seconds() * 1_000_000 + i64::from(ts.get_nanos() / 1000);
        push_field(&mut e, "SYSLOG_TIMESTAMP", stamp.as_bytes());
        push_field(&mut e, "VM_TIMESTAMP_USEC", usec.to_string().as_bytes());
    }
    push_field(&mut e, "VM_ID", vm_id.as_bytes());
    if let Some(cid) = cid {
        push_field(&mut e, "VM_CID", cid.to_string().as_bytes());
    }
    push_field(
        &mut e,
        "VM_LOG",
        if kernel { &b"kernel"[..] } else { b"user" },
    );
    for element in record.get_structured_data() {
        let prefix = element.get_id().split('@').next().unwrap_or_default();
        for param in element.get_params() {
            let name = field_name(&format!("VM_{prefix}_{}", param.get_name()));
            push_field(
                &mut e,
                &name,
                scrub(param.get_value().as_bytes()).as_bytes(),
            );
        }
    }
    e
}

pub struct JournaldOut {
    out: DatagramOut,
}

impl JournaldOut {
    pub fn new(path: &Path) -> JournaldOut {
        JournaldOut {
            out: DatagramOut::new(path),
        }
    }

    /// Sends the entries in order: runs of small ones in one `sendmmsg`, each large one
    /// through a memfd.
    pub fn send(&mut self, entries: &[Vec<u8>]) -> Outcome {
        let mut outcome = Outcome::default();
        let mut rest = entries;
        while !rest.is_empty() {
            let small = rest.iter().take_while(|e| e.len() <= DATAGRAM_MAX).count();
            if small > 0 {
                let refs: Vec<&[u8]> = rest[..small].iter().map(Vec::as_slice).collect();
                let part = self.out.send(&refs);
                outcome.sent += part.sent;
                outcome.dropped += part.dropped;
                if part.error.is_some() {
                    outcome.error = part.error;
                }
                rest = &rest[small..];
                continue;
            }
            let sent = crate::sys::sealed_memfd(MEMFD_NAME, &rest[0])
                .and_then(|fd| self.out.send_fd(fd.as_fd()));
            match sent {
                Ok(()) => outcome.sent += 1,
                Err(e) => {
                    outcome.dropped += 1;
                    outcome.error = Some(format!("journal entry in a memfd: {e}"));
                }
            }
            rest = &rest[1..];
        }
        outcome
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::io::{IoSliceMut, Read, Seek};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::net::UnixDatagram;
    use vm_proto::protos::host::{LogSeverity, SdElement, SdParam};

    /// Splits an entry into its fields, both forms (what journald does).
    pub fn decode(mut bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut fields = Vec::new();
        while !bytes.is_empty() {
            let line_end = bytes.iter().position(|&c| c == b'\n').unwrap();
            let line = &bytes[..line_end];
            if let Some(eq) = line.iter().position(|&c| c == b'=') {
                let name = String::from_utf8(line[..eq].to_vec()).unwrap();
                fields.push((name, line[eq + 1..].to_vec()));
                bytes = &bytes[line_end + 1..];
            } else {
                let name = String::from_utf8(line.to_vec()).unwrap();
                let rest = &bytes[line_end + 1..];
                let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
                fields.push((name, rest[8..8 + len].to_vec()));
                assert_eq!(rest[8 + len], b'\n');
                bytes = &rest[9 + len..];
            }
        }
        fields
    }

    /// One entry from the socket, from the datagram or the memfd it carries.
    pub fn receive(server: &UnixDatagram) -> (Vec<(String, Vec<u8>)>, bool) {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::AsRawFd;
        let mut buf = vec![0u8; 256 << 10];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let (len, fd) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                server.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            )
            .unwrap();
            let mut fd = None;
            for c in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    // SAFETY: the kernel just installed this descriptor for us.
                    fd = Some(unsafe { OwnedFd::from_raw_fd(fds[0]) });
                }
            }
            (msg.bytes, fd)
        };
        match fd {
            None => (decode(&buf[..len]), false),
            Some(fd) => {
                assert_eq!(len, 0, "a memfd travels in an empty datagram");
                let mut file = std::fs::File::from(fd);
                let seals = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GET_SEALS).unwrap();
                assert_ne!(seals & libc::F_SEAL_WRITE, 0, "sealed against writes");
                // The sender's writes moved the shared offset: read from the start.
                file.seek(std::io::SeekFrom::Start(0)).unwrap();
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes).unwrap();
                (decode(&bytes), true)
            }
        }
    }

    fn get<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| std::str::from_utf8(v).unwrap())
    }

    fn record(content: &[u8]) -> LogRecord {
        let mut r = rfc5424::tests::record(LogSeverity::ERROR, "myapp", 42, content);
        r.set_facility(3);
        r
    }

    #[test]
    fn push_field_plain_and_binary_safe_forms() {
        let mut e = Vec::new();
        push_field(&mut e, "A", b"one line");
        push_field(&mut e, "B", b"two\nlines");
        let mut want = b"A=one line\nB\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(e, want);
        assert_eq!(
            decode(&e),
            [
                ("A".into(), b"one line".to_vec()),
                ("B".into(), b"two\nlines".to_vec())
            ]
        );
    }

    #[test]
    fn field_name_is_always_valid() {
        assert_eq!(field_name("VM_kmsg_SUBSYSTEM"), "VM_KMSG_SUBSYSTEM");
        assert_eq!(field_name("_PID"), "X_PID");
        assert_eq!(field_name("9a-b"), "X9A_B");
        assert_eq!(field_name(&"a".repeat(100)).len(), 64);
    }

    #[test]
    fn entry_has_every_field_and_a_guest_cannot_forge_one() {
        let mut r = record(b"disk full\nVM_ID=other\n\x1b[31m");
        let mut sd = SdElement::new();
        sd.set_id("kmsg@32473".into());
        let mut p = SdParam::new();
        p.set_name("SUBSYSTEM".into());
        p.set_value("pci".into());
        sd.mut_params().push(p);
        r.mut_structured_data().push(sd);
        let fields = decode(&entry("vm1", Some(7), false, &r));
        assert_eq!(
            get(&fields, "MESSAGE"),
            Some("disk full\nVM_ID=other\n#033[31m")
        );
        assert_eq!(get(&fields, "PRIORITY"), Some("3"));
        assert_eq!(get(&fields, "SYSLOG_FACILITY"), Some("3"));
        assert_eq!(get(&fields, "SYSLOG_IDENTIFIER"), Some("myapp"));
        assert_eq!(get(&fields, "SYSLOG_PID"), Some("42"));
        assert_eq!(
            get(&fields, "SYSLOG_TIMESTAMP"),
            Some("2026-11-26T23:20:56.792737Z")
        );
        assert_eq!(get(&fields, "VM_TIMESTAMP_USEC"), Some("1795735256792737"));
        assert_eq!(get(&fields, "VM_CID"), Some("7"));
        assert_eq!(get(&fields, "VM_LOG"), Some("user"));
        assert_eq!(get(&fields, "VM_KMSG_SUBSYSTEM"), Some("pci"));
        let ids: Vec<_> = fields.iter().filter(|(n, _)| n == "VM_ID").collect();
        assert_eq!(ids.len(), 1, "{fields:?}");
        assert_eq!(ids[0].1, b"vm1");
    }

    #[test]
    fn entry_kernel_record_without_name_is_kernel() {
        let mut r = record(b"link up");
        r.set_app_name(String::new());
        r.set_pid(0);
        r.clear_timestamp();
        let fields = decode(&entry("vm1", None, true, &r));
        assert_eq!(get(&fields, "SYSLOG_IDENTIFIER"), Some("kernel"));
        assert_eq!(get(&fields, "SYSLOG_PID"), None);
        assert_eq!(get(&fields, "SYSLOG_TIMESTAMP"), None);
        assert_eq!(get(&fields, "VM_CID"), None);
        assert_eq!(get(&fields, "VM_LOG"), Some("kernel"));
    }

    #[test]
    fn send_small_entries_as_datagrams_and_a_large_one_in_a_sealed_memfd() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let server = UnixDatagram::bind(&path).unwrap();
        let big_text = "x".repeat(100 << 10);
        let entries = vec![
            entry("vm1", Some(3), false, &record(b"first")),
            entry("vm1", Some(3), false, &record(big_text.as_bytes())),
            entry("vm1", Some(3), false, &record(b"third")),
        ];
        assert!(entries[1].len() > DATAGRAM_MAX);
        let outcome = JournaldOut::new(&path).send(&entries);
        assert_eq!((outcome.sent, outcome.dropped), (3, 0), "{outcome:?}");
        let (first, memfd) = receive(&server);
        assert_eq!((get(&first, "MESSAGE"), memfd), (Some("first"), false));
        let (big, memfd) = receive(&server);
        assert!(memfd);
        assert!(
            get(&big, "MESSAGE") == Some(big_text.as_str()),
            "the whole message"
        );
        assert_eq!(get(&big, "VM_ID"), Some("vm1"));
        let (third, _) = receive(&server);
        assert_eq!(get(&third, "MESSAGE"), Some("third"));
    }

    #[test]
    fn send_without_journald_counts_the_loss() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = JournaldOut::new(&dir.path().join("none"));
        let big = entry("v", None, false, &record("y".repeat(70 << 10).as_bytes()));
        let outcome = out.send(&[entry("v", None, false, &record(b"a")), big]);
        assert_eq!((outcome.sent, outcome.dropped), (0, 2));
        assert!(outcome.error.is_some());
    }
}
