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
pub mod http;
mod multipart;
pub mod rate;
pub mod state;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use nix::fcntl::{Flock, FlockArg};

pub use answer::{classify, crash_id, Outcome};
pub use http::{Url, UrlError};
pub use rate::{HostRate, RateLimit};
use state::{Report, Stage};

/// Every key the uploader keeps in a `.meta` starts with this.
pub const STATE_KEY_PREFIX: &str = state::PREFIX;
/// The file part holding the minidump, as Breakpad and Crashpad name it.
pub const MINIDUMP_PART: &str = "upload_file_minidump";
/// Form fields the protocol owns: a `.meta` key of the same name is not sent.
const RESERVED: [&str; 4] = ["prod", "ver", "guid", MINIDUMP_PART];
/// `.meta` keys not sent: the host's own path of the dump says nothing to the server.
const NOT_SENT: [&str; 1] = ["payload"];
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

/// What one pass over the spool did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassSummary {
    pub uploaded: usize,
    pub refused: usize,
    /// Failed this time, to be retried.
    pub failed: usize,
    pub given_up: usize,
    /// The host's limit stopped the pass; the next slot frees at this Unix time.
    pub limited_until: Option<u64>,
    /// The earliest retry still waiting (Unix seconds).
    pub next_due: Option<u64>,
}

/// What uploads: the configuration, the host's limit and this host's client id.
struct Courier {
    config: UploadConfig,
    rate: HostRate,
    guid: String,
}

/// The complete reports under `spool/<vm>/`, oldest first.
fn scan(spool: &Path) -> Vec<PathBuf> {
    let mut metas: Vec<(SystemTime, PathBuf)> = Vec::new();
    let Ok(vms) = std::fs::read_dir(spool) else {
        return Vec::new();
    };
    for vm in vms.flatten() {
        let Ok(entries) = std::fs::read_dir(vm.path()) else {
            continue;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().is_some_and(|e| e == "meta") {
                let time = std::fs::metadata(&path).and_then(|m| m.modified());
                metas.push((time.unwrap_or(SystemTime::UNIX_EPOCH), path));
            }
        }
    }
    metas.sort();
    metas.into_iter().map(|(_, p)| p).collect()
}

impl Courier {
    fn start(config: UploadConfig) -> Result<Courier, UploadError> {
        crate::pool::private::ensure_dir(&config.state_dir, true).map_err(|e| {
            UploadError::StateDir {
                path: config.state_dir.clone(),
                source: e.into(),
            }
        })?;
        let guid = client_guid(&config.state_dir)?;
        let rate = HostRate::new(&config.state_dir.join("rate"), config.limit);
        Ok(Courier { config, rate, guid })
    }

