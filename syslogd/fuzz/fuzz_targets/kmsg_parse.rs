//! A /dev/kmsg record carries text any guest process may have written to /dev/kmsg:
//! splitting and parsing must never panic, and what they return must be consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_syslog::kmsg_format::{parse_record, split_records, unescape, DICT_MAX, DICT_VALUE_MAX};
use vm_syslog::record::{Timestamp, MAX_CONTENT};

fuzz_target!(|data: &[u8]| {
    let (records, used) = split_records(data);
    assert!(used <= data.len());
    assert!(used == 0 || data[used - 1] == b'\n');
    for raw in records {
        assert!(raw.ends_with(b"\n") && !raw.starts_with(b" "));
        if let Ok(entry) = parse_record(raw) {
            assert!(entry.text.len() <= raw.len());
            // The device dictionary: bounded, and every key a valid RFC 5424 SD-NAME.
            assert!(entry.dict.len() <= DICT_MAX);
            for (key, value) in &entry.dict {
                assert!(!key.is_empty() && key.len() <= 32);
                assert!(key
                    .bytes()
                    .all(|c| c.is_ascii_graphic() && !b"= ]\"".contains(&c)));
                // Lossy UTF-8 may grow a value: at most 3 bytes per input byte.
                assert!(value.len() <= DICT_VALUE_MAX * 3 + "<redacted>".len());
            }
            for boot in [
                Timestamp::default(),
                Timestamp {
                    secs: i64::MAX,
                    nanos: 999_999_999,
                },
            ] {
                let record = entry.to_record(boot);
                assert!(record.severity <= 7 && record.facility <= 23);
                assert!(record.content.len() <= MAX_CONTENT);
                assert!(record.timestamp.nanos < 1_000_000_000);
            }
        }
    }
    assert!(unescape(data).len() <= data.len());
});
