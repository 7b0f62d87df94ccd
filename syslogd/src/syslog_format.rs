//! Parses one /dev/log datagram, in every form real senders write:
//!
//! | sender | form |
//! | --- | --- |
//! | glibc `syslog()` | `<28>Nov 26 23:20:56 mytag[21955]: hello` (no hostname, no year) |
//! | glibc, empty ident | `<14>Nov 26 23:20:56 : msg` |
//! | `logger`, busybox `logger` | `<13>Nov 26 23:20:56 root: msg` |
//! | `logger --rfc3164` | `<13>Nov 26 23:20:56 host tag: msg` |
//! | `logger --rfc5424` | `<13>1 2026-11-26T23:20:56.79+00:00 host tag - - [timeQuality …] msg` |
//! | anything else | `msg` (no PRI: user.notice, received now) |
//!
//! Parsing never fails: whatever does not fit a form becomes content. The content keeps
//! embedded newlines and invalid UTF-8 as they came (the host escapes them); trailing
//! newlines and NULs, which some senders append, are dropped. The pid here is only what the
//! sender claimed in `TAG[PID]`; the socket's SCM_CREDENTIALS pid overrides it.

use crate::record::{Record, Timestamp, DEFAULT_PRI, MAX_PRI};
use crate::time;

/// Longest TAG recognised as one; longer words are content.
const MAX_TAG: usize = 128;
/// Longest RFC 3164 HOSTNAME recognised as one.
const MAX_HOSTNAME: usize = 255;
/// The RFC 5424 SD-ID logger adds about its own clock: metadata, not message.
const TIME_QUALITY: &[u8] = b"timeQuality";
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// `<PRI>` at the start of `data`: 1–3 digits, at most 191.
pub fn parse_pri(data: &[u8]) -> Option<(u8, &[u8])> {
    let rest = data.strip_prefix(b"<")?;
    let len = rest
        .iter()
        .take(4)
        .take_while(|c| c.is_ascii_digit())
        .count();
    if !(1..=3).contains(&len) || rest.get(len) != Some(&b'>') {
        return None;
    }
    let pri = rest[..len]
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    (pri <= u16::from(MAX_PRI)).then(|| (pri as u8, &rest[len + 1..]))
}

/// Parses one datagram received at `now`.
pub fn parse(datagram: &[u8], now: Timestamp) -> Record {
    let end = datagram
        .iter()
        .rposition(|&c| !matches!(c, b'\n' | b'\r' | 0))
        .map_or(0, |i| i + 1);
    let data = &datagram[..end];
    let (pri, rest) = parse_pri(data).unwrap_or((DEFAULT_PRI, data));
    let mut record = Record::new(pri, now);
    if let Some(parsed) = parse_rfc5424(rest) {
        if let Some(t) = parsed.timestamp {
            record.timestamp = t;
        }
        record.set_app_name(parsed.app_name);
        record.pid = parsed.pid.unwrap_or(0);
        record.set_content(&parsed.content);
        return record;
    }

    // RFC 3164 / glibc: an optional timestamp, then [HOSTNAME SP] TAG[PID]: MSG.
    let stamped = time::parse_rfc3164(rest, now).or_else(|| time::parse_rfc3339(rest));
    let (rest, hostname_allowed) = match stamped {
        Some((t, after)) => match after.strip_prefix(b" ") {
            Some(after) => {
                record.timestamp = t;
                (after, true)
            }
            None if after.is_empty() => {
                record.timestamp = t;
                (after, false)
            }
            None => (rest, false),
        },
        None => (rest, false),
    };
    let (tag, msg) = split_tag(rest, hostname_allowed);
    if let Some(tag) = tag {
        record.set_app_name(tag.name);
        record.pid = tag.pid.unwrap_or(0);
    }
    record.set_content(msg);
    record
}

struct Tag<'a> {
    name: &'a [u8],
    pid: Option<u32>,
}

fn parse_pid(text: &[u8]) -> Option<u32> {
    if text.is_empty() || text.len() > 10 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// `NAME:` or `NAME[PID]:` (NAME may be empty: glibc with an empty ident).
fn as_tag(word: &[u8]) -> Option<Tag<'_>> {
    let body = word.strip_suffix(b":")?;
    let (name, pid) = match body.strip_suffix(b"]") {
        Some(open) => {
            let at = open.iter().rposition(|&c| c == b'[')?;
            (&open[..at], parse_pid(&open[at + 1..]))
        }
        None => (body, None),
    };
    let plain = name
        .iter()
        .all(|&c| c > b' ' && c != 0x7f && !matches!(c, b':' | b'[' | b']' | b'<' | b'>'));
    (plain && name.len() <= MAX_TAG).then_some(Tag { name, pid })
}

