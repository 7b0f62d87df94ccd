//! UTC calendar arithmetic and crash-spool naming shared by host and guest: log timestamps
//! (RFC 5424) and spool file names (`<exe>.YYYYMMDD.HHMMSS.<pid>`), without a time-zone
//! database.

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `YYYYMMDD.HHMMSS` (UTC) of a Unix time: how crash spools name reports.
pub fn spool_stamp(unix: i64) -> String {
    let (year, month, day) = civil_from_days(unix.div_euclid(86_400));
    let secs = unix.rem_euclid(86_400);
    format!(
        "{year:04}{month:02}{day:02}.{:02}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A guest-chosen string made safe as one file-name component: at most 64 characters of
/// `A-Z a-z 0-9 . _ -` (others become `_`), no leading dot; `fallback` if nothing is left.
pub fn spool_name_part(text: &str, fallback: &str) -> String {
    let cleaned: String = text
        .chars()
        .take(64)
        .map(|c| match c.is_ascii_alphanumeric() || "._-".contains(c) {
            true => c,
            false => '_',
        })
        .collect();
    match cleaned.trim_start_matches('.') {
        "" => fallback.to_string(),
        rest => rest.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_stamp_formats_utc_including_leap_days() {
        assert_eq!(spool_stamp(0), "19700101.000000");
        assert_eq!(spool_stamp(1_795_000_000), "20261118.110640");
        assert_eq!(spool_stamp(951_782_400), "20000229.000000");
        assert_eq!(spool_stamp(-1), "19691231.235959");
    }

    #[test]
    fn spool_name_part_keeps_one_safe_component() {
        assert_eq!(spool_name_part("../../evil/app", "x"), "_.._evil_app");
        assert_eq!(spool_name_part("...", "unknown"), "unknown");
        assert_eq!(spool_name_part("a b\n", "x"), "a_b_");
        assert_eq!(spool_name_part(&"y".repeat(100), "x").len(), 64);
    }

    #[test]
    fn civil_from_days_round_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
    }
}
