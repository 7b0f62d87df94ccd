//! What a crash server answers is untrusted: the HTTP answer parser, the crash-id
//! extraction and the upload URL parser never panic; an answer's body stays within the
//! limit, a crash id stays one short line of safe characters, and an accepted URL prints
//! back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/crash_upload/answer.rs"]
#[allow(dead_code)]
mod answer;
#[path = "../../src/crash_upload/http.rs"]
#[allow(dead_code)]
mod http;

fuzz_target!(|data: &[u8]| {
    for eof in [false, true] {
        match http::parse_response(data, eof) {
            Ok(http::Parsed::Done(response)) => {
                assert!(response.body.len() <= http::MAX_RESPONSE_BYTES);
                assert!((100..600).contains(&response.status));
                let _ = answer::classify(response.status, &response.body);
            }
            Ok(http::Parsed::Incomplete) => assert!(!eof, "incomplete at end of stream"),
            Err(_) => {}
        }
    }
    if let Some(id) = answer::crash_id(data) {
        assert!(!id.is_empty() && id.len() <= answer::MAX_CRASH_ID);
        assert!(id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)));
    }
    let line = answer::first_line(data);
    assert!(!line.chars().any(char::is_control));
    let text = String::from_utf8_lossy(data);
    if let Ok(url) = text.parse::<http::Url>() {
        let again: http::Url = url.to_string().parse().expect("printed URL parses");
        assert_eq!(again, url);
    }
});