fn is_hostname(word: &[u8]) -> bool {
    !word.is_empty()
        && word.len() <= MAX_HOSTNAME
        && word
            .iter()
            .all(|&c| c.is_ascii_graphic() && !matches!(c, b':' | b'[' | b']' | b'/'))
}

/// Splits `[HOSTNAME SP] TAG: MSG`. Without a recognisable tag all of `text` is the message.
fn split_tag(text: &[u8], hostname_allowed: bool) -> (Option<Tag<'_>>, &[u8]) {
    let word_end = |t: &[u8]| t.iter().position(|&c| c == b' ').unwrap_or(t.len());
    let after = |t: &'_ [u8], at: usize| -> usize { (at + 1).min(t.len()) };

    let first = word_end(text);
    if let Some(tag) = as_tag(&text[..first]) {
        return (Some(tag), &text[after(text, first)..]);
    }
    if hostname_allowed && is_hostname(&text[..first]) && first < text.len() {
        let rest = &text[first + 1..];
        let second = word_end(rest);
        if let Some(tag) = as_tag(&rest[..second]) {
            return (Some(tag), &rest[after(rest, second)..]);
        }
    }
    (None, text)
}

struct Rfc5424<'a> {
    timestamp: Option<Timestamp>,
    app_name: &'a [u8],
    pid: Option<u32>,
    content: Vec<u8>,
}

/// One header field: 1–`max` printable ASCII characters, or `-` (None).
fn header_field(text: &[u8], max: usize) -> Option<(Option<&[u8]>, &[u8])> {
    let len = text.iter().position(|&c| c == b' ').unwrap_or(text.len());
    let (field, rest) = text.split_at(len);
    if field.is_empty() || field.len() > max || !field.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    let rest = rest.strip_prefix(b" ")?;
    Some(((field != b"-").then_some(field), rest))
}

