//! One test (or more) per consistency rule of DESIGN.md, each driving the real
//! cores into the situation the rule exists for and asserting the outcome.

mod sim;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use sim::*;
use tern_proto::coordinator::{
    ReadRoute, ShardConfig, ShardCoordinator, ShardState, complete_write, route_read,
};
use tern_proto::replica::DEDUP_PER_CLIENT_MAX;
use tern_proto::{Outbox, SharedShard, Time};
use tern_wire::{Header, Op, Status, dirty_index, flags, key_hash};

#[test]
fn rule1_every_write_gets_the_next_sequence_number() {
    let mut sim = Sim::new(3);
    for request_id in 1..=5 {
        sim.put(b"k", b"v", request_id);
    }
    sim.deliver_all_except(to(sim.chain[0]));
    let seqs: Vec<u64> = sim.network.iter().map(|d| d.header().seq.get()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
}

#[test]
fn rule2_replicas_apply_in_sequence_order_and_ask_for_gaps() {
    let mut sim = Sim::new(3);
    sim.put(b"a", b"1", 1);
    sim.put(b"b", b"2", 2);
    // Let both writes reach the head and be sent on to the middle.
    sim.deliver_all_except(to(sim.chain[1]));
    assert_eq!(sim.network.len(), 2);
    // The middle receives seq 2 first: it must hold it back, not apply it.
    sim.deliver_at(1);
    assert_eq!(sim.replicas[1].store().applied_seq(), 0);
    assert_eq!(sim.replicas[1].counters().held_back, 1);
    // ...and ask its predecessor (the head) to resend seq 1.
    let asks: Vec<_> = sim
        .network
        .iter()
        .filter(|d| d.op() == Op::Retransmit)
        .collect();
    assert_eq!(asks.len(), 1);
    assert_eq!(asks[0].to, sim.chain[0]);
    assert_eq!(asks[0].header().seq.get(), 1);
    // Losing the original seq 1 does not matter: the head resends it.
    sim.lose(|d| d.op() == Op::Replicate && d.header().seq.get() == 1);
    sim.deliver_all();
    for replica in &sim.replicas {
        assert_eq!(replica.store().applied_seq(), 2);
        assert_eq!(replica.store().latest(b"a").unwrap().value, b"1");
    }
    assert_eq!(sim.reply_to(1).status(), Status::Ok);
    assert_eq!(sim.reply_to(2).status(), Status::Ok);
}

#[test]
fn rule2_the_head_decides_cas_and_the_chain_follows_its_decision() {
    let mut sim = Sim::new(3);
    sim.put(b"k", b"first", 1);
    sim.deliver_all();
    let version = sim.reply_to(1).header.version();
    sim.send(request(Op::Cas, b"k", b"wrong", version + 7, 2));
    sim.send(request(Op::Cas, b"k", b"second", version, 3));
    sim.deliver_all();
    let mismatch = sim.reply_to(2);
    assert_eq!(mismatch.status(), Status::CasMismatch);
    assert_eq!(
        mismatch.header.version(),
        version,
        "mismatch reports the current version"
    );
    assert_eq!(sim.reply_to(3).status(), Status::Ok);
    for replica in &sim.replicas {
        assert_eq!(replica.store().latest(b"k").unwrap().value, b"second");
    }
}

#[test]
fn rule3_a_key_stays_dirty_while_any_of_its_writes_is_in_flight() {
    let mut sim = Sim::new(3);
    sim.put(b"k", b"1", 1);
    sim.put(b"k", b"2", 2);
    // Both writes travel the chain; hold the acknowledgements.
    sim.deliver_all_except(op(Op::Ack));
    let index = dirty_index(key_hash(b"k"));
    assert_eq!(sim.shard().state().dirty_count(index), 2);
    // One acknowledgement: still one write in flight, so reads go to the tail.
    sim.deliver_first(op(Op::Ack));
    assert_eq!(sim.shard().state().dirty_count(index), 1);
    sim.get(b"k", 3);
    sim.deliver_first(from_client);
    let read = sim.network.back().unwrap().clone();
    assert_eq!(read.to, sim.chain[2]);
    assert!(read.header().has_flag(flags::TAIL_READ));
    // Last acknowledgement: the key is clean and reads spread over the chain.
    sim.deliver_all();
    assert_eq!(sim.shard().state().dirty_count(index), 0);
    let mut destinations = Vec::new();
    for request_id in 10..13 {
        sim.get(b"k", request_id);
        sim.deliver_first(to(sim.coordinator_addr));
        let read = sim.network.back().unwrap().header();
        assert!(!read.has_flag(flags::TAIL_READ));
        assert_eq!(read.seq.get(), 2, "clean reads are stamped with commit_seq");
        destinations.push(sim.network.back().unwrap().to);
    }
    assert_eq!(destinations, sim.chain, "clean reads go round robin");
}

/// A [`SharedShard`] that runs `after_change` after every change made to
/// it and `after_load` after every load of a dirty count or of commit_seq:
/// a way to put a concurrent actor between any two steps of the logic.
struct Hooked {
    inner: SharedShard,
    after_change: Box<dyn Fn(&SharedShard)>,
    after_load: Box<dyn Fn(&SharedShard)>,
}

impl Hooked {
    /// Runs the change hook after `change`, returning what `change` returned.
    fn changed<T>(&self, change: impl FnOnce(&SharedShard) -> T) -> T {
        let result = change(&self.inner);
        (self.after_change)(&self.inner);
        result
    }

    /// Runs the load hook after `load`, returning what `load` returned.
    fn loaded<T>(&self, load: impl FnOnce(&SharedShard) -> T) -> T {
        let result = load(&self.inner);
        (self.after_load)(&self.inner);
        result
    }
}

impl ShardState for Hooked {
    fn begin_write(&self) -> Option<u64> {
        self.changed(|inner| inner.begin_write())
    }
    fn record_sent(&self, seq: u64, index: u32, datagram: &[u8], now: Time) {
        self.changed(|inner| inner.record_sent(seq, index, datagram, now))
    }
    fn is_in_flight(&self, seq: u64) -> bool {
        self.inner.is_in_flight(seq)
    }
    fn in_flight_index(&self, seq: u64) -> Option<u32> {
        self.inner.in_flight_index(seq)
    }
    fn copy_in_flight(&self, seq: u64, out: &mut Vec<u8>) -> bool {
        self.inner.copy_in_flight(seq, out)
    }
    fn resend(&self, seq: u64, sent_before: Time, now: Time, out: &mut Vec<u8>) -> bool {
        self.inner.resend(seq, sent_before, now, out)
    }
    fn next_replica(&self) -> u64 {
        self.inner.next_replica()
    }
    fn end_write(&self, seq: u64) -> Option<u32> {
        self.changed(|inner| inner.end_write(seq))
    }
    fn next_seq(&self) -> u64 {
        self.inner.next_seq()
    }
    fn set_next_seq(&self, seq: u64) {
        self.changed(|inner| inner.set_next_seq(seq))
    }
    fn commit_seq(&self) -> u64 {
        self.loaded(|inner| inner.commit_seq())
    }
    fn advance_commit_seq(&self, seq: u64) {
        self.changed(|inner| inner.advance_commit_seq(seq))
    }
    fn dirty_count(&self, index: u32) -> u64 {
        self.loaded(|inner| inner.dirty_count(index))
    }
    fn increment_dirty(&self, index: u32) {
        self.changed(|inner| inner.increment_dirty(index))
    }
    fn decrement_dirty(&self, index: u32) {
        self.changed(|inner| inner.decrement_dirty(index))
    }
    fn all_dirty(&self) -> bool {
        self.inner.all_dirty()
    }
    fn set_all_dirty(&self, on: bool) {
        self.changed(|inner| inner.set_all_dirty(on))
    }
    fn serves_slot(&self, slot: u32) -> bool {
        self.inner.serves_slot(slot)
    }
    fn set_slots(&self, ranges: &[[u32; 2]]) {
        self.inner.set_slots(ranges)
    }
    fn holds(&self) -> &tern_proto::holds::HoldTable {
        self.inner.holds()
    }
    fn answered_early(&self, seq: u64) -> bool {
        self.inner.answered_early(seq)
    }
    fn mark_answered(&self, seq: u64) -> bool {
        self.changed(|inner| inner.mark_answered(seq))
    }
    fn point_applied(&self) -> u64 {
        self.loaded(|inner| inner.point_applied())
    }
    fn learn_point(&self, seq: u64) {
        self.changed(|inner| inner.learn_point(seq))
    }
    fn point_barrier(&self) -> u64 {
        self.loaded(|inner| inner.point_barrier())
    }
    fn reset_point(&self, applied: u64, barrier: u64) {
        self.changed(|inner| inner.reset_point(applied, barrier))
    }
    fn fanout_ack(
        &self,
        seq: u64,
        epoch: u32,
        position: usize,
        replicas: usize,
    ) -> tern_proto::coordinator::FanoutAck {
        self.changed(|inner| inner.fanout_ack(seq, epoch, position, replicas))
    }
}

#[test]
fn rule4_no_read_between_the_steps_of_an_ack_can_miss_the_acknowledged_write() {
    // Drive the real coordinator: a write to "k" is sequenced as seq 1, then
    // its acknowledgement arrives. A concurrent reader looks at the state
    // after every change the acknowledgement makes. Advancing commit_seq
    // after lowering the dirty count would let it pick a clean route with a
    // stamp of 0, i.e. return the old value after the write was acknowledged.
    let chain = vec![addr(10, 7100)];
    let hash = key_hash(b"k");
    let routes = Rc::new(RefCell::new(Vec::new()));
    let seen = routes.clone();
    let state = Hooked {
        inner: SharedShard::in_process(),
        after_change: Box::new(move |inner| seen.borrow_mut().push(route_read(inner, hash))),
        after_load: Box::new(|_| {}),
    };
    let config = ShardConfig {
        incarnation: 0,
        shard: SHARD,
        epoch: EPOCH,
        chain: chain.clone(),
        slots: vec![[0, tern_wire::SLOT_COUNT]],
        early_commit: 0,
        fanout: false,
    };
    let mut coordinator = ShardCoordinator::new(config, state);
    let now = Time::from_nanos(1_000_000_000);
    let mut outbox = Outbox::new();
    let mut report = Header::new(Op::SeqReport, SHARD, EPOCH);
    let report_bytes = tern_wire::encode(&report, b"", b"").unwrap();
    coordinator.step(
        now,
        chain[0],
        &tern_wire::Message::decode(&report_bytes).unwrap(),
        &mut outbox,
    );
    assert!(coordinator.is_ready());

    let put = request(Op::Put, b"k", b"new", 0, 1);
    coordinator.step(
        now,
        CLIENT,
        &tern_wire::Message::decode(&put).unwrap(),
        &mut outbox,
    );
    routes.borrow_mut().clear();
    report.op = Op::Ack as u8;
    report.seq.set(1);
    report.key_hash.set(hash);
    report.set_reply_addr(CLIENT);
    let ack = tern_wire::encode(&report, b"", b"").unwrap();
    coordinator.step(
        now,
        chain[0],
        &tern_wire::Message::decode(&ack).unwrap(),
        &mut outbox,
    );

    let routes = routes.borrow().clone();
    assert_eq!(
        routes.len(),
        3,
        "commit advance, window removal, dirty decrement"
    );
    for route in routes {
        assert!(
            matches!(route, ReadRoute::Tail | ReadRoute::Any { stamp: 1.. }),
            "a read could be stamped below the acknowledged write: {route:?}"
        );
    }
    assert_eq!(
        route_read(coordinator.state(), hash),
        ReadRoute::Any { stamp: 1 }
    );
}

#[test]
fn rule4_reads_load_the_dirty_count_before_commit_seq() {
    // The mirror image of rule 4 on the read side: if a read loaded
    // commit_seq first, an acknowledgement completing between its two loads
    // would give it an old stamp and a clean key.
    let hash = key_hash(b"k");
    let pending_ack = Rc::new(Cell::new(None));
    let ack = pending_ack.clone();
    let state = Hooked {
        inner: SharedShard::in_process(),
        after_change: Box::new(|_| {}),
        // The whole acknowledgement runs right after the reader's first load.
        after_load: Box::new(move |inner| {
            if let Some(seq) = ack.take() {
                complete_write(inner, seq);
            }
        }),
    };
    state.inner.set_all_dirty(false);
    let index = dirty_index(hash);
    let seq = state.inner.begin_write().unwrap();
    state.inner.record_sent(seq, index, b"", Time::ZERO);
    state.inner.increment_dirty(index);
    pending_ack.set(Some(seq));
    let route = route_read(&state, hash);
    assert!(
        pending_ack.get().is_none(),
        "the acknowledgement ran during the read"
    );
    assert!(
        matches!(route, ReadRoute::Tail | ReadRoute::Any { stamp: 1.. }),
        "read stamped below an acknowledged write: {route:?}"
    );
}

#[test]
fn rule5_a_clean_read_ignores_a_newer_uncommitted_version() {
    let mut sim = Sim::new(3);
    sim.put(b"k", b"old", 1);
    sim.deliver_all();
    // A read is stamped (commit_seq = 1) and sent to the head, but delayed.
    sim.get(b"k", 2);
    sim.deliver_first(to(sim.coordinator_addr));
    assert_eq!(sim.network.back().unwrap().to, sim.chain[0]);
    // Meanwhile a new write reaches the head (and no further).
    sim.put(b"k", b"new", 3);
    sim.deliver_first(op(Op::Put));
    sim.deliver_first(|d| d.op() == Op::Put);
    assert_eq!(sim.head().store().latest(b"k").unwrap().value, b"new");
    // The delayed read must return the committed value: the tail has not
    // applied "new", so a later read could otherwise go back in time.
    sim.deliver_first(op(Op::Get));
    sim.deliver_first(to(CLIENT));
    let reply = sim.reply_to(2);
    assert_eq!(reply.value, b"old");
    assert_eq!(reply.header.version(), 1);
}

#[test]
fn rule6_a_retried_write_is_applied_once_and_answered_the_same() {
    let mut sim = Sim::new(3);
    sim.put(b"k", b"v0", 1);
    sim.deliver_all();
    let version = sim.reply_to(1).header.version();
    // A CAS whose reply is lost, retried with the same request id.
    let cas = request(Op::Cas, b"k", b"v1", version, 2);
    sim.send(cas.clone());
    sim.deliver_all_except(to(CLIENT));
    sim.lose(to(CLIENT));
    sim.send(cas);
    sim.deliver_all();
    let replies = sim.replies_to(2);
    assert_eq!(replies.len(), 1);
    // The retry is answered with the original outcome (Ok), not a mismatch
    // caused by its own first execution.
    assert_eq!(replies[0].status(), Status::Ok);
    assert_eq!(sim.head().counters().dedup_hits, 1);
    for replica in &sim.replicas {
        assert_eq!(
            replica.store().latest(b"k").unwrap().version,
            2,
            "applied exactly once"
        );
    }
}

#[test]
fn rule7_a_replica_refuses_another_epoch_explicitly() {
    let mut sim = Sim::new(3);
    let mut header = Header::new(Op::Get, SHARD, EPOCH + 1);
    header.key_hash.set(key_hash(b"k"));
    header.request_id.set(9);
    let bytes = tern_wire::encode(&header, b"k", b"").unwrap();
    sim.network.push_back(Datagram {
        from: CLIENT,
        to: sim.chain[1],
        bytes: bytes.clone(),
    });
    sim.deliver_all();
    let reply = sim.reply_to(9);
    assert_eq!(reply.status(), Status::StaleEpoch);
    assert_eq!(
        reply.header.epoch.get(),
        EPOCH,
        "the refusal names the current epoch"
    );
    // The coordinator refuses a client with a stale map the same way.
    sim.client_inbox.clear();
    sim.send(bytes);
    sim.deliver_all();
    assert_eq!(sim.reply_to(9).status(), Status::StaleEpoch);
}

#[test]
fn rule8_a_new_coordinator_resumes_above_the_chain_and_reads_the_tail_until_drained() {
    let mut sim = Sim::new(3);
    sim.put(b"k", b"committed", 1);
    sim.deliver_all();
    // Two more writes are in the chain when the coordinator dies: seq 2 has
    // reached the tail, seq 3 only the head.
    sim.put(b"k", b"in-flight-2", 2);
    sim.put(b"k", b"in-flight-3", 3);
    sim.deliver_all_except(|d| {
        d.op() == Op::Ack || (d.op() == Op::Replicate && d.header().seq.get() == 3)
    });
    sim.lose(op(Op::Ack));
    sim.coordinator = Sim::fresh_coordinator(&sim.chain);

    // Until it has probed the chain, it refuses writes and reads the tail.
    sim.put(b"k", b"refused", 4);
    sim.deliver_first(to(sim.coordinator_addr));
    sim.deliver_first(to(CLIENT));
    assert_eq!(sim.reply_to(4).status(), Status::TryAgain);
    sim.get(b"k", 5);
    sim.deliver_first(to(sim.coordinator_addr));
    assert!(
        sim.network
            .back()
            .unwrap()
            .header()
            .has_flag(flags::TAIL_READ)
    );
    assert_eq!(sim.network.back().unwrap().to, sim.chain[2]);

    // Probe answers: head has seen 3, tail applied 2. Hold seq 3 back so the
    // chain is still draining after recovery.
    sim.tick();
    sim.deliver_all_except(|d| d.op() == Op::Replicate && d.header().seq.get() == 3);
    assert!(!sim.shard().is_ready());
    sim.put(b"k", b"after", 6);
    sim.deliver_first(to(sim.coordinator_addr));
    assert_eq!(
        sim.network.back().unwrap().header().seq.get(),
        4,
        "sequencing resumes above 3"
    );
    sim.get(b"k", 7);
    sim.deliver_first(to(sim.coordinator_addr));
    assert!(
        sim.network
            .back()
            .unwrap()
            .header()
            .has_flag(flags::TAIL_READ),
        "still draining"
    );

    sim.deliver_all();
    assert!(sim.shard().is_ready());
    assert_eq!(sim.reply_to(6).status(), Status::Ok);
    assert_eq!(sim.tail().store().latest(b"k").unwrap().value, b"after");
    sim.get(b"k", 8);
    sim.deliver_first(to(sim.coordinator_addr));
    let read = sim.network.back().unwrap().header();
    assert!(!read.has_flag(flags::TAIL_READ));
    assert_eq!(read.seq.get(), 4);
}

#[test]
fn rule8_a_gap_left_by_a_dead_coordinator_is_filled_with_a_noop() {
    let mut sim = Sim::new(2);
    sim.put(b"a", b"1", 1);
    sim.put(b"b", b"2", 2);
    // Seq 1 is lost on its way to the head; seq 2 arrives and waits.
    sim.deliver_first(to(sim.coordinator_addr));
    sim.deliver_first(to(sim.coordinator_addr));
    let head = sim.chain[0];
    sim.lose(|d| d.to == head && d.header().seq.get() == 1);
    sim.deliver_first(to(sim.chain[0]));
    sim.lose(op(Op::Retransmit));
    sim.coordinator = Sim::fresh_coordinator(&sim.chain);
    sim.tick();
    sim.deliver_all();
    // The head asks the new coordinator for seq 1, which it never assigned.
    sim.advance(Duration::from_millis(50));
    sim.deliver_all();
    assert_eq!(sim.shard().counters().noop_fills, 1);
    assert!(sim.shard().is_ready());
    for replica in &sim.replicas {
        assert_eq!(replica.store().applied_seq(), 2);
        assert_eq!(
            replica.store().latest(b"a"),
            None,
            "the lost write never happened"
        );
        assert_eq!(replica.store().latest(b"b").unwrap().value, b"2");
    }
}

#[test]
fn a_lost_ack_is_recovered_by_resending_and_the_dirty_count_returns_to_zero() {
    let mut sim = Sim::new(3);
    sim.put(b"k", b"v", 1);
    sim.deliver_all_except(op(Op::Ack));
    sim.lose(op(Op::Ack));
    let index = dirty_index(key_hash(b"k"));
    assert_eq!(sim.shard().state().dirty_count(index), 1);
    sim.advance(Duration::from_millis(150));
    sim.deliver_all();
    assert_eq!(sim.shard().state().dirty_count(index), 0);
    assert_eq!(sim.reply_to(1).status(), Status::Ok);
    // Every replica saw the resend as a duplicate and applied nothing twice.
    assert_eq!(sim.tail().counters().writes_applied, 1);
    // A duplicate acknowledgement changes nothing.
    assert_eq!(sim.shard().counters().acks, 1);
}

#[test]
fn deleting_an_absent_key_reports_not_found_and_changes_nothing() {
    let mut sim = Sim::new(2);
    sim.send(request(Op::Delete, b"ghost", b"", 0, 1));
    sim.deliver_all();
    let reply = sim.reply_to(1);
    assert_eq!(reply.status(), Status::NotFound);
    assert_eq!(sim.tail().store().live_keys(), 0);
}

#[test]
fn rule5_a_replica_behind_the_stamp_refuses_the_read_and_catches_up() {
    let mut sim = Sim::new(3);
    sim.put(b"k", b"v", 1);
    sim.deliver_all();
    // The middle comes back without the write (a restart that lost it).
    let config = sim.replica_config(1);
    sim.replicas[1] = tern_proto::replica::Replica::new(config);
    // A read stamped with commit_seq 1, as the coordinator forwards it.
    let forwarded_read = || {
        let mut header = Header::new(Op::Get, SHARD, EPOCH);
        header.key_hash.set(key_hash(b"k"));
        header.client_id.set(42);
        header.request_id.set(2);
        header.seq.set(1);
        header.commit_seq.set(1);
        header.set_reply_addr(CLIENT);
        tern_wire::encode(&header, b"k", b"").unwrap()
    };
    let (coordinator, middle) = (sim.coordinator_addr, sim.chain[1]);
    sim.network.push_back(Datagram {
        from: coordinator,
        to: middle,
        bytes: forwarded_read(),
    });
    sim.deliver_all();
    assert_eq!(sim.reply_to(2).status(), Status::TryAgain, "no older value");
    // It asked the head for what it lacks, and has it now.
    assert_eq!(sim.replicas[1].store().applied_seq(), 1);
    sim.client_inbox.clear();
    sim.network.push_back(Datagram {
        from: coordinator,
        to: middle,
        bytes: forwarded_read(),
    });
    sim.deliver_all();
    let reply = sim.reply_to(2);
    assert_eq!(reply.status(), Status::Ok);
    assert_eq!(reply.value, b"v");
}

/// Commits a write, restarts the head without it (a log that lacks it),
/// then sends another write and lets the chain try for a while.
fn head_loses_a_committed_write(length: usize) -> Sim {
    let mut sim = Sim::new(length);
    sim.put(b"k", b"v", 1);
    sim.deliver_all();
    let config = sim.replica_config(0);
    sim.replicas[0] = tern_proto::replica::Replica::new(config);
    sim.put(b"other", b"w", 2);
    for _ in 0..5 {
        sim.deliver_all();
        sim.advance(Duration::from_millis(30));
    }
    sim
}

#[test]
fn a_committed_seq_the_whole_chain_lost_is_filled_so_writes_go_on() {
    // The only replica restarts without durable state: seq 1 is gone.
    let sim = head_loses_a_committed_write(1);
    assert_eq!(
        sim.reply_to(2).status(),
        Status::Ok,
        "the shard writes again"
    );
    assert_eq!(sim.shard().counters().lost_fills, 1);
    assert_eq!(
        sim.head().store().latest(b"k"),
        None,
        "the lost write stays lost"
    );
}

#[test]
fn rule7_a_refusal_of_another_epoch_names_the_map_version_its_sender_acts_on() {
    let mut sim = Sim::new(2);
    // Under meta, every process knows the version of the map it acts on.
    sim.coordinator.set_map_version(9);
    sim.replicas[1].set_map_version(9);
    sim.send(request_at(EPOCH + 1, Op::Put, b"k", b"v", 0, 1));
    sim.deliver_all();
    let reply = sim.reply_to(1);
    assert_eq!(reply.status(), Status::StaleEpoch);
    assert_eq!(reply.extensions.map_version, Some(9));
    // A replica refuses the same way, and without a version (a static map)
    // nothing is named.
    let tail = sim.chain[1];
    sim.network.push_back(Datagram {
        from: CLIENT,
        to: tail,
        bytes: request_at(EPOCH + 1, Op::Get, b"k", b"", 0, 2),
    });
    sim.network.push_back(Datagram {
        from: CLIENT,
        to: sim.chain[0],
        bytes: request_at(EPOCH + 1, Op::Get, b"k", b"", 0, 3),
    });
    sim.deliver_all();
    assert_eq!(sim.reply_to(2).status(), Status::StaleEpoch);
    assert_eq!(sim.reply_to(2).extensions.map_version, Some(9));
    assert_eq!(sim.reply_to(3).extensions.map_version, None);
}

#[test]
fn a_committed_seq_a_longer_chain_still_holds_is_never_filled_with_nothing() {
    // The head comes back without seq 1 (a log cut short); its successors
    // still hold it.
    let sim = head_loses_a_committed_write(3);
    assert_eq!(sim.shard().counters().lost_fills, 0);
    for replica in &sim.replicas[1..] {
        assert_eq!(replica.store().latest(b"k").unwrap().value, b"v");
    }
    assert_eq!(
        sim.head().store().applied_seq(),
        0,
        "the head waits rather than serve a state without seq 1"
    );
}

#[test]
fn rule6_a_late_copy_of_a_write_older_than_the_dedup_window_is_never_applied_again() {
    let mut sim = Sim::new(3);
    // The first attempt of write 1 is held up on its way to the
    // coordinator; the client's retry is applied and answered.
    sim.send(request(Op::IncrBy, b"n", b"1", 0, 1));
    let late = sim.network.pop_front().unwrap();
    sim.send(request(Op::IncrBy, b"n", b"1", 0, 1));
    sim.deliver_all();
    assert_eq!(sim.reply_to(1).status(), Status::Ok);
    // The client goes on: more writes than the head remembers outcomes of.
    let later = DEDUP_PER_CLIENT_MAX as u64 + 1;
    for request_id in 2..=1 + later {
        sim.send(request(Op::IncrBy, b"n", b"1", 0, request_id));
        sim.deliver_all();
    }
    // Then the old copy arrives: its outcome is forgotten, but it must not
    // be applied a second time.
    sim.network.push_back(late);
    sim.deliver_all();
    let expected = (1 + later).to_string();
    for replica in &sim.replicas {
        let found = replica.store().latest(b"n").unwrap();
        assert_eq!(found.value, expected.as_bytes(), "applied exactly once");
    }
    let refusals = sim.replies_to(1);
    assert_eq!(refusals.len(), 2, "the late copy is answered");
    assert_eq!(refusals[1].status(), Status::Forgotten);
}

#[test]
fn a_key_of_a_slot_the_shard_does_not_serve_is_refused_until_the_slot_is_given_to_it() {
    let mut sim = Sim::new(2);
    sim.coordinator.set_map_version(4);
    let slot = tern_wire::slot_of(key_hash(b"moved"));
    let mut config = sim.shard().config().clone();
    config.slots = vec![[0, slot], [slot + 1, tern_wire::SLOT_COUNT]];
    assert!(sim.coordinator.reconfigure(config.clone()));
    // A client whose map still gives the slot to this shard learns the
    // version of the map that does not.
    sim.put(b"moved", b"v", 1);
    sim.get(b"moved", 2);
    sim.put(b"stays", b"v", 3);
    sim.deliver_all();
    for request_id in [1, 2] {
        let reply = sim.reply_to(request_id);
        assert_eq!(reply.status(), Status::WrongShard);
        assert_eq!(reply.extensions.map_version, Some(4));
    }
    assert_eq!(sim.reply_to(3).status(), Status::Ok);
    assert_eq!(sim.shard().counters().wrong_slot, 2);
    assert!(
        sim.tail().store().latest(b"moved").is_none(),
        "nothing applied"
    );
    // The slot is given back (a migration to this shard): served again.
    config.slots = vec![[0, tern_wire::SLOT_COUNT]];
    assert!(sim.coordinator.reconfigure(config));
    sim.put(b"moved", b"v", 4);
    sim.deliver_all();
    assert_eq!(sim.reply_to(4).status(), Status::Ok);
}

#[test]
fn rule6_an_old_request_id_arriving_for_the_first_time_is_applied() {
    // A client's request ids interleave across shards: this shard sees the
    // even ones. Request 100 went to another shard, which held it (a
    // migration froze its slot) until the slot moved here; meanwhile the
    // client's later requests 102 to 114 were decided here, after 2 to 98.
    let mut sim = Sim::new(3);
    for request_id in (2..=98).chain(102..=114).filter(|id| id % 2 == 0) {
        sim.send(request(Op::IncrBy, b"n", b"1", 0, request_id));
        sim.deliver_all();
    }
    // A client keeps its outstanding ids within 16 of each other, so fewer
    // than 16 ids above 100 can have been decided while it was outstanding:
    // 100 is new, and applied.
    sim.send(request(Op::IncrBy, b"n", b"1", 0, 100));
    sim.deliver_all();
    assert_eq!(sim.reply_to(100).status(), Status::Ok);
    assert_eq!(sim.tail().store().latest(b"n").unwrap().value, b"57");
    // A late copy of request 2, below every remembered id, is not.
    sim.send(request(Op::IncrBy, b"n", b"1", 0, 2));
    sim.deliver_all();
    assert_eq!(
        sim.replies_to(2).last().unwrap().status(),
        Status::Forgotten
    );
    assert_eq!(sim.tail().store().latest(b"n").unwrap().value, b"57");
}

/// Write 1 of `k` applied by all three replicas, the tail's ACK lost: the
/// coordinator still has it in flight.
fn write_whose_tail_ack_is_lost() -> Sim {
    let mut sim = Sim::new(3).with_journals();
    sim.put(b"k", b"v", 1);
    let tail = sim.chain[2];
    sim.deliver_all_except(|d| d.from == tail && d.op() == Op::Ack);
    sim.lose(|d| d.from == tail && d.op() == Op::Ack);
    assert!(sim.shard().state().is_in_flight(1));
    sim
}

/// A second of the coordinator's resends, every message delivered.
fn resend_for_a_second(sim: &mut Sim) {
    for _ in 0..20 {
        sim.advance(Duration::from_millis(50));
        sim.tick();
        sim.deliver_all();
    }
}

#[test]
fn a_tail_that_has_a_write_only_from_a_snapshot_still_acknowledges_it() {
    // The tail applies write 1 but its ACK is lost; the tail then restarts
    // from a snapshot that holds the write, so no record of it is left to
    // send again. The coordinator's resends reach it as duplicates.
    let mut sim = write_whose_tail_ack_is_lost();
    let snapshot = sim.tail().snapshot();
    assert_eq!(snapshot.0, 1);
    sim.restart_replica(2, Some(snapshot));
    resend_for_a_second(&mut sim);
    // The tail acknowledged it without a reply address (it has no record
    // of the client's request): the write is finished, its key clean, and
    // the window moves on.
    assert!(!sim.shard().state().is_in_flight(1), "still in flight");
    assert_eq!(
        sim.shard().state().dirty_count(dirty_index(key_hash(b"k"))),
        0
    );
    assert!(sim.replies_to(1).is_empty(), "nobody to answer");
    // The client, unanswered, sends it again: answered from dedup, applied
    // once.
    sim.put(b"k", b"v", 1);
    sim.deliver_all();
    assert_eq!(sim.reply_to(1).status(), Status::Ok);
    assert_eq!(
        sim.tail().store().applied_seq(),
        2,
        "the retry took a seq, no write"
    );
    assert_eq!(sim.tail().store().latest(b"k").unwrap().version, 1);
}

#[test]
fn a_middle_that_has_a_write_only_from_a_snapshot_passes_its_resend_on() {
    // Write 1 reaches every replica but the tail's ACK is lost; then the
    // middle and the tail both start over from snapshots that hold it (as
    // replicas that joined by state transfer do), so neither has a record
    // of it. The coordinator's resends pass the head as duplicates; the
    // middle must not stop them.
    let mut sim = write_whose_tail_ack_is_lost();
    for index in [1, 2] {
        let snapshot = sim.replicas[index].snapshot();
        assert_eq!(snapshot.0, 1);
        sim.restart_replica(index, Some(snapshot));
    }
    resend_for_a_second(&mut sim);
    assert!(!sim.shard().state().is_in_flight(1), "still in flight");
    assert_eq!(
        sim.shard().state().dirty_count(dirty_index(key_hash(b"k"))),
        0
    );
    assert_eq!(sim.tail().store().latest(b"k").unwrap().version, 1);
}
