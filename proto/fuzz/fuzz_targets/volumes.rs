//! The `maitred.volumes` value maitred reads from the kernel command line: parsing never
//! panics, everything accepted passes the guest path rules, and it encodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_proto::volumes;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(parsed) = volumes::parse(&text) {
        for volume in &parsed {
            assert!(volumes::check_guest_path(&volume.path).is_ok());
        }
        let again = volumes::encode(&parsed).expect("an accepted list encodes");
        assert_eq!(volumes::parse(&again).expect("encoded list parses"), parsed);
    }
});
