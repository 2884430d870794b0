//! The XDP fast path tested as a program: a frame in through
//! BPF_PROG_TEST_RUN, the verdict and the frame out asserted, and the shared
//! state (the mapped maps) inspected through the same `ShardState` the
//! user-space path uses. Needs root (CAP_BPF), as `make test` has.

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use common::*;
use tern_coord::xdp::XdpCoordinator;
use tern_proto::coordinator::{Coordinator, ShardConfig, ShardCoordinator, ShardState};
use tern_proto::{Core, Outbox, Time};
use tern_wire::maps::XdpCounter;
use tern_wire::{Header, Message, Op, Status, dirty_index, encode, flags, key_hash};

fn request(op: Op, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut header = Header::new(op, 5, EPOCH);
    header.key_hash.set(key_hash(key));
    header.client_id.set(77);
    header.request_id.set(9);
    encode(&header, key, value).unwrap()
}

/// The user-space core of shard 5 on the program's maps, as the shell runs
/// it beside the program (not yet past its start-up probe).
fn user_space(coordinator: &XdpCoordinator) -> Coordinator<tern_proto::SharedShard> {
    let config = ShardConfig {
        incarnation: 0,
        shard: 5,
        epoch: EPOCH,
        chain: vec![replica(0), replica(1), replica(2)],
        slots: vec![[0, tern_wire::SLOT_COUNT]],
        early_commit: 0,
        fanout: false,
    };
    Coordinator::new([ShardCoordinator::new(
        config,
        coordinator.shared_shard(5).unwrap(),
    )])
}

fn run(coordinator: &XdpCoordinator, frame: &[u8]) -> (u32, Vec<u8>) {
    coordinator.test_run(frame).expect("BPF_PROG_TEST_RUN")
}

#[test]
fn a_write_goes_to_the_head_with_the_next_sequence_number_and_marks_its_key_dirty() {
    let (coordinator, state) = load();
    let index = dirty_index(key_hash(b"k"));
    let (verdict, out) = run(&coordinator, &from_client(&request(Op::Put, b"k", b"v")));
    assert_eq!(verdict, XDP_TX);
    let out = sent(&out);
    assert_eq!(out.destination, replica(0));
    assert_eq!(out.destination_mac, replica_mac(0));
    assert_eq!(out.source, COORDINATOR);
    assert_eq!(out.header.op(), Op::Put);
    assert_eq!(out.header.seq.get(), 1);
    assert_eq!(
        out.header.reply_addr(),
        CLIENT,
        "the client's address travels with the write"
    );
    assert_eq!(state.dirty_count(index), 1);
    assert_eq!(state.next_seq(), 2);
    assert!(state.is_in_flight(1));
    // The window keeps the datagram as sent, for resends by user space.
    let mut copy = Vec::new();
    assert!(state.resend(1, Time::MAX, Time::ZERO, &mut copy));
    assert_eq!(Message::decode(&copy).unwrap().header, out.header);
    // The next write takes the next number.
    let (_, out) = run(&coordinator, &from_client(&request(Op::Cas, b"k", b"w")));
    assert_eq!(sent(&out).header.seq.get(), 2);
    assert_eq!(state.dirty_count(index), 2);
    assert_eq!(counter(&coordinator, XdpCounter::Writes), 2);
}

#[test]
fn an_ack_becomes_the_clients_reply_after_commit_seq_advances_and_the_dirty_count_drops() {
    let (coordinator, state) = load();
    let index = dirty_index(key_hash(b"k"));
    run(&coordinator, &from_client(&request(Op::Put, b"k", b"v")));
    assert_eq!(state.dirty_count(index), 1);
    let (verdict, out) = run(&coordinator, &from_tail(&ack(1, b"k")));
    assert_eq!(verdict, XDP_TX);
    let out = sent(&out);
    assert_eq!(out.destination, CLIENT);
    assert_eq!(
        out.destination_mac, CLIENT_MAC,
        "the MAC learnt from the client's request"
    );
    assert_eq!(out.header.op(), Op::Reply);
    assert_eq!(out.header.status(), Status::Ok);
    assert_eq!(out.header.request_id.get(), 9);
    assert_eq!(state.commit_seq(), 1);
    assert_eq!(state.dirty_count(index), 0);
    assert!(!state.is_in_flight(1));
    // A duplicate acknowledgement is answered again but lowers nothing.
    let (verdict, _) = run(&coordinator, &from_tail(&ack(1, b"k")));
    assert_eq!(verdict, XDP_TX);
    assert_eq!(state.dirty_count(index), 0);
    assert_eq!(counter(&coordinator, XdpCounter::Acks), 1);
    assert_eq!(counter(&coordinator, XdpCounter::AcksNotInFlight), 1);
}

#[test]
fn clean_reads_are_stamped_and_spread_round_robin() {
    let (coordinator, state) = load();
    state.advance_commit_seq(41);
    let mut destinations = Vec::new();
    for _ in 0..3 {
        let (verdict, out) = run(&coordinator, &from_client(&request(Op::Get, b"k", b"")));
        assert_eq!(verdict, XDP_TX);
        let out = sent(&out);
        assert!(!out.header.has_flag(flags::TAIL_READ));
        assert_eq!(out.header.seq.get(), 41, "stamped with commit_seq");
        assert_eq!(out.header.reply_addr(), CLIENT);
        destinations.push((out.destination, out.destination_mac));
    }
    let expected: Vec<_> = (0..3).map(|i| (replica(i), replica_mac(i))).collect();
    assert_eq!(destinations, expected);
    assert_eq!(counter(&coordinator, XdpCounter::ReadsAny), 3);
}

