//! Any byte string decodes to a transaction's items, decision or answers,
//! or to a typed error, never a panic; what decodes re-encodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_wire::multi::{Decided, decode_answers, decode_items, encode_answers, encode_items};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(items) = decode_items(bytes) {
        assert_eq!(encode_items(&items).expect("decoded items encode"), bytes);
    }
    if let Ok(decided) = Decided::decode(bytes) {
        assert_eq!(decided.encode(), bytes);
        let answers = encode_answers(&decided.answers);
        assert!(bytes.ends_with(&answers), "a decision ends with its answers");
    }
    if let Ok(answers) = decode_answers(bytes) {
        assert_eq!(encode_answers(&answers), bytes);
    }
});
