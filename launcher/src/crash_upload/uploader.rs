//! The upload thread of one launcher ([`Uploader`]) and the one-shot pass of
//! `vm_launcher crash-upload` ([`drain`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use super::courier::{Courier, PassSummary};
use super::{note, unix_now, UploadConfig, UploadError, FINAL_PASS, RESCAN};

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
