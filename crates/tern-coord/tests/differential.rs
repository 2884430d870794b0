//! The kernel path and the Rust path agree, datagram by datagram.
//!
//! One corpus (valid datagrams of every op, every malformed kind the Rust
//! decoder knows, and seeded random mutations of valid ones) goes through two
//! coordinators of the same shard:
//! - Rust: the user-space coordinator (`Coordinator::step`, decoder
//!   included) on its own state in process memory;
//! - kernel: the XDP program (BPF_PROG_TEST_RUN) on the mapped maps, with
//!   every datagram it hands up (XDP_PASS) run through the user-space
//!   coordinator on those same maps, as in production.
//!
//! After every datagram both must have sent the same bytes to the same
//! address and hold the same shared state. Needs root (CAP_BPF).

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddrV4;

use common::*;
use tern_coord::xdp::XdpCoordinator;
use tern_proto::coordinator::{Coordinator, ShardConfig, ShardCoordinator, ShardState};
use tern_proto::{Core, Outbox, SharedShard, Time};
use tern_wire::maps::XdpCounter;
use tern_wire::{
    HEADER_LEN, Header, KEY_LEN_MAX, Message, Op, Status, VALUE_LEN_MAX, dirty_index, encode,
    flags, key_hash, slot_of,
};
use zerocopy::IntoBytes;

const SHARD: u32 = 5;

/// A key of the one slot the shard does not serve.
const ELSEWHERE: &[u8] = b"elsewhere";

/// Every slot but the one of `ELSEWHERE`.
fn served() -> Vec<[u32; 2]> {
    let slot = slot_of(key_hash(ELSEWHERE));
    vec![[0, slot], [slot + 1, tern_wire::SLOT_COUNT]]
}

/// A coordinator process for shard 5 on `state`, past its start-up probe.
fn ready_coordinator(
    state: SharedShard,
    (fanout, early_commit): (bool, u32),
) -> Coordinator<SharedShard> {
    let config = ShardConfig {
        incarnation: 0,
        shard: SHARD,
        epoch: EPOCH,
        chain: vec![replica(0), replica(1), replica(2)],
        slots: served(),
        early_commit,
        fanout,
    };
    let mut coordinator = Coordinator::new([ShardCoordinator::new(config, state)]);
    // DESIGN rule 8 against an empty chain: head and tail (under fan-out
    // every replica) report nothing.
    let mut outbox = Outbox::new();
    for index in [0, 1, 2] {
        let report = Header::new(Op::SeqReport, SHARD, EPOCH);
        let bytes = encode(&report, b"", b"").unwrap();
        coordinator.step(Time::ZERO, replica(index), &bytes, &mut outbox);
    }
    assert!(coordinator.is_ready());
    coordinator
}

/// Where a datagram comes from.
#[derive(Clone, Copy, Debug)]
enum Sender {
    Client,
    Head,
    Middle,
    Tail,
}

impl Sender {
    fn address(self) -> SocketAddrV4 {
        match self {
            Sender::Client => CLIENT,
            Sender::Head => replica(0),
            Sender::Middle => replica(1),
            Sender::Tail => replica(2),
        }
    }

    fn frame(self, payload: &[u8]) -> Vec<u8> {
        match self {
            Sender::Client => from_client(payload),
            Sender::Head => frame(replica(0), replica_mac(0), COORDINATOR, payload),
            Sender::Middle => frame(replica(1), replica_mac(1), COORDINATOR, payload),
            Sender::Tail => from_tail(payload),
        }
    }
}

/// What one coordinator sent in answer to one datagram.
type Sent = Vec<(SocketAddrV4, Vec<u8>)>;

fn drain(outbox: &mut Outbox) -> Sent {
    let sent = outbox
        .iter()
        .map(|(to, bytes)| (to, bytes.to_vec()))
        .collect();
    outbox.clear();
    sent
}

struct Twins {
    xdp: XdpCoordinator,
    /// The user-space rare path on the kernel's maps.
    kernel_side: Coordinator<SharedShard>,
    kernel_state: SharedShard,
    rust: Coordinator<SharedShard>,
    outbox: Outbox,
    key_hashes: BTreeSet<u32>,
    /// Verdicts seen, for the corpus coverage check.
    verdicts: [u64; 4],
}

impl Twins {
    fn new() -> Twins {
        Twins::committing(0)
    }

    /// Twins of a shard committing early at its `early_commit`-th replica.
    fn committing(early_commit: u32) -> Twins {
        Twins::replicating((false, early_commit))
    }

