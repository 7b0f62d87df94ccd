//! The smallest HTTP/1.1 client that uploads a crash report: one POST per connection over
//! std's `TcpStream` (`Content-Length`, `Connection: close`), and a parser for the answer
//! (status line, headers, a body sized by `Content-Length`, chunked, or ended by the close).
//!
//! Only `http://` URLs: `https://` would need a TLS library, a runtime dependency the
//! project's design does not take without a need that outweighs it. Upload to a local
//! relay or collector over plain HTTP, or put a TLS-terminating proxy in front.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The most of an answer we read: a crash id is a line, an error page a few KiB.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Where to POST: `http://HOST[:PORT][/PATH][?QUERY]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// The path and query, starting with `/`.
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    Https(String),
    NotHttp(String),
    BadAuthority(String),
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Https(url) => write!(
                f,
                "crash upload URL {url:?}: https is not supported (no TLS library in \
                 vm_launcher); use http:// to a local relay or a TLS-terminating proxy"
            ),
            Self::NotHttp(url) => {
                write!(
                    f,
                    "crash upload URL {url:?}: expected http://HOST[:PORT]/PATH"
                )
            }
            Self::BadAuthority(url) => write!(
                f,
                "crash upload URL {url:?}: bad host or port (no user:password@, \
                 IPv6 in [brackets])"
            ),
        }
    }
}

impl std::error::Error for UrlError {}

impl std::str::FromStr for Url {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Url, UrlError> {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(UrlError::Https(url.into()));
        }
        if !lower.starts_with("http://") {
            return Err(UrlError::NotHttp(url.into()));
        }
        let rest = &url["http://".len()..];
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        let bad = || UrlError::BadAuthority(url.into());
        if authority.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            if !after.is_empty() && !after.starts_with(':') {
                return Err(bad());
            }
            (host, after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            None | Some("") => 80,
            Some(p) => p.parse().map_err(|_| bad())?,
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let target = match target {
            "" => "/".to_string(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_string(),
        };
        if target.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        Ok(Url {
            host: host.to_string(),
            port,
            target,
        })
    }
}

impl Url {
    /// The `Host:` header's value.
    fn host_header(&self) -> String {
        let host = match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        };
        match self.port {
            80 => host,
            port => format!("{host}:{port}"),
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.host_header(), self.target)
    }
}

/// A complete answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseError {
    /// The connection ended before the answer did.
    Truncated,
    TooLarge,
    BadStatusLine,
    BadHeader,
    BadContentLength,
    BadChunk,
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Truncated => "the server closed the connection before its answer ended",
            Self::TooLarge => "the server's answer is larger than 64 KiB",
            Self::BadStatusLine => "the server's answer has no valid HTTP status line",
            Self::BadHeader => "the server's answer has a malformed header",
            Self::BadContentLength => "the server's answer has an invalid Content-Length",
            Self::BadChunk => "the server's chunked answer is malformed",
        })
    }
}

