//! Parses /dev/kmsg records: `PRI,SEQ,USEC,FLAGS[,…];TEXT\n` followed by ` KEY=value\n`
//! continuation lines (the device dictionary: `SUBSYSTEM=pci`, `DEVICE=+pci:0000:00:01.0`),
//! which become the record's structured data. At most [`DICT_MAX`] entries are kept; a key
//! is cut to RFC 5424's 32 characters with anything but printable ASCII (and `=`, space,
//! `]`, `"`) made `_`; a value is unescaped like the text, at most [`DICT_VALUE_MAX`] bytes. The kernel escapes
//! non-printable bytes and `\` in TEXT as `\xNN`; they are unescaped here, so the content is
//! what was logged (the host escapes it again for its own log).
//!
//! /dev/kmsg returns exactly one record per read; a file given with `--kmsg` (tests) may
//! return many, so [`split_records`] cuts a buffer into whole records first.

use std::fmt;

use crate::record::{Record, Timestamp};
use crate::syslog_format;

/// Dictionary entries kept per record (the kernel writes two or three).
pub const DICT_MAX: usize = 16;
/// Longest dictionary value kept, in bytes.
pub const DICT_VALUE_MAX: usize = 256;
/// RFC 5424's limit on an SD-NAME.
const DICT_KEY_MAX: usize = 32;

/// One record read from /dev/kmsg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsgEntry {
    pub pri: u32,
    /// The kernel's sequence number: consecutive, so a gap counts lost records.
    pub seq: u64,
    /// Microseconds since boot (CLOCK_MONOTONIC).
    pub usec: u64,
    pub text: Vec<u8>,
    /// The continuation lines, as (key, value).
    pub dict: Vec<(String, String)>,
}

