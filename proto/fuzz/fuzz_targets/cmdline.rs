//! The guest kernel command line parser must never panic, and what it accepts must be valid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_proto::cmdline::{self, GuestParams};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = cmdline::words(&text);
    if let Ok(params) = GuestParams::from_cmdline(&text) {
        assert!(cmdline::validate_vm_id(&params.vm_id).is_ok());
        assert_eq!(GuestParams::from_cmdline(&params.to_cmdline()), Ok(params));
    }
});
