//! Where guest log records go on the host, each tagged with the VM id that the connection
//! proved (never one taken from the record), with its content scrubbed: invalid UTF-8 becomes
//! U+FFFD and control characters become `#ooo` (rsyslog's escape), so a guest can never
//! inject a line break or a terminal escape into the host's log.
//!
//! Destinations (`--log-dest`): `terminal` (stderr, one readable line a record; the default
//! of `run`; kernel records only at warning or worse, as the boot log would drown the
//! application's output), `syslog` (the host's /dev/log; the default of `start`),
//! `unix:PATH` (any syslog datagram socket) and `file:PATH` (appended), the last three as
//! RFC 5424 lines (see [`rfc5424`] for the tag convention), and `none`. Delivery problems
//! are reported on stderr at most every [`REPORT_EVERY`], with the count of records lost.

mod datagram;
pub mod rfc5424;

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vm_proto::protos::host::{LogRecord, LogSeverity};

use datagram::DatagramOut;

/// The host's syslog socket.
pub const HOST_SYSLOG_SOCKET: &str = "/dev/log";
/// Lost records are reported at most this often per VM.
pub const REPORT_EVERY: Duration = Duration::from_secs(30);

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

/// Kernel records at this syslog severity or worse reach the terminal (warning).
pub const TERMINAL_KERNEL_MAX_SEVERITY: u8 = 4;

/// Whether `record` is shown by the terminal destination: every user record, kernel records
/// of warning or worse.
pub fn shows_on_terminal(kernel: bool, record: &LogRecord) -> bool {
    !kernel || rfc5424::severity_number(record.get_severity()) <= TERMINAL_KERNEL_MAX_SEVERITY
}

/// The host side of one VM's logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSink {
    /// `run` mode: one line a record on the launcher's stderr ([`shows_on_terminal`]).
    Terminal,
    /// Thrown away.
    Discard,
    /// RFC 5424 datagrams to a syslog socket: the host's /dev/log or any other.
    Syslog(PathBuf),
    /// RFC 5424 lines appended to a file.
    File(PathBuf),
}

impl LogSink {
    /// The host's syslog: the default for `start`.
    pub fn host_syslog() -> LogSink {
        LogSink::Syslog(PathBuf::from(HOST_SYSLOG_SOCKET))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSinkError(String);

impl fmt::Display for LogSinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "log destination {:?}: expected terminal, syslog, unix:PATH, file:PATH or none",
            self.0
        )
    }
}

impl std::error::Error for LogSinkError {}

impl FromStr for LogSink {
    type Err = LogSinkError;

    fn from_str(text: &str) -> Result<LogSink, LogSinkError> {
        let path = |p: &str| (!p.is_empty()).then(|| PathBuf::from(p));
        match text.split_once(':') {
            None if text == "terminal" => Some(LogSink::Terminal),
            None if text == "syslog" => Some(LogSink::host_syslog()),
            None if text == "none" => Some(LogSink::Discard),
            Some(("unix", p)) => path(p).map(LogSink::Syslog),
            Some(("file", p)) => path(p).map(LogSink::File),
            _ => None,
        }
        .ok_or_else(|| LogSinkError(text.to_string()))
    }
}

enum Output {
    Terminal,
    Discard,
    Datagram(DatagramOut),
    File { path: PathBuf, file: Option<File> },
}

/// Records lost on the way out, reported at most every [`REPORT_EVERY`].
#[derive(Default)]
struct Losses {
    total: u64,
    reported_at: Option<Instant>,
}

struct State {
    output: Output,
    losses: Losses,
}

pub struct LogForwarder {
    vm_id: String,
    /// `VM(<id>)`: the HOSTNAME of every RFC 5424 line.
    tag: String,
    destination: String,
    state: Mutex<State>,
}

