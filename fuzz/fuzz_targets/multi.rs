//! Any byte string decodes to a transaction's items, decision, answers,
//! or a transaction across shards' PREPARE, records and id, or to a typed
//! error, never a panic; what decodes re-encodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_wire::multi::{Decided, decode_answers, decode_items, encode_answers, encode_items};
use tern_wire::txn::{CommitRecord, Prepare, PrepareRecord, TxnId};

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
    if let Ok(prepare) = Prepare::decode(bytes) {
        assert_eq!(prepare.encode().expect("a decoded PREPARE encodes"), bytes);
        // Every lock is of a key of an item.
        for (_, key) in prepare.locks() {
            assert!(prepare.items.iter().any(|item| item.key == key));
        }
    }
    if let Ok(record) = PrepareRecord::decode(bytes) {
        assert_eq!(record.encode(), bytes);
        assert_eq!(record.encoded_len(), bytes.len());
    }
    if let Ok(record) = CommitRecord::decode(bytes) {
        assert_eq!(record.encode(), bytes);
    }
    if let Ok(id) = TxnId::decode(bytes) {
        assert_eq!(id.encode(), bytes);
    }
});
