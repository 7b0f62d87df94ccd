//! Getting a report to the host: the spool's older reports first (oldest first), then this
//! one; whatever cannot be sent waits in the spool. A report the host refuses as too large
//! is rendered again under the transport's limit (vm_proto::server::MAX_MESSAGE_BYTES).

use std::fmt;

use crate::collect::Collected;
use crate::log;
use crate::report::{keys, CrashReportData};
use crate::send::{Sender, TRANSPORT_MAX_DUMP};
use crate::spool::{Spool, SpoolError};

/// Where a report ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    /// Kept in the spool, and why it was not sent.
    Spooled(String),
}

/// Keeps `report` in the spool; the spool's evictions are logged.
pub fn keep(
    spool: &Spool,
    report: &CrashReportData,
    why: impl fmt::Display,
) -> Result<Delivery, SpoolError> {
    for stem in spool.store(report)? {
        log::line(format!("spool full: dropped the oldest report {stem}"));
    }
    Ok(Delivery::Spooled(format!(
        "{why}; kept in {}",
        spool.dir.display()
    )))
}

/// Sends what the spool holds, oldest first; false if the host cannot be reached.
pub fn flush_spool(spool: &Spool, sender: &Sender) -> bool {
    for entry in spool.pending() {
        let old = match spool.load(&entry) {
            Ok(old) => old,
            Err(e) => {
                log::line(format!("dropping an unreadable spooled report: {e}"));
                spool.remove(&entry.stem);
                continue;
            }
        };
        match sender.send(&old) {
            Ok(()) => {
                log::line(format!("sent the spooled report {}", entry.stem));
                spool.remove(&entry.stem);
            }
            Err(e) if e.too_large() => {
                log::line(format!("dropping the spooled report {}: {e}", entry.stem));
                spool.remove(&entry.stem);
            }
            Err(e) => {
                log::line(e);
                return false;
            }
        }
    }
    true
}

/// Sends `report`; refused as too large, renders it again from `collected` under the
/// transport's limit. On failure, returns the report that should be kept and why.
fn send_new(
    sender: &Sender,
    collected: &Collected,
    report: CrashReportData,
) -> Result<(), (CrashReportData, String)> {
    match sender.send(&report) {
        Ok(()) => Ok(()),
        Err(e) if e.too_large() => {
            let mut smaller = collected.render(TRANSPORT_MAX_DUMP);
            for key in [keys::VM_ID] {
                if let Some(v) = report.metadata.get(key) {
                    smaller.metadata.insert(key.into(), v.clone());
                }
            }
            smaller
                .metadata
                .insert(keys::SIZE_CAPPED.into(), "yes".into());
            sender.send(&smaller).map_err(|e| (smaller, e.to_string()))
        }
        Err(e) => Err((report, e.to_string())),
    }
}

/// The spool first, then `report`; kept in the spool when the host cannot take it.
pub fn deliver(
    spool: &Spool,
    sender: &Sender,
    collected: &Collected,
    report: CrashReportData,
) -> Result<Delivery, SpoolError> {
    if !flush_spool(spool, sender) {
        return keep(spool, &report, "the host cannot be reached");
    }
    match send_new(sender, collected, report) {
        Ok(()) => Ok(Delivery::Sent),
        Err((report, why)) => keep(spool, &report, why),
    }
}
