//! The host's end of a process I/O stream (protocol: `vm_proto::stream`): send START, then
//! copy our stdin to the process (within the credit maitred grants) and its stdout and
//! stderr to ours, byte for byte, until EXIT. Signals and window sizes go through
//! [`Session::signal`] and [`Session::resize`].

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver};
use protobuf::Message;
use vm_proto::protos::guest::ExecRequest;
use vm_proto::stream::{self, ExitStatus, FrameError, Kind, WindowSize, DATA_CHUNK};
use vm_proto::{Address, Token, TransportError};

/// How long maitred may take to answer START (a container's disk is mounted first).
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub enum StreamError {
    Connect(TransportError),
    Io {
        addr: String,
        source: std::io::Error,
    },
    Protocol {
        addr: String,
        source: FrameError,
    },
    /// maitred refused the stream (ERROR frame): a wrong token, a malformed request.
    Refused {
        addr: String,
        why: String,
    },
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "cannot open a process stream: {e}"),
            Self::Io { addr, source } => write!(f, "process stream to {addr}: {source}"),
            Self::Protocol { addr, source } => write!(f, "{source} (from {addr})"),
            Self::Refused { addr, why } => write!(f, "maitred at {addr} refused the stream: {why}"),
        }
    }
}

impl std::error::Error for StreamError {}

/// Dials maitred's process stream port and authenticates with `token`.
pub fn open(addr: &Address, token: &Token) -> Result<UnixStream, StreamError> {
    let fd = vm_proto::connect(addr).map_err(StreamError::Connect)?;
    // A vsock or Unix socket fd both work as a UnixStream: read, write and shutdown are the
    // same socket calls for either family.
    let mut conn = UnixStream::from(fd);
    let io = |source| StreamError::Io {
        addr: addr.to_string(),
        source,
    };
    conn.set_nonblocking(false).map_err(io)?;
    stream::write_frame(&mut conn, Kind::Hello, &stream::hello_payload(token)).map_err(io)?;
    Ok(conn)
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// EXIT arrived: the process ended (or never started: `ExitStatus::Failed`).
    Exited(ExitStatus),
    /// The stream ended without EXIT: the VM or maitred went away.
    Lost(String),
}

/// Where the process's input comes from and its output goes.
pub struct LocalIo {
    /// None: the process gets EOF at once.
    pub stdin: Option<File>,
    pub stdout: File,
    pub stderr: File,
}

/// A running process's stream.
pub struct Session {
    conn: Arc<Mutex<UnixStream>>,
    pub pid: u32,
    /// Delivers exactly one [`SessionEnd`].
    pub end: Receiver<SessionEnd>,
}

/// Stdin credit granted by maitred and not used yet.
#[derive(Default)]
struct Credit {
    bytes: Mutex<Option<u64>>,
    changed: Condvar,
}

impl Credit {
    fn add(&self, n: u32) {
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = bytes.as_mut() {
            *b += u64::from(n);
        }
        self.changed.notify_all();
    }

    /// Waits for credit; None once the session is over.
    fn take(&self, most: usize) -> Option<usize> {
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match *bytes {
                None => return None,
                Some(0) => bytes = self.changed.wait(bytes).unwrap_or_else(|p| p.into_inner()),
                Some(b) => return Some(b.min(most as u64) as usize),
            }
        }
    }

    fn spend(&self, n: usize) {
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = bytes.as_mut() {
            *b = b.saturating_sub(n as u64);
        }
    }

    fn close(&self) {
        *self.bytes.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.changed.notify_all();
    }
}

/// Sends START on an authenticated `conn` and waits for STARTED. A process that could not
/// start gives `Ok(Err(status))` with its `ExitStatus::Failed`.
pub fn start(
    mut conn: UnixStream,
    name: &str,
    req: &ExecRequest,
    local: LocalIo,
) -> Result<Result<Session, ExitStatus>, StreamError> {
    let name = name.to_string();
    let io = |source| StreamError::Io {
        addr: name.clone(),
        source,
    };
    let protocol = |source| StreamError::Protocol {
        addr: name.clone(),
        source,
    };
    let payload = req
        .write_to_bytes()
        .map_err(|e| io(std::io::Error::other(e)))?;
    stream::write_frame(&mut conn, Kind::Start, &payload).map_err(io)?;
    conn.set_read_timeout(Some(START_TIMEOUT)).map_err(io)?;
    let first = stream::read_frame(&mut conn).map_err(protocol)?;
    let pid = match first.kind {
        Kind::Started => stream::decode_u32(&first).map_err(protocol)?,
        Kind::Exit => return Ok(Err(stream::decode_exit(&first).map_err(protocol)?)),
        Kind::Error => {
            return Err(StreamError::Refused {
                addr: name,
                why: String::from_utf8_lossy(&first.payload).into_owned(),
            })
        }
        kind => {
            return Err(protocol(FrameError::Unexpected {
                kind,
                during: "instead of STARTED",
            }))
        }
    };
    conn.set_read_timeout(None).map_err(io)?;

    let reader = conn.try_clone().map_err(io)?;
    let conn = Arc::new(Mutex::new(conn));
    let credit = Arc::new(Credit {
        bytes: Mutex::new(Some(0)),
        changed: Condvar::new(),
    });
    let (end_tx, end) = bounded(1);
    let session = Session { conn, pid, end };
    let LocalIo {
        stdin,
        stdout,
        stderr,
    } = local;
    {
        let (conn, credit) = (session.conn.clone(), credit.clone());
        std::thread::spawn(move || {
            let outcome = copy_output(reader, stdout, stderr, &conn, &credit);
            credit.close();
            let _ = end_tx.send(outcome);
        });
    }
    let conn = session.conn.clone();
    std::thread::spawn(move || copy_stdin(stdin, &conn, &credit));
    Ok(Ok(session))
}

