//! Civil time without a time zone database: the two timestamp forms syslog senders write
//! (RFC 3164 `Mmm dd hh:mm:ss`, RFC 3339 as in RFC 5424) to [`Timestamp`]s.
//!
//! The guest has no /etc/localtime, so its local time is UTC: an RFC 3164 timestamp is read
//! as UTC, and its missing year is the one that puts it nearest before `now`.

use crate::record::Timestamp;

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub use vm_proto::time::civil_from_days;

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn digits(text: &[u8]) -> Option<u32> {
    if text.is_empty() || text.len() > 9 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(text.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
}

/// `hh:mm:ss` → seconds into the day.
fn clock(text: &[u8]) -> Option<i64> {
    if text.len() != 8 || text[2] != b':' || text[5] != b':' {
        return None;
    }
    let (h, m, s) = (
        digits(&text[0..2])?,
        digits(&text[3..5])?,
        digits(&text[6..8])?,
    );
    // 60: a leap second, as RFC 3339 allows.
    (h < 24 && m < 60 && s <= 60).then(|| i64::from(h * 3600 + m * 60 + s))
}

/// An RFC 3164 timestamp at the start of `text`: `Mmm dd hh:mm:ss` (day padded with a space
/// or not). Returns the time and the rest after it.
pub fn parse_rfc3164(text: &[u8], now: Timestamp) -> Option<(Timestamp, &[u8])> {
    let month = MONTHS.iter().position(|m| text.get(..3) == Some(&m[..]))? as u32 + 1;
    let rest = text.get(3..)?.strip_prefix(b" ")?;
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
    let day_len = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    if !(1..=2).contains(&day_len) {
        return None;
    }
    let day = digits(&rest[..day_len])?;
    let rest = rest[day_len..].strip_prefix(b" ")?;
    let secs_of_day = clock(rest.get(..8)?)?;
    let rest = &rest[8..];

    // The year: now's, unless that puts the record more than a day in the future
    // (a December record read in January).
    let (now_year, _, _) = civil_from_days(now.secs.div_euclid(86_400));
    let at = |year: i64| -> Option<i64> {
        (day >= 1 && day <= days_in_month(year, month))
            .then(|| days_from_civil(year, month, day) * 86_400 + secs_of_day)
    };
    // Feb 29 of a year that is not a leap year: the last one that was.
    let secs = (0..8)
        .filter_map(|back| at(now_year - back))
        .find(|&s| s <= now.secs + 86_400)?;
    Some((Timestamp { secs, nanos: 0 }, rest))
}

/// An RFC 3339 timestamp at the start of `text`:
/// `YYYY-MM-DDThh:mm:ss[.fraction](Z|±hh:mm)`. Returns the time and the rest after it.
pub fn parse_rfc3339(text: &[u8]) -> Option<(Timestamp, &[u8])> {
    if text.len() < 20 || text[4] != b'-' || text[7] != b'-' || !matches!(text[10], b'T' | b't') {
        return None;
    }
    let year = i64::from(digits(&text[0..4])?);
    let month = digits(&text[5..7])?;
    let day = digits(&text[8..10])?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let secs_of_day = clock(&text[11..19])?;
    let mut rest = &text[19..];

    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix(b".") {
        let len = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        for (i, d) in frac[..len].iter().take(9).enumerate() {
            nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
        }
        rest = &frac[len..];
    }

    let offset = match rest.first()? {
        b'Z' | b'z' => {
            rest = &rest[1..];
            0
        }
        sign @ (b'+' | b'-') => {
            let zone = rest.get(1..6)?;
            if zone[2] != b':' {
                return None;
            }
            let (h, m) = (digits(&zone[0..2])?, digits(&zone[3..5])?);
            if h > 23 || m > 59 {
                return None;
            }
            rest = &rest[6..];
            let minutes = i64::from(h * 60 + m);
            if *sign == b'+' {
                minutes * 60
            } else {
                -minutes * 60
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + secs_of_day - offset;
    Some((Timestamp { secs, nanos }, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-26T23:20:56Z
    const NOW: Timestamp = Timestamp {
        secs: 1_795_735_256,
        nanos: 0,
    };

    #[test]
    fn civil_round_trips_across_eras() {
        for days in [-800_000, -1, 0, 1, 11_016, 20_000, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(NOW.secs / 86_400), (2026, 11, 26));
    }

    #[test]
    fn parse_rfc3164_glibc_form_is_this_year() {
        let (t, rest) = parse_rfc3164(b"Nov 26 23:20:56 tag: x", NOW).unwrap();
        assert_eq!(t, NOW);
        assert_eq!(rest, b" tag: x");
    }

    #[test]
    fn parse_rfc3164_space_padded_day_parses() {
        let (t, _) = parse_rfc3164(b"Nov  1 00:00:00", NOW).unwrap();
        assert_eq!(t.secs, days_from_civil(2026, 11, 1) * 86_400);
        let (t2, _) = parse_rfc3164(b"Nov 1 00:00:00", NOW).unwrap();
        assert_eq!(t, t2);
    }

    #[test]
    fn parse_rfc3164_december_in_january_is_last_year() {
        let jan = Timestamp {
            secs: days_from_civil(2027, 1, 1) * 86_400 + 60,
            nanos: 0,
        };
        let (t, _) = parse_rfc3164(b"Dec 31 23:59:59", jan).unwrap();
        assert_eq!(t.secs, days_from_civil(2026, 12, 31) * 86_400 + 86_399);
    }

    #[test]
    fn parse_rfc3164_feb_29_uses_a_leap_year() {
        let (t, _) = parse_rfc3164(b"Feb 29 12:00:00", NOW).unwrap();
        assert_eq!(civil_from_days(t.secs / 86_400), (2024, 2, 29));
    }

    #[test]
    fn parse_rfc3164_garbage_is_none() {
        for bad in [
            &b"Foo 26 23:20:56"[..],
            b"Nov 26 23:20",
            b"Nov 26 24:00:00",
            b"Nov 32 10:00:00",
            b"Nov 123 10:00:00",
            b"Nov",
            b"",
        ] {
            assert!(parse_rfc3164(bad, NOW).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn parse_rfc3339_offsets_and_fractions() {
        let (t, rest) = parse_rfc3339(b"2026-11-26T23:20:56.792737+00:00 host").unwrap();
        assert_eq!((t.secs, t.nanos), (NOW.secs, 792_737_000));
        assert_eq!(rest, b" host");
        let (t, _) = parse_rfc3339(b"2026-11-27T01:20:56+02:00").unwrap();
        assert_eq!(t.secs, NOW.secs);
        let (t, _) = parse_rfc3339(b"2026-11-26T23:20:56.1234567890123Z").unwrap();
        assert_eq!(t.nanos, 123_456_789);
    }

    #[test]
    fn parse_rfc3339_garbage_is_none() {
        for bad in [
            &b"2026-11-26 23:20:56Z"[..],
            b"2026-13-01T00:00:00Z",
            b"2026-02-30T00:00:00Z",
            b"2026-11-26T23:20:56",
            b"2026-11-26T23:20:56.Z",
            b"2026-11-26T23:20:56+0200",
            b"-",
        ] {
            assert!(parse_rfc3339(bad).is_none(), "{bad:?}");
        }
    }
}
