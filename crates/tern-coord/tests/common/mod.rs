//! What the XDP program tests share: a loaded program serving shard 5 with a
//! chain of three replicas, and frames as a client or the tail would send.
#![allow(dead_code)] // Each test file uses a different part of the kit.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use tern_coord::xdp::XdpCoordinator;
use tern_proto::SharedShard;
use tern_proto::coordinator::ShardConfig;
use tern_wire::{Header, Message, Op};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub const COORDINATOR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 2), 7000);
pub const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 1), 40000);
pub const COORDINATOR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const EPOCH: u32 = 3;

pub fn replica(index: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 10 + index), 7100 + u16::from(index))
}

pub fn replica_mac(index: u8) -> [u8; 6] {
    [2, 0, 0, 0, 1, index]
}

/// A loaded program serving every slot of shard 5 with a chain of three
/// replicas.
pub fn load() -> (XdpCoordinator, SharedShard) {
    load_serving(vec![[0, tern_wire::SLOT_COUNT]])
}

/// As `load`, the shard serving only `slots`.
pub fn load_serving(slots: Vec<[u32; 2]>) -> (XdpCoordinator, SharedShard) {
    load_serving_committing(slots, 0)
}

/// As `load`, committing early at the `early_commit`-th replica.
pub fn load_committing(early_commit: u32) -> (XdpCoordinator, SharedShard) {
    load_serving_committing(vec![[0, tern_wire::SLOT_COUNT]], early_commit)
}

/// As `load_serving`, committing early at the `early_commit`-th replica.
pub fn load_serving_committing(
    slots: Vec<[u32; 2]>,
    early_commit: u32,
) -> (XdpCoordinator, SharedShard) {
    load_shard(slots, early_commit, false)
}

/// As `load`, with fan-out replication (every replica acknowledges).
pub fn load_fanout() -> (XdpCoordinator, SharedShard) {
    load_fanout_committing(0)
}

/// As `load_fanout`, answering writes at their `early_commit`-th
/// acknowledgement.
pub fn load_fanout_committing(early_commit: u32) -> (XdpCoordinator, SharedShard) {
    load_shard(vec![[0, tern_wire::SLOT_COUNT]], early_commit, true)
}

pub fn load_shard(
    slots: Vec<[u32; 2]>,
    early_commit: u32,
    fanout: bool,
) -> (XdpCoordinator, SharedShard) {
    let chain = vec![replica(0), replica(1), replica(2)];
    let macs: HashMap<_, _> = (0..3).map(|i| (replica(i), replica_mac(i))).collect();
    let shard = ShardConfig {
        incarnation: 0,
        shard: 5,
        epoch: EPOCH,
        chain,
        slots,
        early_commit,
        fanout,
    };
    let coordinator = XdpCoordinator::load(COORDINATOR, &[shard], &macs)
        .unwrap_or_else(|error| panic!("loading the XDP program (these tests need root): {error}"));
    let state = coordinator.shared_shard(5).unwrap();
    (coordinator, state)
}

/// The acknowledgement of `seq` (a write of `key` by client 77, request 9)
/// as a replica sends it, naming the client to answer.
pub fn ack(seq: u64, key: &[u8]) -> Vec<u8> {
    let mut header = Header::new(Op::Ack, 5, EPOCH);
    header.seq.set(seq);
    header.key_hash.set(tern_wire::key_hash(key));
    header.client_id.set(77);
    header.request_id.set(9);
    header.set_version(seq);
    header.set_reply_addr(CLIENT);
    tern_wire::encode(&header, &[], &[]).unwrap()
}

/// An Ethernet + IPv4 + UDP frame carrying `payload`.
pub fn frame(from: SocketAddrV4, from_mac: [u8; 6], to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&COORDINATOR_MAC);
    frame.extend_from_slice(&from_mac);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&from.ip().octets());
    ip[16..20].copy_from_slice(&to.ip().octets());
    let checksum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&from.port().to_be_bytes());
    frame.extend_from_slice(&to.port().to_be_bytes());
    frame.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    frame.extend_from_slice(&[0x12, 0x34]); // a checksum the program must clear
    frame.extend_from_slice(payload);
    frame
}

/// A frame from the client to the coordinator.
pub fn from_client(payload: &[u8]) -> Vec<u8> {
    frame(CLIENT, CLIENT_MAC, COORDINATOR, payload)
}

/// A frame from the tail (replica 2) to the coordinator.
pub fn from_tail(payload: &[u8]) -> Vec<u8> {
    from_replica(2, payload)
}

/// A frame from replica `index` to the coordinator.
pub fn from_replica(index: u8, payload: &[u8]) -> Vec<u8> {
    frame(replica(index), replica_mac(index), COORDINATOR, payload)
}

pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The total of one fast-path counter over the CPUs.
pub fn counter(coordinator: &XdpCoordinator, wanted: tern_wire::maps::XdpCounter) -> u64 {
    coordinator
        .counters()
        .unwrap()
        .iter()
        .find(|values| values.counter == wanted)
        .map(|values| values.total())
        .unwrap()
}

/// What a frame the program sent looks like.
#[derive(Debug)]
pub struct Sent {
    pub destination_mac: [u8; 6],
    pub source: SocketAddrV4,
    pub destination: SocketAddrV4,
    pub header: Header,
}

/// The addresses of a frame the program rewrote: (source, destination).
/// Asserts that its IPv4 checksum is valid and its UDP checksum cleared.
pub fn rewritten_addresses(frame: &[u8]) -> (SocketAddrV4, SocketAddrV4) {
    let ip = &frame[14..34];
    assert_eq!(
        ipv4_checksum(ip),
        0,
        "the IPv4 checksum of the rewritten frame is valid"
    );
    assert_eq!(&frame[40..42], &[0, 0], "the UDP checksum is cleared");
    let address = |ip: &[u8], port: &[u8]| {
        SocketAddrV4::new(
            Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]),
            u16::from_be_bytes([port[0], port[1]]),
        )
    };
    (
        address(&ip[12..16], &frame[34..36]),
        address(&ip[16..20], &frame[36..38]),
    )
}

pub fn sent(frame: &[u8]) -> Sent {
    let (source, destination) = rewritten_addresses(frame);
    Sent {
        destination_mac: frame[0..6].try_into().unwrap(),
        source,
        destination,
        header: Message::decode(&frame[42..])
            .expect("a valid datagram")
            .header,
    }
}

/// A PUT of `key` (value "v") by client 77, request 9, as the client sends
/// it.
pub fn client_put(key: &[u8]) -> Vec<u8> {
    let mut header = Header::new(Op::Put, 5, EPOCH);
    header.key_hash.set(tern_wire::key_hash(key));
    header.client_id.set(77);
    header.request_id.set(9);
    tern_wire::encode(&header, key, b"v").unwrap()
}

/// A GET of `key` by client 77, request 10.
pub fn client_get(key: &[u8]) -> Vec<u8> {
    let mut header = Header::new(Op::Get, 5, EPOCH);
    header.key_hash.set(tern_wire::key_hash(key));
    header.client_id.set(77);
    header.request_id.set(10);
    tern_wire::encode(&header, key, &[]).unwrap()
}
