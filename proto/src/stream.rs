//! The process I/O stream: a framed byte stream on its own guest port ([`EXEC_PORT`]) that
//! carries one process's stdin, stdout, stderr, terminal size, signals and exit status
//! between the host and maitred, in the style of ChromeOS's vsh.
//!
//! Every frame is `[kind: u8][length: u32 big-endian][payload]`, at most [`MAX_PAYLOAD`]
//! bytes of payload. A session, client (host) first:
//!
//! ```text
//! client: HELLO "Bearer <token hex>"   the VM's token; refused → ERROR, closed, nothing runs
//! client: START <ExecRequest protobuf>
//! server: STARTED <pid u32>  then  STDIN_CREDIT <n u32>      (or EXIT FAILED and close)
//! client: STDIN <bytes> … STDIN_EOF, RESIZE <rows u16><cols u16>, SIGNAL <signo i32>
//! server: STDOUT <bytes>, STDERR <bytes>, STDIN_CREDIT <n>, … EXIT <status u8><code i32><reason>
//! ```
//!
//! Flow control: guest→host output is paced by the stream itself (a host that stops reading
//! stops maitred, which stops reading the process's pipes, which blocks the process).
//! Host→guest stdin is paced by credit: the client sends at most as many STDIN bytes as
//! the server has granted, so maitred never queues more than [`STDIN_WINDOW`] bytes and its
//! reader never blocks on a process that does not read, leaving SIGNAL and RESIZE free to
//! pass.

use std::fmt;
use std::io::{self, Read, Write};

use crate::address::Address;

/// The guest vsock port maitred serves process I/O streams on (maitred's gRPC port + 1).
pub const EXEC_PORT: u32 = 8889;
/// The largest payload of one frame; data frames are cut to [`DATA_CHUNK`].
pub const MAX_PAYLOAD: usize = 1 << 20;
/// How much process output or input one data frame carries at most: a whole frame is then
/// two of the largest virtio-vsock packets (64 KiB), so no frame costs an extra tiny packet,
/// and a busy pipe is emptied with few system calls.
pub const DATA_CHUNK: usize = 128 * 1024 - HEADER_LEN;
/// The most stdin bytes maitred holds for a process at once (the credit window).
pub const STDIN_WINDOW: u32 = 512 * 1024;
/// Frame header: kind and length.
pub const HEADER_LEN: usize = 5;

/// Frame kinds. Client → server below 0x80, server → client from 0x80.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 0x01,
    Start = 0x02,
    Stdin = 0x03,
    StdinEof = 0x04,
    Resize = 0x05,
    Signal = 0x06,
    Started = 0x81,
    Stdout = 0x82,
    Stderr = 0x83,
    StdinCredit = 0x84,
    Exit = 0x85,
    Error = 0x86,
}

impl Kind {
    pub fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            0x01 => Kind::Hello,
            0x02 => Kind::Start,
            0x03 => Kind::Stdin,
            0x04 => Kind::StdinEof,
            0x05 => Kind::Resize,
            0x06 => Kind::Signal,
            0x81 => Kind::Started,
            0x82 => Kind::Stdout,
            0x83 => Kind::Stderr,
            0x84 => Kind::StdinCredit,
            0x85 => Kind::Exit,
            0x86 => Kind::Error,
            _ => return None,
        })
    }
}

