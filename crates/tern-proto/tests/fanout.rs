//! Fan-out replication on the simulated network: the head sends each
//! decided write to every other replica at once, every replica
//! acknowledges it to the coordinator, and the write is answered once all
//! have; reads are stamped; a new head syncs with the leaves before it
//! decides; histories under random delivery orders and the failure of any
//! replica stay linearizable (checked by `tern_check`).

mod sim;

use std::time::Duration;

use proptest::prelude::*;
use sim::history::{assert_k1_loses_only_what_the_head_alone_had, run_history};
use sim::*;
use tern_proto::coordinator::ShardState;
use tern_wire::{Op, Status, flags, key_hash};

fn acks_from(address: std::net::SocketAddrV4) -> impl Fn(&Datagram) -> bool {
    move |datagram| datagram.from == address && datagram.op() == Op::Ack
}

#[test]
fn a_write_is_answered_once_every_replica_acknowledged_it() {
    let mut sim = Sim::with_fanout(3);
    let (head, first, last) = (sim.chain[0], sim.chain[1], sim.chain[2]);
    sim.put(b"k", b"v", 1);
    // To the head, which sends the record to both leaves at once.
    assert!(sim.deliver_first(from_client));
    assert!(sim.deliver_first(to(head)));
    let replicates: Vec<_> = sim
        .network
        .iter()
        .filter(|d| d.op() == Op::Replicate)
        .map(|d| (d.from, d.to))
        .collect();
    assert_eq!(replicates, vec![(head, first), (head, last)]);
    sim.deliver_all_except(acks_from(last));
    assert!(sim.replies_to(1).is_empty(), "not answered before the last");
    assert_eq!(sim.shard().counters().fanout_acks, 2);
    assert_eq!(sim.shard().state().commit_seq(), 0);
    assert!(
        !sim.network.iter().any(|d| d.from == first),
        "a leaf passes nothing on"
    );
    sim.deliver_all();
    assert_eq!(sim.reply_to(1).status(), Status::Ok);
    assert_eq!(sim.shard().state().commit_seq(), 1);
    for replica in &sim.replicas {
        assert_eq!(replica.store().latest(b"k").unwrap().value, b"v");
    }
}

#[test]
fn every_replica_answers_values_as_a_tail_would() {
    let mut sim = Sim::with_fanout(3);
    sim.send(request(Op::IncrBy, b"n", b"5", 0, 1));
    sim.deliver_all();
    let mut incr = tern_wire::Header::new(Op::IncrBy, SHARD, EPOCH);
    incr.key_hash.set(key_hash(b"n"));
    incr.client_id.set(42);
    incr.request_id.set(2);
    incr.flags |= flags::RETURN_NEW;
    sim.send(tern_wire::encode(&incr, b"n", b"3").unwrap());
    // Whichever acknowledgement comes last carries the answer.
    let head = sim.chain[0];
    sim.deliver_all_except(acks_from(head));
    sim.deliver_all();
    let reply = sim.reply_to(2);
    assert_eq!(reply.status(), Status::Ok);
    assert_eq!(reply.value, b"8");
}

#[test]
fn reads_of_a_key_with_a_write_in_flight_are_stamped_with_what_all_hold() {
    let mut sim = Sim::with_fanout(3);
    let last = sim.chain[2];
    let to_last = |d: &Datagram| d.to == last && d.op() == Op::Replicate;
    sim.overwrite_holding(to_last);
    assert!(sim.replies_to(2).is_empty());
    // The head and the first leaf hold "new"; the read must not see it
    // (the last leaf may never get it if both fail), whoever answers.
    for request_id in 3..6 {
        sim.get(b"k", request_id);
        sim.deliver_all_except(to_last);
        let read = sim.reply_to(request_id);
        assert_eq!(read.status(), Status::Ok);
        assert_eq!(read.value, b"old");
    }
    assert_eq!(sim.shard().counters().reads_tail, 0);
    sim.deliver_all();
    sim.get(b"k", 9);
    sim.deliver_all();
    assert_eq!(sim.reply_to(9).value, b"new");
}