#[test]
fn a_read_of_a_dirty_key_goes_to_the_tail() {
    let (coordinator, _state) = load();
    run(&coordinator, &from_client(&request(Op::Put, b"k", b"v")));
    let (verdict, out) = run(&coordinator, &from_client(&request(Op::Get, b"k", b"")));
    assert_eq!(verdict, XDP_TX);
    let out = sent(&out);
    assert_eq!(out.destination, replica(2));
    assert!(out.header.has_flag(flags::TAIL_READ));
    // Another key stays clean.
    let (_, out) = run(&coordinator, &from_client(&request(Op::Get, b"other", b"")));
    assert!(!sent(&out).header.has_flag(flags::TAIL_READ));
}

#[test]
fn while_recovering_every_read_goes_to_the_tail() {
    let (coordinator, state) = load();
    state.set_all_dirty(true);
    let (_, out) = run(&coordinator, &from_client(&request(Op::Get, b"k", b"")));
    assert_eq!(sent(&out).destination, replica(2));
}

#[test]
fn malformed_and_rare_datagrams_go_to_user_space_untouched_in_state() {
    let (coordinator, state) = load();
    let good = request(Op::Put, b"k", b"v");
    let mut bad_magic = good.clone();
    bad_magic[0] ^= 0xff;
    let mut unknown_op = good.clone();
    unknown_op[3] = 200;
    let mut other_epoch = Header::new(Op::Put, 5, EPOCH + 1);
    other_epoch.key_hash.set(key_hash(b"k"));
    let other_epoch = encode(&other_epoch, b"k", b"v").unwrap();
    let mut unknown_shard = Header::new(Op::Put, 6, EPOCH);
    unknown_shard.key_hash.set(key_hash(b"k"));
    let unknown_shard = encode(&unknown_shard, b"k", b"v").unwrap();
    let mut trailing = good.clone();
    trailing.push(0);
    let ping = encode(&Header::new(Op::Ping, 5, EPOCH), b"", b"").unwrap();
    let mut wrong_key_hash = good.clone();
    wrong_key_hash[28] ^= 1;
    let mut unknown_status = good.clone();
    unknown_status[4] = 200;
    let mut unknown_effect = good.clone();
    unknown_effect[6] = 200;
    let mut get_with_value = Header::new(Op::Get, 5, EPOCH);
    get_with_value.key_hash.set(key_hash(b"k"));
    let get_with_value = encode(&get_with_value, b"k", b"v").unwrap();
    let cases: Vec<(&str, Vec<u8>, XdpCounter)> = vec![
        ("truncated", good[..40].to_vec(), XdpCounter::PassMalformed),
        ("bad magic", bad_magic, XdpCounter::PassMalformed),
        ("trailing bytes", trailing, XdpCounter::PassMalformed),
        ("unknown op", unknown_op, XdpCounter::PassOp),
        ("wrong key hash", wrong_key_hash, XdpCounter::PassBadKeyHash),
        ("unknown status", unknown_status, XdpCounter::PassMalformed),
        ("unknown effect", unknown_effect, XdpCounter::PassMalformed),
        (
            "get with a value",
            get_with_value,
            XdpCounter::PassMalformed,
        ),
        ("ping", ping, XdpCounter::PassOp),
        ("other epoch", other_epoch, XdpCounter::PassEpoch),
        ("unknown shard", unknown_shard, XdpCounter::PassUnknownShard),
    ];
    for (name, payload, expected) in cases {
        let before = counter(&coordinator, expected);
        let (verdict, out) = run(&coordinator, &from_client(&payload));
        assert_eq!(verdict, XDP_PASS, "{name}");
        assert_eq!(&out[..6], &COORDINATOR_MAC, "{name}: not readdressed");
        assert_eq!(counter(&coordinator, expected), before + 1, "{name}");
    }
    assert_eq!(state.next_seq(), 1, "no sequence number was taken");
    // Traffic for another port is none of the coordinator's business.
    let elsewhere = SocketAddrV4::new(*COORDINATOR.ip(), 22);
    let (verdict, out) = run(&coordinator, &frame(CLIENT, CLIENT_MAC, elsewhere, &good));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(&out[40..42], &[0x12, 0x34], "left exactly as it came");
}

#[test]
fn an_ack_that_cannot_be_completed_in_the_kernel_changes_nothing_there() {
    let (coordinator, state) = load();
    run(&coordinator, &from_client(&request(Op::Put, b"k", b"v")));
    // Not from the tail.
    let (verdict, _) = run(
        &coordinator,
        &frame(replica(1), replica_mac(1), COORDINATOR, &ack(1, b"k")),
    );
    assert_eq!(verdict, XDP_PASS);
    // For a client whose MAC address was never learnt.
    let mut unknown_client = Message::decode(&ack(1, b"k")).unwrap().header;
    unknown_client.set_reply_addr(SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 99), 1));
    let unknown_client = encode(&unknown_client, b"", b"").unwrap();
    let (verdict, _) = run(&coordinator, &from_tail(&unknown_client));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(state.commit_seq(), 0);
    assert!(state.is_in_flight(1));
    assert_eq!(state.dirty_count(dirty_index(key_hash(b"k"))), 1);
    assert_eq!(counter(&coordinator, XdpCounter::PassNotFromTail), 1);
    assert_eq!(counter(&coordinator, XdpCounter::PassNoClientMac), 1);
}