#[derive(Debug)]
pub enum FrameError {
    Io(io::Error),
    /// The peer closed the stream between frames.
    Closed,
    /// The stream ended inside a frame.
    Truncated,
    UnknownKind(u8),
    TooLarge {
        kind: Kind,
        len: usize,
    },
    /// A frame whose payload does not have the layout its kind requires.
    BadPayload {
        kind: Kind,
        len: usize,
    },
    /// A frame that is valid but not allowed at this point of the session.
    Unexpected {
        kind: Kind,
        during: &'static str,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "process stream: {e}"),
            Self::Closed => write!(f, "process stream: the peer closed the connection"),
            Self::Truncated => write!(f, "process stream: the connection ended inside a frame"),
            Self::UnknownKind(k) => write!(f, "process stream: unknown frame kind 0x{k:02x}"),
            Self::TooLarge { kind, len } => write!(
                f,
                "process stream: {kind:?} frame of {len} bytes exceeds the limit of {MAX_PAYLOAD}"
            ),
            Self::BadPayload { kind, len } => {
                write!(f, "process stream: malformed {kind:?} frame ({len} bytes)")
            }
            Self::Unexpected { kind, during } => {
                write!(f, "process stream: unexpected {kind:?} frame {during}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub payload: Vec<u8>,
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` if the stream ended before the first byte.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<bool, FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(true)
}

/// Parses a frame header: the kind and the payload length, checked against the limit.
pub fn parse_header(header: [u8; HEADER_LEN]) -> Result<(Kind, usize), FrameError> {
    let kind = Kind::from_byte(header[0]).ok_or(FrameError::UnknownKind(header[0]))?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge { kind, len });
    }
    Ok((kind, len))
}

/// Reads one frame. A peer that closes between frames gives [`FrameError::Closed`].
pub fn read_frame(r: &mut impl Read) -> Result<Frame, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    if !read_full(r, &mut header)? {
        return Err(FrameError::Closed);
    }
    let (kind, len) = parse_header(header)?;
    // Read straight into fresh capacity: zeroing a 64 KiB buffer first is a pass over
    // memory that costs as much as the copy itself in an emulated guest.
    let mut payload = Vec::with_capacity(len);
    loop {
        match r
            .by_ref()
            .take((len - payload.len()) as u64)
            .read_to_end(&mut payload)
        {
            Ok(_) if payload.len() == len => return Ok(Frame { kind, payload }),
            Ok(_) => return Err(FrameError::Truncated),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
}

/// The server's side of a stream's opening: HELLO with the VM's `token`, then one frame of
/// kind `request` (`before` says where another kind came instead, e.g. "before START");
/// returns that frame's payload. Anything else is refused, with the reason for an ERROR
/// frame.
pub fn accept_opening(
    r: &mut impl Read,
    token: &crate::Token,
    request: Kind,
    before: &'static str,
) -> Result<Vec<u8>, String> {
    let hello = read_frame(r).map_err(|e| e.to_string())?;
    if hello.kind != Kind::Hello {
        return Err(FrameError::Unexpected {
            kind: hello.kind,
            during: "before HELLO",
        }
        .to_string());
    }
    if !token.matches_header(&hello.payload) {
        return Err("missing or invalid access token".into());
    }
    let frame = read_frame(r).map_err(|e| e.to_string())?;
    if frame.kind != request {
        return Err(FrameError::Unexpected {
            kind: frame.kind,
            during: before,
        }
        .to_string());
    }
    Ok(frame.payload)
}

/// The header for a payload of `len` bytes.
pub fn header(kind: Kind, len: usize) -> [u8; HEADER_LEN] {
    let len = (len as u32).to_be_bytes();
    [kind as u8, len[0], len[1], len[2], len[3]]
}

/// Writes one frame with a single write of header and payload where it fits.
pub fn write_frame(w: &mut impl Write, kind: Kind, payload: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    buf.extend_from_slice(&header(kind, payload.len()));
    buf.extend_from_slice(payload);
    w.write_all(&buf)
}

/// A reusable buffer for data frames: read straight into [`DataFrame::space`], then send
/// header and data with one write.
pub struct DataFrame {
    buf: Vec<u8>,
}

impl DataFrame {
    pub fn new() -> DataFrame {
        DataFrame {
            buf: vec![0u8; HEADER_LEN + DATA_CHUNK],
        }
    }

    /// Where the next chunk of data goes.
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.buf[HEADER_LEN..]
    }

    /// The frame holding the first `len` bytes of [`DataFrame::space`].
    pub fn frame(&mut self, kind: Kind, len: usize) -> &[u8] {
        self.buf[..HEADER_LEN].copy_from_slice(&header(kind, len));
        &self.buf[..HEADER_LEN + len]
    }
}

impl Default for DataFrame {
    fn default() -> Self {
        Self::new()
    }
}

fn fixed<const N: usize>(frame: &Frame) -> Result<[u8; N], FrameError> {
    frame
        .payload
        .as_slice()
        .try_into()
        .map_err(|_| FrameError::BadPayload {
            kind: frame.kind,
            len: frame.payload.len(),
        })
}

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

pub fn encode_resize(size: WindowSize) -> [u8; 4] {
    let (r, c) = (size.rows.to_be_bytes(), size.cols.to_be_bytes());
    [r[0], r[1], c[0], c[1]]
}

pub fn decode_resize(frame: &Frame) -> Result<WindowSize, FrameError> {
    let b: [u8; 4] = fixed(frame)?;
    Ok(WindowSize {
        rows: u16::from_be_bytes([b[0], b[1]]),
        cols: u16::from_be_bytes([b[2], b[3]]),
    })
}

/// A u32 payload: STARTED's pid, STDIN_CREDIT's byte count.
pub fn decode_u32(frame: &Frame) -> Result<u32, FrameError> {
    fixed(frame).map(u32::from_be_bytes)
}

/// SIGNAL's payload: a signal number from 1 to 64 (anything else is malformed).
pub fn decode_signal(frame: &Frame) -> Result<i32, FrameError> {
    let signo = i32::from_be_bytes(fixed(frame)?);
    if (1..=64).contains(&signo) {
        Ok(signo)
    } else {
        Err(FrameError::BadPayload {
            kind: frame.kind,
            len: frame.payload.len(),
        })
    }
}

/// How a process ended, as EXIT carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
    /// Never ran: the errno and what went wrong.
    Failed { errno: i32, reason: String },
}

impl ExitStatus {
    /// The status a shell would report: the code, 128 + signal, 127 not found, 126 not
    /// runnable.
    pub fn shell_code(&self) -> i32 {
        match self {
            Self::Exited(code) => *code,
            Self::Signaled(signal) => signal.saturating_add(128),
            Self::Failed { errno, .. } if *errno == libc::ENOENT => 127,
            Self::Failed { .. } => 126,
        }
    }
}

pub fn encode_exit(status: &ExitStatus) -> Vec<u8> {
    let (tag, code, reason) = match status {
        ExitStatus::Exited(code) => (1u8, *code, ""),
        ExitStatus::Signaled(signal) => (2, *signal, ""),
        ExitStatus::Failed { errno, reason } => (4, *errno, reason.as_str()),
    };
    let mut out = Vec::with_capacity(5 + reason.len());
    out.push(tag);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
    out
}

pub fn decode_exit(frame: &Frame) -> Result<ExitStatus, FrameError> {
    let bad = || FrameError::BadPayload {
        kind: frame.kind,
        len: frame.payload.len(),
    };
    let p = &frame.payload;
    if p.len() < 5 {
        return Err(bad());
    }
    let code = i32::from_be_bytes([p[1], p[2], p[3], p[4]]);
    match p[0] {
        1 if p.len() == 5 => Ok(ExitStatus::Exited(code)),
        2 if p.len() == 5 => Ok(ExitStatus::Signaled(code)),
        4 => Ok(ExitStatus::Failed {
            errno: code,
            reason: String::from_utf8_lossy(&p[5..]).into_owned(),
        }),
        _ => Err(bad()),
    }
}

/// Where maitred serves process streams, given where it serves gRPC: the same transport on
/// [`EXEC_PORT`]; for a Unix socket (host mode), the same path with `.exec` appended.
pub fn exec_address(maitred: &Address) -> Address {
    match maitred {
        Address::Vsock { cid, .. } => Address::Vsock {
            cid: *cid,
            port: EXEC_PORT,
        },
        Address::Hybrid { uds, .. } => Address::Hybrid {
            uds: uds.clone(),
            port: EXEC_PORT,
        },
        Address::Unix(path) => {
            let mut exec = path.as_os_str().to_owned();
            exec.push(".exec");
            Address::Unix(exec.into())
        }
    }
}

/// HELLO's payload for `token`: the same `Bearer <hex>` form as the gRPC header.
pub fn hello_payload(token: &crate::Token) -> Vec<u8> {
    format!("Bearer {}", token.to_hex()).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: Kind, payload: &[u8]) -> Frame {
        Frame {
            kind,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn read_frame_round_trips_every_kind() {
        for byte in 0..=255u8 {
            let Some(kind) = Kind::from_byte(byte) else {
                continue;
            };
            let mut wire = Vec::new();
            write_frame(&mut wire, kind, b"abc").unwrap();
            let got = read_frame(&mut wire.as_slice()).unwrap();
            assert_eq!(got, frame(kind, b"abc"));
        }
    }

    #[test]
    fn read_frame_bad_input_is_a_clear_error() {
        assert!(matches!(
            read_frame(&mut [].as_slice()),
            Err(FrameError::Closed)
        ));
        assert!(matches!(
            read_frame(&mut [0x82, 0, 0].as_slice()),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_frame(&mut [0x82, 0, 0, 0, 4, b'a'].as_slice()),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_frame(&mut [0x7f, 0, 0, 0, 0].as_slice()),
            Err(FrameError::UnknownKind(0x7f))
        ));
        let huge = header(Kind::Stdin, MAX_PAYLOAD + 1);
        let err = read_frame(&mut huge.as_slice()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("exceeds the limit"));
    }

    #[test]
    fn data_frame_writes_header_and_data_together() {
        let mut data = DataFrame::new();
        data.space()[..3].copy_from_slice(b"xyz");
        let wire = data.frame(Kind::Stdout, 3).to_vec();
        assert_eq!(
            read_frame(&mut wire.as_slice()).unwrap(),
            frame(Kind::Stdout, b"xyz")
        );
    }

    #[test]
    fn fixed_payloads_round_trip_and_reject_bad_lengths() {
        let size = WindowSize {
            rows: 50,
            cols: 132,
        };
        let f = frame(Kind::Resize, &encode_resize(size));
        assert_eq!(decode_resize(&f).unwrap(), size);
        assert!(decode_resize(&frame(Kind::Resize, b"abc")).is_err());
        assert_eq!(
            decode_u32(&frame(Kind::StdinCredit, &7u32.to_be_bytes())).unwrap(),
            7
        );
        assert!(decode_u32(&frame(Kind::StdinCredit, b"")).is_err());
        assert_eq!(
            decode_signal(&frame(Kind::Signal, &2i32.to_be_bytes())).unwrap(),
            2
        );
        for bad in [0i32, -9, 65, i32::MAX] {
            assert!(decode_signal(&frame(Kind::Signal, &bad.to_be_bytes())).is_err());
        }
    }

    #[test]
    fn exec_address_is_the_same_transport_on_the_exec_port() {
        let cases = [
            ("vsock:7:8888", "vsock:7:8889"),
            ("vsock:-1:8888", "vsock:-1:8889"),
            ("hybrid:/r/v.sock:8888", "hybrid:/r/v.sock:8889"),
            ("unix:/r/maitred.sock", "unix:/r/maitred.sock.exec"),
        ];
        for (grpc, exec) in cases {
            let addr: Address = grpc.parse().unwrap();
            assert_eq!(exec_address(&addr).to_string(), exec);
        }
    }

    #[test]
    fn exit_round_trips_and_maps_to_shell_codes() {
        let cases = [
            (ExitStatus::Exited(3), 3),
            (ExitStatus::Signaled(9), 137),
            (
                ExitStatus::Failed {
                    errno: libc::ENOENT,
                    reason: "nope: not found".into(),
                },
                127,
            ),
            (
                ExitStatus::Failed {
                    errno: libc::EACCES,
                    reason: String::new(),
                },
                126,
            ),
        ];
        for (status, code) in cases {
            let f = frame(Kind::Exit, &encode_exit(&status));
            assert_eq!(decode_exit(&f).unwrap(), status);
            assert_eq!(status.shell_code(), code);
        }
        assert!(decode_exit(&frame(Kind::Exit, &[1, 0, 0])).is_err());
        assert!(decode_exit(&frame(Kind::Exit, &[9, 0, 0, 0, 0])).is_err());
        assert!(decode_exit(&frame(Kind::Exit, &[1, 0, 0, 0, 0, 0])).is_err());
    }
}
