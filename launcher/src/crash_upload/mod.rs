//! Crash upload (`--crash-upload URL`): each complete report in the host's crash spool is
//! POSTed with the Breakpad/Crashpad minidump upload protocol, which Socorro/Antenna,
//! Sentry's minidump endpoint, Backtrace and BugSplat accept: `multipart/form-data` with
//! `prod`, `ver`, `guid`, the report's `.meta` keys as fields, and the minidump as the file
//! part `upload_file_minidump`; gzipped (`Content-Encoding: gzip`) with `--crash-upload-gzip`.
//!
//! - A 2xx answer: the server's crash id goes into the `.meta` (`upload_id`).
//! - A 4xx (but 408/429): refused for good, one log line, never retried.
//! - A 5xx, 408, 429 or a network error: retried with exponential backoff; the attempt
//!   count and the next try live in the `.meta` ([`state`]), so a restarted launcher (or
//!   `vm_launcher crash-upload`) carries on where the last one stopped.
//! - At most N uploads per period for the whole host ([`rate`], default 32 a day).
//!
//! Runs on a thread of its own ([`Uploader`]), woken when a report is stored; never on a
//! gRPC thread. Several launchers share one spool: an `flock` on a report's `.dmp` makes
//! one of them upload it. A report is uploaded at least once: a launcher killed between
//! the server's answer and the `.meta` rewrite uploads it again next time.
//!
//! HTTP is std's `TcpStream` ([`http`]): `http://` only (see there why not https). gzip is
//! `flate2` on its pure-Rust `miniz_oxide` back-end.

mod answer;
mod courier;
pub mod http;
mod multipart;
pub mod rate;
pub mod state;
mod uploader;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub use answer::{classify, crash_id, Outcome};
pub use courier::PassSummary;
pub use http::{Url, UrlError};
pub use rate::{HostRate, RateLimit};
pub use uploader::{drain, UploadWaker, Uploader};

/// Every key the uploader keeps in a `.meta` starts with this.
pub const STATE_KEY_PREFIX: &str = state::PREFIX;
/// The file part holding the minidump, as Breakpad and Crashpad name it.
pub const MINIDUMP_PART: &str = "upload_file_minidump";
/// With nothing due, the spool is looked at again this often (another launcher's
/// leftovers, a rate limit of another launcher's making).
const RESCAN: Duration = Duration::from_secs(300);
/// How long stopping waits for a last pass over what is due (a `run` whose application
/// crashed just before it ended).
const FINAL_PASS: Duration = Duration::from_secs(10);

/// Retries after a 5xx or a network error: `first`, doubling, at most `max` apart; after
/// `attempts` failures the report is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub first: Duration,
    pub max: Duration,
    pub attempts: u32,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            first: Duration::from_secs(60),
            max: Duration::from_secs(6 * 3600),
            attempts: 12,
        }
    }
}

impl Retry {
    /// The wait after the `attempts`-th failure.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let doubled = self
            .first
            .saturating_mul(1 << attempts.saturating_sub(1).min(20));
        doubled.min(self.max)
    }
}

#[derive(Debug, Clone)]
pub struct UploadConfig {
    pub url: Url,
    pub gzip: bool,
    pub limit: RateLimit,
    /// Host-wide state (the rate file, the client guid): `<runtime-dir>/crash-upload`.
    pub state_dir: PathBuf,
    pub product: String,
    pub version: String,
    pub retry: Retry,
    /// Each connect, read and write waits at most this.
    pub timeout: Duration,
}

impl UploadConfig {
    pub fn new(url: Url, gzip: bool, limit: RateLimit, runtime_dir: &Path) -> UploadConfig {
        UploadConfig {
            url,
            gzip,
            limit,
            state_dir: runtime_dir.join("crash-upload"),
            product: "vm_tools".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            retry: Retry::default(),
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug)]
pub enum UploadError {
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    Guid {
        path: PathBuf,
        source: std::io::Error,
    },
    Thread(std::io::Error),
    ReadDump {
        path: PathBuf,
        source: std::io::Error,
    },
    Gzip(std::io::Error),
    Http(http::HttpError),
}

impl fmt::Display for UploadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StateDir { path, source } => {
                write!(f, "crash upload state dir {}: {source}", path.display())
            }
            Self::Guid { path, source } => {
                write!(f, "crash upload client id {}: {source}", path.display())
            }
            Self::Thread(e) => write!(f, "cannot start the crash upload thread: {e}"),
            Self::ReadDump { path, source } => write!(f, "reading {}: {source}", path.display()),
            Self::Gzip(e) => write!(f, "gzip of the upload failed: {e}"),
            Self::Http(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for UploadError {}

fn note(line: fmt::Arguments<'_>) {
    // Never eprintln!: a detached launcher's stderr may be gone, and this must not panic.
    let _ = writeln!(std::io::stderr(), "crash upload: {line}");
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// This host's client id (32 hex digits), made once and kept in the state dir.
fn client_guid(state_dir: &Path) -> Result<String, UploadError> {
    let path = state_dir.join("guid");
    let valid = |t: &str| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit());
    for _ in 0..2 {
        if let Ok(text) = std::fs::read_to_string(&path) {
            if valid(text.trim()) {
                return Ok(text.trim().to_string());
            }
            let _ = std::fs::remove_file(&path);
        }
        let err = |source| UploadError::Guid {
            path: path.clone(),
            source,
        };
        let guid = random_hex();
        match crate::pool::private::create_new_file(&path) {
            Ok(mut file) => {
                file.write_all(format!("{guid}\n").as_bytes())
                    .map_err(err)?;
                return Ok(guid);
            }
            // Another launcher made it first: read theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(err(e)),
        }
    }
    Err(UploadError::Guid {
        path,
        source: std::io::Error::other("unreadable"),
    })
}

/// 32 random hex digits.
fn random_hex() -> String {
    match vm_proto::Token::generate() {
        Ok(token) => token.to_hex()[..32].to_string(),
        // No randomness at all: still unique enough for a multipart boundary.
        Err(_) => format!(
            "{:032x}",
            unix_now() as u128 ^ u128::from(std::process::id())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_backoff_doubles_up_to_the_cap() {
        let r = Retry {
            first: Duration::from_secs(60),
            max: Duration::from_secs(600),
            attempts: 5,
        };
        let waits: Vec<u64> = (1..=6).map(|n| r.backoff(n).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 480, 600, 600]);
        assert_eq!(r.backoff(u32::MAX).as_secs(), 600);
    }

    #[test]
    fn client_guid_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = client_guid(dir.path()).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(client_guid(dir.path()).unwrap(), a);
        std::fs::write(dir.path().join("guid"), "junk").unwrap();
        assert_ne!(client_guid(dir.path()).unwrap(), a);
    }
}
