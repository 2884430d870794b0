//! Early commit in the XDP program (`bpf/writes.h`'s acknowledge_early,
//! `bpf/reads.h`): shard 5 with three replicas committing at the middle
//! (K = 2). The middle's acknowledgement answers the client in the kernel
//! and changes nothing else; the tail's completes the write and answers
//! nobody again; reads of dirty keys go to the middle, or up to user space
//! while it may lack a write answered before it was the commit point.
//! Needs root (CAP_BPF), as `make test` has.

mod common;

use common::*;
use tern_proto::coordinator::ShardState;
use tern_wire::maps::XdpCounter;
use tern_wire::{Op, Status, dirty_index, flags, key_hash};

/// The frame as it came but for its UDP checksum (the program clears it).
fn assert_unchanged(out: &[u8], frame: &[u8]) {
    assert_eq!(out.len(), frame.len());
    assert_eq!(&out[..40], &frame[..40]);
    assert_eq!(&out[42..], &frame[42..]);
}

#[test]
fn the_commit_points_ack_answers_in_the_kernel_and_the_tails_completes_silently() {
    let (coordinator, state) = load_committing(2);
    let index = dirty_index(key_hash(b"k"));
    let (verdict, _) = coordinator
        .test_run(&from_client(&client_put(b"k")))
        .unwrap();
    assert_eq!(verdict, XDP_TX);
    let (verdict, out) = coordinator
        .test_run(&from_replica(1, &ack(1, b"k")))
        .unwrap();
    assert_eq!(verdict, XDP_TX, "answered by the middle's acknowledgement");
    let out = sent(&out);
    assert_eq!(out.destination, CLIENT);
    assert_eq!(out.destination_mac, CLIENT_MAC);
    assert_eq!(out.header.op(), Op::Reply);
    assert_eq!(out.header.status(), Status::Ok);
    // Nothing else changed: still in flight, dirty, uncommitted.
    assert!(state.is_in_flight(1));
    assert!(state.answered_early(1));
    assert_eq!(state.dirty_count(index), 1);
    assert_eq!(state.commit_seq(), 0);
    assert_eq!(state.point_applied(), 1);
    assert_eq!(counter(&coordinator, XdpCounter::EarlyAcks), 1);
    // Answered once: a duplicate is dropped.
    let (verdict, _) = coordinator
        .test_run(&from_replica(1, &ack(1, b"k")))
        .unwrap();
    assert_eq!(verdict, XDP_DROP);
    // The tail's acknowledgement completes it (rule 4) and answers nothing.
    let (verdict, _) = coordinator.test_run(&from_tail(&ack(1, b"k"))).unwrap();
    assert_eq!(verdict, XDP_DROP);
    assert!(!state.is_in_flight(1));
    assert_eq!(state.dirty_count(index), 0);
    assert_eq!(state.commit_seq(), 1);
    assert_eq!(counter(&coordinator, XdpCounter::Acks), 1);
}

#[test]
fn a_write_the_commit_point_did_not_answer_is_answered_by_the_tail() {
    // Its early acknowledgement lost, or late: the tail's answers, and the
    // late one is dropped.
    let (coordinator, state) = load_committing(2);
    coordinator
        .test_run(&from_client(&client_put(b"k")))
        .unwrap();
    let (verdict, out) = coordinator.test_run(&from_tail(&ack(1, b"k"))).unwrap();
    assert_eq!(verdict, XDP_TX);
    assert_eq!(sent(&out).destination, CLIENT);
    let (verdict, _) = coordinator
        .test_run(&from_replica(1, &ack(1, b"k")))
        .unwrap();
    assert_eq!(verdict, XDP_DROP, "late: the write is complete");
    assert!(!state.answered_early(1));
}

#[test]
fn dirty_reads_go_to_the_commit_point_once_it_has_caught_up() {
    let (coordinator, state) = load_committing(2);
    coordinator
        .test_run(&from_client(&client_put(b"k")))
        .unwrap();
    // A new commit point that must reach seq 1 first: up to user space
    // (which answers TRY_AGAIN), the frame and the state untouched.
    state.reset_point(0, 1);
    let frame = from_client(&client_get(b"k"));
    let (verdict, out) = coordinator.test_run(&frame).unwrap();
    assert_eq!(verdict, XDP_PASS);
    assert_unchanged(&out, &frame);
    assert_eq!(counter(&coordinator, XdpCounter::PassPointBehind), 1);
    // Its acknowledgement of seq 1 says it holds it: the read goes there.
    coordinator
        .test_run(&from_replica(1, &ack(1, b"k")))
        .unwrap();
    let (verdict, out) = coordinator
        .test_run(&from_client(&client_get(b"k")))
        .unwrap();
    assert_eq!(verdict, XDP_TX);
    let out = sent(&out);
    assert_eq!(out.destination, replica(1));
    assert_eq!(out.destination_mac, replica_mac(1));
    assert!(out.header.has_flag(flags::TAIL_READ));
    // A clean key is still read anywhere at commit_seq.
    let (_, out) = coordinator
        .test_run(&from_client(&client_get(b"other")))
        .unwrap();
    assert!(!sent(&out).header.has_flag(flags::TAIL_READ));
}

#[test]
fn without_early_commit_an_ack_from_the_middle_goes_to_user_space() {
    let (coordinator, state) = load_committing(0);
    coordinator
        .test_run(&from_client(&client_put(b"k")))
        .unwrap();
    let frame = from_replica(1, &ack(1, b"k"));
    let (verdict, out) = coordinator.test_run(&frame).unwrap();
    assert_eq!(verdict, XDP_PASS);
    assert_unchanged(&out, &frame);
    assert!(!state.answered_early(1));
    assert_eq!(counter(&coordinator, XdpCounter::PassNotFromTail), 1);
}
