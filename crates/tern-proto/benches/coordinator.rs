//! The coordinator's decision functions: routing a read, and a whole write
//! (sequence, forward, acknowledge) through the sans-I/O core.
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};

use criterion::{Criterion, criterion_group, criterion_main};
use tern_proto::coordinator::{Coordinator, ShardConfig, ShardCoordinator, ShardState, route_read};
use tern_proto::{Core, Outbox, SharedShard, Time};
use tern_wire::{Header, Op, encode, key_hash};

fn coordinator(c: &mut Criterion) {
    let state = SharedShard::in_process();
    state.set_all_dirty(false);
    state.advance_commit_seq(100);
    let hash = key_hash(b"key:000000001234");
    c.bench_function("route_read (dirty count, then commit_seq)", |b| {
        b.iter(|| route_read(black_box(&state), black_box(hash)))
    });

    let address = |octet| SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, octet), 7000);
    let chain = vec![address(10), address(11), address(12)];
    let config = ShardConfig {
        incarnation: 0,
        shard: 0,
        epoch: 1,
        chain: chain.clone(),
        slots: vec![[0, tern_wire::SLOT_COUNT]],
        early_commit: 0,
        fanout: false,
    };
    let mut coordinator =
        Coordinator::new([ShardCoordinator::new(config, SharedShard::in_process())]);
    let mut outbox = Outbox::new();
    let now = Time::from_nanos(1_000_000_000);
    // Finish the start-up probe: the chain is empty.
    let report = encode(&Header::new(Op::SeqReport, 0, 1), b"", b"").unwrap();
    coordinator.step(now, chain[0], &report, &mut outbox);
    coordinator.step(now, chain[2], &report, &mut outbox);
    let key = b"key:000000001234";
    let mut get = Header::new(Op::Get, 0, 1);
    get.key_hash.set(key_hash(key));
    let get = encode(&get, key, b"").unwrap();
    let client = address(200);
    c.bench_function("coordinator step: forward a GET", |b| {
        b.iter(|| {
            coordinator.step(now, client, black_box(&get), &mut outbox);
            outbox.clear();
        })
    });
    let mut put = Header::new(Op::Put, 0, 1);
    put.key_hash.set(key_hash(key));
    let put = encode(&put, key, &[b'v'; 100]).unwrap();
    let mut ack = Header::new(Op::Ack, 0, 1);
    ack.key_hash.set(key_hash(key));
    ack.set_reply_addr(client);
    let mut seq = coordinator.shard(0).unwrap().state().next_seq();
    c.bench_function("coordinator step: sequence a PUT and take its ACK", |b| {
        b.iter(|| {
            coordinator.step(now, client, black_box(&put), &mut outbox);
            ack.seq.set(seq);
            let ack_bytes = encode(&ack, b"", b"").unwrap();
            coordinator.step(now, chain[2], &ack_bytes, &mut outbox);
            seq += 1;
            outbox.clear();
        })
    });
}

criterion_group!(benches, coordinator);
criterion_main!(benches);