#[test]
fn a_multi_is_sequenced_in_the_kernel_every_item_dirty_until_its_ack() {
    use tern_wire::multi::{Item, encode_items};
    let (coordinator, state) = load();
    // Items of plain keys, a hash-tagged one (hashed by its tag) and a key
    // twice (counted twice, as user space counts it).
    let items = [
        Item::put(b"a", b"1"),
        Item::incr_by(b"{user7}.n", b"5"),
        Item::get(b"b"),
        Item::put(b"a", b"2"),
    ];
    let multi = request(Op::Multi, b"a", &encode_items(&items).unwrap());
    let (verdict, out) = run(&coordinator, &from_client(&multi));
    assert_eq!(verdict, XDP_TX, "sequenced in the kernel");
    let out = sent(&out);
    assert_eq!(out.destination, replica(0));
    assert_eq!(out.header.op(), Op::Multi);
    assert_eq!(out.header.seq.get(), 1);
    let dirty = |key: &[u8]| state.dirty_count(dirty_index(key_hash(key)));
    assert_eq!(dirty(b"a"), 2);
    assert_eq!(dirty(b"{user7}.n"), 1);
    assert_eq!(dirty(b"{user7}"), 1, "the tag's hash");
    assert_eq!(dirty(b"b"), 1);
    // Its acknowledgement: the client's reply, every key clean again.
    let (verdict, out) = run(&coordinator, &from_tail(&ack(1, b"a")));
    assert_eq!(verdict, XDP_TX);
    assert_eq!(sent(&out).destination, CLIENT);
    assert_eq!(sent(&out).header.op(), Op::Reply);
    assert_eq!(state.commit_seq(), 1);
    for key in [&b"a"[..], b"{user7}.n", b"b"] {
        assert_eq!(dirty(key), 0, "{key:?}");
    }
    assert!(!state.is_in_flight(1));
    // A duplicate acknowledgement lowers nothing.
    run(&coordinator, &from_tail(&ack(1, b"a")));
    assert_eq!(dirty(b"a"), 0);
    // Items the user-space decoder refuses go up, nothing taken: a first
    // key that is not the header's, an unknown kind, flags a GET may not
    // carry, a value on a DELETE, trailing bytes, an empty list.
    let encoded = encode_items(&[Item::put(b"a", b"1")]).unwrap();
    let mut unknown_kind = encoded.clone();
    unknown_kind[1] = 9;
    let mut bad_flags = encode_items(&[Item::get(b"a")]).unwrap();
    bad_flags[2] = 1;
    let mut delete_with_value = encode_items(&[Item::put(b"a", b"1")]).unwrap();
    delete_with_value[1] = tern_wire::multi::kind::DELETE;
    let mut trailing = encoded.clone();
    trailing.push(0);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("other first key", request(Op::Multi, b"z", &encoded)),
        ("unknown kind", request(Op::Multi, b"a", &unknown_kind)),
        ("flags", request(Op::Multi, b"a", &bad_flags)),
        (
            "delete with a value",
            request(Op::Multi, b"a", &delete_with_value),
        ),
        ("trailing bytes", request(Op::Multi, b"a", &trailing)),
        ("no items", request(Op::Multi, b"a", &[0])),
    ];
    for (name, datagram) in cases {
        let before = counter(&coordinator, XdpCounter::PassMalformed);
        let (verdict, _) = run(&coordinator, &from_client(&datagram));
        assert_eq!(verdict, XDP_PASS, "{name}");
        assert_eq!(
            counter(&coordinator, XdpCounter::PassMalformed),
            before + 1,
            "{name}"
        );
        assert_eq!(state.next_seq(), 2, "{name}: no sequence number taken");
        assert_eq!(dirty(b"a"), 0, "{name}");
    }
    // A MULTI sequenced by user space (the kernel handed it up) is
    // acknowledged in the kernel alike, from the datagram its slot keeps.
    let seq = state.begin_write().unwrap();
    for item in &items {
        state.increment_dirty(dirty_index(key_hash(item.key)));
    }
    state.record_sent(seq, tern_wire::maps::WINDOW_MULTI, &multi, Time::ZERO);
    let (verdict, _) = run(&coordinator, &from_tail(&ack(seq, b"a")));
    assert_eq!(verdict, XDP_TX);
    assert_eq!(dirty(b"a"), 0);
    assert_eq!(dirty(b"{user7}.n"), 0);
    assert_eq!(state.commit_seq(), seq);
}

/// A transaction's id in the kernel tests.
fn txn(txn_seq: u64) -> tern_wire::txn::TxnId {
    tern_wire::txn::TxnId {
        client_id: 77,
        txn_seq,
    }
}

fn participants() -> Vec<tern_wire::txn::Participant> {
    vec![
        tern_wire::txn::Participant {
            shard: 5,
            coordinator: COORDINATOR,
        },
        tern_wire::txn::Participant {
            shard: 6,
            coordinator: SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 3), 7000),
        },
    ]
}

/// A PREPARE (or ACQUIRE) of `id` with these items, keyed by the first.
fn txn_request(
    op: Op,
    id: tern_wire::txn::TxnId,
    items: Vec<tern_wire::multi::Item<'_>>,
) -> Vec<u8> {
    let key = items[0].key.to_vec();
    let value = tern_wire::txn::Prepare {
        id,
        lease_ms: 1000,
        participants: participants(),
        items,
    }
    .encode()
    .unwrap();
    request(op, &key, &value)
}

/// An acknowledgement of `seq` with the head's `status`.
fn ack_with(seq: u64, status: Status) -> Vec<u8> {
    let mut header = Message::decode(&ack(seq, b"")).unwrap().header;
    header.status = status as u8;
    encode(&header, b"", b"").unwrap()
}

/// The only hold of the shard.
fn only_hold(state: &tern_proto::SharedShard) -> tern_proto::holds::HoldView {
    let mut holds = state.holds().snapshot();
    assert_eq!(holds.len(), 1, "one transaction held: {holds:?}");
    holds.pop().unwrap()
}

fn reads_go_to_tail(coordinator: &XdpCoordinator, key: &[u8]) -> bool {
    let (verdict, out) = run(coordinator, &from_client(&request(Op::Get, key, b"")));
    assert_eq!(verdict, XDP_TX);
    sent(&out).header.has_flag(flags::TAIL_READ)
}