    /// Uploads every pending report that is due (all pending ones with `ignore_backoff`),
    /// while `go_on()` says so.
    fn pass(&self, spool: &Path, ignore_backoff: bool, go_on: &dyn Fn() -> bool) -> PassSummary {
        let mut summary = PassSummary::default();
        for meta in scan(spool) {
            if !go_on() {
                break;
            }
            let Some(report) = Report::read(&meta) else {
                continue;
            };
            if report.upload.stage != Stage::Pending {
                continue;
            }
            let now = unix_now();
            if !ignore_backoff && report.upload.next_try > now {
                let due = summary.next_due.get_or_insert(report.upload.next_try);
                *due = (*due).min(report.upload.next_try);
                continue;
            }
            // Another launcher's uploader may hold it; then it is theirs.
            let Ok(dump) = std::fs::File::open(&report.dump) else {
                continue;
            };
            let Ok(_held) = Flock::lock(dump, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            // Re-read under the lock: the other uploader may have just finished it.
            let Some(report) = Report::read(&meta) else {
                continue;
            };
            if report.upload.stage != Stage::Pending {
                continue;
            }
            match self.rate.take(now) {
                Ok(None) => {}
                Ok(Some(until)) => {
                    summary.limited_until = Some(until);
                    break;
                }
                Err(e) => {
                    note(format_args!("{e}; not uploading now"));
                    summary.limited_until = Some(now + RESCAN.as_secs());
                    break;
                }
            }
            self.upload_one(report, &mut summary);
        }
        summary
    }

    fn upload_one(&self, mut report: Report, summary: &mut PassSummary) {
        let name = report.dump.display().to_string();
        let url = &self.config.url;
        let now = unix_now();
        let upload = &mut report.upload;
        match self.send(&report.dump, &report.fields) {
            Ok(Outcome::Uploaded { crash_id }) => {
                note(format_args!(
                    "{name} uploaded to {url} as {}",
                    crash_id.as_deref().unwrap_or("(no id given)")
                ));
                upload.stage = Stage::Uploaded;
                upload.crash_id = crash_id;
                upload.status = None;
                upload.error = None;
                upload.time = Some(now);
                summary.uploaded += 1;
            }
            Ok(Outcome::Refused { status, why }) => {
                note(format_args!(
                    "{name} refused by {url}: HTTP {status} {why}; not retried"
                ));
                upload.stage = Stage::Refused;
                upload.status = Some(status);
                upload.error = Some(why);
                upload.time = Some(now);
                summary.refused += 1;
            }
            Ok(Outcome::Retry { status, why }) => {
                upload.status = Some(status);
                self.failed(&name, upload, format!("HTTP {status} {why}"), now, summary);
            }
            Err(UploadError::ReadDump { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return; // Pruned meanwhile.
            }
            Err(e) => {
                upload.status = None;
                self.failed(&name, upload, e.to_string(), now, summary);
            }
        }
        if let Err(e) = report.save() {
            note(format_args!("{e}"));
        }
    }

    fn failed(
        &self,
        name: &str,
        upload: &mut state::UploadState,
        why: String,
        now: u64,
        summary: &mut PassSummary,
    ) {
        upload.attempts += 1;
        upload.error = Some(why.clone());
        if upload.attempts >= self.config.retry.attempts {
            note(format_args!(
                "{name}: {why}; given up after {} tries",
                upload.attempts
            ));
            upload.stage = Stage::GivenUp;
            upload.time = Some(now);
            summary.given_up += 1;
            return;
        }
        let wait = self.config.retry.backoff(upload.attempts);
        upload.next_try = now + wait.as_secs().max(1);
        note(format_args!(
            "{name}: {why}; try {} in {}s",
            upload.attempts + 1,
            wait.as_secs().max(1)
        ));
        let due = summary.next_due.get_or_insert(upload.next_try);
        *due = (*due).min(upload.next_try);
        summary.failed += 1;
    }

    /// One POST of one report; what the server's answer means.
    fn send(&self, dump: &Path, fields: &[(String, String)]) -> Result<Outcome, UploadError> {
        let bytes = std::fs::read(dump).map_err(|source| UploadError::ReadDump {
            path: dump.to_path_buf(),
            source,
        })?;
        let c = &self.config;
        let mut sent: Vec<(&str, &str)> = vec![
            ("prod", &c.product),
            ("ver", &c.version),
            ("guid", &self.guid),
        ];
        sent.extend(
            fields
                .iter()
                .filter(|(k, _)| !RESERVED.contains(&k.as_str()) && !NOT_SENT.contains(&k.as_str()))
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let mut parts: Vec<&[u8]> = vec![&bytes];
        parts.extend(sent.iter().map(|(_, v)| v.as_bytes()));
        let boundary = multipart::boundary_for(&parts, random_hex);
        let mut form = multipart::Form::new(boundary, bytes.len() + 4096);
        for (key, value) in &sent {
            form.field(key, value);
        }
        let filename = dump
            .file_name()
            .map_or("minidump.dmp".into(), |n| n.to_string_lossy().into_owned());
        form.file(MINIDUMP_PART, &filename, &bytes);
        drop(bytes);
        let (content_type, mut body) = form.finish();
        let mut headers = vec![
            ("Content-Type", content_type.as_str()),
            (
                "User-Agent",
                concat!("vm_launcher/", env!("CARGO_PKG_VERSION")),
            ),
        ];
        if c.gzip {
            body = gzip(&body).map_err(UploadError::Gzip)?;
            headers.push(("Content-Encoding", "gzip"));
        }
        let response = http::post(&c.url, &headers, &body, c.timeout).map_err(UploadError::Http)?;
        Ok(classify(response.status, &response.body))
    }
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::default(),
    );
    encoder.write_all(body)?;
    encoder.finish()
}

/// `vm_launcher crash-upload`: one pass over the spool, every pending report whatever its
/// backoff (within the host's limit).
pub fn drain(spool: &Path, config: UploadConfig) -> Result<PassSummary, UploadError> {
    let sender = Courier::start(config)?;
    Ok(sender.pass(spool, true, &|| true))
}

/// Tells the uploader a report was stored.
#[derive(Clone)]
pub struct UploadWaker(Sender<()>);

impl UploadWaker {
    pub fn wake(&self) {
        let _ = self.0.try_send(());
    }
}

/// The upload thread of one launcher: a pass at start (what earlier launchers left), after
/// each stored report, when a retry or a rate-limit slot is due, and every few minutes.
pub struct Uploader {
    wake: Sender<()>,
    stop: Arc<AtomicBool>,
    finished: Receiver<()>,
}

impl Uploader {
    pub fn start(spool: PathBuf, config: UploadConfig) -> Result<Uploader, UploadError> {
        let sender = Courier::start(config)?;
        let (wake, woken) = bounded(1);
        let (done, finished) = bounded(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::Builder::new()
            .name("crash-upload".into())
            .spawn(move || {
                upload_loop(&sender, &spool, &woken, &stopping);
                let _ = done.send(());
            })
            .map_err(UploadError::Thread)?;
        Ok(Uploader {
            wake,
            stop,
            finished,
        })
    }

    pub fn waker(&self) -> UploadWaker {
        UploadWaker(self.wake.clone())
    }
}

impl Drop for Uploader {
    /// Uploads what is due now, for up to [`FINAL_PASS`]; what is left stays pending.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.try_send(());
        let _ = self.finished.recv_timeout(FINAL_PASS);
    }
}

fn upload_loop(sender: &Courier, spool: &Path, woken: &Receiver<()>, stop: &AtomicBool) {
    let mut limited_noted = None;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let deadline = Instant::now() + FINAL_PASS;
        // A pass stops when the uploader is stopped; the last pass, when its time is up.
        let go_on = || match stopping {
            false => !stop.load(Ordering::SeqCst),
            true => Instant::now() < deadline,
        };
        let summary = sender.pass(spool, false, &go_on);
        if summary.limited_until.is_some() && summary.limited_until != limited_noted {
            note(format_args!(
                "the host's limit of {} uploads per {}s is reached; the next in {}s",
                sender.config.limit.count,
                sender.config.limit.period.as_secs(),
                summary
                    .limited_until
                    .unwrap_or(0)
                    .saturating_sub(unix_now())
            ));
        }
        limited_noted = summary.limited_until;
        if stopping {
            return;
        }
        let due = [summary.limited_until, summary.next_due]
            .into_iter()
            .flatten()
            .min();
        let wait = due.map_or(RESCAN, |t| {
            Duration::from_secs(t.saturating_sub(unix_now())).min(RESCAN)
        });
        match woken.recv_timeout(wait) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
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
