//! The wire layout: generated C header, field table, and encode/decode.

use proptest::prelude::*;
use tern_wire::*;

#[test]
fn committed_c_header_matches_rust_definitions() {
    let committed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(c_header::COMMITTED_PATH),
    )
    .expect("the generated header is committed");
    assert!(
        committed == c_header::generate(),
        "include/tern_wire.h is stale: run `cargo run -p tern-wire --bin tern-wire-gen-header`"
    );
}

#[test]
fn header_fields_tile_the_header_without_gaps() {
    let mut next = 0;
    for field in Header::FIELDS {
        assert_eq!(
            field.offset, next,
            "field {} leaves a gap or overlaps",
            field.name
        );
        assert_eq!(
            field.offset % field.size,
            0,
            "field {} is not naturally aligned",
            field.name
        );
        next += field.size;
    }
    assert_eq!(next, HEADER_LEN);
}

#[test]
fn every_shared_struct_is_tiled_by_its_fields() {
    for shared in c_header::STRUCTS {
        let mut next = 0;
        for field in shared.fields {
            assert_eq!(
                field.offset, next,
                "{}.{} leaves a gap or overlaps",
                shared.name, field.name
            );
            next += field.size;
        }
        assert_eq!(next, shared.size, "{} has trailing padding", shared.name);
    }
}