    /// Twins of a shard replicating by fan-out or not, committing early or
    /// not.
    fn replicating((fanout, early_commit): (bool, u32)) -> Twins {
        let (xdp, kernel_state) = load_shard(served(), early_commit, fanout);
        let kernel_side =
            ready_coordinator(xdp.shared_shard(SHARD).unwrap(), (fanout, early_commit));
        let rust = ready_coordinator(SharedShard::in_process(), (fanout, early_commit));
        Twins {
            kernel_state,
            xdp,
            kernel_side,
            rust,
            outbox: Outbox::new(),
            key_hashes: BTreeSet::new(),
            verdicts: [0; 4],
        }
    }

    /// Runs one datagram through both paths and asserts they agree.
    fn check(&mut self, name: &str, sender: Sender, payload: &[u8]) {
        if let Some(header) = Message::readable_header(payload) {
            self.key_hashes.insert(header.key_hash.get());
        }
        let from = sender.address();
        self.rust.step(Time::ZERO, from, payload, &mut self.outbox);
        let rust_sent = drain(&mut self.outbox);

        let (verdict, out) = self.xdp.test_run(&sender.frame(payload)).unwrap();
        self.verdicts[verdict as usize] += 1;
        let kernel_sent: Sent = match verdict {
            XDP_TX => {
                let (source, destination) = rewritten_addresses(&out);
                assert_eq!(source, COORDINATOR, "{name}");
                vec![(destination, out[42..].to_vec())]
            }
            XDP_PASS => {
                assert_eq!(&out[..6], &COORDINATOR_MAC, "{name}: handed up as it came");
                self.kernel_side
                    .step(Time::ZERO, from, &out[42..], &mut self.outbox);
                drain(&mut self.outbox)
            }
            XDP_DROP => Vec::new(),
            other => panic!("{name}: verdict {other}"),
        };
        let is_stats = Message::readable_header(payload).is_some_and(|h| h.op == Op::Stats as u8);
        if is_stats {
            // Counters differ by design: each path counts what it handled.
            let destinations = |sent: &Sent| sent.iter().map(|(to, _)| *to).collect::<Vec<_>>();
            assert_eq!(
                destinations(&kernel_sent),
                destinations(&rust_sent),
                "{name}"
            );
        } else {
            assert_eq!(
                kernel_sent, rust_sent,
                "{name}: the kernel path (verdict {verdict}) and the Rust path sent different datagrams"
            );
        }
        self.assert_same_state(name);
    }

    fn assert_same_state(&self, name: &str) {
        let kernel = &self.kernel_state;
        let rust = self.rust.shard(SHARD).unwrap().state();
        assert_eq!(kernel.next_seq(), rust.next_seq(), "{name}: next_seq");
        assert_eq!(kernel.commit_seq(), rust.commit_seq(), "{name}: commit_seq");
        assert_eq!(kernel.all_dirty(), rust.all_dirty(), "{name}: all_dirty");
        assert_eq!(
            kernel.point_applied(),
            rust.point_applied(),
            "{name}: point_applied"
        );
        assert_eq!(
            kernel.point_barrier(),
            rust.point_barrier(),
            "{name}: point_barrier"
        );
        for hash in &self.key_hashes {
            let index = dirty_index(*hash);
            assert_eq!(
                kernel.dirty_count(index),
                rust.dirty_count(index),
                "{name}: dirty count of entry {index}"
            );
        }
        // The holds alike, but for their lease's start (the kernel's clock
        // against the test's).
        let holds = |state: &SharedShard| {
            let mut holds = state.holds().snapshot();
            for hold in &mut holds {
                hold.prepared_at = hold.prepared_at.map(|_| Time::ZERO);
            }
            holds.sort_by_key(|hold| hold.id);
            holds
        };
        assert_eq!(holds(kernel), holds(rust), "{name}: holds");
        let (mut kernel_copy, mut rust_copy) = (Vec::new(), Vec::new());
        for seq in 1..rust.next_seq().max(kernel.next_seq()) {
            assert_eq!(
                kernel.is_in_flight(seq),
                rust.is_in_flight(seq),
                "{name}: seq {seq} in flight"
            );
            let kernel_has = kernel.resend(seq, Time::MAX, Time::ZERO, &mut kernel_copy);
            let rust_has = rust.resend(seq, Time::MAX, Time::ZERO, &mut rust_copy);
            assert_eq!(kernel_has, rust_has, "{name}: window slot of seq {seq}");
            assert_eq!(
                kernel.answered_early(seq),
                rust.answered_early(seq),
                "{name}: seq {seq} answered early"
            );
            if kernel_has {
                assert_eq!(kernel_copy, rust_copy, "{name}: window copy of seq {seq}");
            }
        }
    }
}

