//! Nothing a client sends may leave a sequence number unfilled: a write the
//! coordinator sequenced but the head cannot decode is decided as a no-op
//! that carries the refusal, and the shard keeps serving. (The coordinator
//! checks what the head's decoder checks, so this is defence in depth: the
//! tests sequence the bad datagram by hand, as a coordinator with a hole in
//! its checks would.)

mod sim;

use sim::*;
use tern_proto::coordinator::ShardState;
use tern_proto::replica::Replica;
use tern_proto::{Core, Time};
use tern_wire::{Header, Message, Op, Status, dirty_index, key_hash};
use zerocopy::IntoBytes;

/// Sequences `bytes` (a client write) as a coordinator that did not check it
/// would: takes the next seq, marks the header's key hash dirty, keeps the
/// datagram in the window and sends it to the head. Returns the seq.
fn sequence_unchecked(sim: &mut Sim, mut header: Header, tail: &[u8]) -> u64 {
    let state = sim.shard().state();
    let seq = state.begin_write().expect("a free window slot");
    let index = dirty_index(header.key_hash.get());
    state.increment_dirty(index);
    header.seq.set(seq);
    header.set_reply_addr(CLIENT);
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(tail);
    state.record_sent(seq, index, &bytes, Time::ZERO);
    sim.network.push_back(Datagram {
        from: sim.coordinator_addr,
        to: sim.chain[0],
        bytes,
    });
    seq
}

fn put_header(key: &[u8], value: &[u8], request_id: u64) -> Header {
    let bytes = request(Op::Put, key, value, 0, request_id);
    Message::decode(&bytes).unwrap().header
}

#[test]
fn a_sequenced_write_the_head_cannot_decode_is_filled_and_answered_with_its_error() {
    let mut sim = Sim::new(3);
    // Three writes whose key hash does not match the key (the datagrams that
    // once wedged a shard through the XDP path), each with its own error.
    let mut wrong_hash = put_header(b"k", b"v", 1);
    wrong_hash.key_hash.set(key_hash(b"k") ^ 1);
    let mut unknown_status = put_header(b"k", b"v", 2);
    unknown_status.status = 200;
    let mut truncated_value = put_header(b"k", b"v", 3);
    truncated_value.value_len.set(9);
    let cases = [
        (wrong_hash, Status::BadKeyHash),
        (unknown_status, Status::Malformed),
        (truncated_value, Status::Malformed),
    ];
    for (header, _) in &cases {
        sequence_unchecked(&mut sim, *header, b"kv");
    }
    // A good write behind them.
    sim.put(b"good", b"value", 4);
    sim.deliver_all();

    for (index, (_, status)) in cases.iter().enumerate() {
        let reply = sim.reply_to(index as u64 + 1);
        assert_eq!(reply.status(), *status, "case {index}");
    }
    assert_eq!(sim.reply_to(4).status(), Status::Ok);
    for replica in &sim.replicas {
        assert_eq!(replica.store().applied_seq(), 4, "every seq filled");
        assert_eq!(
            replica.store().latest(b"k"),
            None,
            "no refused write applied"
        );
        assert_eq!(replica.store().latest(b"good").unwrap().value, b"value");
    }
    assert_eq!(sim.head().counters().refused_sequenced, 3);
    let state = sim.shard().state();
    assert_eq!(state.commit_seq(), 4);
    assert_eq!(state.dirty_count(dirty_index(key_hash(b"k") ^ 1)), 0);
    assert_eq!(state.dirty_count(dirty_index(key_hash(b"k"))), 0);
}

#[test]
fn a_resent_refused_write_is_answered_again_and_applied_once() {
    let mut sim = Sim::new(2);
    let mut wrong_hash = put_header(b"k", b"v", 1);
    wrong_hash.key_hash.set(0);
    sequence_unchecked(&mut sim, wrong_hash, b"kv");
    // The acknowledgement is lost; the coordinator resends the same datagram.
    // (Matched on the raw op byte: the network also holds the bad datagram.)
    let is_ack = |datagram: &Datagram| datagram.bytes[3] == Op::Ack as u8;
    sim.deliver_all_except(is_ack);
    sim.lose(is_ack);
    sim.advance(tern_proto::coordinator::RESEND_AFTER * 2);
    sim.deliver_all();
    assert_eq!(sim.reply_to(1).status(), Status::BadKeyHash);
    assert_eq!(sim.tail().counters().writes_applied, 1);
    assert_eq!(sim.head().counters().refused_sequenced, 1);
    assert_eq!(sim.shard().state().commit_seq(), 1);
}

#[test]
fn an_undecodable_write_from_anyone_but_the_coordinator_is_only_refused() {
    let mut sim = Sim::new(2);
    let mut wrong_hash = put_header(b"k", b"v", 1);
    wrong_hash.key_hash.set(0);
    wrong_hash.seq.set(1);
    let mut bytes = wrong_hash.as_bytes().to_vec();
    bytes.extend_from_slice(b"kv");
    // From a client straight to the head: answered, nothing applied.
    sim.network.push_back(Datagram {
        from: CLIENT,
        to: sim.chain[0],
        bytes,
    });
    sim.deliver_all();
    assert_eq!(sim.reply_to(1).status(), Status::BadKeyHash);
    assert_eq!(sim.head().store().applied_seq(), 0);
    assert_eq!(sim.head().counters().refused_sequenced, 0);
}

#[test]
fn a_replica_whose_state_is_replaced_keeps_counting_from_where_it_was() {
    let sim = Sim::new(3);
    let mut outside = Replica::new(sim.replica_config(1));
    let mut outbox = tern_proto::Outbox::new();
    // Ten bytes: shorter than a header.
    outside.step(Time::ZERO, CLIENT, &[0u8; 10], &mut outbox);
    assert!(outside.render_stats().contains("drop_truncated 1\n"));
    // The state a join or a new shard's empty start loads in its place.
    let (_, empty) = Replica::new(sim.replica_config(1)).snapshot();
    let mut loaded = Replica::restore(sim.replica_config(1), Some(&empty)).unwrap();
    loaded.keep_counters_of(&outside);
    assert!(
        loaded.render_stats().contains("drop_truncated 1\n"),
        "{}",
        loaded.render_stats()
    );
}