#[test]
fn a_lost_acknowledgement_is_sent_again_after_the_resend() {
    let mut sim = Sim::with_fanout(3);
    let first = sim.chain[1];
    sim.put(b"k", b"v", 1);
    sim.deliver_all_except(acks_from(first));
    assert_eq!(sim.lose(acks_from(first)).len(), 1);
    assert!(sim.replies_to(1).is_empty());
    sim.advance(Duration::from_millis(120));
    sim.deliver_all();
    assert_eq!(sim.reply_to(1).status(), Status::Ok);
    assert_eq!(sim.shard().state().commit_seq(), 1);
}

#[test]
fn a_new_head_takes_the_records_only_a_leaf_holds_before_it_decides() {
    // The head sends an INCRBY to the last leaf only, then fails: the first
    // leaf becomes head and lacks it. It must take the record (the failed
    // head's decision) from the leaf that has it, and apply the retry once.
    let mut sim = Sim::with_fanout(3);
    let (head, first) = (sim.chain[0], sim.chain[1]);
    sim.send(request(Op::IncrBy, b"n", b"5", 0, 1));
    sim.deliver_all_except(|d| d.from == head && d.to == first);
    sim.lose(|d| d.from == head && d.to == first);
    assert!(sim.replies_to(1).is_empty());
    assert!(sim.replicas[2].store().latest(b"n").is_some());
    assert!(sim.replicas[1].store().latest(b"n").is_none());
    sim.fail_replica_in_place(0);
    for _ in 0..6 {
        sim.advance(Duration::from_millis(120));
        sim.deliver_all();
    }
    let epoch = sim.replica_config(0).epoch;
    // The client's retry is answered from dedup, not applied again.
    sim.send(request_at(epoch, Op::IncrBy, b"n", b"5", 0, 1));
    sim.deliver_all();
    assert!(
        sim.replies_to(1)
            .iter()
            .any(|reply| reply.status() == Status::Ok)
    );
    let counters = sim.replicas[0].counters();
    assert_eq!(counters.fanout_syncs, 1);
    assert!(counters.fanout_synced_records >= 1);
    for replica in &sim.replicas {
        assert_eq!(replica.store().latest(b"n").unwrap().value, b"5");
    }
}

#[test]
fn a_coordinator_that_starts_waits_for_every_replica_and_takes_the_least() {
    let mut sim = Sim::with_fanout(3);
    let last = sim.chain[2];
    sim.put(b"a", b"1", 1);
    sim.deliver_all();
    sim.put(b"a", b"2", 2);
    sim.deliver_all_except(to(last));
    sim.lose(to(last));
    // A coordinator that starts afresh: the last leaf holds seq 1 only.
    sim.coordinator = Sim::fresh_coordinator_with(&sim.chain, 0, true);
    sim.tick();
    let probed: Vec<_> = sim
        .network
        .iter()
        .filter(|d| d.op() == Op::SeqProbe)
        .map(|d| d.to)
        .collect();
    assert_eq!(probed, sim.chain, "every replica is probed");
    sim.deliver_all_except(to(last));
    assert!(!sim.shard().is_ready(), "waits for the last leaf");
    sim.deliver_all();
    assert!(sim.shard().is_ready());
    assert_eq!(sim.shard().state().commit_seq(), 1, "the least applied");
}

#[test]
fn committing_early_a_write_is_answered_at_its_kth_acknowledgement() {
    let mut sim = Sim::with_fanout_early(3, 2);
    let (first, last) = (sim.chain[1], sim.chain[2]);
    // The head's and the first leaf's: answered, not complete.
    sim.overwrite_holding(to(last));
    assert_eq!(sim.reply_to(2).status(), Status::Ok);
    let state = sim.shard().state();
    assert_eq!(state.commit_seq(), 1);
    assert_eq!(state.point_applied(), 2);
    assert!(state.is_in_flight(2));
    // A read of the dirty key goes to the head, stamped with what two
    // hold: it sees the answered write.
    sim.get(b"k", 3);
    let read = |sim: &Sim| {
        let datagram = sim.network.iter().find(|d| d.op() == Op::Get).unwrap();
        (datagram.to, datagram.header().seq.get())
    };
    sim.deliver_first(from_client);
    assert_eq!(read(&sim), (sim.chain[0], 2));
    sim.deliver_all_except(to(last));
    assert_eq!(sim.reply_to(3).value, b"new");
    // The last acknowledgement completes it and answers nobody again.
    sim.deliver_all();
    assert_eq!(sim.replies_to(2).len(), 1);
    assert_eq!(sim.shard().state().commit_seq(), 2);
    assert!(sim.network.iter().all(|d| d.from != first));
}