impl Session {
    fn send(&self, kind: Kind, payload: &[u8]) {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let _ = stream::write_frame(&mut *conn, kind, payload);
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        self.send(Kind::Signal, &signal.to_be_bytes());
    }

    /// Tells the process's terminal its new size.
    pub fn resize(&self, size: WindowSize) {
        self.send(Kind::Resize, &stream::encode_resize(size));
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Ends the stream for maitred too: a process still running is hung up.
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let _ = conn.shutdown(std::net::Shutdown::Both);
    }
}

/// Writes to one of our output fds; after EPIPE (our reader went away, `… | head -1`) the
/// process gets SIGPIPE, as it would locally, and the rest of that stream is dropped.
struct Output {
    file: File,
    broken: bool,
}

impl Output {
    fn write(&mut self, data: &[u8], conn: &Mutex<UnixStream>) {
        if self.broken {
            return;
        }
        if let Err(e) = self.file.write_all(data) {
            self.broken = true;
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                let _ = stream::write_frame(&mut *conn, Kind::Signal, &libc::SIGPIPE.to_be_bytes());
            }
        }
    }
}

/// Frames from maitred until EXIT.
fn copy_output(
    reader: UnixStream,
    stdout: File,
    stderr: File,
    conn: &Mutex<UnixStream>,
    credit: &Credit,
) -> SessionEnd {
    let mut reader = BufReader::with_capacity(4 * DATA_CHUNK, reader);
    let mut out = Output {
        file: stdout,
        broken: false,
    };
    let mut err = Output {
        file: stderr,
        broken: false,
    };
    loop {
        let frame = match stream::read_frame(&mut reader) {
            Ok(frame) => frame,
            Err(FrameError::Closed) => {
                return SessionEnd::Lost("the VM closed the process stream".into())
            }
            Err(e) => return SessionEnd::Lost(e.to_string()),
        };
        match frame.kind {
            Kind::Stdout => out.write(&frame.payload, conn),
            Kind::Stderr => err.write(&frame.payload, conn),
            Kind::StdinCredit => match stream::decode_u32(&frame) {
                Ok(n) => credit.add(n),
                Err(e) => return SessionEnd::Lost(e.to_string()),
            },
            Kind::Exit => {
                return match stream::decode_exit(&frame) {
                    Ok(status) => SessionEnd::Exited(status),
                    Err(e) => SessionEnd::Lost(e.to_string()),
                }
            }
            Kind::Error => {
                let why = String::from_utf8_lossy(&frame.payload).into_owned();
                return SessionEnd::Lost(format!("maitred ended the stream: {why}"));
            }
            kind => {
                let e = FrameError::Unexpected {
                    kind,
                    during: "from maitred",
                };
                return SessionEnd::Lost(e.to_string());
            }
        }
    }
}

/// Our stdin → STDIN frames within the credit, then STDIN_EOF.
fn copy_stdin(stdin: Option<File>, conn: &Mutex<UnixStream>, credit: &Credit) {
    let send = |kind: Kind, data: &[u8]| {
        let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
        stream::write_frame(&mut *conn, kind, data)
    };
    if let Some(mut stdin) = stdin {
        let mut buf = vec![0u8; DATA_CHUNK];
        loop {
            let Some(room) = credit.take(buf.len()) else {
                return; // the session ended
            };
            match stdin.read(&mut buf[..room]) {
                Ok(0) => break,
                Ok(n) => {
                    credit.spend(n);
                    if send(Kind::Stdin, &buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    let _ = send(Kind::StdinEof, &[]);
}