#[test]
fn a_prepare_takes_its_hold_in_the_kernel_and_the_ack_of_its_commit_releases_it() {
    use tern_wire::multi::Item;
    let (coordinator, state) = load();
    let id = txn(1);
    let prepare = txn_request(
        Op::Prepare,
        id,
        vec![Item::put(b"k", b"1"), Item::check(b"r", 4)],
    );
    let (verdict, out) = run(&coordinator, &from_client(&prepare));
    assert_eq!(verdict, XDP_TX, "sequenced in the kernel");
    let forwarded = sent(&out);
    assert_eq!(forwarded.destination, replica(0));
    assert_eq!(
        (forwarded.header.op(), forwarded.header.seq.get()),
        (Op::Prepare, 1)
    );
    let (k, r) = (dirty_index(key_hash(b"k")), dirty_index(key_hash(b"r")));
    let hold = only_hold(&state);
    assert_eq!(hold.id, id);
    assert_eq!(hold.hashes, vec![key_hash(b"k"), key_hash(b"r")]);
    assert_eq!(hold.dirty, vec![k], "only the written key counts dirty");
    assert_eq!(
        (hold.taken_at, hold.prepared_at, hold.lease_ms),
        (1, None, 1000)
    );
    assert_eq!(
        tern_wire::txn::decode_participants(&hold.participants).unwrap(),
        participants()
    );
    assert_eq!((state.dirty_count(k), state.dirty_count(r)), (1, 0));
    assert!(reads_go_to_tail(&coordinator, b"k"));
    // The head's yes: the reply goes out, the hold stays, its lease runs.
    let (verdict, out) = run(&coordinator, &from_tail(&ack(1, b"k")));
    assert_eq!((verdict, sent(&out).header.op()), (XDP_TX, Op::Reply));
    let hold = only_hold(&state);
    assert!(hold.prepared_at.is_some());
    assert_eq!(state.dirty_count(k), 1);
    // The same PREPARE again (a resend): sequenced anew, held once.
    assert_eq!(run(&coordinator, &from_client(&prepare)).0, XDP_TX);
    assert_eq!(run(&coordinator, &from_tail(&ack(2, b"k"))).0, XDP_TX);
    assert_eq!(only_hold(&state).hashes.len(), 2);
    assert_eq!(state.dirty_count(k), 1, "counted once under resends");
    // COMMIT: sequenced in the kernel; the hold goes at its
    // acknowledgement, not before.
    let commit = request(Op::Commit, b"", &id.encode());
    let (verdict, out) = run(&coordinator, &from_client(&commit));
    assert_eq!(verdict, XDP_TX);
    assert_eq!(sent(&out).header.seq.get(), 3);
    assert_eq!(state.dirty_count(k), 1);
    assert!(reads_go_to_tail(&coordinator, b"k"));
    assert_eq!(run(&coordinator, &from_tail(&ack(3, b""))).0, XDP_TX);
    assert!(state.holds().snapshot().is_empty());
    assert_eq!(state.dirty_count(k), 0);
    assert!(!reads_go_to_tail(&coordinator, b"k"));
    // A duplicate acknowledgement lowers nothing more.
    assert_eq!(run(&coordinator, &from_tail(&ack(3, b""))).0, XDP_TX);
    assert_eq!(state.dirty_count(k), 0);
    assert_eq!(counter(&coordinator, XdpCounter::Txns), 3);
    assert_eq!(
        counter(&coordinator, XdpCounter::PassOp),
        0,
        "nothing went up"
    );
    assert_eq!(counter(&coordinator, XdpCounter::PassHoldBusy), 0);
}

#[test]
fn acquires_grow_one_hold_and_only_its_own_requests_release_it() {
    use tern_wire::multi::{Item, item_flags};
    let (coordinator, state) = load();
    let (a, b) = (txn(1), txn(2));
    let (ka, kb) = (dirty_index(key_hash(b"a")), dirty_index(key_hash(b"b")));
    let acquire = txn_request(
        Op::Acquire,
        a,
        vec![
            Item::get(b"a").with_flags(item_flags::FOR_UPDATE),
            Item::get(b"b"),
        ],
    );
    assert_eq!(run(&coordinator, &from_client(&acquire)).0, XDP_TX);
    let hold = only_hold(&state);
    assert_eq!(hold.taken_at, 1);
    assert!(hold.dirty.is_empty(), "an ACQUIRE decides nothing");
    // Another ACQUIRE of the transaction adds its key; a third, a
    // duplicate of the first, adds nothing.
    let more = txn_request(Op::Acquire, a, vec![Item::get(b"c")]);
    assert_eq!(run(&coordinator, &from_client(&more)).0, XDP_TX);
    assert_eq!(run(&coordinator, &from_client(&acquire)).0, XDP_TX);
    let keys = |held: &tern_proto::holds::HoldView| held.hashes.clone();
    let three = vec![key_hash(b"a"), key_hash(b"b"), key_hash(b"c")];
    assert_eq!(keys(&only_hold(&state)), three);
    // Its PREPARE writes a and b: their entries count dirty, the keys held
    // once.
    let prepare = txn_request(
        Op::Prepare,
        a,
        vec![Item::put(b"a", b"1"), Item::put(b"b", b"2")],
    );
    assert_eq!(run(&coordinator, &from_client(&prepare)).0, XDP_TX);
    assert_eq!(keys(&only_hold(&state)), three);
    assert_eq!((state.dirty_count(ka), state.dirty_count(kb)), (1, 1));
    // Another transaction's ABORT, acknowledged, leaves a's hold alone.
    let abort_b = request(Op::Abort, b"", &b.encode());
    assert_eq!(run(&coordinator, &from_client(&abort_b)).0, XDP_TX);
    assert_eq!(
        run(&coordinator, &from_tail(&ack_with(5, Status::TxnAborted))).0,
        XDP_TX
    );
    assert_eq!(only_hold(&state).id, a);
    // A refusal as malformed of a request that did not take the hold (the
    // second ACQUIRE, seq 2) leaves it too.
    assert_eq!(
        run(&coordinator, &from_tail(&ack_with(2, Status::Malformed))).0,
        XDP_TX
    );
    assert_eq!(only_hold(&state).id, a);
    // The head's no to the PREPARE (seq 4) settles the transaction here.
    assert_eq!(
        run(&coordinator, &from_tail(&ack_with(4, Status::Locked))).0,
        XDP_TX
    );
    assert!(state.holds().snapshot().is_empty());
    assert_eq!((state.dirty_count(ka), state.dirty_count(kb)), (0, 0));
    // The first ACQUIRE's yes, arriving last, brings nothing back.
    assert_eq!(run(&coordinator, &from_tail(&ack(1, b"a"))).0, XDP_TX);
    assert!(state.holds().snapshot().is_empty());
    assert_eq!(counter(&coordinator, XdpCounter::PassOp), 0);
}

