//! Where guest log records go on the host, each tagged with the VM id that the connection
//! proved (never one taken from the record), with its content scrubbed: invalid UTF-8 becomes
//! U+FFFD and control characters become `#ooo` (rsyslog's escape), so a guest can never
//! inject a line break or a terminal escape into the host's log.

use std::io::Write;
use std::sync::Mutex;

use vm_proto::protos::host::{LogRecord, LogSeverity};

/// Makes guest text safe for a host log line.
pub fn scrub(content: &[u8]) -> String {
    let text = String::from_utf8_lossy(content);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && (c as u32) < 0x80 {
            out.push_str(&format!("#{:03o}", c as u32));
        } else if c.is_control() {
            out.push_str(&format!("#u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

pub fn severity_name(severity: LogSeverity) -> &'static str {
    match severity {
        LogSeverity::EMERGENCY => "emerg",
        LogSeverity::ALERT => "alert",
        LogSeverity::CRITICAL => "crit",
        LogSeverity::ERROR => "err",
        LogSeverity::WARNING => "warning",
        LogSeverity::NOTICE => "notice",
        LogSeverity::INFO => "info",
        LogSeverity::DEBUG => "debug",
        LogSeverity::MISSING => "notice",
    }
}

/// The host side of one VM's logs.
pub enum LogSink {
    /// `run` mode: one line a record on the launcher's stderr.
    Terminal,
    /// Thrown away (detached VMs until a host syslog destination is configured).
    Discard,
}

pub struct LogForwarder {
    vm_id: String,
    sink: LogSink,
    out: Mutex<()>,
}

impl LogForwarder {
    pub fn new(vm_id: &str, sink: LogSink) -> LogForwarder {
        LogForwarder {
            vm_id: vm_id.to_string(),
            sink,
            out: Mutex::new(()),
        }
    }

    /// One formatted line a record: `VM(<id>) [kernel] <severity> <app>[<pid>]: <content>`.
    pub fn format(&self, kernel: bool, record: &LogRecord) -> String {
        let source = if kernel { "kernel" } else { "user" };
        let app = scrub(record.get_app_name().as_bytes());
        let who = match (app.is_empty(), record.get_pid()) {
            (true, _) => String::new(),
            (false, 0) => format!(" {app}:"),
            (false, pid) => format!(" {app}[{pid}]:"),
        };
        format!(
            "VM({}) {source}.{}{who} {}",
            self.vm_id,
            severity_name(record.get_severity()),
            scrub(record.get_content())
        )
    }

    pub fn forward(&self, kernel: bool, records: &[LogRecord]) {
        match self.sink {
            LogSink::Discard => {}
            LogSink::Terminal => {
                let _guard = self.out.lock();
                let mut err = std::io::stderr().lock();
                for record in records {
                    let _ = writeln!(err, "{}", self.format(kernel, record));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_escapes_controls_and_bad_utf8() {
        assert_eq!(scrub(b"plain text"), "plain text");
        assert_eq!(scrub(b"two\nlines\r\x1b[31m"), "two#012lines#015#033[31m");
        assert_eq!(scrub(b"tab\there"), "tab#011here");
        assert_eq!(scrub(b"bad \xff\xfe utf8"), "bad \u{fffd}\u{fffd} utf8");
        assert_eq!(scrub("caf\u{e9} \u{85}".as_bytes()), "caf\u{e9} #u0085");
    }

    #[test]
    fn format_tags_with_the_connection_vm_id() {
        let fwd = LogForwarder::new("vm7", LogSink::Discard);
        let mut r = LogRecord::new();
        r.set_severity(LogSeverity::ERROR);
        r.set_app_name("app".into());
        r.set_pid(42);
        r.set_content(b"VM(other) spoof\nnext".to_vec());
        assert_eq!(
            fwd.format(false, &r),
            "VM(vm7) user.err app[42]: VM(other) spoof#012next"
        );
    }
}
