//! One pass over the spool: every pending report that is due, oldest first, under an
//! `flock` on its `.dmp` (so one of several launchers uploads it) and within the host's
//! limit; what the server answered goes into the report's `.meta`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};

use super::state::{self, Report, Stage};
use super::{
    classify, client_guid, http, multipart, note, random_hex, unix_now, HostRate, Outcome,
    UploadConfig, UploadError, MINIDUMP_PART, RESCAN,
};

/// `.meta` keys of the same name as a field the protocol owns are not sent.
const RESERVED: [&str; 4] = ["prod", "ver", "guid", MINIDUMP_PART];
/// `.meta` keys not sent: the host's own path of the dump says nothing to the server.
const NOT_SENT: [&str; 1] = ["payload"];

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
pub struct Courier {
    pub config: UploadConfig,
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
    pub fn start(config: UploadConfig) -> Result<Courier, UploadError> {
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
    pub fn pass(
        &self,
        spool: &Path,
        ignore_backoff: bool,
        go_on: &dyn Fn() -> bool,
    ) -> PassSummary {
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