#[test]
fn a_hold_the_kernel_cannot_take_goes_up_with_nothing_changed_and_user_space_takes_it_whole() {
    use tern_wire::maps::{HOLD_KEYS_MAX, HOLD_WAYS, hold_bucket};
    use tern_wire::multi::Item;
    let (coordinator, state) = load();
    let mut core = user_space(&coordinator);
    // Ready, as the shell leaves it before attaching the program.
    let mut outbox = Outbox::new();
    for index in [0, 2] {
        let report = Header::new(Op::SeqReport, 5, EPOCH);
        core.step(
            Time::ZERO,
            replica(index),
            &encode(&report, b"", b"").unwrap(),
            &mut outbox,
        );
    }
    assert!(core.is_ready());
    let unchanged = |state: &tern_proto::SharedShard, next_seq: u64, holds: usize| {
        assert_eq!(state.next_seq(), next_seq, "no seq taken");
        assert_eq!(state.holds().snapshot().len(), holds, "no hold taken");
    };
    // Its bucket locked by someone else: up, untouched; user space (which
    // waits for the lock) takes it.
    let keys: Vec<Vec<u8>> = (0..HOLD_KEYS_MAX as u8).map(|i| vec![b'!' + i]).collect();
    let first = txn(1);
    let acquire = txn_request(
        Op::Acquire,
        first,
        keys[..HOLD_KEYS_MAX - 2]
            .iter()
            .map(|key| Item::get(key))
            .collect(),
    );
    let verdict = state
        .holds()
        .with_bucket_locked(first, || run(&coordinator, &from_client(&acquire)).0);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(counter(&coordinator, XdpCounter::PassHoldBusy), 1);
    unchanged(&state, 1, 0);
    let mut outbox = Outbox::new();
    core.step(Time::ZERO, CLIENT, &acquire, &mut outbox);
    assert_eq!(
        outbox.iter().next().unwrap().0,
        replica(0),
        "sequenced above"
    );
    assert_eq!(only_hold(&state).hashes.len(), HOLD_KEYS_MAX - 2);
    // A PREPARE whose items the kernel cannot be sure fit (62 held + 4
    // items) goes up; user space counts exactly (the union is 64) and
    // takes it.
    let prepare = txn_request(
        Op::Prepare,
        first,
        vec![
            Item::put(&keys[0], b"v"),
            Item::put(&keys[1], b"v"),
            Item::put(&keys[HOLD_KEYS_MAX - 2], b"v"),
            Item::put(&keys[HOLD_KEYS_MAX - 1], b"v"),
        ],
    );
    assert_eq!(run(&coordinator, &from_client(&prepare)).0, XDP_PASS);
    assert_eq!(counter(&coordinator, XdpCounter::PassHoldFull), 1);
    unchanged(&state, 2, 1);
    let mut outbox = Outbox::new();
    core.step(Time::ZERO, CLIENT, &prepare, &mut outbox);
    assert_eq!(outbox.iter().next().unwrap().0, replica(0));
    let hold = only_hold(&state);
    assert_eq!((hold.hashes.len(), hold.dirty.len()), (HOLD_KEYS_MAX, 4));
    // A full bucket: as many transactions as it has ways, all of one
    // bucket, then one more, which goes up and is refused TRY_AGAIN there.
    let bucket = hold_bucket(first.client_id, first.txn_seq);
    let same_bucket: Vec<_> = (2..)
        .map(txn)
        .filter(|id| hold_bucket(id.client_id, id.txn_seq) == bucket)
        .take(HOLD_WAYS)
        .collect();
    for id in &same_bucket[..HOLD_WAYS - 1] {
        let acquire = txn_request(Op::Acquire, *id, vec![Item::get(b"x")]);
        assert_eq!(run(&coordinator, &from_client(&acquire)).0, XDP_TX);
    }
    let last = txn_request(
        Op::Acquire,
        same_bucket[HOLD_WAYS - 1],
        vec![Item::get(b"x")],
    );
    let before = state.next_seq();
    assert_eq!(run(&coordinator, &from_client(&last)).0, XDP_PASS);
    unchanged(&state, before, HOLD_WAYS);
    let mut outbox = Outbox::new();
    core.step(Time::ZERO, CLIENT, &last, &mut outbox);
    let (to, answer) = outbox.iter().next().unwrap();
    assert_eq!(to, CLIENT);
    assert_eq!(
        Message::decode(answer).unwrap().header.status(),
        Status::TryAgain
    );
    unchanged(&state, before, HOLD_WAYS);
    // Malformed transaction requests go up untouched (the user-space
    // decoder answers them MALFORMED).
    let mut bad_lease = tern_wire::txn::Prepare::decode(Message::decode(&last).unwrap().value)
        .unwrap()
        .encode()
        .unwrap();
    bad_lease[16..20].copy_from_slice(&0u32.to_le_bytes());
    let keyed_commit = request(Op::Commit, b"x", &first.encode());
    let short_abort = request(Op::Abort, b"", &first.encode()[..15]);
    for bad in [
        request(Op::Acquire, b"x", &bad_lease),
        keyed_commit,
        short_abort,
    ] {
        assert_eq!(run(&coordinator, &from_client(&bad)).0, XDP_PASS);
    }
    assert_eq!(counter(&coordinator, XdpCounter::PassMalformed), 3);
    unchanged(&state, before, HOLD_WAYS);
}

