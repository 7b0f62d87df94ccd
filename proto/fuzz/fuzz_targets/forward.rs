//! The forward request decoder must never panic on any bytes, and every request it accepts
//! must encode back to exactly those bytes; PENDING's decoder likewise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_proto::forward::{self, Request};
use vm_proto::stream::Frame;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = Request::decode(data) {
        assert_eq!(req.encode(), data);
    }
    let frame = Frame {
        kind: forward::PENDING,
        payload: data.to_vec(),
    };
    if let Ok((id, index)) = forward::decode_pending(&frame) {
        assert_eq!(forward::encode_pending(id, index).as_slice(), data);
    }
});
