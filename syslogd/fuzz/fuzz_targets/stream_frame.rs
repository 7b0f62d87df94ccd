//! The stream socket's bytes come from any guest process: framing must never panic, never
//! keep more than its limit per message, and lose no byte of a short newline-framed stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_syslog::stream_frame::Framer;

const MAX: usize = 64;

fuzz_target!(|data: &[u8]| {
    // Fed whole, and fed in two pieces at every split the first byte picks: same frames.
    let mut whole = Framer::new(MAX);
    let mut a = Vec::new();
    whole.push(data, &mut a);
    whole.end(&mut a);
    let cut = data.first().map_or(0, |&b| usize::from(b) % (data.len() + 1));
    let mut split = Framer::new(MAX);
    let mut b = Vec::new();
    split.push(&data[..cut], &mut b);
    split.push(&data[cut..], &mut b);
    split.end(&mut b);
    assert_eq!(a, b);
    for frame in &a {
        assert!(frame.message.len() <= MAX);
    }
});
