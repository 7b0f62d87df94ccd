//! Port forwarding between host TCP and guest TCP (`--publish`, `--forward`), over streams
//! to maitred's forward port ([`FORWARD_PORT`]). Every stream is dialled by the host, like
//! the process stream, and uses its framing ([`crate::stream`]: `[kind][len u32][payload]`)
//! and its HELLO:
//!
//! ```text
//! client: HELLO "Bearer <token hex>"     refused → ERROR, closed
//! client: START <request>                one of the requests below
//! server: STARTED                        (or ERROR <reason> and close)
//! ```
//!
//! Requests (`[op u8][fields, big-endian]`):
//! - `OPEN <guest port u16>` (`--publish`): maitred connects to 127.0.0.1:PORT in the guest
//!   (in the application's container when it has one). After STARTED the stream carries
//!   the connection (below); a refused port is ERROR at once.
//! - `LISTEN <n u16> <guest port u16>×n` (`--forward`, the control stream): maitred
//!   listens on 127.0.0.1:PORT for each, in the guest and in the application's container.
//!   For every connection it accepts it sends `PENDING <id u32><index u16>` (index into the
//!   list); the host connects to *its own* target for that index (the guest never names a
//!   host address) and then dials again with `ATTACH <id>`, or sends `CANCEL <id>` on the
//!   control stream when its target refused. Closing the control stream closes the
//!   listeners.
//! - `ATTACH <id u32>`: joins the pending guest connection `id`, carried as below.
//!
//! An open connection's bytes travel as DATA frames, its end of file as EOF, both ways: a
//! half-close must survive every transport, and hybrid vsock back-ends do not pass a
//! one-way shutdown on (vhost-device-vsock 0.3 drops SHUTDOWN(SEND) from the guest and turns
//! the host's into a full shutdown). A stream that closes without EOF is a reset.
//!
//! Why the host dials even for guest→host forwards: no host vsock port has to be found for
//! them (kernel vsock ports are host-wide; hybrid and process back-ends would each differ),
//! the host never accepts anything from the guest, and the token check is the one maitred
//! already does for every stream.
//!
//! [`relay`] is the copy both ends run: one thread per direction; EOF becomes
//! `shutdown(SHUT_WR)` of the TCP connection; an error shuts both sockets down.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use crate::address::Address;
use crate::stream::{self, Frame, FrameError, Kind};

/// The guest vsock port maitred serves forward streams on.
pub const FORWARD_PORT: u32 = 8890;
/// The request frame (the process stream's START).
pub const REQUEST: Kind = Kind::Start;
/// The server's "done, bytes follow" (STARTED, empty).
pub const OK: Kind = Kind::Started;
/// A connection accepted in the guest, waiting for ATTACH (on the control stream).
pub const PENDING: Kind = Kind::Stdout;
/// The host's target refused pending connection `id` (client → server, control stream).
pub const CANCEL: Kind = Kind::Signal;
/// Refusal with a reason.
pub const REFUSED: Kind = Kind::Error;
/// Relayed bytes, either way, once the stream is open.
pub const DATA: Kind = Kind::Stdin;
/// The sender's end of file: the receiver half-closes its TCP connection.
pub const EOF: Kind = Kind::StdinEof;
/// The most forwards (and so listeners) one control stream may ask for.
pub const MAX_FORWARDS: usize = 64;

const OP_OPEN: u8 = 1;
const OP_LISTEN: u8 = 2;
const OP_ATTACH: u8 = 3;

/// What a forward stream asks maitred for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Open { port: u16 },
    Listen { ports: Vec<u16> },
    Attach { id: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    Empty,
    UnknownOp(u8),
    BadLength { op: u8, len: usize },
    ZeroPort,
    TooMany(usize),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "forward request: empty"),
            Self::UnknownOp(op) => write!(f, "forward request: unknown operation {op}"),
            Self::BadLength { op, len } => {
                write!(f, "forward request: operation {op} with {len} bytes")
            }
            Self::ZeroPort => write!(f, "forward request: port 0"),
            Self::TooMany(n) => write!(
                f,
                "forward request: {n} forwards; at most {MAX_FORWARDS} per VM"
            ),
        }
    }
}

