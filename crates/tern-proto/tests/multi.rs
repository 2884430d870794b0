//! One-shot transactions of one shard (MULTI): decided at the head all
//! together at one seq, every key dirty while in flight, answers from the
//! tail, applied once under resends, replayed from the log.

mod sim;

use sim::*;
use tern_proto::coordinator::ShardState;
use tern_wire::multi::{self, Answer, Item, item_flags};
use tern_wire::{Header, Op, Status, dirty_index, encode, key_hash};

fn answers(sim: &Sim, request_id: u64) -> Vec<Answer> {
    let reply = sim.reply_to(request_id);
    assert_eq!(reply.status(), Status::Ok, "transaction {request_id}");
    multi::decode_answers(&reply.value).unwrap()
}

fn value_everywhere(sim: &Sim, key: &[u8]) -> Vec<Option<(Vec<u8>, u64)>> {
    sim.replicas
        .iter()
        .map(|replica| {
            replica
                .store()
                .latest(key)
                .map(|found| (found.value.to_vec(), found.version))
        })
        .collect()
}

#[test]
fn a_transaction_applies_every_write_at_one_version_and_answers_each_item() {
    let mut sim = Sim::new(3);
    sim.put(b"a", b"old", 1);
    sim.put(b"n", b"41", 2);
    sim.deliver_all();
    let items = [
        Item::put(b"a", b"new"),
        Item::incr_by(b"n", b"1"),
        Item::get(b"a"),
        Item::append(b"s", b"xy"),
        Item::delete(b"gone"),
        Item::put(b"a", b"again").with_flags(item_flags::IF_ABSENT),
    ];
    sim.send(multi_request(&items, 3));
    sim.deliver_all();
    let reply = sim.reply_to(3);
    let version = reply.header.version();
    let got = answers(&sim, 3);
    assert_eq!(got.len(), items.len());
    assert_eq!(got[0], Answer::status(Status::Ok));
    assert_eq!(got[1].value.as_deref(), Some(&b"42"[..]));
    assert_eq!(
        got[2].value.as_deref(),
        Some(&b"new"[..]),
        "a read sees the writes before it"
    );
    assert_eq!(got[3].number, 2);
    assert_eq!(got[4].status, Status::NotFound);
    assert_eq!(got[5].status, Status::CasMismatch, "NX of a key it wrote");
    for (key, value) in [(&b"a"[..], &b"new"[..]), (b"n", b"42"), (b"s", b"xy")] {
        for found in value_everywhere(&sim, key) {
            assert_eq!(found, Some((value.to_vec(), version)), "{key:?}");
        }
    }
    // Nothing stays dirty once acknowledged.
    for key in [&b"a"[..], b"n", b"s", b"gone"] {
        let index = dirty_index(key_hash(key));
        assert_eq!(sim.shard().state().dirty_count(index), 0);
    }
}

#[test]
fn a_failed_check_refuses_the_whole_transaction_and_writes_nothing() {
    let mut sim = Sim::new(2);
    sim.put(b"a", b"1", 1);
    sim.deliver_all();
    let version = sim.reply_to(1).header.version();
    sim.send(multi_request(
        &[
            Item::check(b"a", version + 1),
            Item::put(b"b", b"2"),
            Item::put(b"a", b"3"),
        ],
        2,
    ));
    // A check of an absent key expects version 0.
    sim.send(multi_request(
        &[Item::check(b"absent", 0), Item::put(b"absent", b"4")],
        3,
    ));
    sim.deliver_all();
    let refused = sim.reply_to(2);
    assert_eq!(refused.status(), Status::CasMismatch);
    assert_eq!(refused.header.version(), version, "the version found");
    assert_eq!(value_everywhere(&sim, b"b"), vec![None, None]);
    assert_eq!(
        sim.tail().store().latest(b"a").unwrap().value,
        b"1",
        "untouched"
    );
    assert_eq!(answers(&sim, 3).len(), 2);
    assert_eq!(sim.tail().store().latest(b"absent").unwrap().value, b"4");
}