fn request(op: Op, key: &[u8], value: &[u8], request_id: u64) -> Vec<u8> {
    let mut header = Header::new(op, SHARD, EPOCH);
    header.key_hash.set(key_hash(key));
    header.client_id.set(77);
    header.request_id.set(request_id);
    encode(&header, key, value).unwrap()
}

fn ack(seq: u64, status: Status, value: &[u8], reply_to: Option<SocketAddrV4>) -> Vec<u8> {
    let mut header = Header::new(Op::Ack, SHARD, EPOCH);
    header.seq.set(seq);
    header.status = status as u8;
    header.client_id.set(77);
    header.request_id.set(seq);
    header.set_version(seq);
    if let Some(address) = reply_to {
        header.set_reply_addr(address);
    }
    encode(&header, b"", value).unwrap()
}

/// A header followed by raw bytes, for datagrams `encode` refuses to build.
fn raw(header: Header, rest: &[u8]) -> Vec<u8> {
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(rest);
    bytes
}

fn header_of(bytes: &[u8]) -> Header {
    Message::decode(bytes).unwrap().header
}

/// Valid datagrams of every op a coordinator receives, in an order that
/// exercises clean and dirty reads, acknowledgements and gap fills.
fn valid_corpus() -> Vec<(String, Sender, Vec<u8>)> {
    let mut corpus = Vec::new();
    let mut add = |name: &str, sender, bytes| corpus.push((name.to_string(), sender, bytes));
    let long_key = vec![b'k'; KEY_LEN_MAX];
    add("clean get", Sender::Client, request(Op::Get, b"a", b"", 1));
    add("put", Sender::Client, request(Op::Put, b"a", b"1", 2));
    add("dirty get", Sender::Client, request(Op::Get, b"a", b"", 3));
    let mut cas = header_of(&request(Op::Cas, b"b", b"2", 4));
    cas.set_expected_version(0);
    add("cas", Sender::Client, encode(&cas, b"b", b"2").unwrap());
    add("delete", Sender::Client, request(Op::Delete, b"c", b"", 5));
    add("incrby", Sender::Client, request(Op::IncrBy, b"n", b"5", 6));
    add("append", Sender::Client, request(Op::Append, b"s", b"x", 7));
    let mut options = header_of(&request(Op::Put, b"o", b"v", 8));
    options.flags = 0xff; // every flag: only the write options travel on
    add(
        "put with every flag",
        Sender::Client,
        encode(&options, b"o", b"v").unwrap(),
    );
    add(
        "longest key",
        Sender::Client,
        request(Op::Put, &long_key, b"v", 9),
    );
    add(
        "largest value",
        Sender::Client,
        request(Op::Put, b"big", &vec![b'v'; VALUE_LEN_MAX], 10),
    );
    add("empty key", Sender::Client, request(Op::Put, b"", b"v", 11));
    // Hash tags: the tag's hash, or the whole key's when it has none.
    for (index, key) in [
        &b"{user1}.name"[..],
        b"x{user1}y",
        b"{}.empty",
        b"{open",
        b"}{closed}",
        b"{a}{b}",
        b"{{nested}}",
    ]
    .into_iter()
    .enumerate()
    {
        add(
            "a key with braces",
            Sender::Client,
            request(Op::Put, key, b"v", 100 + index as u64),
        );
    }
    // Deadlines travel with their write, the extension before the key.
    let expiring = |op: Op, key: &[u8], value: &[u8], request_id, mode| {
        let header = header_of(&request(op, key, value, request_id));
        let extensions = tern_wire::Extensions {
            expiry: Some(tern_wire::Expiry {
                deadline_ms: 1500,
                mode,
            }),
            ..tern_wire::Extensions::default()
        };
        let mut bytes = Vec::new();
        tern_wire::encode_append_with(&header, &extensions, key, value, &mut bytes).unwrap();
        bytes
    };
    add(
        "put with a deadline",
        Sender::Client,
        expiring(Op::Put, b"e", b"v", 12, tern_wire::expiry::RELATIVE),
    );
    // A value out of band: the datagram names it, sequenced like any write.
    let mut large = Vec::new();
    let nowhere = std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0);
    let named = tern_wire::Extensions {
        large: Some(tern_wire::Large::of(&[7; 5000], nowhere)),
        ..tern_wire::Extensions::default()
    };
    let header = header_of(&request(Op::Put, b"large", b"", 15));
    tern_wire::encode_append_with(&header, &named, b"large", b"", &mut large).unwrap();
    add("put naming a large value", Sender::Client, large);
    let mut setrange = header_of(&request(Op::Edit, b"r", b"xy", 14));
    setrange.set_edit(tern_wire::edit::SET_RANGE, 3);
    add(
        "edit (setrange)",
        Sender::Client,
        encode(&setrange, b"r", b"xy").unwrap(),
    );
    add(
        "expire",
        Sender::Client,
        expiring(Op::Expire, b"e", b"", 13, tern_wire::expiry::IF_SOME),
    );
    add(
        "get of a slot served elsewhere",
        Sender::Client,
        request(Op::Get, ELSEWHERE, b"", 30),
    );
    add(
        "put of a slot served elsewhere",
        Sender::Client,
        request(Op::Put, ELSEWHERE, b"v", 31),
    );
    // A migration holds the slot of "frozen": its writes wait, reads go on.
    let frozen = slot_of(key_hash(b"frozen"));
    let freeze = |mode, request_id| {
        let mut header = header_of(&request(Op::Freeze, b"", b"", request_id));
        header.set_slot_range([frozen, frozen + 1]);
        let value = tern_wire::freeze::Request {
            mode,
            hold_ms: 5000,
            map_version: 9,
        }
        .encode();
        encode(&header, b"", &value).unwrap()
    };
    add(
        "freeze",
        Sender::Client,
        freeze(tern_wire::freeze::WRITES, 32),
    );
    add(
        "put of a frozen slot",
        Sender::Client,
        request(Op::Put, b"frozen", b"v", 33),
    );
    add(
        "get of a frozen slot",
        Sender::Client,
        request(Op::Get, b"frozen", b"", 34),
    );
    add(
        "hand-off announced",
        Sender::Client,
        freeze(tern_wire::freeze::MOVED, 37),
    );
    add(
        "put of a slot handed off",
        Sender::Client,
        request(Op::Put, b"frozen", b"v", 38),
    );
    add(
        "get of a slot handed off",
        Sender::Client,
        request(Op::Get, b"frozen", b"", 39),
    );
    add(
        "release",
        Sender::Client,
        freeze(tern_wire::freeze::RELEASE, 35),
    );
    add(
        "put after the release",
        Sender::Client,
        request(Op::Put, b"frozen", b"v", 36),
    );
    add(
        "ack of seq 1",
        Sender::Tail,
        ack(1, Status::Ok, b"", Some(CLIENT)),
    );
    add(
        "clean get again",
        Sender::Client,
        request(Op::Get, b"a", b"", 12),
    );
    add(
        "ack with a value",
        Sender::Tail,
        ack(2, Status::CasMismatch, b"old", Some(CLIENT)),
    );
    add(
        "duplicate ack",
        Sender::Tail,
        ack(1, Status::Ok, b"", Some(CLIENT)),
    );
    add("gap-fill ack", Sender::Tail, ack(3, Status::Ok, b"", None));
    let mut answer_absent = header_of(&ack(4, Status::Ok, b"", Some(CLIENT)));
    answer_absent.flags = flags::ANSWER_ABSENT | flags::TAIL_READ;
    add(
        "ack answering absent",
        Sender::Tail,
        encode(&answer_absent, b"", b"").unwrap(),
    );
    add(
        "ack not from the tail",
        Sender::Middle,
        ack(5, Status::Ok, b"", Some(CLIENT)),
    );
    add(
        "ack of a seq never sent",
        Sender::Tail,
        ack(4000, Status::Ok, b"", Some(CLIENT)),
    );
    // Seqs start at 1; a free window slot holds 0, which must not match
    // (a mutation found both paths lowering a dirty count below zero).
    add(
        "ack of seq 0",
        Sender::Tail,
        ack(0, Status::Ok, b"", Some(CLIENT)),
    );
    add(
        "ping",
        Sender::Client,
        encode(&Header::new(Op::Ping, SHARD, EPOCH), b"", b"").unwrap(),
    );
    let mut retransmit = Header::new(Op::Retransmit, SHARD, EPOCH);
    retransmit.seq.set(5);
    retransmit.set_retransmit_last(6);
    add(
        "retransmit from the head",
        Sender::Head,
        encode(&retransmit, b"", b"").unwrap(),
    );
    corpus
}

