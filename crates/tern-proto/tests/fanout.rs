//! Fan-out replication on the simulated network: the head sends each
//! decided write to every other replica at once, every replica
//! acknowledges it to the coordinator, and the write is answered once all
//! have; reads are stamped; a new head syncs with the leaves before it
//! decides; histories under random delivery orders and the failure of any
//! replica stay linearizable (checked by `tern_check`).

mod sim;

use std::time::Duration;

use proptest::prelude::*;
use sim::history::run_history;
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
    sim.put(b"k", b"old", 1);
    sim.deliver_all();
    sim.put(b"k", b"new", 2);
    let to_last = |d: &Datagram| d.to == last && d.op() == Op::Replicate;
    sim.deliver_all_except(to_last);
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
}
