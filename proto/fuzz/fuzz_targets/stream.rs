//! The process stream's frame reader and payload decoders must never panic on any bytes,
//! and every frame they accept must encode back to exactly the bytes it was read from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_proto::stream::{self, Kind};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(frame) = stream::read_frame(&mut rest) {
        let mut again = Vec::new();
        stream::write_frame(&mut again, frame.kind, &frame.payload).expect("write to a Vec");
        let consumed = data.len() - rest.len();
        assert!(data[..consumed].ends_with(&again));
        match frame.kind {
            Kind::Resize => {
                if let Ok(size) = stream::decode_resize(&frame) {
                    assert_eq!(stream::encode_resize(size).as_slice(), frame.payload);
                }
            }
            Kind::Signal => {
                if let Ok(signal) = stream::decode_signal(&frame) {
                    assert!((1..=64).contains(&signal));
                }
            }
            Kind::Exit => {
                if let Ok(status) = stream::decode_exit(&frame) {
                    let _ = status.shell_code();
                }
            }
            Kind::Started | Kind::StdinCredit => {
                let _ = stream::decode_u32(&frame);
            }
            _ => {}
        }
    }
});
