//! Replicas that restart from their log: nothing they applied is lost, they
//! catch up on what they missed, and they serve resends again.

mod sim;

use std::time::Duration;

use sim::*;
use tern_wire::{Op, Status};

fn put_all(sim: &mut Sim, writes: &[(&[u8], &[u8])], first_request: u64) {
    for (offset, (key, value)) in writes.iter().enumerate() {
        sim.put(key, value, first_request + offset as u64);
    }
    sim.deliver_all();
}

#[test]
fn every_applied_write_is_journaled_once_in_sequence_order() {
    let mut sim = Sim::new(3).with_journals();
    put_all(&mut sim, &[(b"a", b"1"), (b"b", b"2"), (b"a", b"3")], 1);
    for disk in &sim.disks {
        let seqs: Vec<u64> = disk.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
    }
}

#[test]
fn a_replica_restarted_from_its_log_has_everything_it_applied() {
    let mut sim = Sim::new(3).with_journals();
    put_all(&mut sim, &[(b"a", b"1"), (b"b", b"2"), (b"a", b"3")], 1);
    for index in 0..3 {
        sim.restart_replica(index, None);
        let replica = &sim.replicas[index];
        assert_eq!(replica.store().applied_seq(), 3);
        assert_eq!(replica.store().latest(b"a").unwrap().value, b"3");
        assert_eq!(replica.store().latest(b"b").unwrap().value, b"2");
    }
    // The restarted head still deduplicates a retry of an old write.
    sim.send(request(Op::Put, b"a", b"3", 0, 3));
    sim.deliver_all();
    assert_eq!(sim.head().counters().dedup_hits, 1);
    assert_eq!(sim.tail().store().latest(b"a").unwrap().version, 3);
}

#[test]
fn a_replica_that_was_down_catches_up_from_its_predecessor() {
    let mut sim = Sim::new(3).with_journals();
    put_all(&mut sim, &[(b"a", b"1")], 1);
    // The middle crashes; writes sent to it meanwhile are lost.
    sim.put(b"a", b"2", 2);
    sim.put(b"b", b"3", 3);
    let middle = sim.chain[1];
    sim.deliver_all_except(to(middle));
    sim.lose(to(middle));
    sim.restart_replica(1, None);
    assert_eq!(sim.replicas[1].store().applied_seq(), 1);
    // The coordinator resends what was never acknowledged; the middle asks
    // the head for the gap; everything reaches the tail once.
    sim.advance(Duration::from_millis(150));
    sim.deliver_all();
    sim.advance(Duration::from_millis(50));
    sim.deliver_all();
    assert_eq!(sim.reply_to(2).status(), Status::Ok);
    assert_eq!(sim.reply_to(3).status(), Status::Ok);
    for replica in &sim.replicas {
        assert_eq!(replica.store().applied_seq(), 3);
        assert_eq!(replica.store().latest(b"a").unwrap().value, b"2");
    }
}

#[test]
fn a_restarted_predecessor_can_still_resend_what_it_logged() {
    let mut sim = Sim::new(3).with_journals();
    put_all(&mut sim, &[(b"a", b"1"), (b"b", b"2")], 1);
    // The head restarts: its memory of what it sent is rebuilt from its log,
    // so it answers the tail's... here the middle's request for a gap.
    sim.restart_replica(0, None);
    sim.restart_replica(1, Some(sim.replicas[1].snapshot()));
    let mut retransmit = tern_wire::Header::new(Op::Retransmit, SHARD, EPOCH);
    retransmit.seq.set(1);
    retransmit.set_retransmit_last(2);
    let bytes = tern_wire::encode(&retransmit, b"", b"").unwrap();
    sim.network.push_back(Datagram {
        from: sim.chain[1],
        to: sim.chain[0],
        bytes,
    });
    sim.deliver_first(to(sim.chain[0]));
    let resent: Vec<u64> = sim
        .network
        .iter()
        .filter(|d| d.op() == Op::Replicate)
        .map(|d| d.header().seq.get())
        .collect();
    assert_eq!(resent, vec![1, 2]);
}

#[test]
fn a_snapshot_and_the_records_after_it_restore_the_same_replica() {
    let mut sim = Sim::new(2).with_journals();
    put_all(&mut sim, &[(b"a", b"1"), (b"b", b"2")], 1);
    let snapshot = sim.replicas[1].snapshot();
    assert_eq!(snapshot.0, 2);
    put_all(&mut sim, &[(b"a", b"3")], 3);
    sim.send(request(Op::Delete, b"b", b"", 0, 4));
    sim.deliver_all();
    let before = (
        sim.tail().store().latest(b"a").map(|v| v.value.to_vec()),
        sim.tail().render_stats(),
    );
    sim.restart_replica(1, Some(snapshot));
    let tail = sim.tail();
    assert_eq!(tail.store().applied_seq(), 4);
    assert_eq!(
        tail.store().latest(b"a").map(|v| v.value.to_vec()),
        before.0
    );
    assert_eq!(tail.store().latest(b"b"), None);
    assert_eq!(
        tail.store().read_at(b"a", 1).unwrap().value,
        b"1",
        "older versions too"
    );
}

#[test]
fn the_writes_a_replica_forgot_stay_refused_after_a_restart() {
    let writes = tern_proto::replica::DEDUP_PER_CLIENT_MAX as u64 + 2;
    for from_snapshot in [false, true] {
        let mut sim = Sim::new(1).with_journals();
        for request_id in 1..=writes {
            sim.send(request(Op::IncrBy, b"n", b"1", 0, request_id));
            sim.deliver_all();
        }
        let snapshot = from_snapshot.then(|| sim.head().snapshot());
        sim.restart_replica(0, snapshot);
        // A late copy of the first write: its outcome was dropped before
        // the restart, and the restarted head still knows it dropped it.
        sim.send(request(Op::IncrBy, b"n", b"1", 0, 1));
        sim.deliver_all();
        assert_eq!(sim.replies_to(1)[1].status(), Status::Forgotten);
        assert_eq!(
            sim.head().store().latest(b"n").unwrap().value,
            writes.to_string().as_bytes(),
            "applied once (restored from a snapshot: {from_snapshot})"
        );
    }
}

#[test]
fn a_snapshot_in_the_first_format_still_restores_with_its_dedup_outcomes() {
    // Written by Tern before snapshots had a format number: the store, the
    // highest seq seen, then each client's recent outcomes.
    let mut sim = Sim::new(1);
    sim.put(b"k", b"v", 5);
    sim.deliver_all();
    let mut bytes = Vec::new();
    let mut store = tern_store::Store::new();
    store.apply(1, b"k", tern_store::Write::Put(b"v"));
    store.encode(&mut bytes);
    bytes.extend_from_slice(&1u64.to_le_bytes()); // highest seen
    bytes.extend_from_slice(&1u64.to_le_bytes()); // one client
    bytes.extend_from_slice(&42u64.to_le_bytes()); // its id
    bytes.extend_from_slice(&1u64.to_le_bytes()); // its last seq
    bytes.extend_from_slice(&1u32.to_le_bytes()); // one outcome
    bytes.extend_from_slice(&5u64.to_le_bytes()); // request 5
    bytes.push(Status::Ok as u8);
    bytes.extend_from_slice(&1u64.to_le_bytes()); // version 1
    sim.restart_replica(0, Some((1, bytes)));
    // A retry of request 5 is answered from the restored outcome.
    sim.put(b"k", b"v", 5);
    sim.deliver_all();
    assert_eq!(sim.replies_to(5)[1].header.version(), 1);
    assert_eq!(sim.head().counters().dedup_hits, 1);
}