/// What [`parse_response`] found so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Read more (never returned at end of stream).
    Incomplete,
    Done(Response),
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The end of the header block (index after the blank line), CRLF or bare LF.
fn header_end(buf: &[u8]) -> Option<usize> {
    let crlf = find(buf, b"\r\n\r\n").map(|i| i + 4);
    let lf = find(buf, b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Parses an answer from the bytes read so far; `eof` when the server closed the
/// connection. Interim 1xx answers are skipped.
pub fn parse_response(mut buf: &[u8], eof: bool) -> Result<Parsed, ResponseError> {
    loop {
        if buf.len() > MAX_RESPONSE_BYTES {
            return Err(ResponseError::TooLarge);
        }
        let Some(end) = header_end(buf) else {
            return match eof {
                true => Err(ResponseError::Truncated),
                false => Ok(Parsed::Incomplete),
            };
        };
        let head = std::str::from_utf8(&buf[..end]).map_err(|_| ResponseError::BadHeader)?;
        let mut lines = head.lines();
        let status = parse_status_line(lines.next().unwrap_or_default())?;
        let (mut length, mut chunked) = (None, false);
        for line in lines.map(|l| l.trim_end_matches('\r')) {
            if line.is_empty() {
                continue;
            }
            let (name, value) = line.split_once(':').ok_or(ResponseError::BadHeader)?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let n: usize = value.parse().map_err(|_| ResponseError::BadContentLength)?;
                if length.is_some_and(|l| l != n) {
                    return Err(ResponseError::BadContentLength);
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().ends_with("chunked");
            }
        }
        let rest = &buf[end..];
        if (100..200).contains(&status) && status != 101 {
            buf = rest;
            continue;
        }
        if status == 204 || status == 304 {
            return Ok(done(status, Vec::new()));
        }
        if chunked {
            return match dechunk(rest)? {
                Some(body) => Ok(done(status, body)),
                None if eof => Err(ResponseError::Truncated),
                None => Ok(Parsed::Incomplete),
            };
        }
        return match length {
            Some(n) if n > MAX_RESPONSE_BYTES => Err(ResponseError::TooLarge),
            Some(n) if rest.len() >= n => Ok(done(status, rest[..n].to_vec())),
            Some(_) if eof => Err(ResponseError::Truncated),
            Some(_) => Ok(Parsed::Incomplete),
            None if eof => Ok(done(status, rest.to_vec())),
            None => Ok(Parsed::Incomplete),
        };
    }
}

fn done(status: u16, body: Vec<u8>) -> Parsed {
    Parsed::Done(Response { status, body })
}

/// `HTTP/1.x NNN [reason]` → NNN.
fn parse_status_line(line: &str) -> Result<u16, ResponseError> {
    let mut parts = line.trim_end_matches('\r').splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(ResponseError::BadStatusLine);
    }
    match code.parse::<u16>() {
        Ok(n) if (100..600).contains(&n) => Ok(n),
        _ => Err(ResponseError::BadStatusLine),
    }
}

/// A chunked body, once its last chunk and trailers are all there.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, ResponseError> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = find(rest, b"\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&rest[..eol]).map_err(|_| ResponseError::BadChunk)?;
        let size = line.trim_end_matches('\r').split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size.trim(), 16).map_err(|_| ResponseError::BadChunk)?;
        rest = &rest[eol + 1..];
        if size == 0 {
            // Trailers, up to an empty line.
            loop {
                let Some(eol) = find(rest, b"\n") else {
                    return Ok(None);
                };
                let empty = rest[..eol].iter().all(|b| *b == b'\r');
                rest = &rest[eol + 1..];
                if empty {
                    return Ok(Some(body));
                }
            }
        }
        if size > MAX_RESPONSE_BYTES || body.len() + size > MAX_RESPONSE_BYTES {
            return Err(ResponseError::TooLarge);
        }
        if rest.len() < size {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size..];
        match rest {
            [b'\r', b'\n', tail @ ..] | [b'\n', tail @ ..] => rest = tail,
            [] | [b'\r'] => return Ok(None),
            _ => return Err(ResponseError::BadChunk),
        }
    }
}

