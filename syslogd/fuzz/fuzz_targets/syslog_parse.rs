//! A /dev/log datagram is whatever any guest process sends: parsing must never panic, and
//! the record must stay within its limits whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_syslog::record::{Timestamp, MAX_CONTENT};
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
    assert!(record.content.len() <= data.len());
    if let Some((pri, rest)) = syslog_format::parse_pri(data) {
        assert!(pri <= 191);
        assert!(rest.len() < data.len());
    }
});