#[test]
fn committing_early_a_coordinator_that_starts_stamps_reads_with_what_k_hold() {
    // Seq 2 answered at two acknowledgements (head and first leaf); the
    // coordinator restarts: commit_seq starts at the least applied (1),
    // but reads must still see seq 2.
    let mut sim = Sim::with_fanout_early(3, 2);
    let last = sim.chain[2];
    sim.overwrite_holding(to(last));
    sim.lose(to(last));
    assert_eq!(sim.reply_to(2).status(), Status::Ok);
    sim.coordinator = Sim::fresh_coordinator_with(&sim.chain, 2, true);
    sim.tick();
    sim.deliver_all_except(to(last));
    sim.deliver_all();
    let state = sim.shard().state();
    assert_eq!(state.commit_seq(), 1, "the least applied");
    assert_eq!(state.point_applied(), 2, "the second most applied");
    for request_id in 10..13 {
        sim.get(b"k", request_id);
        sim.deliver_all();
        let read = sim.reply_to(request_id);
        assert_eq!(read.status(), Status::Ok);
        assert_eq!(read.value, b"new", "the answered write");
    }
}

#[test]
fn with_k_1_the_head_alone_answers_and_its_failure_loses_the_write() {
    // The documented loss of K = 1 under fan-out too: answered at the
    // head's own acknowledgement, gone if the head fails before a leaf
    // has it. A write a leaf received survives.
    assert_k1_loses_only_what_the_head_alone_had(Sim::with_fanout_early(3, 1));
}

/// A transaction across shards prepared here (the other participant, shard
/// 9, is never asked): it writes `a`.
fn prepare_writing_a(sim: &Sim, request_id: u64) -> Vec<u8> {
    use tern_wire::txn::{Participant, Prepare};
    let other = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 0, 0, 77), 7000);
    let value = Prepare {
        id: txn_id(),
        lease_ms: 2000,
        participants: vec![
            Participant {
                shard: SHARD,
                coordinator: sim.coordinator_addr,
            },
            Participant {
                shard: 9,
                coordinator: other,
            },
        ],
        items: vec![tern_wire::multi::Item::put(b"a", b"2")],
    }
    .encode()
    .unwrap();
    request(Op::Prepare, b"a", &value, 0, request_id)
}

fn txn_id() -> tern_wire::txn::TxnId {
    tern_wire::txn::TxnId {
        client_id: 42,
        txn_seq: 1,
    }
}

fn reads_of_a(
    sim: &mut Sim,
    request_ids: std::ops::Range<u64>,
    held: impl Fn(&Datagram) -> bool + Copy,
) -> Vec<Reply> {
    request_ids
        .map(|request_id| {
            sim.get(b"a", request_id);
            sim.deliver_all_except(held);
            sim.reply_to(request_id)
        })
        .collect()
}

#[test]
fn a_transactions_write_is_never_read_as_before_once_a_replica_applied_its_commit() {
    // The COMMIT reaches the head and the first leaf (their locks gone)
    // but not the last: its transaction may be visible at its other shard
    // already, so no replica may answer the value before it, though the
    // read's stamp is below the COMMIT.
    let mut sim = Sim::with_fanout(3);
    let last = sim.chain[2];
    sim.put(b"a", b"1", 1);
    sim.deliver_all();
    sim.send(prepare_writing_a(&sim, 2));
    sim.deliver_all();
    assert_eq!(sim.reply_to(2).status(), Status::Ok);
    sim.send(request(Op::Commit, b"", &txn_id().encode(), 0, 3));
    let commit_to_last = |d: &Datagram| d.to == last && d.op() == Op::Replicate;
    sim.deliver_all_except(commit_to_last);
    assert!(sim.replies_to(3).is_empty(), "not complete");
    assert_eq!(sim.replicas[1].store().latest(b"a").unwrap().value, b"2");
    for read in reads_of_a(&mut sim, 10..16, commit_to_last) {
        assert_eq!(read.status(), Status::Locked, "{:?}", read.value);
    }
    sim.deliver_all();
    assert_eq!(sim.reply_to(3).status(), Status::Ok);
    for read in reads_of_a(&mut sim, 20..23, |_| false) {
        assert_eq!(read.value, b"2");
    }
}

