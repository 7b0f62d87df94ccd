//! What a crash server's answer means for the report: uploaded (with the crash id the
//! server gave, if any), refused for good, or worth another try later.
//!
//! Crash ids as the servers write them: Socorro/Antenna `CrashID=bp-<uuid>`; Breakpad's
//! and Crashpad's own servers the bare id; Sentry, Backtrace and BugSplat a JSON object
//! (`"id"`, `"_rxid"`, `"crash_id"`, `"event_id"`).

/// The most of a crash id kept in the `.meta`.
pub const MAX_CRASH_ID: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Uploaded {
        crash_id: Option<String>,
    },
    /// A 4xx (but 408 and 429) or another answer that will not change: not retried.
    Refused {
        status: u16,
        why: String,
    },
    /// A 5xx, 408 or 429: tried again later.
    Retry {
        status: u16,
        why: String,
    },
}

/// The report's fate from the status and body of the answer.
pub fn classify(status: u16, body: &[u8]) -> Outcome {
    match status {
        200..=299 => Outcome::Uploaded {
            crash_id: crash_id(body),
        },
        408 | 429 | 500..=599 => Outcome::Retry {
            status,
            why: first_line(body),
        },
        _ => Outcome::Refused {
            status,
            why: first_line(body),
        },
    }
}

/// The first non-empty line of a body, printable and short: for one log line.
pub fn first_line(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    line.unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(160)
        .collect()
}

/// The crash id in a server's answer, if it gave one.
pub fn crash_id(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let text = text.trim();
    let raw = if text.starts_with('{') {
        ["id", "crash_id", "event_id", "_rxid", "crashid"]
            .iter()
            .find_map(|key| json_string(text, key))?
    } else if let Some(line) = text.lines().find_map(|l| l.trim().strip_prefix("CrashID=")) {
        line.to_string()
    } else {
        text.lines().next()?.trim().to_string()
    };
    let id: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.:".contains(*c))
        .take(MAX_CRASH_ID)
        .collect();
    (!id.is_empty()).then_some(id)
}

/// The string value of `"key"` anywhere in a JSON text (a flat scan: good enough for the
/// one-level objects crash servers answer with); escapes other than `\"` and `\\` kept.
fn json_string(text: &str, key: &str) -> Option<String> {
    let quoted = format!("\"{key}\"");
    let mut from = 0;
    while let Some(at) = text[from..].find(&quoted) {
        let after = &text[from + at + quoted.len()..];
        from += at + quoted.len();
        let Some(value) = after.trim_start().strip_prefix(':') else {
            continue;
        };
        let Some(value) = value.trim_start().strip_prefix('"') else {
            continue;
        };
        let mut out = String::new();
        let mut chars = value.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(out),
                '\\' => out.extend(chars.next()),
                c => out.push(c),
            }
        }
        return None;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_id_from_each_server_style() {
        let id = |b: &str| crash_id(b.as_bytes());
        assert_eq!(
            id("CrashID=bp-2f1e6b3c-5d1a-4a4e-9d6f-0a1b2c260101\n").as_deref(),
            Some("bp-2f1e6b3c-5d1a-4a4e-9d6f-0a1b2c260101")
        );
        assert_eq!(
            id("3a9f00c2b1d4e5f6\n").as_deref(),
            Some("3a9f00c2b1d4e5f6")
        );
        assert_eq!(
            id(r#"{"id": "fc6d8c0c43fc4630ad850ee518f1b9d0"}"#).as_deref(),
            Some("fc6d8c0c43fc4630ad850ee518f1b9d0")
        );
        assert_eq!(
            id(r#"{"response":"ok","_rxid":"0a000000-11"}"#).as_deref(),
            Some("0a000000-11")
        );
        assert_eq!(id(""), None);
        assert_eq!(id("{\"status\": \"ok\"}"), None);
        // Nothing a server sends can break the .meta line or grow it without bound.
        assert_eq!(id("a b\r\nc").as_deref(), Some("ab"));
        assert_eq!(id(&"x".repeat(1000)).map(|s| s.len()), Some(MAX_CRASH_ID));
    }

    #[test]
    fn classify_retries_5xx_408_429_and_refuses_other_errors() {
        assert_eq!(
            classify(200, b"CrashID=bp-1"),
            Outcome::Uploaded {
                crash_id: Some("bp-1".into())
            }
        );
        assert!(matches!(
            classify(503, b""),
            Outcome::Retry { status: 503, .. }
        ));
        assert!(matches!(classify(429, b""), Outcome::Retry { .. }));
        assert_eq!(
            classify(400, b"\n  missing upload_file_minidump\nmore"),
            Outcome::Refused {
                status: 400,
                why: "missing upload_file_minidump".into()
            }
        );
        assert!(matches!(classify(301, b""), Outcome::Refused { .. }));
    }
}
