//! The versioned store: overwriting a key, reading at a stamp.
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tern_store::{Store, Write};

fn store(c: &mut Criterion) {
    let keys: Vec<Vec<u8>> = (0..10_000)
        .map(|i| format!("key:{i:012}").into_bytes())
        .collect();
    let value = [b'v'; 100];
    let mut store = Store::new();
    let mut seq = 0;
    for key in &keys {
        seq += 1;
        store.apply(seq, key, Write::Put(&value));
    }
    store.observe_commit(seq);
    let mut next = 0;
    c.bench_function("overwrite one of 10k keys (and commit it)", |b| {
        b.iter(|| {
            seq += 1;
            next = (next + 7) % keys.len();
            store.apply(seq, black_box(&keys[next]), Write::Put(&value));
            store.observe_commit(seq);
        })
    });
    c.bench_function("read one of 10k keys at the commit stamp", |b| {
        b.iter(|| {
            next = (next + 7) % keys.len();
            black_box(store.read_at(&keys[next], seq))
        })
    });
}

criterion_group!(benches, store);
criterion_main!(benches);