impl LogForwarder {
    pub fn new(vm_id: &str, sink: LogSink) -> LogForwarder {
        let destination = match &sink {
            LogSink::Terminal => "the terminal".to_string(),
            LogSink::Discard => "nowhere".to_string(),
            LogSink::Syslog(path) => format!("unix:{}", path.display()),
            LogSink::File(path) => format!("file:{}", path.display()),
        };
        let output = match sink {
            LogSink::Terminal => Output::Terminal,
            LogSink::Discard => Output::Discard,
            LogSink::Syslog(path) => Output::Datagram(DatagramOut::new(&path)),
            LogSink::File(path) => Output::File { path, file: None },
        };
        LogForwarder {
            vm_id: vm_id.to_string(),
            tag: rfc5424::vm_tag(vm_id),
            destination,
            state: Mutex::new(State {
                output,
                losses: Losses::default(),
            }),
        }
    }

    pub fn vm_id(&self) -> &str {
        &self.vm_id
    }

    /// A line from the launcher itself (what the rate limit dropped, say) into this VM's
    /// log, where a reader sees the gap, tagged like the VM's own records; also on stderr
    /// when the log goes elsewhere, so `--log-dest none` hides nothing.
    pub fn notice(&self, text: &str) {
        let mut record = LogRecord::new();
        record.set_severity(LogSeverity::WARNING);
        record.set_app_name("vm_launcher".into());
        record.set_pid(std::process::id());
        record.set_content(text.as_bytes().to_vec());
        self.forward(false, &[record]);
        let terminal = matches!(
            self.state.lock().unwrap_or_else(|p| p.into_inner()).output,
            Output::Terminal
        );
        if !terminal {
            let _ = writeln!(std::io::stderr(), "vm_launcher: VM({}) {text}", self.vm_id);
        }
    }

    /// One terminal line a record: `VM(<id>) <source>.<severity> <app>[<pid>]: <content>`.
    pub fn format(&self, kernel: bool, record: &LogRecord) -> String {
        let source = if kernel { "kernel" } else { "user" };
        let app = scrub(record.get_app_name().as_bytes());
        let who = match (app.is_empty(), record.get_pid()) {
            (true, _) => String::new(),
            (false, 0) => format!(" {app}:"),
            (false, pid) => format!(" {app}[{pid}]:"),
        };
        let cut = if record.get_truncated() {
            " [truncated]"
        } else {
            ""
        };
        format!(
            "VM({}) {source}.{}{who} {}{cut}",
            self.vm_id,
            severity_name(record.get_severity()),
            scrub(record.get_content())
        )
    }

    /// One RFC 5424 line a record (see [`rfc5424`]).
    pub fn syslog_line(&self, kernel: bool, record: &LogRecord) -> String {
        rfc5424::line(&self.tag, kernel, record)
    }

    pub fn forward(&self, kernel: bool, records: &[LogRecord]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let lost = match &mut state.output {
            Output::Discard => None,
            Output::Terminal => {
                let mut err = std::io::stderr().lock();
                for record in records.iter().filter(|r| shows_on_terminal(kernel, r)) {
                    let _ = writeln!(err, "{}", self.format(kernel, record));
                }
                None
            }
            Output::Datagram(out) => {
                let lines: Vec<String> = records
                    .iter()
                    .map(|r| self.syslog_line(kernel, r))
                    .collect();
                let refs: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
                let outcome = out.send(&refs);
                outcome.error.map(|e| (outcome.dropped, e))
            }
            Output::File { path, file } => {
                let mut text = String::new();
                for record in records {
                    text.push_str(&self.syslog_line(kernel, record));
                    text.push('\n');
                }
                append(path, file, text.as_bytes())
                    .err()
                    .map(|e| (records.len(), format!("{}: {e}", path.display())))
            }
        };
        if let Some((count, error)) = lost {
            self.lost(&mut state.losses, count, &error);
        }
    }

    fn lost(&self, losses: &mut Losses, count: usize, error: &str) {
        losses.total += count as u64;
        let due = losses
            .reported_at
            .is_none_or(|at| at.elapsed() >= REPORT_EVERY);
        if due {
            losses.reported_at = Some(Instant::now());
            // Not eprintln!: it panics when stderr is gone (a detached `start`), and this
            // runs on a gRPC thread.
            let _ = writeln!(
                std::io::stderr(),
                "vm_launcher: VM {}: guest log records to {} lost ({} so far): {error}",
                self.vm_id,
                self.destination,
                losses.total
            );
        }
    }
}

