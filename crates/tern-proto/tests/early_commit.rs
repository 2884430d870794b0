//! Early commit (Whale) on the simulated network: a write is answered once
//! the first K replicas hold it, the tail's acknowledgement answers
//! nothing again, reads of dirty keys go to the commit point, and histories
//! under random delivery orders and a failure of any replica stay
//! linearizable (checked by `tern_check`). With K = 1 a write answered by
//! the head alone is lost when the head fails before passing it on: the
//! documented loss, and nothing more.

mod sim;

use std::time::Duration;

use proptest::prelude::*;
use sim::history::{assert_k1_loses_only_what_the_head_alone_had, run_history};
use sim::*;
use tern_proto::coordinator::ShardState;
use tern_wire::{Op, Status, dirty_index, flags, key_hash};

#[test]
fn a_write_is_answered_before_the_tail_holds_it() {
    let mut sim = Sim::with_early_commit(3, 2);
    let tail = sim.chain[2];
    sim.put(b"k", b"v1", 1);
    sim.deliver_all_except(to(tail));
    let reply = sim.reply_to(1);
    assert_eq!(reply.status(), Status::Ok);
    assert_eq!(sim.tail().store().applied_seq(), 0, "the tail has nothing");
    assert_eq!(sim.shard().counters().early_acks, 1);
    // Still in flight: dirty until the tail holds it.
    let state = sim.shard().state();
    assert_eq!(state.dirty_count(dirty_index(key_hash(b"k"))), 1);
    assert_eq!(state.commit_seq(), 0);
    // A read of the dirty key goes to the commit point and sees the write.
    sim.get(b"k", 2);
    sim.deliver_all_except(to(tail));
    let read = sim.reply_to(2);
    assert_eq!(read.status(), Status::Ok);
    assert_eq!(read.value, b"v1");
    // The tail's acknowledgement completes the write, answering nothing.
    sim.deliver_all();
    assert_eq!(sim.replies_to(1).len(), 1, "answered once");
    let state = sim.shard().state();
    assert_eq!(state.dirty_count(dirty_index(key_hash(b"k"))), 0);
    assert_eq!(state.commit_seq(), 1);
}

#[test]
fn the_commit_point_answers_values_as_the_tail_would() {
    let mut sim = Sim::with_early_commit(3, 2);
    let tail = sim.chain[2];
    sim.send(request(Op::IncrBy, b"n", b"5", 0, 1));
    sim.deliver_all();
    let mut incr = tern_wire::Header::new(Op::IncrBy, SHARD, EPOCH);
    incr.key_hash.set(key_hash(b"n"));
    incr.client_id.set(42);
    incr.request_id.set(2);
    incr.flags |= flags::RETURN_NEW;
    sim.send(tern_wire::encode(&incr, b"n", b"3").unwrap());
    sim.deliver_all_except(to(tail));
    let reply = sim.reply_to(2);
    assert_eq!(reply.status(), Status::Ok);
    assert_eq!(reply.value, b"8");
}

#[test]
fn a_chain_no_longer_than_k_commits_at_its_tail() {
    let mut sim = Sim::with_early_commit(2, 2);
    let tail = sim.chain[1];
    sim.put(b"k", b"v", 1);
    sim.deliver_all_except(to(tail));
    assert!(sim.replies_to(1).is_empty(), "not answered before the tail");
    sim.deliver_all();
    assert_eq!(sim.reply_to(1).status(), Status::Ok);
    assert_eq!(sim.shard().counters().early_acks, 0);
}

#[test]
fn a_new_commit_point_serves_dirty_reads_only_once_caught_up() {
    // Answered by the middle; the middle fails before the tail has it: the
    // tail becomes the commit point, and must not answer the key's reads
    // with the older value meanwhile.
    let mut sim = Sim::with_early_commit(3, 2);
    let tail = sim.chain[2];
    sim.overwrite_holding(to(tail));
    assert_eq!(sim.reply_to(2).status(), Status::Ok);
    sim.lose(to(tail));
    sim.fail_replica_in_place(1);
    let epoch = sim.replica_config(0).epoch;
    sim.send(request_at(epoch, Op::Get, b"k", b"", 0, 3));
    sim.deliver_datagrams();
    let early = sim.replies_to(3);
    assert!(
        early
            .iter()
            .all(|reply| reply.status() == Status::TryAgain || reply.value == b"new"),
        "a read went back: {early:?}"
    );
    // The chain catches up (resends), and the read is served.
    for _ in 0..5 {
        sim.advance(Duration::from_millis(120));
        sim.deliver_all();
    }
    sim.send(request_at(epoch, Op::Get, b"k", b"", 0, 4));
    sim.deliver_all();
    let read = sim.reply_to(4);
    assert_eq!(read.status(), Status::Ok);
    assert_eq!(read.value, b"new");
}

#[test]
fn with_k_1_the_head_alone_answers_and_its_failure_loses_the_write() {
    // The documented loss of K = 1: a write answered when only the head
    // holds it is gone if the head fails before passing it on. Nothing
    // else is lost: a write the middle received survives.
    assert_k1_loses_only_what_the_head_alone_had(Sim::with_early_commit(3, 1));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn histories_under_early_commit_are_linearizable(
        early_commit in 1u32..=3,
        failed in proptest::option::of(0usize..3),
        in_place in any::<bool>(),
        ops in proptest::collection::vec((any::<bool>(), 0u8..2), 2..14),
        picks in proptest::collection::vec(0usize..64, 1..16),
    ) {
        // K = 1 survives no failure of the head (its documented loss).
        let failed = failed.filter(|&index| !(early_commit == 1 && index == 0));
        run_history(Sim::with_early_commit(3, early_commit), failed, in_place, &ops, &picks);
    }
}