#[derive(Debug)]
pub enum HttpError {
    Resolve {
        url: String,
        source: std::io::Error,
    },
    Connect {
        addr: String,
        source: std::io::Error,
    },
    Send {
        addr: String,
        source: std::io::Error,
    },
    Receive {
        addr: String,
        source: std::io::Error,
    },
    Answer {
        addr: String,
        source: ResponseError,
    },
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Resolve { url, source } => write!(f, "cannot resolve {url}: {source}"),
            Self::Connect { addr, source } => write!(f, "cannot connect to {addr}: {source}"),
            Self::Send { addr, source } => write!(f, "sending to {addr} failed: {source}"),
            Self::Receive { addr, source } => {
                write!(f, "reading the answer of {addr} failed: {source}")
            }
            Self::Answer { addr, source } => write!(f, "{addr}: {source}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// One POST with `headers` (besides Host, Content-Length, Connection) and `body`; each
/// connect, read and write waits at most `timeout`.
pub fn post(
    url: &Url,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, HttpError> {
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|source| HttpError::Resolve {
            url: url.to_string(),
            source,
        })?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return exchange(stream, &addr.to_string(), url, headers, body, timeout),
            Err(source) => {
                last = Some(HttpError::Connect {
                    addr: addr.to_string(),
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| HttpError::Resolve {
        url: url.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
    }))
}

fn exchange(
    mut stream: TcpStream,
    addr: &str,
    url: &Url,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, HttpError> {
    let io = |source| HttpError::Send {
        addr: addr.to_string(),
        source,
    };
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        url.target,
        url.host_header(),
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let sent = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .and_then(|()| stream.flush());
    // A server may answer (413, 400) and close before reading the whole body: its answer
    // says more than our broken pipe.
    let answer = read_answer(&mut stream, addr);
    match (sent, answer) {
        (_, Ok(response)) => Ok(response),
        (Err(source), Err(_)) => Err(io(source)),
        (Ok(()), Err(e)) => Err(e),
    }
}

fn read_answer(stream: &mut TcpStream, addr: &str) -> Result<Response, HttpError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let answer = |source| HttpError::Answer {
            addr: addr.to_string(),
            source,
        };
        let n = stream
            .read(&mut chunk)
            .map_err(|source| HttpError::Receive {
                addr: addr.to_string(),
                source,
            })?;
        if n > 0 {
            buf.extend_from_slice(&chunk[..n]);
        }
        match parse_response(&buf, n == 0).map_err(answer)? {
            Parsed::Done(response) => return Ok(response),
            Parsed::Incomplete => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parses_host_port_and_target() {
        let u: Url = "http://127.0.0.1:8080/submit?prod=x#frag".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("127.0.0.1", 8080, "/submit?prod=x")
        );
        let u: Url = "HTTP://crash.example".parse().unwrap();
        assert_eq!((u.port, u.target.as_str()), (80, "/"));
        let u: Url = "http://[::1]:9/x".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        assert_eq!(u.to_string(), "http://[::1]:9/x");
    }

    #[test]
    fn url_refuses_https_and_junk_with_a_reason() {
        let e = "https://sentry.io/api/1/minidump/"
            .parse::<Url>()
            .unwrap_err();
        assert!(e.to_string().contains("https is not supported"), "{e}");
        assert!(matches!(
            "ftp://x".parse::<Url>(),
            Err(UrlError::NotHttp(_))
        ));
        for bad in [
            "http://",
            "http://u:p@h/",
            "http://h:99999/",
            "http://[::1/",
        ] {
            assert!(
                matches!(bad.parse::<Url>(), Err(UrlError::BadAuthority(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn parse_response_content_length_waits_for_the_whole_body() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(&full[..40], false), Ok(Parsed::Incomplete));
        assert_eq!(
            parse_response(&full[..40], true),
            Err(ResponseError::Truncated)
        );
        assert_eq!(
            parse_response(full, false),
            Ok(Parsed::Done(Response {
                status: 200,
                body: b"hello".to_vec()
            }))
        );
    }

    #[test]
    fn parse_response_chunked_close_delimited_and_interim() {
        let chunked =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbp-1\r\n3;x=y\r\n234\r\n0\r\n\r\n";
        let Ok(Parsed::Done(r)) = parse_response(chunked, false) else {
            panic!()
        };
        assert_eq!((r.status, r.body.as_slice()), (201, &b"bp-1234"[..]));
        let close = b"HTTP/1.0 500 Oops\nServer: x\n\nbroken";
        assert_eq!(parse_response(close, false), Ok(Parsed::Incomplete));
        let Ok(Parsed::Done(r)) = parse_response(close, true) else {
            panic!()
        };
        assert_eq!((r.status, r.body.as_slice()), (500, &b"broken"[..]));
    }

    #[test]
    fn parse_response_refuses_malformed_answers() {
        let cases: [(&[u8], ResponseError); 5] = [
            (b"SSH-2.0-OpenSSH\r\n\r\n", ResponseError::BadStatusLine),
            (b"HTTP/1.1 2000 OK\r\n\r\n", ResponseError::BadStatusLine),
            (
                b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n",
                ResponseError::BadHeader,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                ResponseError::BadContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                ResponseError::BadChunk,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse_response(input, true), Err(want), "{input:?}");
        }
        let huge = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_RESPONSE_BYTES + 1
        );
        assert_eq!(
            parse_response(huge.as_bytes(), false),
            Err(ResponseError::TooLarge)
        );
    }
}
