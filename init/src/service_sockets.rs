//! Sockets maitred binds for a boot service (`socket = dgram|stream PATH` in its file) and
//! passes to it as fds 3, 4, … in the order given. They are bound at boot, before any
//! service runs, and kept for the VM's life: what a client sends before the service has
//! started, or while it restarts, waits in the socket instead of being refused. Mode 0666:
//! any process may connect, as to /dev/log. Datagram sockets pass senders' credentials
//! (SO_PASSCRED), as a syslog daemon wants.

use std::fmt;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    Datagram,
    Stream,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSpec {
    pub kind: SocketKind,
    pub path: PathBuf,
}

impl SocketSpec {
    /// `dgram PATH` or `stream PATH`, PATH absolute.
    pub fn parse(value: &str) -> Result<SocketSpec, String> {
        let usage = || format!("socket: expected `dgram PATH` or `stream PATH`, got {value:?}");
        let (kind, path) = value.split_once(char::is_whitespace).ok_or_else(usage)?;
        let kind = match kind {
            "dgram" => SocketKind::Datagram,
            "stream" => SocketKind::Stream,
            _ => return Err(usage()),
        };
        let path = PathBuf::from(path.trim());
        if !path.is_absolute() {
            return Err(format!(
                "socket: {} is not an absolute path",
                path.display()
            ));
        }
        Ok(SocketSpec { kind, path })
    }

    /// Binds the socket, replacing one left at its path (anything else there is an error).
    pub fn bind(&self) -> Result<OwnedFd, BindError> {
        let err = |source| BindError {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        vm_proto::transport::remove_stale_socket(&self.path).map_err(err)?;
        let fd = match self.kind {
            SocketKind::Datagram => UnixDatagram::bind(&self.path).map(OwnedFd::from),
            SocketKind::Stream => UnixListener::bind(&self.path).map(OwnedFd::from),
        }
        .map_err(err)?;
        if self.kind == SocketKind::Datagram {
            // The kernel attaches a sender's credentials only if the receiving socket asks
            // for them when the datagram is sent: a service that sets this itself, once it
            // runs, would get no pid for what was queued before.
            nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::PassCred, &true)
                .map_err(|e| err(e.into()))?;
        }
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o666))
            .map_err(err)?;
        Ok(fd)
    }
}

#[derive(Debug)]
pub struct BindError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot bind the socket {}: {}",
            self.path.display(),
            self.source
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kind_and_absolute_path() {
        assert_eq!(
            SocketSpec::parse("dgram /run/syslog/log"),
            Ok(SocketSpec {
                kind: SocketKind::Datagram,
                path: "/run/syslog/log".into()
            })
        );
        assert_eq!(
            SocketSpec::parse("stream   /run/x").map(|s| s.kind),
            Ok(SocketKind::Stream)
        );
        for bad in ["", "dgram", "seqpacket /x", "dgram relative/path", "/x"] {
            assert!(SocketSpec::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn binds_replacing_a_stale_socket_but_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SocketSpec::parse(&format!("dgram {}/a/log", dir.path().display())).unwrap();
        let first = spec.bind().unwrap();
        drop(first);
        let _again = spec.bind().expect("a stale socket is replaced");
        let mode = std::fs::metadata(&spec.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o666);
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let on_file = SocketSpec::parse(&format!("stream {}", file.display())).unwrap();
        assert!(on_file.bind().is_err(), "a regular file is not replaced");
        assert!(file.exists());
    }
}
