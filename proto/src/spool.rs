//! Crash reports at rest, the same in the guest's spool and the host's: the file names
//! (`<exe>.YYYYMMDD.HHMMSS.<pid>.dmp|.meta`) and the `.meta` format: `key=value` lines whose
//! values are escaped (`\\`, `\n`, `\r`), ending with `done=1`, written last so a reader
//! knows the report is complete (ChromeOS crash_reporter's convention).

use crate::time::civil_from_days;

/// The last line of a complete `.meta`.
pub const DONE_LINE: &str = "done=1\n";

/// `YYYYMMDD.HHMMSS` (UTC) of a Unix time.
pub fn stamp(unix: i64) -> String {
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
pub fn safe_name(text: &str, fallback: &str) -> String {
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

/// A `.meta` value with `\`, newline and carriage return escaped, so it stays on its line.
pub fn escape_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// The inverse of [`escape_value`]; an unknown escape keeps its character.
pub fn unescape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// One `key=value\n` line, the value escaped.
pub fn meta_line(key: &str, value: &str) -> String {
    format!("{key}={}\n", escape_value(value))
}

/// The lines of a complete `.meta` (its last line `done=1`) as unescaped (key, value)
/// pairs, `done` left out; None for an incomplete one.
pub fn parse_meta(text: &str) -> Option<Vec<(String, String)>> {
    let body = text.strip_suffix(DONE_LINE)?;
    Some(
        body.lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_string(), unescape_value(v)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_formats_utc_including_leap_days() {
        assert_eq!(stamp(0), "19700101.000000");
        assert_eq!(stamp(1_795_000_000), "20261118.110640");
        assert_eq!(stamp(951_782_400), "20000229.000000");
        assert_eq!(stamp(-1), "19691231.235959");
    }

    #[test]
    fn safe_name_keeps_one_safe_component() {
        assert_eq!(safe_name("../../evil/app", "x"), "_.._evil_app");
        assert_eq!(safe_name("...", "unknown"), "unknown");
        assert_eq!(safe_name("a b\n", "x"), "a_b_");
        assert_eq!(safe_name(&"y".repeat(100), "x").len(), 64);
    }

    #[test]
    fn meta_lines_round_trip_any_value() {
        let hostile = "a\\nb\nc\r\nd=e\\";
        let text = format!(
            "{}{}{DONE_LINE}",
            meta_line("k", hostile),
            meta_line("e", "")
        );
        assert_eq!(text.lines().count(), 3);
        assert_eq!(
            parse_meta(&text),
            Some(vec![
                ("k".to_string(), hostile.to_string()),
                ("e".to_string(), String::new())
            ])
        );
        assert_eq!(parse_meta("k=v\n"), None);
    }
}
