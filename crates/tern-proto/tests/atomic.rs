//! Atomic writes decided at the head (INCRBY, APPEND, conditional PUT) and
//! the values the tail answers with (the Redis gateway's SET GET, INCR).

mod sim;

use sim::*;
use tern_wire::{Header, Op, Status, encode, flags, key_hash};

fn write(
    op: Op,
    key: &[u8],
    value: &[u8],
    write_flags: u8,
    version: u64,
    request_id: u64,
) -> Vec<u8> {
    let mut header = Header::new(op, SHARD, EPOCH);
    header.key_hash.set(key_hash(key));
    header.client_id.set(42);
    header.request_id.set(request_id);
    header.set_expected_version(version);
    header.flags = write_flags;
    encode(&header, key, value).unwrap()
}

fn answer(sim: &Sim, request_id: u64) -> (Status, Option<Vec<u8>>) {
    let reply = sim.reply_to(request_id);
    let absent = reply.header.has_flag(flags::ANSWER_ABSENT);
    (
        reply.status(),
        if absent { None } else { Some(reply.value) },
    )
}

#[test]
fn incrby_is_decided_at_the_head_and_answers_the_new_value() {
    let mut sim = Sim::new(3);
    sim.send(write(Op::IncrBy, b"n", b"5", flags::RETURN_NEW, 0, 1));
    sim.send(write(Op::IncrBy, b"n", b"-7", flags::RETURN_NEW, 0, 2));
    sim.deliver_all();
    assert_eq!(
        answer(&sim, 1),
        (Status::Ok, Some(b"5".to_vec())),
        "an absent key counts as 0"
    );
    assert_eq!(answer(&sim, 2), (Status::Ok, Some(b"-2".to_vec())));
    for replica in &sim.replicas {
        assert_eq!(
            replica.store().latest(b"n").unwrap().value,
            b"-2",
            "every replica holds the sum"
        );
    }
}

#[test]
fn incrby_refuses_non_integers_and_overflow_and_changes_nothing() {
    let mut sim = Sim::new(2);
    sim.put(b"text", b"abc", 1);
    sim.send(write(Op::IncrBy, b"text", b"1", flags::RETURN_NEW, 0, 2));
    sim.send(write(
        Op::IncrBy,
        b"big",
        i64::MAX.to_string().as_bytes(),
        0,
        0,
        3,
    ));
    sim.send(write(Op::IncrBy, b"big", b"1", 0, 0, 4));
    sim.deliver_all();
    assert_eq!(sim.reply_to(2).status(), Status::NotInteger);
    assert_eq!(sim.reply_to(3).status(), Status::Ok);
    assert_eq!(sim.reply_to(4).status(), Status::NotInteger, "overflow");
    assert_eq!(sim.tail().store().latest(b"text").unwrap().value, b"abc");
    assert_eq!(
        sim.tail().store().latest(b"big").unwrap().value,
        i64::MAX.to_string().as_bytes()
    );
}

#[test]
fn append_concatenates_at_the_head_within_the_value_limit() {
    // Replicas that take values up to 2048 bytes: past 1024 the value
    // travels out of band down the chain, past 2048 it is refused.
    let mut sim = Sim::new(3).with_value_limits(2048, 1 << 20);
    let half = vec![b'x'; tern_wire::VALUE_LEN_MAX];
    sim.send(write(Op::Append, b"s", b"hello", flags::RETURN_NEW, 0, 1));
    sim.send(write(Op::Append, b"s", b" world", flags::RETURN_NEW, 0, 2));
    sim.send(write(Op::Append, b"s", &half, 0, 0, 3));
    sim.send(write(Op::Append, b"s", &half, 0, 0, 4));
    sim.deliver_all();
    assert_eq!(answer(&sim, 2), (Status::Ok, Some(b"hello world".to_vec())));
    assert_eq!(sim.reply_to(3).status(), Status::Ok);
    assert_eq!(sim.reply_to(4).status(), Status::TooLarge);
    let mut expected = b"hello world".to_vec();
    expected.extend_from_slice(&half);
    for replica in &sim.replicas {
        assert_eq!(replica.store().latest(b"s").unwrap().value, &expected[..]);
    }
}

#[test]
fn conditional_puts_and_the_value_before_them() {
    let mut sim = Sim::new(3);
    // SET XX on an absent key: refused, nothing written, nil before.
    sim.send(write(
        Op::Put,
        b"k",
        b"1",
        flags::IF_EXISTS | flags::RETURN_OLD,
        0,
        1,
    ));
    // SET NX GET on an absent key: written, nil before.
    sim.send(write(Op::Cas, b"k", b"2", flags::RETURN_OLD, 0, 2));
    // SET NX GET again: refused, answers the existing value.
    sim.send(write(Op::Cas, b"k", b"3", flags::RETURN_OLD, 0, 3));
    // SET GET: written, answers the value before.
    sim.send(write(Op::Put, b"k", b"4", flags::RETURN_OLD, 0, 4));
    // SET GET of an empty value is not nil.
    sim.send(write(Op::Put, b"e", b"", 0, 0, 5));
    sim.send(write(Op::Put, b"e", b"x", flags::RETURN_OLD, 0, 6));
    sim.deliver_all();
    assert_eq!(answer(&sim, 1), (Status::NotFound, None));
    assert_eq!(answer(&sim, 2), (Status::Ok, None));
    assert_eq!(answer(&sim, 3), (Status::CasMismatch, Some(b"2".to_vec())));
    assert_eq!(answer(&sim, 4), (Status::Ok, Some(b"2".to_vec())));
    assert_eq!(answer(&sim, 6), (Status::Ok, Some(Vec::new())));
    assert_eq!(sim.tail().store().latest(b"k").unwrap().value, b"4");
}