/// One datagram of every kind the Rust decoder (or the coordinator) refuses.
fn malformed_corpus() -> Vec<(String, Sender, Vec<u8>)> {
    let good = request(Op::Put, b"k", b"v", 20);
    let good_header = header_of(&good);
    let mut corpus = Vec::new();
    let mut add =
        |name: &str, bytes: Vec<u8>| corpus.push((name.to_string(), Sender::Client, bytes));
    let with = |change: &dyn Fn(&mut Header)| {
        let mut header = good_header;
        change(&mut header);
        raw(header, b"kv")
    };
    add("truncated", good[..HEADER_LEN - 1].to_vec());
    add("empty", Vec::new());
    add("bad magic", with(&|h| h.magic.set(0x1234)));
    add("wrong version", with(&|h| h.version = 9));
    add("unknown op", with(&|h| h.op = 200));
    add("unknown status", with(&|h| h.status = 200));
    add("unknown effect", with(&|h| h.effect = 200));
    add(
        "wrong key hash on a put",
        with(&|h| h.key_hash.set(key_hash(b"k") ^ 1)),
    );
    let mut get = header_of(&request(Op::Get, b"k", b"", 21));
    get.key_hash.set(0);
    add("wrong key hash on a get", raw(get, b"k"));
    let mut long_key = header_of(&request(Op::Put, b"k", b"", 22));
    long_key.key_len.set(KEY_LEN_MAX as u16 + 1);
    long_key
        .key_hash
        .set(key_hash(&vec![b'k'; KEY_LEN_MAX + 1]));
    add("key too large", raw(long_key, &vec![b'k'; KEY_LEN_MAX + 1]));
    let mut big_value = good_header;
    big_value.value_len.set(VALUE_LEN_MAX as u16 + 1);
    let mut rest = b"k".to_vec();
    rest.resize(1 + VALUE_LEN_MAX + 1, b'v');
    add("value too large", raw(big_value, &rest));
    add("shorter than announced", with(&|h| h.value_len.set(2)));
    add("longer than announced", raw(good_header, b"kvv"));
    let mut get_with_value = header_of(&request(Op::Get, b"k", b"", 23));
    get_with_value.value_len.set(1);
    add("get with a value", raw(get_with_value, b"kv"));
    let mut delete_with_value = header_of(&request(Op::Delete, b"k", b"", 24));
    delete_with_value.value_len.set(1);
    add("delete with a value", raw(delete_with_value, b"kv"));
    add("other epoch", with(&|h| h.epoch.set(EPOCH + 1)));
    add("unknown shard", with(&|h| h.shard.set(SHARD + 1)));
    add(
        "shard beyond the kernel's table",
        with(&|h| h.shard.set(1 << 20)),
    );
    add(
        "a reply sent to the coordinator",
        with(&|h| h.op = Op::Reply as u8),
    );
    add(
        "a replicate sent to the coordinator",
        with(&|h| h.op = Op::Replicate as u8),
    );
    add("reserved field not zero", with(&|h| h.reserved.set(1)));
    add("unknown extension bit", with(&|h| h.extensions = 0x80));
    // A map version (8 bytes) before the key: a put may not carry one.
    let mut map_version_on_put = good_header;
    map_version_on_put.extensions = tern_wire::ext::MAP_VERSION;
    add(
        "extension on an op that may not carry it",
        raw(map_version_on_put, b"\x07\0\0\0\0\0\0\0kv"),
    );
    add(
        "extension bit without its bytes",
        raw(map_version_on_put, b"kv"),
    );
    let mut reply = Header::new(Op::Reply, SHARD, EPOCH);
    reply.status = Status::StaleEpoch as u8;
    let extensions = tern_wire::Extensions {
        map_version: Some(7),
        ..tern_wire::Extensions::default()
    };
    let mut bytes = Vec::new();
    tern_wire::encode_append_with(&reply, &extensions, b"", b"", &mut bytes).unwrap();
    add("a reply with a map version sent to the coordinator", bytes);
    // A deadline (9 bytes) on a read, which may not carry one.
    let mut expiry_on_get = header_of(&request(Op::Get, b"k", b"", 90));
    expiry_on_get.extensions = tern_wire::ext::EXPIRY;
    add(
        "a deadline on a get",
        raw(expiry_on_get, b"\x10\0\0\0\0\0\0\0\x01k"),
    );
    // A large value's name (14 bytes) on a read, which may not carry one.
    let mut large_on_get = header_of(&request(Op::Get, b"k", b"", 91));
    large_on_get.extensions = tern_wire::ext::LARGE;
    add(
        "a large value's name on a get",
        raw(large_on_get, b"\x88\x13\0\0\x01\x02\x03\x04\0\0\0\0\0\0k"),
    );
    corpus
}