#[test]
fn a_late_read_stamped_below_a_commit_gets_the_committed_value() {
    // A read forwarded (stamped) before the COMMIT completed arrives after
    // the replica learnt it committed: the value before it is gone there.
    let mut sim = Sim::with_fanout(3);
    sim.put(b"a", b"1", 1);
    sim.deliver_all();
    sim.send(prepare_writing_a(&sim, 2));
    sim.deliver_all();
    sim.send(request(Op::Commit, b"", &txn_id().encode(), 0, 3));
    // To the head, which applies it and sends it on.
    assert!(sim.deliver_first(from_client));
    assert!(sim.deliver_first(to(sim.chain[0])));
    sim.get(b"a", 4);
    assert!(sim.deliver_first(from_client));
    let late = sim.lose(|d| d.op() == Op::Get);
    assert_eq!(late.len(), 1);
    assert!(late[0].header().seq.get() < 3, "stamped below the COMMIT");
    sim.deliver_all();
    assert_eq!(sim.reply_to(3).status(), Status::Ok);
    // A later write carries the commit to every replica.
    sim.put(b"z", b"1", 5);
    sim.deliver_all();
    sim.receive(late[0].clone());
    sim.deliver_all();
    let read = sim.reply_to(4);
    assert_eq!(read.status(), Status::Ok);
    assert_eq!(read.value, b"2");
}

#[test]
fn a_leaf_restored_from_a_snapshot_refuses_reads_stamped_below_it() {
    // Its snapshot does not say which keys a COMMIT not yet known
    // committed wrote, so it cannot tell which older versions are safe.
    let mut sim = Sim::with_fanout(3);
    sim.put(b"a", b"1", 1);
    sim.deliver_all();
    sim.put(b"a", b"2", 2);
    sim.deliver_all();
    let snapshot = sim.replicas[2].snapshot();
    sim.restart_replica(2, Some(snapshot));
    let read_at = |stamp: u64, request_id: u64| {
        let mut header = tern_wire::Header::new(Op::Get, SHARD, EPOCH);
        header.key_hash.set(key_hash(b"a"));
        header.client_id.set(42);
        header.request_id.set(request_id);
        header.seq.set(stamp);
        header.commit_seq.set(stamp);
        header.set_reply_addr(CLIENT);
        tern_wire::encode(&header, b"a", b"").unwrap()
    };
    let (coordinator, leaf) = (sim.coordinator_addr, sim.chain[2]);
    for (stamp, request_id) in [(1, 10), (2, 11)] {
        sim.receive(Datagram {
            from: coordinator,
            to: leaf,
            bytes: read_at(stamp, request_id),
        });
        sim.deliver_all();
    }
    assert_eq!(sim.reply_to(10).status(), Status::TryAgain, "below it");
    let read = sim.reply_to(11);
    assert_eq!(read.status(), Status::Ok, "at it");
    assert_eq!(read.value, b"2");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn histories_under_fanout_are_linearizable(
        replicas in 1usize..=4,
        failed in proptest::option::of(0usize..4),
        in_place in any::<bool>(),
        ops in proptest::collection::vec((any::<bool>(), 0u8..2), 2..14),
        picks in proptest::collection::vec(0usize..64, 1..16),
    ) {
        // A failure leaves at least one replica.
        let failed = failed.filter(|&index| index < replicas && replicas > 1);
        run_history(Sim::with_fanout(replicas), failed, in_place, &ops, &picks);
    }

    #[test]
    fn histories_under_fanout_committing_early_are_linearizable(
        replicas in 2usize..=4,
        early_commit in 1u32..=3,
        failed in proptest::option::of(0usize..4),
        in_place in any::<bool>(),
        ops in proptest::collection::vec((any::<bool>(), 0u8..2), 2..14),
        picks in proptest::collection::vec(0usize..64, 1..16),
    ) {
        // K = 1 survives no failure of the head (its documented loss).
        let failed = failed
            .filter(|&index| index < replicas && !(early_commit == 1 && index == 0));
        let sim = Sim::with_fanout_early(replicas, early_commit);
        run_history(sim, failed, in_place, &ops, &picks);
    }
}