#[test]
fn a_prepare_of_a_slot_not_served_here_goes_up_untouched() {
    use tern_wire::multi::Item;
    let elsewhere = tern_wire::slot_of(key_hash(b"elsewhere"));
    let (coordinator, state) =
        load_serving(vec![[0, elsewhere], [elsewhere + 1, tern_wire::SLOT_COUNT]]);
    let prepare = txn_request(
        Op::Prepare,
        txn(1),
        vec![Item::put(b"k", b"1"), Item::put(b"elsewhere", b"2")],
    );
    assert_eq!(run(&coordinator, &from_client(&prepare)).0, XDP_PASS);
    assert_eq!(counter(&coordinator, XdpCounter::PassSlot), 1);
    assert_eq!(state.next_seq(), 1);
    assert!(state.holds().snapshot().is_empty());
    assert_eq!(state.dirty_count(dirty_index(key_hash(b"k"))), 0);
}

#[test]
fn a_gap_fill_ack_completes_in_the_kernel_and_answers_nobody() {
    let (coordinator, state) = load();
    let mut noop_ack = Message::decode(&ack(7, b"")).unwrap().header;
    noop_ack.set_reply_addr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let noop_ack = encode(&noop_ack, b"", b"").unwrap();
    let (verdict, _) = run(&coordinator, &from_tail(&noop_ack));
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(state.commit_seq(), 7);
}

#[test]
fn a_full_window_hands_the_write_to_user_space_without_taking_a_sequence_number() {
    let (coordinator, state) = load();
    // Occupy the slot of the next sequence number with a write still in
    // flight one window earlier.
    let next = state.next_seq();
    let occupant = next + tern_wire::maps::INFLIGHT_WRITES_MAX;
    state.set_next_seq(occupant);
    let seq = state.begin_write().unwrap();
    state.record_sent(seq, 0, b"x", Time::ZERO);
    state.set_next_seq(next + 2 * tern_wire::maps::INFLIGHT_WRITES_MAX);
    let (verdict, _) = run(&coordinator, &from_client(&request(Op::Put, b"k", b"v")));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(
        state.next_seq(),
        next + 2 * tern_wire::maps::INFLIGHT_WRITES_MAX
    );
    assert_eq!(counter(&coordinator, XdpCounter::PassWindowFull), 1);
}

/// A chain of replicas 3 and 4 (a different head and tail), at `epoch`.
fn other_chain(epoch: u32) -> (ShardConfig, HashMap<SocketAddrV4, [u8; 6]>) {
    let chain = vec![replica(3), replica(4)];
    let macs = (3..5).map(|i| (replica(i), replica_mac(i))).collect();
    let config = ShardConfig {
        incarnation: 0,
        shard: 5,
        epoch,
        chain,
        slots: vec![[0, tern_wire::SLOT_COUNT]],
        early_commit: 0,
        fanout: false,
    };
    (config, macs)
}

#[test]
fn a_route_installed_in_place_keeps_the_window_and_the_dirty_table() {
    let (coordinator, state) = load();
    let index = dirty_index(key_hash(b"k"));
    run(&coordinator, &from_client(&request(Op::Put, b"k", b"v")));
    assert!(state.is_in_flight(1));
    // The chain changes under the loaded program: new head, new tail.
    let (config, macs) = other_chain(EPOCH + 1);
    let missing = coordinator.install_route(&config, &macs).unwrap();
    assert!(missing.is_empty());
    assert_eq!(coordinator.route(5).unwrap().generation.get() % 2, 0);
    // Requests of the old epoch go up (user space refuses them explicitly).
    let (verdict, _) = run(&coordinator, &from_client(&request(Op::Put, b"k", b"w")));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(counter(&coordinator, XdpCounter::PassEpoch), 1);
    // At the new epoch: the next seq, to the new head; the old write is
    // still in flight and the key stays dirty for both.
    let mut header = Message::decode(&request(Op::Put, b"k", b"w"))
        .unwrap()
        .header;
    header.epoch.set(EPOCH + 1);
    let (verdict, out) = run(
        &coordinator,
        &from_client(&encode(&header, b"k", b"w").unwrap()),
    );
    assert_eq!(verdict, XDP_TX);
    let out = sent(&out);
    assert_eq!(out.destination, replica(3));
    assert_eq!(out.destination_mac, replica_mac(3));
    assert_eq!(out.header.seq.get(), 2);
    assert!(state.is_in_flight(1) && state.is_in_flight(2));
    assert_eq!(state.dirty_count(index), 2);
    // The new tail acknowledges the write sequenced before the change, at
    // the new epoch.
    let mut new_ack = Message::decode(&ack(1, b"k")).unwrap().header;
    new_ack.epoch.set(EPOCH + 1);
    let new_ack = encode(&new_ack, b"", b"").unwrap();
    let (verdict, _) = run(
        &coordinator,
        &frame(replica(4), replica_mac(4), COORDINATOR, &new_ack),
    );
    assert_eq!(verdict, XDP_TX);
    assert_eq!(state.commit_seq(), 1);
    assert_eq!(state.dirty_count(index), 1);
    // The old tail is no longer believed.
    let mut old_tail_ack = Message::decode(&ack(2, b"k")).unwrap().header;
    old_tail_ack.epoch.set(EPOCH + 1);
    let old_tail_ack = encode(&old_tail_ack, b"", b"").unwrap();
    let (verdict, _) = run(&coordinator, &from_tail(&old_tail_ack));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(state.commit_seq(), 1);
}