/// A small deterministic generator (xorshift64*), so that a failing case
/// can be replayed from its seed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

#[test]
fn the_kernel_and_rust_paths_agree_on_valid_and_malformed_datagrams() {
    let mut twins = Twins::new();
    for (name, sender, bytes) in valid_corpus().into_iter().chain(malformed_corpus()) {
        twins.check(&name, sender, &bytes);
    }
    // The corpus exercised every verdict, and the hand-ups named the reasons.
    assert!(
        twins.verdicts[XDP_TX as usize] >= 10,
        "{:?}",
        twins.verdicts
    );
    assert!(
        twins.verdicts[XDP_PASS as usize] >= 20,
        "{:?}",
        twins.verdicts
    );
    assert!(
        twins.verdicts[XDP_DROP as usize] >= 1,
        "{:?}",
        twins.verdicts
    );
    let count = |wanted| counter(&twins.xdp, wanted);
    assert_eq!(count(XdpCounter::PassBadKeyHash), 2);
    assert_eq!(
        count(XdpCounter::PassSlot),
        6,
        "elsewhere twice, frozen twice, handed off twice"
    );
    assert!(count(XdpCounter::PassMalformed) >= 10);
    assert_eq!(
        twins.kernel_state.next_seq(),
        21 + 1,
        "21 writes sequenced (two with deadlines, one edit, one naming a large value, \
         seven keys with braces)"
    );
}

