//! Address and token parsing must never panic; an accepted address must print back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_proto::{Address, Token};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(addr) = text.parse::<Address>() {
        let again: Address = addr.to_string().parse().expect("printed address parses");
        assert_eq!(again, addr);
    }
    if let Ok(token) = Token::parse(&text) {
        assert_eq!(token.to_hex(), text);
    }
});
