//! A report's upload state, kept in its own `.meta` as `upload_*` keys before `done=1`, so
//! it survives launcher restarts and travels with the report: how many tries, when the
//! next is due, and the end (the server's crash id, or why it was refused or given up).
//! The `.meta` is rewritten atomically (a new file renamed over it) with its old write
//! time, so the spool's newest-first pruning is not changed by an upload.

use std::path::{Path, PathBuf};

use vm_proto::spool::{meta_line, parse_meta, DONE_LINE};

use crate::crash_spool::{self, SpoolError};

/// Every upload key starts so; a guest's keys never do (the spool drops them).
pub const PREFIX: &str = "upload_";
const STATE: &str = "upload_state";
const ATTEMPTS: &str = "upload_attempts";
const NEXT_TRY: &str = "upload_next_try";
const CRASH_ID: &str = "upload_id";
const TIME: &str = "upload_time";
const STATUS: &str = "upload_status";
const ERROR: &str = "upload_error";

/// Where a report stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stage {
    /// Not uploaded yet (no `upload_state`): due at `upload_next_try`.
    #[default]
    Pending,
    Uploaded,
    /// The server refused it (4xx): never retried.
    Refused,
    /// Every try failed: not retried.
    GivenUp,
}

impl Stage {
    fn name(self) -> Option<&'static str> {
        match self {
            Stage::Pending => None,
            Stage::Uploaded => Some("uploaded"),
            Stage::Refused => Some("refused"),
            Stage::GivenUp => Some("given_up"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UploadState {
    pub stage: Stage,
    pub attempts: u32,
    /// Unix seconds; 0: now.
    pub next_try: u64,
    pub crash_id: Option<String>,
    /// When it was uploaded, refused or given up (Unix seconds).
    pub time: Option<u64>,
    /// The last HTTP status, if the server answered.
    pub status: Option<u16>,
    /// The last failure, one line.
    pub error: Option<String>,
}

/// A complete report in the spool.
#[derive(Debug, Clone)]
pub struct Report {
    pub meta: PathBuf,
    pub dump: PathBuf,
    /// The `.meta`'s other keys, in order (`done` left out).
    pub fields: Vec<(String, String)>,
    pub upload: UploadState,
}

impl Report {
    /// The report behind `meta`; None while it is incomplete (no `done=1` yet) or gone.
    pub fn read(meta: &Path) -> Option<Report> {
        let text = std::fs::read_to_string(meta).ok()?;
        let mut upload = UploadState::default();
        let mut fields = Vec::new();
        for (key, value) in parse_meta(&text)? {
            let number = || value.parse::<u64>().ok();
            match key.as_str() {
                STATE => {
                    upload.stage = match value.as_str() {
                        "uploaded" => Stage::Uploaded,
                        "refused" => Stage::Refused,
                        "given_up" => Stage::GivenUp,
                        _ => Stage::Pending,
                    }
                }
                ATTEMPTS => upload.attempts = value.parse().unwrap_or(0),
                NEXT_TRY => upload.next_try = number().unwrap_or(0),
                CRASH_ID => upload.crash_id = Some(value),
                TIME => upload.time = number(),
                STATUS => upload.status = value.parse().ok(),
                ERROR => upload.error = Some(value),
                k if k.starts_with(PREFIX) => {}
                _ => fields.push((key, value)),
            }
        }
        Some(Report {
            meta: meta.to_path_buf(),
            dump: meta.with_extension("dmp"),
            fields,
            upload,
        })
    }

    /// Rewrites the `.meta` with `self.upload`, `done=1` last, keeping its write time.
    pub fn save(&self) -> Result<(), SpoolError> {
        let mut text = String::new();
        for (key, value) in &self.fields {
            text.push_str(&meta_line(key, value));
        }
        let u = &self.upload;
        let mut put = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                text.push_str(&meta_line(key, &value));
            }
        };
        put(STATE, u.stage.name().map(String::from));
        put(ATTEMPTS, (u.attempts > 0).then(|| u.attempts.to_string()));
        put(
            NEXT_TRY,
            (u.stage == Stage::Pending && u.next_try > 0).then(|| u.next_try.to_string()),
        );
        put(CRASH_ID, u.crash_id.clone());
        put(TIME, u.time.map(|t| t.to_string()));
        put(STATUS, u.status.map(|s| s.to_string()));
        put(ERROR, u.error.clone());
        text.push_str(DONE_LINE);
        let modified = std::fs::metadata(&self.meta)
            .and_then(|m| m.modified())
            .ok();
        crash_spool::write_atomic_with_time(&self.meta, text.as_bytes(), modified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_read_round_trips_the_state_and_keeps_fields_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("app.1.meta");
        std::fs::write(&meta, "exe=app\nprocess_tree=1 a\\nb\ndone=1\n").unwrap();
        let before = std::fs::metadata(&meta).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut report = Report::read(&meta).unwrap();
        assert_eq!(report.upload, UploadState::default());
        report.upload = UploadState {
            stage: Stage::Uploaded,
            attempts: 2,
            next_try: 99,
            crash_id: Some("bp-1".into()),
            time: Some(5),
            status: Some(200),
            error: Some("HTTP 503\nbusy".into()),
        };
        report.save().unwrap();
        let text = std::fs::read_to_string(&meta).unwrap();
        assert!(
            text.starts_with("exe=app\nprocess_tree=1 a\\nb\nupload_state=uploaded\n"),
            "{text}"
        );
        assert!(
            text.ends_with("upload_error=HTTP 503\\nbusy\ndone=1\n"),
            "{text}"
        );
        assert!(!text.contains("upload_next_try"), "{text}");
        let again = Report::read(&meta).unwrap();
        assert_eq!(again.fields, report.fields);
        assert_eq!(again.upload.crash_id.as_deref(), Some("bp-1"));
        assert_eq!(again.upload.error.as_deref(), Some("HTTP 503\nbusy"));
        assert_eq!(
            std::fs::metadata(&meta).unwrap().modified().unwrap(),
            before
        );
    }

    #[test]
    fn read_skips_an_incomplete_meta() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("a.meta");
        std::fs::write(&meta, "exe=app\n").unwrap();
        assert!(Report::read(&meta).is_none());
        assert!(Report::read(&dir.path().join("gone.meta")).is_none());
    }
}