#[test]
fn every_key_of_a_transaction_in_flight_is_dirty_and_its_reads_go_to_the_tail() {
    let mut sim = Sim::new(3);
    sim.send(multi_request(
        &[Item::put(b"x", b"1"), Item::put(b"y", b"2")],
        1,
    ));
    // Only the coordinator has seen it: both keys dirty.
    sim.deliver_at(0);
    for key in [&b"x"[..], b"y"] {
        assert_eq!(
            sim.shard().state().dirty_count(dirty_index(key_hash(key))),
            1,
            "{key:?}"
        );
    }
    // A read of its second key goes to the tail.
    sim.get(b"y", 2);
    let last = sim.network.len() - 1;
    sim.deliver_at(last);
    let forwarded = sim.network.back().unwrap();
    assert_eq!(forwarded.op(), Op::Get);
    assert_eq!(forwarded.to, *sim.chain.last().unwrap());
    assert!(forwarded.header().has_flag(tern_wire::flags::TAIL_READ));
    sim.deliver_all();
    // Acknowledged: reads of either key see it, wherever they go.
    sim.get(b"x", 3);
    sim.get(b"y", 4);
    sim.deliver_all();
    assert_eq!(sim.reply_to(3).value, b"1");
    assert_eq!(sim.reply_to(4).value, b"2");
    for key in [&b"x"[..], b"y"] {
        assert_eq!(
            sim.shard().state().dirty_count(dirty_index(key_hash(key))),
            0
        );
    }
}

#[test]
fn a_resent_transaction_is_applied_once() {
    let mut sim = Sim::new(3);
    sim.put(b"n", b"0", 1);
    sim.deliver_all();
    let request = multi_request(&[Item::incr_by(b"n", b"5"), Item::get(b"n")], 2);
    sim.send(request.clone());
    sim.deliver_all();
    sim.send(request);
    sim.deliver_all();
    assert_eq!(sim.replies_to(2).len(), 2);
    assert_eq!(sim.tail().store().latest(b"n").unwrap().value, b"5");
    assert_eq!(answers(&sim, 2)[0].value.as_deref(), Some(&b"5"[..]));
    // The retry's reply says it committed; its answers went with the first.
    let retry = &sim.replies_to(2)[1];
    assert_eq!(retry.status(), Status::Ok);
    assert!(retry.value.is_empty());
}

#[test]
fn a_transaction_is_replayed_from_the_log_after_a_restart() {
    let mut sim = Sim::new(2).with_journals();
    sim.send(multi_request(
        &[Item::put(b"p", b"1"), Item::put(b"q", b"2")],
        1,
    ));
    sim.deliver_all();
    sim.restart_replica(1, None);
    for key in [&b"p"[..], b"q"] {
        assert!(sim.tail().store().latest(key).is_some(), "{key:?}");
    }
    assert_eq!(
        sim.tail().store().latest(b"p").unwrap().version,
        sim.tail().store().latest(b"q").unwrap().version
    );
}

#[test]
fn malformed_transactions_are_refused_and_the_shard_keeps_serving() {
    let mut sim = Sim::new(2);
    // Items that do not decode.
    let mut header = Header::new(Op::Multi, SHARD, EPOCH);
    header.key_hash.set(key_hash(b"k"));
    header.client_id.set(42);
    header.request_id.set(1);
    sim.send(encode(&header, b"k", &[1, 99]).unwrap());
    // A first item that is not the header's key.
    header.request_id.set(2);
    let items = multi::encode_items(&[Item::put(b"other", b"v")]).unwrap();
    sim.send(encode(&header, b"k", &items).unwrap());
    sim.deliver_all();
    assert_eq!(sim.reply_to(1).status(), Status::Malformed);
    assert_eq!(sim.reply_to(2).status(), Status::Malformed);
    assert!(sim.tail().store().latest(b"other").is_none());
    sim.put(b"k", b"fine", 3);
    sim.deliver_all();
    assert_eq!(sim.reply_to(3).status(), Status::Ok);
}

#[test]
fn a_transaction_whose_record_would_not_fit_a_datagram_is_refused_whole() {
    let mut sim = Sim::new(2);
    let big = vec![b'v'; 600];
    // Two reads of a 600-byte value: answers beyond one datagram.
    sim.put(b"big", &big, 1);
    sim.deliver_all();
    sim.send(multi_request(
        &[
            Item::get(b"big"),
            Item::put(b"small", b"1"),
            Item::get(b"big"),
        ],
        2,
    ));
    sim.deliver_all();
    assert_eq!(sim.reply_to(2).status(), Status::TooLarge);
    assert!(sim.tail().store().latest(b"small").is_none());
}
