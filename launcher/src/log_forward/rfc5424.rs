//! Guest records as RFC 5424 lines for the host's syslog:
//!
//! ```text
//! <PRI>1 TIMESTAMP VM(<id>) APP-NAME PROCID MSGID - MSG
//! <11>1 2026-11-26T23:20:56.792737Z VM(vm1) myapp 42 user - disk full
//! <14>1 2026-11-26T23:20:51.000112Z VM(vm1) kernel - kernel - virtio_net: link up
//! ```
//!
//! - PRI: facility `user` (1) always (a guest never speaks as the host's kern or auth),
//!   with the record's own severity.
//! - TIMESTAMP: the record's original time, UTC, microseconds; `-` if it has none.
//! - HOSTNAME: `VM(<id>)`, the id the connection proved, never one from the record.
//! - APP-NAME: the guest program's name (non-printable or space → `_`, at most 48
//!   characters); `kernel` for kernel records that name none; `-` otherwise.
//! - PROCID: the guest pid, or `-`. MSGID: `kernel` or `user`, by the host call that
//!   brought the record, so a guest program cannot pass for the guest kernel there.
//! - STRUCTURED-DATA: the record's elements (the kmsg device dictionary as
//!   `[kmsg@32473 SUBSYSTEM="pci" DEVICE="+pci:0000:00:01.0"]`), SD-IDs and names cut to
//!   32 printable characters without `=`, space, `]` or `"`, values scrubbed and with `"`,
//!   `\` and `]` escaped by a backslash (RFC 5424 §6.3.3); `-` when there are none.
//! - MSG: the content scrubbed ([`scrub`]: no raw newline or control character ever),
//!   with ` [truncated]` when the guest cut it.
//!
//! rsyslog's imuxsock parses this only with `UseSpecialParser="off"` (and
//! `ParseHostname="on"`, `IgnoreTimestamp="off"` to keep the hostname and the time);
//! with its defaults the whole line lands in the message, the VM tag included.

use vm_proto::protos::host::{LogRecord, LogSeverity};

use super::scrub;

/// Syslog facility `user`.
const FACILITY_USER: u8 = 1;
const APP_NAME_MAX: usize = 48;

/// The syslog severity number (0 emerg … 7 debug); a record without one is a notice.
pub fn severity_number(severity: LogSeverity) -> u8 {
    vm_proto::severity::to_syslog(severity)
}

use vm_proto::time::civil_from_days;

/// `YYYY-MM-DDThh:mm:ss.uuuuuuZ`, or `-` outside years 0–9999 or without a time.
pub fn timestamp(record: &LogRecord) -> String {
    if !record.has_timestamp() {
        return "-".into();
    }
    let ts = record.get_timestamp();
    let (secs, nanos) = (ts.get_seconds(), ts.get_nanos());
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    if !(0..=9999).contains(&year) || !(0..1_000_000_000).contains(&nanos) {
        return "-".into();
    }
    let of_day = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        nanos / 1000
    )
}

/// An RFC 5424 header field: printable ASCII but space, at most `max`, `-` when empty.
fn header_field(text: &str, max: usize) -> String {
    let field: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    if field.is_empty() {
        "-".into()
    } else {
        field
    }
}

/// An SD-ID or SD-NAME: printable ASCII except `=`, space, `]` and `"`, at most 32.
fn sd_name(text: &str) -> String {
    let name: String = text
        .chars()
        .take(32)
        .map(|c| match c {
            '=' | ' ' | ']' | '"' => '_',
            c if c.is_ascii_graphic() => c,
            _ => '_',
        })
        .collect();
    if name.is_empty() {
        "_".into()
    } else {
        name
    }
}

