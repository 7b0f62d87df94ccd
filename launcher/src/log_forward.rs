//! Where guest log records go on the host, each tagged with the VM id that the connection
//! proved (never one taken from the record), with its content scrubbed: invalid UTF-8 becomes
//! U+FFFD and control characters become `#ooo` (rsyslog's escape), so a guest can never
//! inject a line break or a terminal escape into the host's log.
//!
//! Destinations (`--log-dest`): `terminal` (stderr, one readable line a record; the default
//! of `run`; kernel records only at warning or worse, as the boot log would drown the
//! application's output), `syslog` (the host's /dev/log; the default of `start`),
//! `unix:PATH` (any syslog datagram socket), `file:PATH` (appended) and `dir:PATH`
//! (`<PATH>/<id>.log`, rotated by size: [`dir`]), those four as RFC 5424 lines (see
//! [`rfc5424`] for the tag convention), `journald` (the journal's native protocol with
//! `VM_ID`/`VM_CID` fields: [`journald`]; `journald:PATH` for another socket), and `none`.
//! Delivery problems are reported on stderr at most every [`REPORT_EVERY`], with the count
//! of records lost.

mod datagram;
pub mod dir;
pub mod journald;
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
use dir::RotatingFile;
pub use dir::Rotation;
use journald::JournaldOut;

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
    /// RFC 5424 lines in `<dir>/<id>.log`, rotated by size.
    Dir { path: PathBuf, rotation: Rotation },
    /// The journal's native protocol to this socket (normally [`journald::JOURNAL_SOCKET`]).
    Journald(PathBuf),
}

impl LogSink {
    /// The host's syslog: the default for `start`.
    pub fn host_syslog() -> LogSink {
        LogSink::Syslog(PathBuf::from(HOST_SYSLOG_SOCKET))
    }

    /// `--log-rotate-size` and `--log-rotate-keep` applied: only a `dir:` sink rotates.
    pub fn with_rotation(
        self,
        max_bytes: Option<u64>,
        keep: Option<usize>,
    ) -> Result<LogSink, String> {
        match self {
            LogSink::Dir { path, rotation } => Ok(LogSink::Dir {
                path,
                rotation: Rotation {
                    max_bytes: max_bytes.unwrap_or(rotation.max_bytes),
                    keep: keep.unwrap_or(rotation.keep),
                },
            }),
            _ => Err("--log-rotate-size and --log-rotate-keep need --log-dest dir:PATH".into()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSinkError(String);

impl fmt::Display for LogSinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "log destination {:?}: expected terminal, syslog, journald[:PATH], unix:PATH, \
             file:PATH, dir:PATH or none",
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
            None if text == "journald" => Some(LogSink::Journald(journald::JOURNAL_SOCKET.into())),
            Some(("journald", p)) => path(p).map(LogSink::Journald),
            Some(("dir", p)) => path(p).map(|path| LogSink::Dir {
                path,
                rotation: Rotation::default(),
            }),
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
    Dir(RotatingFile),
    Journald(JournaldOut),
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
    /// The VM's vsock CID, for the journal's `VM_CID` (none for the process back-end).
    cid: Option<u32>,
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
            LogSink::Dir { path, .. } => format!("dir:{}", path.display()),
            LogSink::Journald(path) => format!("journald:{}", path.display()),
        };
        let output = match sink {
            LogSink::Terminal => Output::Terminal,
            LogSink::Discard => Output::Discard,
            LogSink::Syslog(path) => Output::Datagram(DatagramOut::new(&path)),
            LogSink::File(path) => Output::File { path, file: None },
            LogSink::Dir { path, rotation } => {
                Output::Dir(RotatingFile::new(&path, vm_id, rotation))
            }
            LogSink::Journald(path) => Output::Journald(JournaldOut::new(&path)),
        };
        LogForwarder {
            vm_id: vm_id.to_string(),
            cid: None,
            tag: rfc5424::vm_tag(vm_id),
            destination,
            state: Mutex::new(State {
                output,
                losses: Losses::default(),
            }),
        }
    }

    /// The VM's vsock CID, for the journal.
    pub fn with_cid(mut self, cid: u32) -> LogForwarder {
        self.cid = Some(cid);
        self
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
            Output::Dir(out) => {
                let lines: Vec<String> = records
                    .iter()
                    .map(|r| self.syslog_line(kernel, r) + "\n")
                    .collect();
                let (written, result) = out.append(&lines);
                result.err().map(|e| {
                    (
                        lines.len() - written,
                        format!("{}: {e}", out.path().display()),
                    )
                })
            }
            Output::Journald(out) => {
                let entries: Vec<Vec<u8>> = records
                    .iter()
                    .map(|r| journald::entry(&self.vm_id, self.cid, kernel, r))
                    .collect();
                let outcome = out.send(&entries);
                outcome.error.map(|e| (outcome.dropped, e))
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
        for (text, want) in [
            (
                "journald",
                LogSink::Journald(journald::JOURNAL_SOCKET.into()),
            ),
            ("journald:/tmp/j", LogSink::Journald("/tmp/j".into())),
            (
                "dir:/var/log/vms",
                LogSink::Dir {
                    path: "/var/log/vms".into(),
                    rotation: Rotation::default(),
                },
            ),
        ] {
            assert_eq!(text.parse::<LogSink>(), Ok(want), "{text}");
        }
        for bad in [
            "",
            "unix:",
            "file:",
            "dir:",
            "journald:",
            "tcp:1.2.3.4:514",
            "Syslog",
        ] {
            let err = bad.parse::<LogSink>().unwrap_err().to_string();
            assert!(err.contains("terminal, syslog, journald"), "{bad}: {err}");
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
    fn with_rotation_only_for_dir() {
        let dir = LogSink::Dir {
            path: "/d".into(),
            rotation: Rotation::default(),
        };
        assert_eq!(
            dir.with_rotation(Some(1024), None),
            Ok(LogSink::Dir {
                path: "/d".into(),
                rotation: Rotation {
                    max_bytes: 1024,
                    keep: dir::DEFAULT_ROTATE_KEEP
                }
            })
        );
        let err = LogSink::Terminal.with_rotation(None, Some(2)).unwrap_err();
        assert!(err.contains("dir:PATH"), "{err}");
    }

    #[test]
    fn forward_dir_sink_writes_id_log() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::Dir {
            path: dir.path().into(),
            rotation: Rotation::default(),
        };
        let fwd = LogForwarder::new("vm7", sink);
        fwd.forward(false, &[record(b"u1"), record(b"u2")]);
        let text = std::fs::read_to_string(dir.path().join("vm7.log")).unwrap();
        assert_eq!(
            text,
            "<11>1 - VM(vm7) app 42 user - u1\n<11>1 - VM(vm7) app 42 user - u2\n"
        );
    }

    #[test]
    fn forward_journald_sink_tags_vm_id_and_cid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let server = UnixDatagram::bind(&path).unwrap();
        let fwd = LogForwarder::new("vm7", LogSink::Journald(path)).with_cid(9);
        fwd.forward(true, &[record(b"k1")]);
        let (fields, _) = journald::tests::receive(&server);
        let has = |name: &str, value: &[u8]| fields.iter().any(|(n, v)| n == name && v == value);
        assert!(has("MESSAGE", b"k1") && has("VM_ID", b"vm7") && has("VM_CID", b"9"));
        assert!(has("VM_LOG", b"kernel"), "{fields:?}");
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