impl std::error::Error for RequestError {}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Open { port } => {
                let mut out = vec![OP_OPEN];
                out.extend_from_slice(&port.to_be_bytes());
                out
            }
            Self::Listen { ports } => {
                let mut out = vec![OP_LISTEN];
                out.extend_from_slice(&(ports.len() as u16).to_be_bytes());
                for port in ports {
                    out.extend_from_slice(&port.to_be_bytes());
                }
                out
            }
            Self::Attach { id } => {
                let mut out = vec![OP_ATTACH];
                out.extend_from_slice(&id.to_be_bytes());
                out
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Request, RequestError> {
        let (&op, rest) = bytes.split_first().ok_or(RequestError::Empty)?;
        let bad = || RequestError::BadLength {
            op,
            len: bytes.len(),
        };
        let port = |b: &[u8]| match u16::from_be_bytes([b[0], b[1]]) {
            0 => Err(RequestError::ZeroPort),
            p => Ok(p),
        };
        match op {
            OP_OPEN if rest.len() == 2 => Ok(Self::Open { port: port(rest)? }),
            OP_LISTEN if rest.len() >= 2 => {
                let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                if n > MAX_FORWARDS {
                    return Err(RequestError::TooMany(n));
                }
                if rest.len() != 2 + 2 * n {
                    return Err(bad());
                }
                let ports = rest[2..]
                    .chunks_exact(2)
                    .map(port)
                    .collect::<Result<_, _>>()?;
                Ok(Self::Listen { ports })
            }
            OP_ATTACH if rest.len() == 4 => Ok(Self::Attach {
                id: u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]),
            }),
            OP_OPEN | OP_LISTEN | OP_ATTACH => Err(bad()),
            _ => Err(RequestError::UnknownOp(op)),
        }
    }
}

/// PENDING's payload: the connection's id and the forward's index.
pub fn encode_pending(id: u32, index: u16) -> [u8; 6] {
    let (i, x) = (id.to_be_bytes(), index.to_be_bytes());
    [i[0], i[1], i[2], i[3], x[0], x[1]]
}

pub fn decode_pending(frame: &Frame) -> Result<(u32, u16), FrameError> {
    match frame.payload.as_slice() {
        [a, b, c, d, e, g] => Ok((
            u32::from_be_bytes([*a, *b, *c, *d]),
            u16::from_be_bytes([*e, *g]),
        )),
        _ => Err(FrameError::BadPayload {
            kind: frame.kind,
            len: frame.payload.len(),
        }),
    }
}

/// CANCEL's payload: the pending connection's id.
pub fn decode_cancel(frame: &Frame) -> Result<u32, FrameError> {
    stream::decode_u32(frame)
}

/// Where maitred serves forward streams, given where it serves gRPC: the same transport on
/// [`FORWARD_PORT`]; for a Unix socket (host mode), the same path with `.forward` appended.
pub fn forward_address(maitred: &Address) -> Address {
    match maitred {
        Address::Vsock { cid, .. } => Address::Vsock {
            cid: *cid,
            port: FORWARD_PORT,
        },
        Address::Hybrid { uds, .. } => Address::Hybrid {
            uds: uds.clone(),
            port: FORWARD_PORT,
        },
        Address::Unix(path) => {
            let mut forward = path.as_os_str().to_owned();
            forward.push(".forward");
            Address::Unix(forward.into())
        }
    }
}

/// Why a forward stream could not be opened.
#[derive(Debug)]
pub enum OpenError {
    Transport(crate::TransportError),
    Frame(FrameError),
    /// maitred said no, with its reason (a refused port, a bad token, too many connections).
    Refused(String),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transport(e) => e.fmt(f),
            Self::Frame(e) => e.fmt(f),
            Self::Refused(why) => write!(f, "the guest refused: {why}"),
        }
    }
}

impl std::error::Error for OpenError {}

/// Dials `addr` (maitred's forward address), authenticates and sends `request`; returns the
/// blocking stream once maitred answered STARTED.
pub fn open(
    addr: &Address,
    token: &crate::Token,
    request: &Request,
) -> Result<UnixStream, OpenError> {
    let fd: OwnedFd = crate::transport::connect(addr).map_err(OpenError::Transport)?;
    // A vsock or Unix fd: the same socket calls either way.
    let mut conn = UnixStream::from(fd);
    let io = |e| OpenError::Frame(FrameError::Io(e));
    conn.set_nonblocking(false).map_err(io)?;
    // HELLO and the request in one write: one round trip to STARTED.
    let payload = stream::hello_payload(token);
    let req = request.encode();
    let mut hello = Vec::with_capacity(2 * stream::HEADER_LEN + payload.len() + req.len());
    hello.extend_from_slice(&stream::header(Kind::Hello, payload.len()));
    hello.extend_from_slice(&payload);
    hello.extend_from_slice(&stream::header(REQUEST, req.len()));
    hello.extend_from_slice(&req);
    conn.write_all(&hello).map_err(io)?;
    let reply = stream::read_frame(&mut conn).map_err(OpenError::Frame)?;
    match reply.kind {
        OK => Ok(conn),
        REFUSED => Err(OpenError::Refused(
            String::from_utf8_lossy(&reply.payload).into_owned(),
        )),
        kind => Err(OpenError::Frame(FrameError::Unexpected {
            kind,
            during: "instead of STARTED",
        })),
    }
}

