//! Any byte string decodes to a message or a typed error, never a panic; a
//! decoded message (extensions included) re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_wire::{Message, encode_append_with};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(message) = Message::decode(bytes) {
        let mut again = Vec::new();
        encode_append_with(
            &message.header,
            &message.extensions,
            message.key,
            message.value,
            &mut again,
        )
        .expect("decoded sizes are within limits");
        assert_eq!(again, bytes);
    }
});