/// One ` KEY=value` line (without its leading space), or None if it has no `=` or key.
fn dict_entry(line: &[u8]) -> Option<(String, String)> {
    let eq = line.iter().position(|&c| c == b'=')?;
    if eq == 0 {
        return None;
    }
    let key: String = line[..eq]
        .iter()
        .take(DICT_KEY_MAX)
        .map(|&c| match c {
            b'=' | b' ' | b']' | b'"' => '_',
            c if c.is_ascii_graphic() => c as char,
            _ => '_',
        })
        .collect();
    let mut value = unescape(&line[eq + 1..]);
    value.truncate(DICT_VALUE_MAX);
    let value = crate::record::redact_token(&value).unwrap_or(value);
    Some((key, String::from_utf8_lossy(&value).into_owned()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KmsgError {
    NoSeparator,
    BadField { field: &'static str },
}

impl fmt::Display for KmsgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSeparator => f.write_str("kmsg record has no ';' after its header"),
            Self::BadField { field } => write!(f, "kmsg record header has a bad {field} field"),
        }
    }
}

impl std::error::Error for KmsgError {}

fn number(text: &[u8], field: &'static str) -> Result<u64, KmsgError> {
    let bad = KmsgError::BadField { field };
    if text.is_empty() || text.len() > 20 || !text.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(bad)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Undoes the kernel's `\xNN` escaping; any other backslash stays as it is.
pub fn unescape(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'\\' && text.get(i + 1) == Some(&b'x') {
            if let (Some(hi), Some(lo)) = (
                text.get(i + 2).copied().and_then(hex),
                text.get(i + 3).copied().and_then(hex),
            ) {
                out.push(hi << 4 | lo);
                i += 4;
                continue;
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

/// Parses one record: its header line and its continuation lines.
pub fn parse_record(record: &[u8]) -> Result<KmsgEntry, KmsgError> {
    let line_end = record
        .iter()
        .position(|&c| c == b'\n')
        .unwrap_or(record.len());
    let line = &record[..line_end];
    let semi = line
        .iter()
        .position(|&c| c == b';')
        .ok_or(KmsgError::NoSeparator)?;
    let mut fields = line[..semi].split(|&c| c == b',');
    let mut next = |field| fields.next().ok_or(KmsgError::BadField { field });
    let pri = number(next("priority")?, "priority")?;
    let seq = number(next("sequence")?, "sequence")?;
    let usec = number(next("timestamp")?, "timestamp")?;
    // FLAGS and any later fields: nothing vm_syslog needs.
    let dict = record[line_end..]
        .split(|&c| c == b'\n')
        .filter_map(|l| l.strip_prefix(b" "))
        .filter_map(dict_entry)
        .take(DICT_MAX)
        .collect();
    Ok(KmsgEntry {
        pri: u32::try_from(pri).map_err(|_| KmsgError::BadField { field: "priority" })?,
        seq,
        usec,
        text: unescape(&line[semi + 1..]),
        dict,
    })
}

/// Cuts `buf` into whole records: a header line plus the continuation lines (starting with
/// a space) after it. Returns the records and how many bytes they used; a partial last line
/// is left for the next read.
pub fn split_records(buf: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut records = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    while let Some(len) = buf[pos..].iter().position(|&c| c == b'\n') {
        let line = &buf[pos..pos + len];
        if !line.starts_with(b" ") {
            if let Some(s) = start {
                records.push(&buf[s..pos]);
            }
            start = (!line.is_empty()).then_some(pos);
        }
        pos += len + 1;
    }
    if let Some(s) = start {
        records.push(&buf[s..pos]);
    }
    (records, pos)
}

impl KmsgEntry {
    /// The record to send: severity and facility from PRI, the wall time from the boot
    /// time, and for records user space wrote (facility ≠ kern) the `tag[pid]: ` prefix as
    /// app name and pid, as for /dev/log.
    pub fn to_record(&self, boot_time: Timestamp) -> Record {
        let nanos = u64::from(boot_time.nanos) + (self.usec % 1_000_000) * 1000;
        let timestamp = Timestamp {
            secs: boot_time
                .secs
                .saturating_add((self.usec / 1_000_000) as i64)
                .saturating_add((nanos / 1_000_000_000) as i64),
            nanos: (nanos % 1_000_000_000) as u32,
        };
        let mut record = Record::new(0, timestamp);
        record.severity = (self.pri & 7) as u8;
        record.facility = (self.pri >> 3).min(23) as u8;
        record.kernel_dict = self.dict.clone();
        if record.facility == 0 {
            record.set_content(&self.text);
            return record;
        }
        let tagged = syslog_format::parse(&self.text, timestamp);
        record.app_name = tagged.app_name;
        record.pid = tagged.pid;
        record.content = tagged.content;
        record.truncated = tagged.truncated;
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from /dev/kmsg on Linux 6.18.
    const BOOT: &[u8] = b"5,0,0,-;Linux version 6.18.44 (builder@sandboxing) #1 SMP\n";
    const TABBED: &[u8] = b"6,90,244525,-;rcu: \\x09RCU restricting CPUs to nr_cpu_ids=2.\n";
    const DICT: &[u8] = b"6,193,299639,-;acpi PNP0A08:00: _OSC: OS supports [ExtendedConfig]\n \
        SUBSYSTEM=acpi\n DEVICE=+acpi:PNP0A08:00\n";
    const USER: &[u8] = b"14,344,3504321808,-;mytest: hello from userspace\n";
    const MAITRED: &[u8] = b"11,400,4000000,-;maitred[1]: service vm_syslog ended\n";
    const NEWLINE: &[u8] =
        b"4,286,434617,-;amd_pstate: The CPPC feature is disabled.\\x0aPlease enable it.\n";

    #[test]
    fn parse_record_boot_line_has_all_fields() {
        let e = parse_record(BOOT).unwrap();
        assert_eq!((e.pri, e.seq, e.usec), (5, 0, 0));
        assert_eq!(e.text, b"Linux version 6.18.44 (builder@sandboxing) #1 SMP");
    }

    #[test]
    fn parse_record_unescapes_tabs_and_newlines() {
        assert_eq!(
            parse_record(TABBED).unwrap().text,
            b"rcu: \tRCU restricting CPUs to nr_cpu_ids=2."
        );
        assert_eq!(
            parse_record(NEWLINE).unwrap().text,
            b"amd_pstate: The CPPC feature is disabled.\nPlease enable it."
        );
        assert_eq!(unescape(b"a\\x5cb \\xZZ \\x4"), b"a\\b \\xZZ \\x4");
    }

    #[test]
    fn parse_record_dictionary_becomes_key_values() {
        let e = parse_record(DICT).unwrap();
        assert_eq!(e.seq, 193);
        assert_eq!(
            e.text,
            b"acpi PNP0A08:00: _OSC: OS supports [ExtendedConfig]".to_vec()
        );
        let want = [("SUBSYSTEM", "acpi"), ("DEVICE", "+acpi:PNP0A08:00")];
        let got: Vec<(&str, &str)> = e.dict.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        assert_eq!(got, want);
        let r = e.to_record(Timestamp::default());
        assert_eq!(r.kernel_dict, e.dict);
    }

    #[test]
    fn parse_record_hostile_dictionary_is_bounded_and_cleaned() {
        let mut raw = b"6,1,2,-;t\n".to_vec();
        raw.extend_from_slice(b" no equals sign\n =empty key\n");
        raw.extend_from_slice(b" K\x22 ]Y=a\\x0ab maitred.token=abcd\n");
        raw.extend_from_slice(format!(" {}=v\n", "L".repeat(100)).as_bytes());
        raw.extend_from_slice(format!(" BIG={}\n", "x".repeat(1000)).as_bytes());
        for i in 0..40 {
            raw.extend_from_slice(format!(" N{i}=v\n").as_bytes());
        }
        let e = parse_record(&raw).unwrap();
        assert_eq!(e.dict.len(), DICT_MAX);
        assert_eq!(
            e.dict[0].0, "K___Y",
            "quote, space and ] are not SD-NAME characters"
        );
        assert_eq!(e.dict[0].1, "a\nb maitred.token=<redacted>");
        assert_eq!(e.dict[1].0, "L".repeat(32));
        assert_eq!(e.dict[2].1.len(), DICT_VALUE_MAX);
    }

    #[test]
    fn parse_record_extra_header_fields_are_ignored() {
        let e = parse_record(b"6,7,8,-,caller=T1;text\n").unwrap();
        assert_eq!((e.seq, e.text.as_slice()), (7, &b"text"[..]));
    }

    #[test]
    fn parse_record_malformed_headers_are_errors() {
        for (bad, want) in [
            (&b"no separator\n"[..], KmsgError::NoSeparator),
            (b"x,1,2,-;t", KmsgError::BadField { field: "priority" }),
            (b"6,,2,-;t", KmsgError::BadField { field: "sequence" }),
            (b"6,1;t", KmsgError::BadField { field: "timestamp" }),
            (
                b"6,1,99999999999999999999999,-;t",
                KmsgError::BadField { field: "timestamp" },
            ),
        ] {
            assert_eq!(parse_record(bad), Err(want), "{bad:?}");
        }
    }

    #[test]
    fn to_record_kernel_facility_keeps_text_and_adds_boot_time() {
        let boot = Timestamp {
            secs: 1000,
            nanos: 900_000_000,
        };
        let r = parse_record(TABBED).unwrap().to_record(boot);
        assert_eq!((r.facility, r.severity, r.app_name.as_str()), (0, 6, ""));
        assert_eq!(
            r.timestamp,
            Timestamp {
                secs: 1001,
                nanos: 144_525_000
            }
        );
        assert!(r.content.starts_with(b"rcu: \t"));
    }

    #[test]
    fn to_record_user_written_record_gets_tag() {
        let r = parse_record(USER).unwrap().to_record(Timestamp::default());
        assert_eq!(
            (r.facility, r.severity, r.app_name.as_str()),
            (1, 6, "mytest")
        );
        assert_eq!(r.content, b"hello from userspace");
        assert_eq!(r.timestamp.secs, 3504);
        let r = parse_record(MAITRED)
            .unwrap()
            .to_record(Timestamp::default());
        assert_eq!((r.app_name.as_str(), r.pid, r.severity), ("maitred", 1, 3));
    }

    #[test]
    fn split_records_whole_records_only() {
        let mut buf = [BOOT, DICT, USER].concat();
        buf.extend_from_slice(b"6,9,9,-;partial");
        let (records, used) = split_records(&buf);
        assert_eq!(records, vec![BOOT, DICT, USER]);
        assert_eq!(used, BOOT.len() + DICT.len() + USER.len());
        let (none, used) = split_records(b"6,9,9,-;partial");
        assert!(none.is_empty());
        assert_eq!(used, 0);
    }

    #[test]
    fn split_records_one_kmsg_read_is_one_record() {
        assert_eq!(split_records(DICT), (vec![DICT], DICT.len()));
        assert_eq!(split_records(b"\n\n"), (vec![], 2));
    }
}