#[test]
fn a_route_with_an_unknown_mac_sends_the_shard_to_user_space_until_it_is_known() {
    let (coordinator, state) = load();
    let (config, mut macs) = other_chain(EPOCH);
    macs.remove(&replica(4));
    assert_eq!(
        coordinator.install_route(&config, &macs).unwrap(),
        vec![replica(4)]
    );
    let (verdict, _) = run(&coordinator, &from_client(&request(Op::Put, b"k", b"v")));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(
        state.next_seq(),
        1,
        "user space sequences it, not the kernel"
    );
    macs.insert(replica(4), replica_mac(4));
    assert!(
        coordinator
            .install_route(&config, &macs)
            .unwrap()
            .is_empty()
    );
    let (verdict, out) = run(&coordinator, &from_client(&request(Op::Put, b"k", b"v")));
    assert_eq!(verdict, XDP_TX);
    assert_eq!(sent(&out).destination, replica(3));
}

#[test]
fn a_read_never_uses_a_route_torn_by_a_concurrent_rewrite() {
    let (coordinator, _state) = load();
    let (other, other_macs) = other_chain(EPOCH);
    let original = ShardConfig {
        incarnation: 0,
        shard: 5,
        epoch: EPOCH,
        chain: vec![replica(0), replica(1), replica(2)],
        slots: vec![[0, tern_wire::SLOT_COUNT]],
        early_commit: 0,
        fanout: false,
    };
    let original_macs: HashMap<_, _> = (0..3).map(|i| (replica(i), replica_mac(i))).collect();
    // Every replica's address belongs with exactly one MAC.
    let mac_of: HashMap<SocketAddrV4, [u8; 6]> =
        (0..5).map(|i| (replica(i), replica_mac(i))).collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (mut transmitted, mut handed_up) = (0, 0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                coordinator.install_route(&other, &other_macs).unwrap();
                coordinator
                    .install_route(&original, &original_macs)
                    .unwrap();
            }
        });
        // Stops the writer even when an assertion below fails.
        struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        let get = from_client(&request(Op::Get, b"k", b""));
        for _ in 0..20_000 {
            let (verdict, out) = run(&coordinator, &get);
            if verdict == XDP_TX {
                transmitted += 1;
                let out = sent(&out);
                assert_eq!(
                    mac_of.get(&out.destination),
                    Some(&out.destination_mac),
                    "a read went to {} with MAC {:?}: not a replica's address and MAC",
                    out.destination,
                    out.destination_mac
                );
            } else {
                assert_eq!(verdict, XDP_PASS);
                handed_up += 1;
            }
        }
    });
    assert!(transmitted > 0, "the fast path served reads meanwhile");
    assert_eq!(
        counter(&coordinator, XdpCounter::PassReconfiguring),
        handed_up,
        "every hand-up was a read during a rewrite"
    );
}

#[test]
fn a_slot_a_migration_holds_stays_out_of_the_kernel_when_the_route_is_rewritten() {
    let (coordinator, _) = load();
    let (_, macs) = other_chain(EPOCH + 1);
    let mut core = user_space(&coordinator);
    let frozen = tern_wire::slot_of(key_hash(b"k"));
    let mut hold = Header::new(Op::Freeze, 5, EPOCH);
    hold.set_slot_range([frozen, frozen + 1]);
    let value = tern_wire::freeze::Request {
        mode: tern_wire::freeze::WRITES,
        hold_ms: 5000,
        map_version: 0,
    }
    .encode();
    let mut outbox = Outbox::new();
    core.step(
        Time::ZERO,
        CLIENT,
        &encode(&hold, b"", &value).unwrap(),
        &mut outbox,
    );
    // A chain change while the slot is held: the kernel's route is
    // rewritten, then the core installs the new chain (same slots).
    let (other, _) = other_chain(EPOCH + 1);
    coordinator.install_route(&other, &macs).unwrap();
    assert!(core.reconfigure(other));
    let mut header = Message::decode(&request(Op::Put, b"k", b"v"))
        .unwrap()
        .header;
    header.epoch.set(EPOCH + 1);
    let (verdict, _) = run(
        &coordinator,
        &from_client(&encode(&header, b"k", b"v").unwrap()),
    );
    assert_eq!(verdict, XDP_PASS, "the held write goes up, not to the head");
    assert_eq!(counter(&coordinator, XdpCounter::PassSlot), 1);
}

/// What user space did with a request handed up: answered the client (with
/// a status and the map version it names) or forwarded it to a replica.
#[derive(Debug, PartialEq, Eq)]
enum Above {
    Answered(Status, Option<u64>),
    Forwarded(SocketAddrV4),
}

/// What the kernel does with a PUT and a GET of a key, and what the core in
/// user space does with those it hands up.
fn put_and_get(
    coordinator: &XdpCoordinator,
    core: &mut Coordinator<tern_proto::SharedShard>,
    key: &[u8],
) -> [(u32, Option<Above>); 2] {
    [Op::Put, Op::Get].map(|op| {
        let bytes = request(op, key, if op == Op::Put { b"v" } else { b"" });
        let (verdict, _) = run(coordinator, &from_client(&bytes));
        if verdict != XDP_PASS {
            return (verdict, None);
        }
        let mut outbox = Outbox::new();
        core.step(Time::ZERO, CLIENT, &bytes, &mut outbox);
        let above = outbox.iter().next().map(|(to, bytes)| {
            let message = Message::decode(bytes).unwrap();
            if to == CLIENT {
                Above::Answered(message.header.status(), message.extensions.map_version)
            } else {
                Above::Forwarded(to)
            }
        });
        (verdict, above)
    })
}

