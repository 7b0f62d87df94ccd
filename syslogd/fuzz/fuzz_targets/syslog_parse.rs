//! A /dev/log datagram is whatever any guest process sends: parsing must never panic, and
//! the record must stay within its limits whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_syslog::record::{Timestamp, MAX_CONTENT, TOKEN_KEY};

const REDACTED: &[u8] = b"<redacted>";
use vm_syslog::syslog_format;

fuzz_target!(|data: &[u8]| {
    let now = Timestamp {
        secs: 1_795_743_040,
        nanos: 0,
    };
    let record = syslog_format::parse(data, now);
    assert!(record.severity <= 7 && record.facility <= 23);
    assert!(record.content.len() <= MAX_CONTENT);
    if record.truncated {
        assert_eq!(record.content.len(), MAX_CONTENT);
    }
    if data.len() <= MAX_CONTENT {
        assert!(!record.truncated);
    }
    // The VM's access token never leaves the guest, whole or cut.
    for (field, text) in [
        ("content", &record.content[..]),
        ("app", record.app_name.as_bytes()),
    ] {
        let mut rest = text;
        while let Some(at) = rest.windows(TOKEN_KEY.len()).position(|w| w == TOKEN_KEY) {
            let value = &rest[at + TOKEN_KEY.len()..];
            let shown = &value[..value.len().min(REDACTED.len())];
            assert!(
                REDACTED.starts_with(shown),
                "{field} shows a token: {value:?}"
            );
            rest = value;
        }
    }
    if let Some((pri, rest)) = syslog_format::parse_pri(data) {
        assert!(pri <= 191);
        assert!(rest.len() < data.len());
    }
});
