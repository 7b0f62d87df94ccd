//! Syslog severities (0 emergency … 7 debug) and the proto's `LogSeverity`, which keeps 0 for
//! "missing": the one mapping both the guest (vm_syslog) and the host (the log forwarder) use.

use crate::protos::host::LogSeverity;

/// A syslog severity (the low 3 bits of PRI) as the proto's enum.
pub fn from_syslog(severity: u8) -> LogSeverity {
    match severity {
        0 => LogSeverity::EMERGENCY,
        1 => LogSeverity::ALERT,
        2 => LogSeverity::CRITICAL,
        3 => LogSeverity::ERROR,
        4 => LogSeverity::WARNING,
        5 => LogSeverity::NOTICE,
        6 => LogSeverity::INFO,
        _ => LogSeverity::DEBUG,
    }
}

/// The proto's enum as a syslog severity; a missing one counts as notice (RFC 5424's
/// default for a message that says nothing).
pub fn to_syslog(severity: LogSeverity) -> u8 {
    match severity {
        LogSeverity::EMERGENCY => 0,
        LogSeverity::ALERT => 1,
        LogSeverity::CRITICAL => 2,
        LogSeverity::ERROR => 3,
        LogSeverity::WARNING => 4,
        LogSeverity::NOTICE | LogSeverity::MISSING => 5,
        LogSeverity::INFO => 6,
        LogSeverity::DEBUG => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_round_trips_and_missing_is_notice() {
        for level in 0..=7u8 {
            assert_eq!(to_syslog(from_syslog(level)), level);
        }
        assert_eq!(from_syslog(200), LogSeverity::DEBUG);
        assert_eq!(to_syslog(LogSeverity::MISSING), 5);
    }
}