/// The STRUCTURED-DATA field: `-`, or `[id name="value" …]…`.
pub fn structured_data(record: &LogRecord) -> String {
    let mut out = String::new();
    for element in record.get_structured_data() {
        out.push('[');
        out.push_str(&sd_name(element.get_id()));
        for param in element.get_params() {
            out.push(' ');
            out.push_str(&sd_name(param.get_name()));
            out.push_str("=\"");
            for c in scrub(param.get_value().as_bytes()).chars() {
                if matches!(c, '"' | '\\' | ']') {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        out.push(']');
    }
    if out.is_empty() {
        out.push('-');
    }
    out
}

/// The `VM(<id>)` HOSTNAME every line of this VM carries.
pub fn vm_tag(vm_id: &str) -> String {
    header_field(&format!("VM({vm_id})"), 255)
}

/// One line, without a trailing newline.
pub fn line(tag: &str, kernel: bool, record: &LogRecord) -> String {
    let pri = FACILITY_USER * 8 + severity_number(record.get_severity());
    let app = match record.get_app_name() {
        "" if kernel => "kernel".to_string(),
        name => header_field(name, APP_NAME_MAX),
    };
    let pid = match record.get_pid() {
        0 => "-".to_string(),
        pid => pid.to_string(),
    };
    let msgid = if kernel { "kernel" } else { "user" };
    let mut msg = scrub(record.get_content());
    if record.get_truncated() {
        msg.push_str(" [truncated]");
    }
    format!(
        "<{pri}>1 {} {tag} {app} {pid} {msgid} {} {msg}",
        timestamp(record),
        structured_data(record)
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vm_proto::protos::common::Timestamp;

    /// A record as the guest sends it, with a fixed timestamp (also for the other sinks' tests).
    pub(crate) fn record(severity: LogSeverity, app: &str, pid: u32, content: &[u8]) -> LogRecord {
        let mut r = LogRecord::new();
        r.set_severity(severity);
        r.set_app_name(app.into());
        r.set_pid(pid);
        r.set_content(content.to_vec());
        let mut ts = Timestamp::new();
        ts.set_seconds(1_795_735_256);
        ts.set_nanos(792_737_123);
        r.set_timestamp(ts);
        r
    }

    #[test]
    fn line_user_record_has_every_field() {
        let r = record(LogSeverity::ERROR, "myapp", 42, b"disk full");
        assert_eq!(
            line("VM(vm1)", false, &r),
            "<11>1 2026-11-26T23:20:56.792737Z VM(vm1) myapp 42 user - disk full"
        );
    }

    #[test]
    fn line_kernel_record_is_marked_kernel() {
        let r = record(LogSeverity::INFO, "", 0, b"virtio_net: link up");
        assert_eq!(
            line("VM(vm1)", true, &r),
            "<14>1 2026-11-26T23:20:56.792737Z VM(vm1) kernel - kernel - virtio_net: link up"
        );
    }

    #[test]
    fn line_hostile_fields_cannot_break_the_line() {
        let mut r = record(
            LogSeverity::MISSING,
            "evil app\nVM(other)",
            0,
            b"a\nb\r\x1b[31m \xff",
        );
        r.set_truncated(true);
        let l = line("VM(vm1)", false, &r);
        assert_eq!(
            l,
            "<13>1 2026-11-26T23:20:56.792737Z VM(vm1) evil_app_VM(other) - user - \
             a#012b#015#033[31m \u{fffd} [truncated]"
        );
        assert!(!l.contains('\n') && !l.contains('\r'));
    }

    #[test]
    fn line_kmsg_dictionary_is_structured_data_escaped() {
        use vm_proto::protos::host::{SdElement, SdParam};
        let mut r = record(LogSeverity::INFO, "", 0, b"probed");
        let mut sd = SdElement::new();
        sd.set_id(vm_proto::KMSG_SD_ID.into());
        for (name, value) in [
            ("SUBSYSTEM", "pci"),
            ("DEVICE", "+pci:0000:00:01.0"),
            ("ODD NAME]", "q\"b\\s]e\nnl"),
        ] {
            let mut p = SdParam::new();
            p.set_name(name.into());
            p.set_value(value.into());
            sd.mut_params().push(p);
        }
        r.mut_structured_data().push(sd);
        assert_eq!(
            line("VM(vm1)", true, &r),
            "<14>1 2026-11-26T23:20:56.792737Z VM(vm1) kernel - kernel \
             [kmsg@32473 SUBSYSTEM=\"pci\" DEVICE=\"+pci:0000:00:01.0\" \
             ODD_NAME_=\"q\\\"b\\\\s\\]e#012nl\"] probed"
        );
    }

    #[test]
    fn line_long_app_name_is_cut_to_48() {
        let r = record(LogSeverity::INFO, &"a".repeat(100), 1, b"x");
        assert!(line("VM(v)", false, &r).contains(&format!(" {} 1 user", "a".repeat(48))));
    }

    #[test]
    fn timestamp_missing_or_out_of_range_is_nil() {
        let mut r = LogRecord::new();
        assert_eq!(timestamp(&r), "-");
        let mut ts = Timestamp::new();
        ts.set_seconds(i64::MAX / 2);
        r.set_timestamp(ts.clone());
        assert_eq!(timestamp(&r), "-");
        ts.set_seconds(0);
        ts.set_nanos(-1);
        r.set_timestamp(ts.clone());
        assert_eq!(timestamp(&r), "-");
        ts.set_nanos(0);
        r.set_timestamp(ts);
        assert_eq!(timestamp(&r), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn severity_number_every_level() {
        let all = [
            LogSeverity::EMERGENCY,
            LogSeverity::ALERT,
            LogSeverity::CRITICAL,
            LogSeverity::ERROR,
            LogSeverity::WARNING,
            LogSeverity::NOTICE,
            LogSeverity::INFO,
            LogSeverity::DEBUG,
        ];
        let numbers: Vec<u8> = all.into_iter().map(severity_number).collect();
        assert_eq!(numbers, [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(severity_number(LogSeverity::MISSING), 5);
    }

    #[test]
    fn vm_tag_wraps_the_id() {
        assert_eq!(vm_tag("vm-1.a_b"), "VM(vm-1.a_b)");
    }
}
