//! Fan-out replication in the XDP program (`bpf/writes.h`'s
//! count_fanout_ack, `bpf/reads.h`): shard 5 with three replicas, each of
//! which acknowledges every write. The first two acknowledgements are
//! counted in the window slot and dropped; the last completes the write
//! (rule 4) and answers the client in the kernel; reads are stamped
//! whatever is dirty. Needs root (CAP_BPF), as `make test` has.

mod common;

use common::*;
use tern_proto::coordinator::ShardState;
use tern_wire::maps::XdpCounter;
use tern_wire::{Header, Op, Status, dirty_index, flags, key_hash};
use zerocopy::FromBytes;

#[test]
fn the_last_replicas_acknowledgement_completes_and_answers_in_the_kernel() {
    let (coordinator, state) = load_fanout();
    let index = dirty_index(key_hash(b"k"));
    let (verdict, _) = coordinator
        .test_run(&from_client(&client_put(b"k")))
        .unwrap();
    assert_eq!(verdict, XDP_TX);
    // In any order: here the middle position, then the head.
    for replica in [1, 0] {
        let (verdict, _) = coordinator
            .test_run(&from_replica(replica, &ack(1, b"k")))
            .unwrap();
        assert_eq!(verdict, XDP_DROP, "counted: replica {replica}");
        assert!(state.is_in_flight(1));
        assert_eq!(state.commit_seq(), 0);
        assert_eq!(state.dirty_count(index), 1);
    }
    // A duplicate is counted once.
    let (verdict, _) = coordinator
        .test_run(&from_replica(1, &ack(1, b"k")))
        .unwrap();
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(counter(&coordinator, XdpCounter::FanoutAcks), 3);
    let (verdict, out) = coordinator
        .test_run(&from_replica(2, &ack(1, b"k")))
        .unwrap();
    assert_eq!(verdict, XDP_TX, "the last one answers");
    let out = sent(&out);
    assert_eq!(out.destination, CLIENT);
    assert_eq!(out.destination_mac, CLIENT_MAC);
    assert_eq!(out.header.op(), Op::Reply);
    assert_eq!(out.header.status(), Status::Ok);
    assert!(!state.is_in_flight(1));
    assert_eq!(state.commit_seq(), 1);
    assert_eq!(state.dirty_count(index), 0);
    assert_eq!(counter(&coordinator, XdpCounter::Acks), 1);
    // A late copy finds it complete: dropped, nothing lowered again.
    let (verdict, _) = coordinator
        .test_run(&from_replica(0, &ack(1, b"k")))
        .unwrap();
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(counter(&coordinator, XdpCounter::AcksNotInFlight), 1);
}

#[test]
fn an_acknowledgement_counted_under_an_earlier_epoch_goes_up_untouched() {
    let (coordinator, state) = load_fanout();
    coordinator
        .test_run(&from_client(&client_put(b"k")))
        .unwrap();
    for replica in [0, 1] {
        coordinator
            .test_run(&from_replica(replica, &ack(1, b"k")))
            .unwrap();
    }
    // The chain changes (a new epoch): positions may name other replicas.
    let macs: std::collections::HashMap<_, _> =
        (0..3).map(|i| (replica(i), replica_mac(i))).collect();
    let shard = tern_proto::coordinator::ShardConfig {
        incarnation: 0,
        shard: 5,
        epoch: EPOCH + 1,
        chain: vec![replica(0), replica(1), replica(2)],
        slots: vec![[0, tern_wire::SLOT_COUNT]],
        early_commit: 0,
        fanout: true,
    };
    coordinator.install_route(&shard, &macs).unwrap();
    let mut next = ack(1, b"k");
    Header::mut_from_prefix(&mut next[..])
        .unwrap()
        .0
        .epoch
        .set(EPOCH + 1);
    let (verdict, _) = coordinator.test_run(&from_replica(2, &next)).unwrap();
    assert_eq!(verdict, XDP_PASS, "not completed on the old epoch's count");
    assert_eq!(counter(&coordinator, XdpCounter::PassFanoutEpoch), 1);
    assert!(state.is_in_flight(1), "left for user space");
    // User space counts it afresh under the current epoch: one of three.
    assert_eq!(
        state.fanout_ack(1, EPOCH + 1, 2, 3),
        tern_proto::coordinator::FanoutAck::Counted { acks: 1 }
    );
    assert_eq!(
        state.fanout_ack(1, EPOCH + 1, 2, 3),
        tern_proto::coordinator::FanoutAck::Duplicate
    );
}

