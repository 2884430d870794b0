//! Values too large for a datagram (`ext::LARGE`) on the simulated network:
//! staged at the head, decided there, fetched down the chain by each
//! successor, answered out of band, logged and replayed whole.

mod sim;

use sim::*;
use std::time::Duration;

use tern_proto::Outbox;
use tern_wire::{Extensions, Header, Large, Op, Status, encode_append_with, flags, key_hash};

fn large_write(op: Op, key: &[u8], value: &[u8], write_flags: u8, request_id: u64) -> Vec<u8> {
    let mut header = Header::new(op, SHARD, EPOCH);
    header.key_hash.set(key_hash(key));
    header.client_id.set(42);
    header.request_id.set(request_id);
    header.flags = write_flags;
    let nowhere = std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0);
    let extensions = Extensions {
        large: Some(Large::of(value, nowhere)),
        ..Extensions::default()
    };
    let mut bytes = Vec::new();
    encode_append_with(&header, &extensions, key, b"", &mut bytes).unwrap();
    bytes
}

fn value_of(length: usize, seed: u8) -> Vec<u8> {
    (0..length)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn a_staged_value_reaches_every_replica_and_is_read_out_of_band() {
    let mut sim = Sim::new(3);
    let value = value_of(64 << 10, 1);
    sim.stage(1, &value);
    sim.send(large_write(Op::Put, b"big", &value, 0, 1));
    sim.deliver_all();
    assert_eq!(sim.reply_to(1).status(), Status::Ok);
    for replica in &sim.replicas {
        assert_eq!(replica.store().latest(b"big").unwrap().value, &value[..]);
    }
    // Each successor fetched it from its predecessor; no datagram held it.
    assert_eq!(sim.replicas[1].counters().values_fetched, 1);
    assert_eq!(sim.replicas[2].counters().values_fetched, 1);
    // A read is answered with the value's name and where it is kept.
    sim.get(b"big", 2);
    sim.deliver_all();
    let reply = sim.reply_to(2);
    assert_eq!(reply.status(), Status::Ok);
    assert!(reply.value.is_empty());
    let large = reply.extensions.large.expect("named out of band");
    assert!(large.names(&value));
    let holder = sim
        .chain
        .iter()
        .position(|address| *address == large.holder)
        .expect("a replica of the chain holds it");
    let kept = sim.replicas[holder]
        .values()
        .answer((42, 2), large.checksum)
        .unwrap();
    assert_eq!(&kept[..], &value[..]);
}

#[test]
fn a_value_not_staged_is_refused_unremembered_and_applied_once_staged() {
    let mut sim = Sim::new(3);
    let value = value_of(5000, 2);
    sim.send(large_write(Op::Put, b"k", &value, 0, 1));
    sim.deliver_all();
    assert_eq!(sim.reply_to(1).status(), Status::ValueMissing);
    assert!(sim.tail().store().latest(b"k").is_none());
    // Another value staged under the same ids is not the one named.
    sim.stage(1, &value_of(5000, 3));
    sim.send(large_write(Op::Put, b"k", &value, 0, 1));
    sim.deliver_all();
    assert_eq!(sim.replies_to(1)[1].status(), Status::ValueMissing);
    // Staged, the same request is applied; a copy of it again is answered
    // from dedup and applies nothing.
    sim.stage(1, &value);
    sim.send(large_write(Op::Put, b"k", &value, 0, 1));
    sim.deliver_all();
    let applied = sim.replies_to(1)[2].clone();
    assert_eq!(applied.status(), Status::Ok);
    sim.send(large_write(Op::Put, b"k", &value, 0, 1));
    sim.deliver_all();
    let again = sim.replies_to(1)[3].clone();
    assert_eq!(again.status(), Status::Ok);
    assert_eq!(again.header.version(), applied.header.version());
    assert_eq!(sim.tail().store().version_count(b"k"), 1);
    assert_eq!(sim.tail().store().latest(b"k").unwrap().value, &value[..]);
}

#[test]
fn a_large_value_before_a_write_is_answered_out_of_band_by_the_tail() {
    let mut sim = Sim::new(2);
    let first = value_of(3000, 4);
    sim.stage(1, &first);
    sim.send(large_write(Op::Put, b"k", &first, 0, 1));
    // SET GET: the tail answers the value before, too large for its ACK.
    sim.send(request(Op::Put, b"k", b"small", 0, 2));
    sim.deliver_all();
    sim.stage(3, &first);
    sim.send(large_write(Op::Put, b"k", &first, flags::RETURN_OLD, 3));
    sim.deliver_all();
    let reply = sim.reply_to(3);
    assert_eq!(reply.status(), Status::Ok);
    assert_eq!(reply.value, b"small", "the value before fits the datagram");
    let mut delete = Header::new(Op::Delete, SHARD, EPOCH);
    delete.key_hash.set(key_hash(b"k"));
    delete.client_id.set(42);
    delete.request_id.set(5);
    delete.flags = flags::RETURN_OLD;
    sim.deliver_all();
    // GETDEL of a large value: answered by name, kept at the tail.
    sim.stage(6, &first);
    sim.send(large_write(Op::Put, b"k", &first, 0, 6));
    sim.send(tern_wire::encode(&delete, b"k", b"").unwrap());
    sim.deliver_all();
    let reply = sim.reply_to(5);
    let large = reply.extensions.large.expect("too large for the ACK");
    assert_eq!(large.holder, *sim.chain.last().unwrap());
    let kept = sim.tail().values().answer((42, 5), large.checksum).unwrap();
    assert_eq!(&kept[..], &first[..]);
}

#[test]
fn a_large_record_is_logged_whole_and_replayed_after_a_restart() {
    let mut sim = Sim::new(3).with_journals();
    let value = value_of(1 << 20, 5);
    sim.stage(1, &value);
    sim.send(large_write(Op::Put, b"big", &value, 0, 1));
    sim.deliver_all();
    assert_eq!(sim.reply_to(1).status(), Status::Ok);
    for index in 0..3 {
        sim.restart_replica(index, None);
        assert_eq!(
            sim.replicas[index].store().latest(b"big").unwrap().value,
            &value[..],
            "replica {index} after its restart"
        );
    }
    // A damaged trailer is refused, not applied.
    let (_, record) = sim.disks[0].last().unwrap().clone();
    let mut damaged = record.clone();
    *damaged.last_mut().unwrap() ^= 1;
    let mut replica = tern_proto::replica::Replica::new(sim.replica_config(0));
    let error = replica
        .replay_record(&damaged, &mut Outbox::new())
        .unwrap_err();
    assert!(error.to_string().contains("checksum"), "{error}");
}

#[test]
fn a_record_applied_from_a_resend_while_held_never_blocks_the_next() {
    let mut sim = Sim::new(3);
    let (first, second) = (value_of(2000, 6), value_of(3000, 7));
    sim.stage(1, &first);
    sim.send(large_write(Op::Put, b"a", &first, 0, 1));
    sim.stage(2, &second);
    sim.send(large_write(Op::Put, b"b", &second, 0, 2));
    // Both records reach the middle, which waits for the first's value; a
    // copy of the first record is kept, as a resend would bring it.
    let middle = sim.chain[1];
    let mut copy = None;
    while let Some(datagram) = sim.network.pop_front() {
        if datagram.to == middle && datagram.header().seq.get() == 1 && copy.is_none() {
            copy = Some(datagram.clone());
        }
        sim.receive(datagram);
    }
    let wanted = sim.replicas[1]
        .values()
        .wait_wanted(Duration::ZERO)
        .unwrap();
    assert_eq!(wanted.seq, 1);
    // The value arrives, and the resend too, before the middle's timers
    // run: the first record is applied from the resend.
    let value = sim.replicas[0].values().record(1, &wanted.large).unwrap();
    assert!(sim.replicas[1].values().deliver(1, value.to_vec()));
    sim.receive(copy.unwrap());
    // The second follows as soon as its value is fetched, with no resend.
    sim.deliver_all();
    for replica in &sim.replicas {
        assert_eq!(replica.store().latest(b"b").unwrap().value, &second[..]);
    }
    assert_eq!(sim.reply_to(2).status(), Status::Ok);
}

#[test]
fn a_value_staged_everywhere_is_taken_where_it_is_and_only_when_unchanged() {
    let mut sim = Sim::new(3);
    let value = value_of(200 << 10, 8);
    sim.stage_everywhere(1, &value);
    sim.send(large_write(Op::Put, b"k", &value, 0, 1));
    sim.deliver_all();
    assert_eq!(sim.reply_to(1).status(), Status::Ok);
    for replica in &sim.replicas[1..] {
        assert_eq!(replica.counters().values_staged_here, 1);
        assert_eq!(replica.counters().values_fetched, 0);
        assert_eq!(replica.store().latest(b"k").unwrap().value, &value[..]);
    }
    // An APPEND's operand staged everywhere: the head computes another
    // value, which its successors fetch; the operand is dropped unused.
    let operand = value_of(5000, 9);
    sim.stage_everywhere(2, &operand);
    sim.send(large_write(Op::Append, b"k", &operand, 0, 2));
    sim.deliver_all();
    assert_eq!(sim.reply_to(2).status(), Status::Ok);
    let mut expected = value.clone();
    expected.extend_from_slice(&operand);
    for replica in &sim.replicas {
        assert_eq!(replica.store().latest(b"k").unwrap().value, &expected[..]);
        let checksum = Large::of(&expected, std::net::SocketAddrV4::new(0.into(), 0)).checksum;
        assert_eq!(replica.values().answer((42, 2), checksum), None);
    }
    for replica in &sim.replicas[1..] {
        assert_eq!(replica.counters().values_staged_here, 1, "not the operand");
        assert_eq!(replica.counters().values_fetched, 1);
    }
    // A refused write's staged value goes too.
    let other = value_of(3000, 10);
    sim.stage_everywhere(3, &other);
    let mut cas = large_write(Op::Cas, b"k", &other, 0, 3);
    let mut header = tern_wire::Message::decode(&cas).unwrap().header;
    header.set_expected_version(99);
    cas[..72].copy_from_slice(zerocopy::IntoBytes::as_bytes(&header));
    sim.send(cas);
    sim.deliver_all();
    assert_eq!(sim.reply_to(3).status(), Status::CasMismatch);
    for replica in &sim.replicas {
        assert!(!replica.values().holds_staged((42, 3)));
    }
}

#[test]
fn a_client_cannot_mark_a_computed_value_as_its_own() {
    let mut sim = Sim::new(3);
    let value = value_of(2000, 11);
    sim.stage(1, &value);
    sim.send(large_write(Op::Put, b"k", &value, 0, 1));
    sim.deliver_all();
    // An APPEND whose client claims CLIENT_VALUE: the record of it does
    // not say so (its value is computed), so no replica may take a staged
    // operand for it. (The coordinator keeps only a client's write options;
    // the head trusts the flag only on a REPLICATE, too.)
    let operand = value_of(1500, 12);
    sim.stage_everywhere(2, &operand);
    sim.send(large_write(
        Op::Append,
        b"k",
        &operand,
        flags::CLIENT_VALUE,
        2,
    ));
    let middle = sim.chain[1];
    let mut records = 0;
    while let Some(datagram) = sim.network.pop_front() {
        if datagram.to == middle && datagram.op() == Op::Replicate {
            records += 1;
            assert!(!datagram.header().has_flag(flags::CLIENT_VALUE));
        }
        sim.receive(datagram);
    }
    assert!(records > 0);
    sim.deliver_all();
    let head = sim.head().store().latest(b"k").unwrap().value.to_vec();
    for replica in &sim.replicas {
        assert_eq!(replica.store().latest(b"k").unwrap().value, &head[..]);
    }
}

#[test]
fn a_write_that_names_its_value_and_carries_one_is_refused() {
    let mut sim = Sim::new(2);
    let value = value_of(2000, 13);
    sim.stage(1, &value);
    let mut header = Header::new(Op::Put, SHARD, EPOCH);
    header.key_hash.set(key_hash(b"k"));
    header.client_id.set(42);
    header.request_id.set(1);
    let nowhere = std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0);
    let extensions = Extensions {
        large: Some(Large::of(&value, nowhere)),
        ..Extensions::default()
    };
    let mut bytes = Vec::new();
    encode_append_with(&header, &extensions, b"k", b"inline too", &mut bytes).unwrap();
    sim.send(bytes);
    sim.deliver_all();
    assert_eq!(sim.reply_to(1).status(), Status::Malformed);
    for replica in &sim.replicas {
        assert!(replica.store().latest(b"k").is_none());
    }
}
