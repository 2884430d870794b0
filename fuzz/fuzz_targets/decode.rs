//! Any byte string decodes to a message or a typed error, never a panic; a
//! decoded message re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_wire::{Message, encode};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(message) = Message::decode(bytes) {
        let again = encode(&message.header, message.key, message.value).expect("decoded sizes are within limits");
        assert_eq!(again, bytes);
    }
});