/// Early commit at the middle (K = 2): its acknowledgements, duplicates
/// and late ones, the tail's after them and before them, dirty reads, and
/// a commit point behind its barrier.
#[test]
fn the_kernel_and_rust_paths_agree_under_early_commit() {
    let mut twins = Twins::committing(2);
    let corpus: Vec<(&str, Sender, Vec<u8>)> = vec![
        ("put a", Sender::Client, request(Op::Put, b"a", b"1", 1)),
        (
            "early ack 1",
            Sender::Middle,
            ack(1, Status::Ok, b"", Some(CLIENT)),
        ),
        (
            "early ack 1 again",
            Sender::Middle,
            ack(1, Status::Ok, b"", Some(CLIENT)),
        ),
        (
            "dirty get a",
            Sender::Client,
            request(Op::Get, b"a", b"", 2),
        ),
        (
            "tail ack 1",
            Sender::Tail,
            ack(1, Status::Ok, b"", Some(CLIENT)),
        ),
        (
            "early ack 1 late",
            Sender::Middle,
            ack(1, Status::Ok, b"", Some(CLIENT)),
        ),
        (
            "clean get a",
            Sender::Client,
            request(Op::Get, b"a", b"", 3),
        ),
        ("put b", Sender::Client, request(Op::Put, b"b", b"2", 4)),
        (
            "tail ack 2 first",
            Sender::Tail,
            ack(2, Status::Ok, b"", Some(CLIENT)),
        ),
        (
            "early ack 2 after",
            Sender::Middle,
            ack(2, Status::Ok, b"", Some(CLIENT)),
        ),
        ("cas c", Sender::Client, request(Op::Cas, b"c", b"3", 5)),
        (
            "early ack 3 refused",
            Sender::Middle,
            ack(3, Status::CasMismatch, b"", Some(CLIENT)),
        ),
        (
            "early ack 9 never sent",
            Sender::Middle,
            ack(9, Status::Ok, b"", Some(CLIENT)),
        ),
        (
            "early ack from the head",
            Sender::Head,
            ack(3, Status::Ok, b"", Some(CLIENT)),
        ),
        (
            "dirty get c",
            Sender::Client,
            request(Op::Get, b"c", b"", 6),
        ),
        (
            "tail ack 3",
            Sender::Tail,
            ack(3, Status::CasMismatch, b"", Some(CLIENT)),
        ),
    ];
    for (name, sender, bytes) in &corpus {
        twins.check(name, *sender, bytes);
    }
    // A new commit point that must reach seq 5 first: dirty reads are
    // refused TRY_AGAIN (the kernel hands them up) until it has.
    for state in [
        &twins.kernel_state,
        twins.rust.shard(SHARD).unwrap().state(),
    ] {
        state.reset_point(0, 5);
    }
    let behind: Vec<(&str, Sender, Vec<u8>)> = vec![
        ("put d", Sender::Client, request(Op::Put, b"d", b"4", 7)),
        (
            "dirty get d behind",
            Sender::Client,
            request(Op::Get, b"d", b"", 8),
        ),
        ("put e", Sender::Client, request(Op::Put, b"e", b"5", 9)),
        (
            "early ack 5",
            Sender::Middle,
            ack(5, Status::Ok, b"", Some(CLIENT)),
        ),
        (
            "dirty get d caught up",
            Sender::Client,
            request(Op::Get, b"d", b"", 10),
        ),
    ];
    for (name, sender, bytes) in &behind {
        twins.check(name, *sender, bytes);
    }
    assert!(twins.verdicts[XDP_PASS as usize] > 0, "something went up");
    assert!(
        counter(&twins.xdp, XdpCounter::EarlyAcks) >= 2,
        "the kernel answered early"
    );
    assert_eq!(counter(&twins.xdp, XdpCounter::PassPointBehind), 1);
}