/// The length of one `[SD-ID PARAM="value"…]` element at the start of `text`.
fn sd_element_len(text: &[u8]) -> Option<usize> {
    if text.first() != Some(&b'[') {
        return None;
    }
    let mut in_value = false;
    let mut i = 1;
    while i < text.len() {
        match (text[i], in_value) {
            (b'\\', true) => i += 1,
            (b'"', _) => in_value = !in_value,
            (b']', false) => return Some(i + 1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// `1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [MSG]` after the PRI.
fn parse_rfc5424(text: &[u8]) -> Option<Rfc5424<'_>> {
    let rest = text.strip_prefix(b"1 ")?;
    let (timestamp, rest) = match rest.strip_prefix(b"- ") {
        Some(rest) => (None, rest),
        None => {
            let (t, rest) = time::parse_rfc3339(rest)?;
            (Some(t), rest.strip_prefix(b" ")?)
        }
    };
    let (_hostname, rest) = header_field(rest, 255)?;
    let (app_name, rest) = header_field(rest, 48)?;
    let (procid, rest) = header_field(rest, 128)?;
    let (_msgid, rest) = header_field(rest, 32)?;

    // Structured data: `-`, or elements; all but logger's timeQuality stay in the content.
    let mut kept: Vec<u8> = Vec::new();
    let rest = match rest.strip_prefix(b"-") {
        Some(rest) => rest,
        None => {
            let mut rest = rest;
            let mut any = false;
            while let Some(len) = sd_element_len(rest) {
                let element = &rest[..len];
                if !element[1..].starts_with(TIME_QUALITY) {
                    kept.extend_from_slice(element);
                }
                rest = &rest[len..];
                any = true;
            }
            if !any {
                return None;
            }
            rest
        }
    };
    let msg = match rest {
        [] => &[][..],
        [b' ', msg @ ..] => msg.strip_prefix(BOM).unwrap_or(msg),
        _ => return None,
    };
    if !kept.is_empty() && !msg.is_empty() {
        kept.push(b' ');
    }
    kept.extend_from_slice(msg);
    Some(Rfc5424 {
        timestamp,
        app_name: app_name.unwrap_or_default(),
        pid: procid.and_then(parse_pid),
        content: kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::MAX_CONTENT;

    /// 2026-11-27T01:30:40Z, when the samples below were captured.
    const NOW: Timestamp = Timestamp {
        secs: 1_795_743_040,
        nanos: 5,
    };

    fn parsed(data: &[u8]) -> Record {
        parse(data, NOW)
    }

    fn check(r: &Record, sev: u8, fac: u8, app: &str, pid: u32, content: &[u8]) {
        assert_eq!(
            (r.severity, r.facility, r.app_name.as_str(), r.pid),
            (sev, fac, app, pid),
            "{r:?}"
        );
        assert_eq!(
            String::from_utf8_lossy(&r.content),
            String::from_utf8_lossy(content)
        );
    }

    // Captured from glibc 2.36 syslog() (python3's syslog module) on Debian 12.
    #[test]
    fn parse_glibc_with_pid_gives_tag_pid_and_time() {
        let r = parsed(b"<28>Nov 27 01:30:46 mytag[25430]: glibc hello");
        check(&r, 4, 3, "mytag", 25430, b"glibc hello");
        assert_eq!(r.timestamp.secs, NOW.secs + 6);
        assert_eq!(r.timestamp.nanos, 0);
        assert!(!r.truncated);
    }

    #[test]
    fn parse_glibc_embedded_newline_is_kept() {
        let r = parsed(b"<30>Nov 27 01:30:46 mytag[25430]: multi\nline");
        check(&r, 6, 3, "mytag", 25430, b"multi\nline");
    }

    #[test]
    fn parse_glibc_empty_ident_has_no_app() {
        let r = parsed(b"<14>Nov 27 01:30:46 : empty ident");
        check(&r, 6, 1, "", 0, b"empty ident");
        let r = parsed(b"<14>Nov 26 23:20:56 : msg");
        check(&r, 6, 1, "", 0, b"msg");
    }

    #[test]
    fn parse_glibc_invalid_utf8_and_local7_debug_kept_raw() {
        let r = parsed(b"<191>Nov 27 01:30:46 x: b\xc3\xa9ad \xff");
        check(&r, 7, 23, "x", 0, b"b\xc3\xa9ad \xff");
        let r = parsed(b"<13>Nov 27 01:30:46 x: \xff\xfe raw");
        assert_eq!(r.content, b"\xff\xfe raw");
    }

    // Captured from util-linux 2.38.1 `logger -u SOCKET`.
    #[test]
    fn parse_logger_default_takes_user_as_tag() {
        let r = parsed(b"<13>Nov 27 01:30:40 root: default format");
        check(&r, 5, 1, "root", 0, b"default format");
        assert_eq!(r.timestamp.secs, NOW.secs);
        let r = parsed(b"<13>Nov 27 01:30:40 mytag[25324]: with pid");
        check(&r, 5, 1, "mytag", 25324, b"with pid");
    }

    #[test]
    fn parse_logger_rfc3164_skips_the_hostname() {
        let r = parsed(b"<13>Nov 27 01:30:40 vm mytag: rfc3164 form");
        check(&r, 5, 1, "mytag", 0, b"rfc3164 form");
    }

    #[test]
    fn parse_logger_rfc5424_takes_fields_and_drops_time_quality() {
        let r = parsed(
            b"<11>1 2026-11-27T01:30:40.918779+00:00 vm mytag - - \
              [timeQuality tzKnown=\"1\" isSynced=\"0\"] rfc5424 form",
        );
        check(&r, 3, 1, "mytag", 0, b"rfc5424 form");
        assert_eq!(
            (r.timestamp.secs, r.timestamp.nanos),
            (NOW.secs, 918_779_000)
        );
    }

    #[test]
    fn parse_logger_rfc5424_nil_time_is_now() {
        let r = parsed(b"<13>1 - vm mytag - - - rfc5424 notq");
        check(&r, 5, 1, "mytag", 0, b"rfc5424 notq");
        assert_eq!(r.timestamp, NOW);
    }

    #[test]
    fn parse_logger_rfc5424_other_sd_stays_in_content() {
        let r = parsed(
            b"<13>1 2026-11-27T01:30:40.928698+00:00 vm sd 77 - \
              [timeQuality tzKnown=\"1\" isSynced=\"0\"][zoo@123 tiger=\"hun\\\"]gry\"] with sd",
        );
        check(
            &r,
            5,
            1,
            "sd",
            77,
            b"[zoo@123 tiger=\"hun\\\"]gry\"] with sd",
        );
    }

    #[test]
    fn parse_rfc5424_bom_and_empty_message() {
        let r = parsed(b"<14>1 2026-11-27T01:30:40Z h app 9 ID - \xEF\xBB\xBFutf8 msg");
        check(&r, 6, 1, "app", 9, b"utf8 msg");
        let r = parsed(b"<14>1 2026-11-27T01:30:40Z h app 9 ID -");
        check(&r, 6, 1, "app", 9, b"");
    }

    #[test]
    fn parse_rfc5424_malformed_falls_back_to_content() {
        let r = parsed(b"<14>1 not-a-time h app - - - msg");
        check(&r, 6, 1, "", 0, b"1 not-a-time h app - - - msg");
    }

    // Captured from busybox 1.35 `logger` (static, glibc syslog()).
    #[test]
    fn parse_busybox_logger_priority_and_tag() {
        let r = parsed(b"<11>Nov 27 01:30:51 root: bb err");
        check(&r, 3, 1, "root", 0, b"bb err");
    }

    // The original vm_tools' sample forms.
    #[test]
    fn parse_vm_tools_samples() {
        let r = parsed(b"<13>Jan  1 00:00:00 tag: msg");
        check(&r, 5, 1, "tag", 0, b"msg");
        let (y, m, d) = time::civil_from_days(r.timestamp.secs.div_euclid(86_400));
        assert_eq!((y, m, d), (2026, 1, 1));
        let r = parsed(b"<15>Jan  1 00:00:00 tag[1234]: msg with [brackets]: and colons");
        check(&r, 7, 1, "tag", 1234, b"msg with [brackets]: and colons");
    }

    #[test]
    fn parse_without_pri_is_user_notice_now() {
        let r = parsed(b"just text");
        check(&r, 5, 1, "", 0, b"just text");
        assert_eq!(r.timestamp, NOW);
        let r = parsed(b"app: no pri but a tag\n\0");
        check(&r, 5, 1, "app", 0, b"no pri but a tag");
    }

    #[test]
    fn parse_bad_pri_is_content() {
        for data in [&b"<192>x: y"[..], b"<1234>x", b"<>x", b"<a>x", b"<13"] {
            let r = parsed(data);
            assert_eq!((r.facility, r.severity), (1, 5), "{data:?}");
            assert_eq!(r.content, data, "{data:?}");
        }
    }

    #[test]
    fn parse_pri_only_and_empty_are_empty_records() {
        check(&parsed(b"<0>"), 0, 0, "", 0, b"");
        check(&parsed(b""), 5, 1, "", 0, b"");
    }

    #[test]
    fn parse_no_timestamp_after_pri_still_finds_tag() {
        let r = parsed(b"<12>daemon[7]: started");
        check(&r, 4, 1, "daemon", 7, b"started");
        assert_eq!(r.timestamp, NOW);
    }

    #[test]
    fn parse_untagged_words_stay_in_content() {
        let r = parsed(b"<13>Nov 27 01:30:40 hello world");
        check(&r, 5, 1, "", 0, b"hello world");
        let r = parsed(b"<13>Nov 27 01:30:40 ");
        check(&r, 5, 1, "", 0, b"");
    }

    #[test]
    fn parse_rfc3339_after_pri_is_accepted() {
        let r = parsed(b"<13>2026-11-27T01:30:40.5Z host app[3]: iso");
        check(&r, 5, 1, "app", 3, b"iso");
        assert_eq!(r.timestamp.nanos, 500_000_000);
    }

    #[test]
    fn parse_8_kib_message_is_whole_and_larger_is_truncated() {
        let body = vec![b'x'; MAX_CONTENT];
        let mut data = b"<13>Nov 27 01:30:40 big: ".to_vec();
        data.extend_from_slice(&body);
        let r = parsed(&data);
        assert_eq!(r.content.len(), MAX_CONTENT);
        assert!(!r.truncated);
        data.push(b'y');
        let r = parsed(&data);
        assert_eq!(r.content, body);
        assert!(r.truncated);
    }

    #[test]
    fn parse_token_never_survives_in_app_or_content() {
        let r = parsed(b"<13>maitred.token=abc[1]: cmdline maitred.token=0123 quiet");
        assert_eq!(r.app_name, "maitred.token=<redacted>");
        assert_eq!(r.content, b"cmdline maitred.token=<redacted> quiet");
    }

    #[test]
    fn parse_tag_with_odd_pid_keeps_name() {
        let r = parsed(b"<13>Nov 27 01:30:40 app[main]: x");
        check(&r, 5, 1, "app", 0, b"x");
    }
}