#[test]
fn each_state_of_a_migrating_group_in_the_kernel_and_above_it() {
    let (coordinator, state) = load();
    let mut core = user_space(&coordinator);
    core.set_map_version(3);
    // Recovery done (nothing dirty, sequencing from 1), as the shell
    // leaves it before attaching the program.
    state.set_all_dirty(false);
    let slot = tern_wire::slot_of(key_hash(b"k"));
    let hold = |core: &mut Coordinator<_>, mode, map_version| {
        let mut header = Header::new(Op::Freeze, 5, EPOCH);
        header.set_slot_range([slot, slot + 1]);
        let value = tern_wire::freeze::Request {
            mode,
            hold_ms: 5000,
            map_version,
        }
        .encode();
        core.step(
            Time::ZERO,
            CLIENT,
            &encode(&header, b"", &value).unwrap(),
            &mut Outbox::new(),
        );
    };
    let index = dirty_index(key_hash(b"k"));
    // Owned: both served in the kernel, the write sequenced.
    let [put, get] = put_and_get(&coordinator, &mut core, b"k");
    assert_eq!((put.0, get.0), (XDP_TX, XDP_TX));
    assert_eq!(state.next_seq(), 2);
    let (_, out) = run(&coordinator, &from_tail(&ack(1, b"k")));
    assert_eq!(sent(&out).header.op(), Op::Reply);
    assert_eq!(state.dirty_count(index), 0);
    // Writes held: the slot leaves the kernel's bitmap. The write goes up
    // untouched (no seq, nothing dirty) and is answered TRY_AGAIN; the read
    // goes up and is served from there (forwarded to a replica).
    hold(&mut core, tern_wire::freeze::WRITES, 0);
    let [put, get] = put_and_get(&coordinator, &mut core, b"k");
    let try_again = Some(Above::Answered(Status::TryAgain, None));
    assert_eq!(put, (XDP_PASS, try_again));
    assert!(
        matches!(get, (XDP_PASS, Some(Above::Forwarded(to))) if (0..3).any(|i| to == replica(i))),
        "{get:?}"
    );
    assert_eq!(state.next_seq(), 2, "the held write took no seq");
    assert_eq!(state.dirty_count(index), 0, "nor marked its key");
    // Everything held: the read goes up too.
    hold(&mut core, tern_wire::freeze::ALL, 0);
    for handed_up in put_and_get(&coordinator, &mut core, b"k") {
        let try_again = Some(Above::Answered(Status::TryAgain, None));
        assert_eq!(handed_up, (XDP_PASS, try_again));
    }
    // Handed off: both sent to meta's newer map.
    hold(&mut core, tern_wire::freeze::MOVED, 9);
    for handed_up in put_and_get(&coordinator, &mut core, b"k") {
        let moved = Some(Above::Answered(Status::WrongShard, Some(9)));
        assert_eq!(handed_up, (XDP_PASS, moved));
    }
    assert!(
        core.take_map_doubt(),
        "the coordinator fetches the map early"
    );
    // The map without the slot: refused by this coordinator's own map.
    let mut config = core.shard(5).unwrap().config().clone();
    config.slots = vec![[0, slot], [slot + 1, tern_wire::SLOT_COUNT]];
    hold(&mut core, tern_wire::freeze::RELEASE, 0);
    assert!(core.reconfigure(config));
    for handed_up in put_and_get(&coordinator, &mut core, b"k") {
        let elsewhere = Some(Above::Answered(Status::WrongShard, Some(3)));
        assert_eq!(handed_up, (XDP_PASS, elsewhere));
    }
    assert_eq!(
        state.next_seq(),
        2,
        "nothing sequenced since the first write"
    );
    assert_eq!(counter(&coordinator, XdpCounter::PassSlot), 8);
}

#[test]
fn clients_outside_the_allow_list_are_dropped_in_the_kernel_and_above_it() {
    use tern_proto::allow::AllowList;
    let (mut coordinator, state) = load();
    let allow = AllowList::parse("10.9.1.0/24").unwrap();
    coordinator.set_allow_list(&allow).unwrap();
    let allowed = SocketAddrV4::new(Ipv4Addr::new(10, 9, 1, 5), 40000);
    // CLIENT (10.9.0.1) is not served: its read and write are dropped,
    // nothing sequenced.
    for op in [Op::Get, Op::Put] {
        let (verdict, _) = run(&coordinator, &from_client(&request(op, b"k", b"")));
        assert_eq!(verdict, XDP_DROP, "{op:?}");
    }
    assert_eq!(counter(&coordinator, XdpCounter::DropNotAllowed), 2);
    assert_eq!(state.next_seq(), 1);
    // A client of the network is served, and the tail's acknowledgement
    // (the tail is no client) becomes its reply.
    let put = frame(
        allowed,
        CLIENT_MAC,
        COORDINATOR,
        &request(Op::Put, b"k", b"v"),
    );
    assert_eq!(run(&coordinator, &put).0, XDP_TX);
    let mut acknowledgement = Message::decode(&ack(1, b"k")).unwrap().header;
    acknowledgement.set_reply_addr(allowed);
    let acknowledgement = encode(&acknowledgement, b"", b"").unwrap();
    let (verdict, out) = run(&coordinator, &from_tail(&acknowledgement));
    assert_eq!(verdict, XDP_TX);
    assert_eq!(sent(&out).destination, allowed);
    assert_eq!(state.commit_seq(), 1);
    // User space applies the same list to what reaches it: CLIENT's PING
    // goes unanswered, the allowed client's is answered, the tail's
    // duplicate acknowledgement is still the chain's.
    let mut core = user_space(&coordinator).with_allow_list(allow);
    let ping = encode(&Header::new(Op::Ping, 5, EPOCH), b"", b"").unwrap();
    let mut outbox = Outbox::new();
    core.step(Time::ZERO, CLIENT, &ping, &mut outbox);
    assert_eq!(outbox.iter().count(), 0, "dropped unanswered");
    core.step(Time::ZERO, allowed, &ping, &mut outbox);
    assert_eq!(outbox.iter().next().map(|(to, _)| to), Some(allowed));
    core.step(Time::ZERO, replica(2), &acknowledgement, &mut outbox);
    let stats = core.render_stats(None);
    assert!(stats.contains("refused_not_allowed 1\n"), "{stats}");
    assert!(stats.contains("shard5.acks_not_in_flight 1\n"), "{stats}");
}