#[test]
fn an_acknowledgement_from_outside_the_chain_goes_up() {
    let (coordinator, state) = load_fanout();
    coordinator
        .test_run(&from_client(&client_put(b"k")))
        .unwrap();
    let stranger = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 9, 0, 99), 7100);
    let frame = frame(stranger, [2, 0, 0, 0, 9, 9], COORDINATOR, &ack(1, b"k"));
    let (verdict, _) = coordinator.test_run(&frame).unwrap();
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(counter(&coordinator, XdpCounter::PassNotFromTail), 1);
    assert!(state.is_in_flight(1));
}

#[test]
fn reads_of_keys_with_writes_in_flight_are_stamped() {
    let (coordinator, _state) = load_fanout();
    coordinator
        .test_run(&from_client(&client_put(b"k")))
        .unwrap();
    for _ in 0..3 {
        let (verdict, out) = coordinator
            .test_run(&from_client(&client_get(b"k")))
            .unwrap();
        assert_eq!(verdict, XDP_TX);
        let out = sent(&out);
        assert!(!out.header.has_flag(flags::TAIL_READ));
        assert_eq!(out.header.seq.get(), 0, "stamped with commit_seq");
    }
    assert_eq!(counter(&coordinator, XdpCounter::ReadsAny), 3);
    assert_eq!(counter(&coordinator, XdpCounter::ReadsTail), 0);
}

#[test]
fn committing_early_the_kth_acknowledgement_answers_and_the_last_completes_silently() {
    let (coordinator, state) = load_fanout_committing(2);
    let index = dirty_index(key_hash(b"k"));
    coordinator
        .test_run(&from_client(&client_put(b"k")))
        .unwrap();
    let (verdict, _) = coordinator
        .test_run(&from_replica(2, &ack(1, b"k")))
        .unwrap();
    assert_eq!(verdict, XDP_DROP, "the first of two");
    let (verdict, out) = coordinator
        .test_run(&from_replica(0, &ack(1, b"k")))
        .unwrap();
    assert_eq!(verdict, XDP_TX, "the second answers");
    let out = sent(&out);
    assert_eq!(out.destination, CLIENT);
    assert_eq!(out.header.op(), Op::Reply);
    assert!(state.answered_early(1));
    assert_eq!(state.point_applied(), 1);
    assert_eq!(state.commit_seq(), 0);
    assert_eq!(state.dirty_count(index), 1);
    assert_eq!(counter(&coordinator, XdpCounter::EarlyAcks), 1);
    // A read of the dirty key: to the head, stamped with what two hold.
    let (verdict, out) = coordinator
        .test_run(&from_client(&client_get(b"k")))
        .unwrap();
    assert_eq!(verdict, XDP_TX);
    let read = sent(&out);
    assert_eq!(read.destination, replica(0));
    assert!(!read.header.has_flag(flags::TAIL_READ));
    assert_eq!(read.header.seq.get(), 1);
    assert_eq!(read.header.commit_seq.get(), 1);
    // The last completes the write (rule 4) and answers nobody again.
    let (verdict, _) = coordinator
        .test_run(&from_replica(1, &ack(1, b"k")))
        .unwrap();
    assert_eq!(verdict, XDP_DROP);
    assert!(!state.is_in_flight(1));
    assert_eq!(state.commit_seq(), 1);
    assert_eq!(state.dirty_count(index), 0);
    // Clean again: round robin, stamped with commit_seq.
    let (_, out) = coordinator
        .test_run(&from_client(&client_get(b"k")))
        .unwrap();
    assert_eq!(sent(&out).header.seq.get(), 1);
}

#[test]
fn committing_early_a_dirty_read_behind_the_barrier_goes_up_untouched() {
    let (coordinator, state) = load_fanout_committing(2);
    coordinator
        .test_run(&from_client(&client_put(b"k")))
        .unwrap();
    state.reset_point(0, 1);
    let (verdict, _) = coordinator
        .test_run(&from_client(&client_get(b"k")))
        .unwrap();
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(counter(&coordinator, XdpCounter::PassPointBehind), 1);
}