/// Appends `bytes` in one write, opening (creating, mode 0640) the file on first use.
fn append(path: &PathBuf, file: &mut Option<File>, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if file.is_none() {
        *file = Some(
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o640)
                .open(path)?,
        );
    }
    let result = match file.as_mut() {
        Some(f) => f.write_all(bytes),
        None => Ok(()),
    };
    if result.is_err() {
        *file = None; // reopen next time: the file may have been rotated away
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn record(content: &[u8]) -> LogRecord {
        let mut r = LogRecord::new();
        r.set_severity(LogSeverity::ERROR);
        r.set_app_name("app".into());
        r.set_pid(42);
        r.set_content(content.to_vec());
        r
    }

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
        let mut r = record(b"VM(other) spoof\nnext");
        assert_eq!(
            fwd.format(false, &r),
            "VM(vm7) user.err app[42]: VM(other) spoof#012next"
        );
        r.set_truncated(true);
        assert!(fwd.format(false, &r).ends_with("next [truncated]"));
    }

    #[test]
    fn shows_on_terminal_user_always_kernel_from_warning() {
        let mut r = record(b"x");
        for (severity, kernel_shown) in [
            (LogSeverity::ERROR, true),
            (LogSeverity::WARNING, true),
            (LogSeverity::NOTICE, false),
            (LogSeverity::INFO, false),
            (LogSeverity::DEBUG, false),
        ] {
            r.set_severity(severity);
            assert!(shows_on_terminal(false, &r));
            assert_eq!(shows_on_terminal(true, &r), kernel_shown, "{severity:?}");
        }
    }

    #[test]
    fn log_sink_from_str_every_form() {
        for (text, want) in [
            ("terminal", LogSink::Terminal),
            ("syslog", LogSink::Syslog("/dev/log".into())),
            ("none", LogSink::Discard),
            ("unix:/tmp/s", LogSink::Syslog("/tmp/s".into())),
            ("file:/tmp/a:b", LogSink::File("/tmp/a:b".into())),
        ] {
            assert_eq!(text.parse::<LogSink>(), Ok(want), "{text}");
        }
        for bad in ["", "unix:", "file:", "tcp:1.2.3.4:514", "Syslog"] {
            let err = bad.parse::<LogSink>().unwrap_err().to_string();
            assert!(err.contains("terminal, syslog, unix:PATH"), "{bad}: {err}");
        }
    }

    #[test]
    fn forward_unix_sink_sends_one_rfc5424_datagram_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let fwd = LogForwarder::new("vm7", LogSink::Syslog(path));
        fwd.forward(false, &[record(b"one"), record(b"two\nthree")]);
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<11>1 - VM(vm7) app 42 user - one");
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<11>1 - VM(vm7) app 42 user - two#012three");
    }

    #[test]
    fn forward_file_sink_appends_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.log");
        let fwd = LogForwarder::new("vm7", LogSink::File(path.clone()));
        fwd.forward(true, &[record(b"k1")]);
        fwd.forward(false, &[record(b"u1"), record(b"u2")]);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "<11>1 - VM(vm7) app 42 kernel - k1",
                "<11>1 - VM(vm7) app 42 user - u1",
                "<11>1 - VM(vm7) app 42 user - u2"
            ]
        );
    }

    #[test]
    fn forward_unwritable_file_counts_losses() {
        let fwd = LogForwarder::new("vm7", LogSink::File("/nonexistent/dir/x.log".into()));
        fwd.forward(false, &[record(b"a"), record(b"b")]);
        fwd.forward(false, &[record(b"c")]);
        let state = fwd.state.lock().unwrap();
        assert_eq!(state.losses.total, 3);
        assert!(state.losses.reported_at.is_some());
    }
}