#[test]
fn c_header_compiles_and_its_static_asserts_hold() {
    // The C compiler checks sizeof and every offsetof in the generated file.
    let dir = tempfile_dir();
    let source = dir.join("check.c");
    std::fs::write(
        &source,
        format!("{}\nint main(void) {{ return 0; }}\n", c_header::generate()),
    )
    .unwrap();
    let status = std::process::Command::new("cc")
        .args(["-fsyntax-only", "-std=c11"])
        .arg(&source)
        .status()
        .expect("a C compiler (cc) is installed");
    assert!(status.success());
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-wire-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn decode_rejects_each_kind_of_bad_datagram() {
    let key = b"user:1";
    let mut header = Header::new(Op::Put, 0, 1);
    header.key_hash.set(key_hash(key));
    let good = encode(&header, key, b"v").unwrap();
    assert!(Message::decode(&good).is_ok());

    assert_eq!(
        Message::decode(&good[..10]),
        Err(DecodeError::Truncated { len: 10 })
    );
    let mut bad = good.clone();
    bad[0] = 0;
    assert!(matches!(
        Message::decode(&bad),
        Err(DecodeError::BadMagic { .. })
    ));
    let mut bad = good.clone();
    bad[2] = 9;
    assert_eq!(
        Message::decode(&bad),
        Err(DecodeError::UnsupportedVersion { found: 9 })
    );
    let mut bad = good.clone();
    bad[3] = 200;
    assert_eq!(Message::decode(&bad), Err(DecodeError::UnknownOp(200)));
    let mut bad = good.clone();
    bad.push(0);
    assert!(matches!(
        Message::decode(&bad),
        Err(DecodeError::LengthMismatch { .. })
    ));
    let mut bad = good.clone();
    bad[28] ^= 1;
    assert_eq!(Message::decode(&bad), Err(DecodeError::BadKeyHash));
    let mut bad = good.clone();
    bad[10..12].copy_from_slice(&2000u16.to_le_bytes());
    assert_eq!(
        Message::decode(&bad),
        Err(DecodeError::ValueTooLarge { len: 2000 })
    );
}

#[test]
fn encode_refuses_oversized_fields_and_names_the_limit() {
    let header = Header::new(Op::Put, 0, 1);
    let error = encode(&header, &[0; KEY_LEN_MAX + 1], b"").unwrap_err();
    assert!(error.to_string().contains(&KEY_LEN_MAX.to_string()));
    let error = encode(&header, b"k", &vec![0; VALUE_LEN_MAX + 1]).unwrap_err();
    assert!(error.to_string().contains(&VALUE_LEN_MAX.to_string()));
}

fn arbitrary_header() -> impl Strategy<Value = Header> {
    (
        prop::sample::select(Op::ALL.iter().map(|(op, _)| *op).collect::<Vec<_>>()),
        prop::sample::select(Status::ALL.iter().map(|(s, _)| *s).collect::<Vec<_>>()),
        prop::sample::select(Effect::ALL.iter().map(|(e, _)| *e).collect::<Vec<_>>()),
        any::<(u8, u16, u32, u32, u32)>(),
        any::<(u64, u64, u64, u64, u64)>(),
    )
        .prop_map(|(op, status, effect, small, large)| {
            let (flags, port, ip, shard, epoch) = small;
            let (client_id, request_id, seq, commit_seq, version) = large;
            let mut header = Header::new(op, shard, epoch);
            header.status = status as u8;
            header.effect = effect as u8;
            header.flags = flags;
            header.reply_port.set(port);
            header.reply_ip.set(ip);
            header.client_id.set(client_id);
            header.request_id.set(request_id);
            header.seq.set(seq);
            header.commit_seq.set(commit_seq);
            header.argument.set(version);
            header
        })
}

proptest! {
    #[test]
    fn encode_then_decode_returns_the_same_message(
        mut header in arbitrary_header(),
        key in prop::collection::vec(any::<u8>(), 0..=KEY_LEN_MAX),
        mut value in prop::collection::vec(any::<u8>(), 0..=VALUE_LEN_MAX),
    ) {
        if !header.op().carries_value() {
            value.clear();
        }
        header.key_hash.set(key_hash(&key));
        let bytes = encode(&header, &key, &value).unwrap();
        prop_assert!(bytes.len() <= MESSAGE_LEN_MAX);
        let message = Message::decode(&bytes).unwrap();
        prop_assert_eq!(message.key, &key[..]);
        prop_assert_eq!(message.value, &value[..]);
        prop_assert_eq!(message.header.key_len.get() as usize, key.len());
        header.key_len.set(key.len() as u16);
        header.value_len.set(value.len() as u16);
        prop_assert_eq!(message.header, header);
    }

    #[test]
    fn a_value_on_an_op_that_carries_none_is_refused(
        header in arbitrary_header(),
        key in prop::collection::vec(any::<u8>(), 0..8),
        value in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        let mut header = header;
        header.key_hash.set(key_hash(&key));
        let bytes = encode(&header, &key, &value).unwrap();
        let decoded = Message::decode(&bytes);
        if header.op().carries_value() {
            prop_assert!(decoded.is_ok());
        } else {
            prop_assert_eq!(
                decoded.unwrap_err(),
                DecodeError::UnexpectedValue { op: header.op(), len: value.len() }
            );
        }
    }

    #[test]
    fn extensions_round_trip_on_the_ops_that_may_carry_them(
        header in arbitrary_header(),
        version in prop::option::of(any::<u64>()),
        expiry in prop::option::of((any::<u64>(), any::<u8>())),
        large in prop::option::of((any::<u32>(), any::<u32>(), any::<u32>(), any::<u16>())),
        key in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut header = header;
        header.key_hash.set(key_hash(&key));
        let extensions = Extensions {
            map_version: version,
            expiry: expiry.map(|(deadline_ms, mode)| Expiry { deadline_ms, mode }),
            large: large.map(|(length, checksum, ip, port)| Large {
                length,
                checksum,
                holder: std::net::SocketAddrV4::new(ip.into(), port),
            }),
        };
        let mut bytes = Vec::new();
        encode_append_with(&header, &extensions, &key, b"", &mut bytes).unwrap();
        let area = 8 * usize::from(version.is_some())
            + 9 * usize::from(expiry.is_some())
            + 14 * usize::from(large.is_some());
        prop_assert_eq!(bytes.len(), HEADER_LEN + area + key.len());
        // Who may carry what: MAP_VERSION answers; EXPIRY and LARGE client
        // writes, internal messages and answers.
        let classes = header.op().classes();
        let writes = op_class::CLIENT_WRITE | op_class::INTERNAL | op_class::ANSWER;
        let allowed = (version.is_none() || classes & op_class::ANSWER != 0)
            && (expiry.is_none() || classes & writes != 0)
            && (large.is_none() || classes & writes != 0);
        match Message::decode(&bytes) {
            Ok(message) => {
                prop_assert!(allowed);
                prop_assert_eq!(message.extensions, extensions);
                prop_assert_eq!(message.key, &key[..]);
            }
            Err(error) => {
                prop_assert!(!allowed);
                prop_assert_eq!(
                    error,
                    DecodeError::ExtensionNotAllowed { op: header.op(), mask: extensions.mask() }
                );
            }
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1600)) {
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn a_truncated_valid_datagram_is_always_rejected(
        header in arbitrary_header(),
        key in prop::collection::vec(any::<u8>(), 1..64),
        cut in 1usize..64,
    ) {
        let bytes = encode(&header, &key, b"value").unwrap();
        let cut = cut.min(bytes.len());
        prop_assert!(Message::decode(&bytes[..bytes.len() - cut]).is_err());
    }
}