/// Copies TCP → stream as DATA frames; end of file becomes an EOF frame. An error shuts
/// both sockets down, so the other direction ends too.
fn tcp_to_stream(mut tcp: TcpStream, mut stream: UnixStream) {
    let mut frame = stream::DataFrame::new();
    loop {
        let n = match tcp.read(frame.space()) {
            Ok(0) => {
                if stream::write_frame(&mut stream, EOF, &[]).is_err() {
                    break;
                }
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if stream.write_all(frame.frame(DATA, n)).is_err() {
            break;
        }
    }
    let _ = tcp.shutdown(Shutdown::Both);
    let _ = stream.shutdown(Shutdown::Both);
}

/// Copies stream → TCP: DATA frames are written out, EOF is passed on as a half-close;
/// anything else (a closed or reset stream, a bad frame) shuts both sockets down.
fn stream_to_tcp(mut stream: UnixStream, mut tcp: TcpStream) {
    loop {
        match stream::read_frame(&mut stream) {
            Ok(frame) if frame.kind == DATA => {
                if tcp.write_all(&frame.payload).is_err() {
                    break;
                }
            }
            Ok(frame) if frame.kind == EOF => {
                let _ = tcp.shutdown(Shutdown::Write);
                return;
            }
            _ => break,
        }
    }
    let _ = tcp.shutdown(Shutdown::Both);
    let _ = stream.shutdown(Shutdown::Both);
}

/// Relays between a TCP connection and a forward stream until both directions ended; then
/// both sockets close. The calling thread copies stream → TCP, a second thread (named
/// `name`) TCP → stream. A reset on either side ends both directions.
pub fn relay(tcp: TcpStream, stream: UnixStream, name: &str) -> io::Result<()> {
    let (tcp2, stream2) = (tcp.try_clone()?, stream.try_clone()?);
    let other = std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(64 * 1024)
        .spawn(move || tcp_to_stream(tcp2, stream2))?;
    stream_to_tcp(stream, tcp);
    let _ = other.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        for req in [
            Request::Open { port: 80 },
            Request::Listen { ports: vec![] },
            Request::Listen {
                ports: vec![1, 5432, 65535],
            },
            Request::Attach { id: 0xdead_beef },
        ] {
            assert_eq!(Request::decode(&req.encode()), Ok(req));
        }
    }

    #[test]
    fn request_bad_input_is_a_clear_error() {
        let cases: [(&[u8], RequestError); 8] = [
            (&[], RequestError::Empty),
            (&[9], RequestError::UnknownOp(9)),
            (&[1, 0], RequestError::BadLength { op: 1, len: 2 }),
            (&[1, 0, 0], RequestError::ZeroPort),
            (&[2, 0, 1, 0, 0], RequestError::ZeroPort),
            (&[2, 0, 2, 0, 1], RequestError::BadLength { op: 2, len: 5 }),
            (&[2, 1, 0], RequestError::TooMany(256)),
            (&[3, 0, 0, 1], RequestError::BadLength { op: 3, len: 4 }),
        ];
        for (bytes, want) in cases {
            assert_eq!(Request::decode(bytes), Err(want.clone()), "{bytes:?}");
            assert!(want.to_string().starts_with("forward request"));
        }
    }

    #[test]
    fn pending_round_trips_and_rejects_bad_lengths() {
        let frame = |p: &[u8]| Frame {
            kind: PENDING,
            payload: p.to_vec(),
        };
        assert_eq!(
            decode_pending(&frame(&encode_pending(7, 3))).unwrap(),
            (7, 3)
        );
        assert!(decode_pending(&frame(&[0; 5])).is_err());
    }

    #[test]
    fn forward_address_is_the_same_transport_on_the_forward_port() {
        for (grpc, want) in [
            ("vsock:7:8888", "vsock:7:8890"),
            ("hybrid:/r/v.sock:8888", "hybrid:/r/v.sock:8890"),
            ("unix:/r/maitred.sock", "unix:/r/maitred.sock.forward"),
        ] {
            let addr: Address = grpc.parse().unwrap();
            assert_eq!(forward_address(&addr).to_string(), want);
        }
    }

    #[test]
    fn relay_copies_both_ways_and_passes_half_close() {
        // Two relays back to back over a stream, as launcher and maitred run them.
        let tcp_pair = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            (client, l.accept().unwrap().0)
        };
        let (mut user_a, relay_a) = tcp_pair();
        let (relay_b, mut user_b) = tcp_pair();
        let (stream_a, stream_b) = UnixStream::pair().unwrap();
        let a = std::thread::spawn(move || relay(relay_a, stream_a, "relay-a").unwrap());
        let b = std::thread::spawn(move || relay(relay_b, stream_b, "relay-b").unwrap());
        user_a.write_all(b"ping").unwrap();
        user_a.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        user_b.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"ping");
        // The other direction still works after the half-close.
        user_b.write_all(b"pong").unwrap();
        user_b.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        user_a.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"pong");
        a.join().unwrap();
        b.join().unwrap();
    }
}