#[test]
fn the_kernel_and_rust_paths_agree_on_random_mutations() {
    random_mutations(0);
}

/// The same under early commit at the middle, half the tail's
/// acknowledgements sent by the middle instead.
#[test]
fn the_kernel_and_rust_paths_agree_on_random_mutations_under_early_commit() {
    random_mutations(2);
}

/// Fan-out, and fan-out answering at the second acknowledgement: every
/// acknowledgement sent by a random replica of the three.
#[test]
fn the_kernel_and_rust_paths_agree_on_random_mutations_under_fanout() {
    random_mutations_replicating((true, 0));
    random_mutations_replicating((true, 2));
}

fn random_mutations(early_commit: u32) {
    random_mutations_replicating((false, early_commit));
}

fn random_mutations_replicating((fanout, early_commit): (bool, u32)) {
    let seed: u64 = std::env::var("TERN_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| rand_seed() | 1);
    println!("TERN_TEST_SEED={seed}");
    let mut random = Random(seed);
    let mut twins = Twins::replicating((fanout, early_commit));
    let seeds = valid_corpus();
    for case in 0..3000 {
        let (name, mut sender, mut bytes) =
            seeds[random.below(seeds.len() as u64) as usize].clone();
        if fanout && matches!(sender, Sender::Tail) {
            sender = [Sender::Head, Sender::Middle, Sender::Tail][random.below(3) as usize];
        } else if early_commit > 0 && matches!(sender, Sender::Tail) && random.below(2) == 0 {
            sender = Sender::Middle;
        }
        // One to three changes: a header byte, a length, or a cut.
        for _ in 0..=random.below(3) {
            match random.below(4) {
                0 | 1 => {
                    let at = random.below(HEADER_LEN as u64) as usize;
                    bytes[at] = random.next() as u8;
                }
                2 => {
                    let at = 8 + 2 * random.below(2) as usize;
                    let value = random.below(8) as u16;
                    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
                }
                _ => {
                    let keep = random.below(bytes.len() as u64 + 1) as usize;
                    bytes.truncate(keep.max(HEADER_LEN));
                }
            }
        }
        twins.check(
            &format!("mutation {case} of {name} (seed {seed})"),
            sender,
            &bytes,
        );
    }
    if fanout {
        // Counted, and completed, in the kernel, not only handed up.
        assert!(counter(&twins.xdp, XdpCounter::FanoutAcks) > 0);
        assert!(counter(&twins.xdp, XdpCounter::Acks) > 0);
    }
}

/// Transactions: PREPARE, ACQUIRE, COMMIT, ABORT, RESOLVE and their
/// acknowledgements with the head's answers, every one's hold compared.
fn transaction_corpus() -> Vec<(String, Sender, Vec<u8>)> {
    use tern_wire::multi::{Item, item_flags};
    use tern_wire::txn::{Participant, Prepare, TxnId};
    let mut corpus = Vec::new();
    let mut add = |name: &str, sender, bytes| corpus.push((name.to_string(), sender, bytes));
    let id = |txn_seq| TxnId {
        client_id: 77,
        txn_seq,
    };
    let phase = |op: Op, txn_seq, items: Vec<Item<'_>>, request_id| {
        let key = items[0].key.to_vec();
        let value = Prepare {
            id: id(txn_seq),
            lease_ms: 800,
            participants: vec![Participant {
                shard: SHARD,
                coordinator: COORDINATOR,
            }],
            items,
        }
        .encode()
        .unwrap();
        request(op, &key, &value, request_id)
    };
    let finish = |op: Op, txn_seq, request_id| request(op, b"", &id(txn_seq).encode(), request_id);
    let put = |key| Item::put(key, b"v");
    add(
        "prepare",
        Sender::Client,
        phase(Op::Prepare, 1, vec![put(b"t1"), Item::check(b"t2", 3)], 1),
    );
    add(
        "prepare again",
        Sender::Client,
        phase(Op::Prepare, 1, vec![put(b"t1"), Item::check(b"t2", 3)], 1),
    );
    let update = Item::get(b"t3").with_flags(item_flags::FOR_UPDATE);
    add(
        "acquire",
        Sender::Client,
        phase(Op::Acquire, 2, vec![update, Item::get(b"t4")], 2),
    );
    add(
        "acquire more",
        Sender::Client,
        phase(Op::Acquire, 2, vec![Item::get(b"t5"), put(b"t3")], 3),
    );
    add(
        "prepare after acquires",
        Sender::Client,
        phase(Op::Prepare, 2, vec![put(b"t3"), put(b"t6")], 4),
    );
    add(
        "prepare of a slot served elsewhere",
        Sender::Client,
        phase(Op::Prepare, 3, vec![put(b"t7"), put(ELSEWHERE)], 5),
    );
    add("a multi", Sender::Client, {
        let value = tern_wire::multi::encode_items(&[put(b"m1"), put(b"t1")]).unwrap();
        request(Op::Multi, b"m1", &value, 6)
    });
    add("commit", Sender::Client, finish(Op::Commit, 1, 7));
    add("abort", Sender::Client, finish(Op::Abort, 2, 8));
    add("resolve", Sender::Client, finish(Op::Resolve, 4, 9));
    add(
        "commit with a key",
        Sender::Client,
        request(Op::Commit, b"t1", &id(1).encode(), 10),
    );
    add(
        "abort too short",
        Sender::Client,
        request(Op::Abort, b"", &id(1).encode()[..8], 11),
    );
    // Acknowledgements, seq by seq: 1 and 2 the PREPAREs of txn 1, 3 to 5
    // txn 2's phases, 6 the MULTI, 7 COMMIT, 8 ABORT, 9 RESOLVE.
    for (seq, status) in [
        (1, Status::Ok),
        (3, Status::Ok),
        (4, Status::Malformed),
        (2, Status::Ok),
        (9, Status::TxnAborted),
        (6, Status::Ok),
        (5, Status::Ok),
        (7, Status::Ok),
        (7, Status::Ok),
        (8, Status::TxnAborted),
    ] {
        add(
            &format!("ack of seq {seq} ({status:?})"),
            Sender::Tail,
            ack(seq, status, b"", Some(CLIENT)),
        );
    }
    corpus
}

