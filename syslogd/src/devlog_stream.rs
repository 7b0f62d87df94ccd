//! The stream socket (`--stream-socket`, default /dev/log-stream): syslog over SOCK_STREAM
//! for clients that only speak that (`logger -T`, Docker's `unix://` syslog driver,
//! syslog-ng's `unix-stream()` destinations).
//!
//! Why a second path and not /dev/log itself: a Unix socket path has one type. glibc's
//! syslog(3), Python, Go and busybox try SOCK_DGRAM first (glibc falls back to SOCK_STREAM
//! only on EPROTOTYPE), and `logger -d` or `--socket-type dgram` speak nothing else, so
//! /dev/log stays the datagram socket every library expects, and stream-only clients are
//! pointed at this one.
//!
//! Bounded: at most [`MAX_CLIENTS`] at once (more are closed at once, and counted), one
//! thread each, messages cut at [`MAX_MESSAGE`] ([`Framer`]); a client that sends garbage
//! gets garbage records and costs nobody else anything. The pid is the kernel's
//! (SO_PEERCRED at accept), not the one the client claims.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nix::sys::socket::{getsockopt, sockopt};

use crate::buffer::Buffer;
use crate::devlog::DevLogError;
use crate::record::{Kind, Timestamp, MAX_CONTENT};
use crate::stream_frame::Framer;
use crate::syslog_format;

/// Clients served at once.
pub const MAX_CLIENTS: usize = 32;
/// The longest message kept (a header plus the longest content).
pub const MAX_MESSAGE: usize = MAX_CONTENT + 4096;

pub struct StreamLog {
    listener: UnixListener,
    path: PathBuf,
}

impl StreamLog {
    pub fn bind(path: &Path) -> Result<StreamLog, DevLogError> {
        crate::devlog::remove_stale(path)?;
        let listener = UnixListener::bind(path).map_err(|source| DevLogError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(
            |source| DevLogError::Setup {
                path: path.to_path_buf(),
                source,
            },
        )?;
        Ok(StreamLog {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Serves the listening socket inherited as `fd` (bound by maitred at `path`).
    pub fn inherit(fd: i32, path: &Path) -> Result<StreamLog, DevLogError> {
        let owned = crate::devlog::inherited_socket(fd, nix::sys::socket::SockType::Stream, path)?;
        Ok(StreamLog {
            listener: UnixListener::from(owned),
            path: path.to_path_buf(),
        })
    }

    /// Accepts forever, one thread per client, at most [`MAX_CLIENTS`].
    pub fn run(self, buffer: Arc<Buffer>) {
        let live = Arc::new(AtomicUsize::new(0));
        let mut refused = 0u64;
        for stream in self.listener.incoming() {
            let Ok(stream) = stream else {
                continue;
            };
            if live.load(Ordering::SeqCst) >= MAX_CLIENTS {
                refused += 1;
                if refused.is_power_of_two() {
                    crate::warn!(
                        "vm_syslog: {}: {MAX_CLIENTS} clients already; refused {refused}",
                        self.path.display()
                    );
                }
                continue; // dropped: closed
            }
            live.fetch_add(1, Ordering::SeqCst);
            let (b, l) = (buffer.clone(), live.clone());
            let spawned = std::thread::Builder::new()
                .name("devlog-stream".into())
                .spawn(move || {
                    serve(stream, &b);
                    l.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                live.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// Reads one client until it closes, pushing a record per message.
fn serve(mut stream: UnixStream, buffer: &Buffer) {
    let pid = getsockopt(&stream, sockopt::PeerCredentials)
        .ok()
        .and_then(|c| u32::try_from(c.pid()).ok())
        .unwrap_or(0);
    let mut framer = Framer::new(MAX_MESSAGE);
    let mut buf = vec![0u8; 16 << 10];
    let mut frames = Vec::new();
    loop {
        let n = match stream.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        if n == 0 {
            framer.end(&mut frames);
        } else {
            framer.push(&buf[..n], &mut frames);
        }
        if !frames.is_empty() {
            let now = Timestamp::now();
            let records = frames.drain(..).map(|frame| {
                let mut record = syslog_format::parse(&frame.message, now);
                record.truncated |= frame.truncated;
                if pid != 0 {
                    record.pid = pid;
                }
                (record, None)
            });
            buffer.push_all(Kind::User, records);
        }
        if n == 0 {
            return;
        }
    }
}
