//! The wire codec: decoding (and checking) a request, encoding a reply.
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tern_wire::{Header, Message, Op, encode, encode_into, key_hash};

fn codec(c: &mut Criterion) {
    let key = b"key:000000001234";
    let mut header = Header::new(Op::Put, 0, 1);
    header.key_hash.set(key_hash(key));
    let put = encode(&header, key, &[b'v'; 100]).unwrap();
    c.bench_function("decode a 100-byte PUT", |b| {
        b.iter(|| Message::decode(black_box(&put)).unwrap())
    });
    let mut out = Vec::with_capacity(2048);
    c.bench_function("encode a 100-byte PUT", |b| {
        b.iter(|| encode_into(black_box(&header), key, &[b'v'; 100], &mut out).unwrap())
    });
    c.bench_function("key_hash of a 16-byte key", |b| {
        b.iter(|| key_hash(black_box(key)))
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