#[test]
fn the_kernel_and_rust_paths_agree_on_transactions() {
    let mut twins = Twins::new();
    let corpus = transaction_corpus();
    for (name, sender, bytes) in &corpus {
        twins.check(name, *sender, bytes);
    }
    assert!(
        twins.kernel_state.holds().snapshot().is_empty(),
        "every hold released"
    );
    let count = |wanted| counter(&twins.xdp, wanted);
    assert_eq!(
        count(XdpCounter::Txns),
        7,
        "every PREPARE, ACQUIRE, COMMIT and ABORT"
    );
    // Mutations of the values (the kernel's parser against
    // Prepare::decode and TxnId::decode), each on fresh twins' state.
    let seed = rand_seed() | 1;
    println!("TERN_TEST_SEED={seed}");
    let mut random = Random(seed);
    let requests: Vec<_> = corpus
        .iter()
        .filter(|(_, sender, bytes)| {
            matches!(sender, Sender::Client) && header_of(bytes).value_len.get() > 0
        })
        .collect();
    for case in 0..1500 {
        let (name, sender, bytes) = requests[random.below(requests.len() as u64) as usize];
        let mut bytes = bytes.clone();
        let value_at = bytes.len() - header_of(&bytes).value_len.get() as usize;
        for _ in 0..=random.below(2) {
            let at = value_at + random.below((bytes.len() - value_at) as u64) as usize;
            bytes[at] = match random.below(3) {
                0 => 0,
                1 => bytes[at].wrapping_add(1),
                _ => random.next() as u8,
            };
        }
        twins.check(
            &format!("value mutation {case} of {name} (seed {seed})"),
            *sender,
            &bytes,
        );
    }
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(1)
}
