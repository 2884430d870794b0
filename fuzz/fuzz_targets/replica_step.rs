//! A replica and a coordinator fed arbitrary datagrams from every peer never
//! panic (a bad packet is an error and a counter, never a crash). The first
//! byte's low bit picks early commit at the middle (the fuzzed replica,
//! then the commit point) or the chain.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tern_proto::coordinator::{Coordinator, ShardConfig, ShardCoordinator};
use tern_proto::replica::{Replica, ReplicaConfig};
use tern_proto::{Core, Outbox, SharedShard, Time};

fuzz_target!(|input: &[u8]| {
    let address = |octet| SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, octet), 7000);
    let chain = vec![address(10), address(11), address(12)];
    let peers = [
        address(1),
        address(10),
        address(11),
        address(12),
        address(99),
    ];
    let early_commit = match input.first() {
        Some(first) if first & 1 == 1 => 2,
        _ => 0,
    };
    let mut replica = Replica::new(ReplicaConfig {
        shard: 0,
        epoch: 1,
        chain: chain.clone(),
        position: 1,
        coordinator: address(1),
        early_commit,
        fanout: false,
    });
    let config = ShardConfig {
        incarnation: 0,
        shard: 0,
        epoch: 1,
        chain,
        slots: vec![[0, tern_wire::SLOT_COUNT]],
        early_commit,
        fanout: false,
    };
    let mut coordinator =
        Coordinator::new([ShardCoordinator::new(config, SharedShard::in_process())]);
    let mut outbox = Outbox::new();
    let mut now = Time::from_nanos(1_000_000_000);
    // Each datagram: one byte naming the sender, two of length, then bytes.
    let mut rest = input;
    while rest.len() >= 3 {
        let from = peers[usize::from(rest[0]) % peers.len()];
        let length = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let datagram = &rest[3..3 + length];
        rest = &rest[3 + length..];
        replica.step(now, from, datagram, &mut outbox);
        coordinator.step(now, from, datagram, &mut outbox);
        now += Duration::from_millis(7);
        replica.tick(now, &mut outbox);
        coordinator.tick(now, &mut outbox);
        outbox.clear();
    }
});
