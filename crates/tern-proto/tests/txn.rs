//! Transactions across shards at one participant (`tern_wire::txn`): a
//! PREPARE locks and decides, a COMMIT makes the writes visible, an ABORT
//! or a refusal releases, everything once under resends, the state carried
//! by the log, and a transaction whose client went away settled by its
//! coordinator after the lease. The other participant is a coordinator
//! address this test answers for.

mod sim;

use std::time::Duration;

use sim::*;
use tern_proto::coordinator::ShardState;
use tern_wire::multi::Item;
use tern_wire::txn::{Participant, Prepare, TxnId};
use tern_wire::{Header, Message, Op, Status, dirty_index, encode, key_hash};

/// The other participant's coordinator (shard 9), answered by the tests.
const OTHER: std::net::SocketAddrV4 =
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 0, 0, 77), 7000);

fn id(txn_seq: u64) -> TxnId {
    TxnId {
        client_id: 42,
        txn_seq,
    }
}

fn participants(sim: &Sim) -> Vec<Participant> {
    vec![
        Participant {
            shard: SHARD,
            coordinator: sim.coordinator_addr,
        },
        Participant {
            shard: 9,
            coordinator: OTHER,
        },
    ]
}

fn prepare(sim: &Sim, txn: TxnId, items: &[Item<'_>], request_id: u64) -> Vec<u8> {
    let value = Prepare {
        id: txn,
        lease_ms: 200,
        participants: participants(sim),
        items: items.to_vec(),
    }
    .encode()
    .unwrap();
    request(Op::Prepare, items[0].key, &value, 0, request_id)
}

fn finish(op: Op, txn: TxnId, request_id: u64) -> Vec<u8> {
    request(op, b"", &txn.encode(), 0, request_id)
}

fn status_of(sim: &Sim, request_id: u64) -> Status {
    sim.replies_to(request_id).last().expect("a reply").status()
}

fn dirty(sim: &Sim, key: &[u8]) -> u64 {
    sim.shard().state().dirty_count(dirty_index(key_hash(key)))
}

fn stat(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn a_prepare_locks_its_keys_until_the_commit_makes_its_writes_visible() {
    let mut sim = Sim::new(3);
    sim.put(b"a", b"1", 1);
    sim.put(b"b", b"1", 2);
    sim.deliver_all();
    let read = sim.reply_to(2).header.version();
    let txn = id(1);
    sim.send(prepare(
        &sim,
        txn,
        &[Item::check(b"b", read), Item::put(b"a", b"2")],
        3,
    ));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 3), Status::Ok, "yes");
    // Nothing visible yet; the written key stays dirty past the PREPARE.
    for replica in &sim.replicas {
        assert_eq!(replica.store().latest(b"a").unwrap().value, b"1");
    }
    assert_eq!(dirty(&sim, b"a"), 1);
    assert_eq!(dirty(&sim, b"b"), 0, "a key only read is not dirty");
    // Its written key is read by nobody, and neither key written.
    sim.get(b"a", 4);
    sim.put(b"a", b"x", 5);
    sim.put(b"b", b"x", 6);
    sim.get(b"b", 7);
    sim.send(multi_request(&[Item::put(b"b", b"y")], 8));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 4), Status::Locked);
    assert_eq!(status_of(&sim, 5), Status::Locked);
    assert_eq!(
        status_of(&sim, 6),
        Status::Locked,
        "a key read is shared-locked"
    );
    assert_eq!(status_of(&sim, 7), Status::Ok, "and readable");
    assert_eq!(status_of(&sim, 8), Status::Locked);
    // Another transaction wanting the key votes no, for good.
    let rival = id(2);
    sim.send(prepare(&sim, rival, &[Item::put(b"b", b"z")], 9));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 9), Status::Locked);
    sim.send(finish(Op::Resolve, rival, 10));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 10), Status::TxnAborted);
    // The commit: visible everywhere at its version, the key free again.
    sim.send(finish(Op::Commit, txn, 11));
    sim.deliver_all();
    let commit = sim.reply_to(11);
    assert_eq!(commit.status(), Status::Ok);
    let version = commit.header.version();
    for replica in &sim.replicas {
        let found = replica.store().latest(b"a").unwrap();
        assert_eq!((found.value, found.version), (&b"2"[..], version));
    }
    assert_eq!(dirty(&sim, b"a"), 0);
    sim.get(b"a", 12);
    sim.put(b"b", b"3", 13);
    sim.deliver_all();
    assert_eq!(sim.reply_to(12).value, b"2");
    assert_eq!(status_of(&sim, 13), Status::Ok);
    // A second COMMIT (a resend under a new id) changes nothing.
    sim.send(finish(Op::Commit, txn, 14));
    sim.send(finish(Op::Abort, txn, 15));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 14), Status::Ok);
    assert_eq!(status_of(&sim, 15), Status::TxnCommitted);
    let stats = sim.tail().render_stats();
    assert_eq!(stat(&stats, "txn_pending"), 0);
    assert_eq!(stat(&stats, "txn_locked_keys"), 0);
}

#[test]
fn a_refused_prepare_votes_no_for_good_and_releases_its_hold() {
    let mut sim = Sim::new(2);
    sim.put(b"a", b"1", 1);
    sim.deliver_all();
    let txn = id(1);
    // It read a version that is gone.
    sim.send(prepare(
        &sim,
        txn,
        &[Item::check(b"a", 999), Item::put(b"a", b"2")],
        2,
    ));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 2), Status::CasMismatch);
    assert_eq!(dirty(&sim, b"a"), 0, "the hold went with the no");
    // Sent again (a new request), it is still no; nothing is locked.
    sim.send(prepare(&sim, txn, &[Item::put(b"a", b"2")], 3));
    sim.send(finish(Op::Resolve, txn, 4));
    sim.send(finish(Op::Commit, txn, 5));
    sim.put(b"a", b"3", 6);
    sim.deliver_all();
    assert_eq!(status_of(&sim, 3), Status::TxnAborted);
    assert_eq!(status_of(&sim, 4), Status::TxnAborted);
    assert_eq!(status_of(&sim, 5), Status::TxnAborted);
    assert_eq!(status_of(&sim, 6), Status::Ok);
    assert_eq!(dirty(&sim, b"a"), 0);
}

#[test]
fn a_resolve_before_the_prepare_leaves_a_tombstone_the_prepare_meets() {
    let mut sim = Sim::new(2);
    let txn = id(7);
    sim.send(finish(Op::Resolve, txn, 1));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 1), Status::TxnAborted);
    sim.send(prepare(&sim, txn, &[Item::put(b"k", b"v")], 2));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 2), Status::TxnAborted);
    assert_eq!(dirty(&sim, b"k"), 0);
    assert!(sim.tail().store().latest(b"k").is_none());
    // An abort of a prepared transaction releases without writing.
    let other = id(8);
    sim.send(prepare(&sim, other, &[Item::put(b"k", b"w")], 3));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 3), Status::Ok);
    assert_eq!(dirty(&sim, b"k"), 1);
    sim.send(finish(Op::Abort, other, 4));
    sim.send(finish(Op::Commit, other, 5));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 4), Status::Ok);
    assert_eq!(status_of(&sim, 5), Status::TxnAborted);
    assert_eq!(dirty(&sim, b"k"), 0);
    assert!(sim.tail().store().latest(b"k").is_none());
}

#[test]
fn a_resent_prepare_takes_its_hold_once_and_answers_yes_again() {
    let mut sim = Sim::new(3);
    let txn = id(1);
    let datagram = prepare(&sim, txn, &[Item::put(b"k", b"v")], 1);
    sim.send(datagram.clone());
    sim.send(datagram.clone());
    sim.deliver_all();
    sim.send(datagram);
    sim.deliver_all();
    assert!(
        sim.replies_to(1)
            .iter()
            .all(|reply| reply.status() == Status::Ok)
    );
    assert_eq!(dirty(&sim, b"k"), 1, "held once");
    // Another PREPARE of the same transaction (other items) is refused:
    // the first stands.
    sim.send(prepare(&sim, txn, &[Item::put(b"other", b"w")], 5));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 5), Status::Malformed);
    assert_eq!(dirty(&sim, b"k"), 1, "the first PREPARE's hold stays");
    sim.send(finish(Op::Commit, txn, 2));
    sim.deliver_all();
    assert_eq!(dirty(&sim, b"k"), 0);
    assert_eq!(sim.tail().store().latest(b"k").unwrap().value, b"v");
    assert!(sim.tail().store().latest(b"other").is_none());
}

#[test]
fn prepared_transactions_survive_a_restart_from_the_log_and_a_snapshot() {
    let mut sim = Sim::new(2).with_journals();
    let txn = id(1);
    sim.send(prepare(&sim, txn, &[Item::put(b"k", b"v")], 1));
    sim.deliver_all();
    let snapshot = sim.replicas[1].snapshot();
    sim.restart_replica(0, None);
    sim.restart_replica(1, Some(snapshot));
    for replica in &sim.replicas {
        assert_eq!(stat(&replica.render_stats(), "txn_pending"), 1);
    }
    // Still locked after the restart, and committed by its COMMIT.
    sim.put(b"k", b"x", 2);
    sim.send(finish(Op::Commit, txn, 3));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 2), Status::Locked);
    assert_eq!(status_of(&sim, 3), Status::Ok);
    for replica in &sim.replicas {
        assert_eq!(replica.store().latest(b"k").unwrap().value, b"v");
    }
}

/// Delivers everything, answering the settler's requests to the other
/// participant with `answer` (and keeping what it asked).
fn deliver_answering_other(sim: &mut Sim, answer: impl Fn(Op) -> Status) -> Vec<Op> {
    deliver_answering(sim, OTHER, answer)
}

/// As `deliver_answering_other`, the other participant's coordinator at
/// `other`.
fn deliver_answering(
    sim: &mut Sim,
    other: std::net::SocketAddrV4,
    answer: impl Fn(Op) -> Status,
) -> Vec<Op> {
    let mut asked = Vec::new();
    for _ in 0..100 {
        sim.deliver_all_except(to(other));
        let requests = sim.lose(to(other));
        if requests.is_empty() {
            return asked;
        }
        for datagram in requests {
            let message = Message::decode(&datagram.bytes).unwrap();
            let received = message.header;
            asked.push(received.op());
            let mut reply = Header::new(Op::Reply, received.shard.get(), 3);
            // The settler learns the other shard's epoch from a refusal.
            reply.status = if received.epoch.get() == 3 {
                answer(received.op()) as u8
            } else {
                Status::StaleEpoch as u8
            };
            reply.client_id = received.client_id;
            reply.request_id = received.request_id;
            sim.network.push_back(Datagram {
                from: other,
                to: datagram.from,
                bytes: encode(&reply, &[], &[]).unwrap(),
            });
        }
        sim.advance(Duration::from_millis(150));
    }
    panic!("the settler never finished");
}

#[test]
fn a_transaction_whose_client_went_away_is_settled_after_its_lease() {
    for other_prepared in [true, false] {
        let mut sim = Sim::new(3);
        let txn = id(1);
        sim.send(prepare(&sim, txn, &[Item::put(b"k", b"v")], 1));
        sim.deliver_all();
        assert_eq!(status_of(&sim, 1), Status::Ok);
        // The client never sends its COMMIT. Before the lease, nothing.
        sim.advance(Duration::from_millis(100));
        assert!(sim.lose(to(OTHER)).is_empty());
        sim.advance(Duration::from_millis(150));
        let asked = deliver_answering_other(&mut sim, |op| match op {
            Op::Resolve if other_prepared => Status::TxnPrepared,
            Op::Resolve => Status::TxnAborted,
            _ => Status::Ok,
        });
        let decided = if other_prepared {
            Op::Commit
        } else {
            Op::Abort
        };
        assert_eq!(asked.first(), Some(&Op::Resolve), "{asked:?}");
        assert_eq!(asked.last(), Some(&decided), "{asked:?}");
        let written = sim
            .tail()
            .store()
            .latest(b"k")
            .map(|found| found.value.to_vec());
        assert_eq!(written.is_some(), other_prepared);
        assert_eq!(dirty(&sim, b"k"), 0, "released");
        let stats = sim.coordinator.render_stats(None);
        assert_eq!(stat(&stats, "shard0.txn_held"), 0, "{stats}");
        let settled = if other_prepared {
            "txn_settled_committed"
        } else {
            "txn_settled_aborted"
        };
        assert_eq!(stat(&stats, settled), 1, "{stats}");
        assert_eq!(stat(&stats, "txn_settle_disagreed"), 0);
        assert_eq!(stat(&sim.tail().render_stats(), "txn_pending"), 0);
        // A late COMMIT from the client agrees with the outcome.
        sim.send(finish(Op::Commit, txn, 2));
        sim.deliver_all();
        let expected = if other_prepared {
            Status::Ok
        } else {
            Status::TxnAborted
        };
        assert_eq!(status_of(&sim, 2), expected);
    }
}

#[test]
fn malformed_transaction_requests_are_refused_and_the_shard_serves_on() {
    let mut sim = Sim::new(2);
    // An id of the wrong length, a PREPARE whose header key is not its
    // first item's, a COMMIT with a key.
    let mut header = Header::new(Op::Commit, SHARD, EPOCH);
    header.key_hash.set(key_hash(b""));
    header.client_id.set(42);
    header.request_id.set(1);
    sim.send(encode(&header, b"", &[0; 15]).unwrap());
    let mut wrong = prepare(&sim, id(1), &[Item::put(b"k", b"v")], 2);
    let datagram = Message::decode(&wrong).unwrap();
    let value = datagram.value.to_vec();
    let mut header = datagram.header;
    header.key_hash.set(key_hash(b"other"));
    wrong = encode(&header, b"other", &value).unwrap();
    sim.send(wrong);
    let mut header = Header::new(Op::Abort, SHARD, EPOCH);
    header.key_hash.set(key_hash(b"k"));
    header.client_id.set(42);
    header.request_id.set(3);
    sim.send(encode(&header, b"k", &id(1).encode()).unwrap());
    sim.put(b"k", b"fine", 4);
    sim.deliver_all();
    assert_eq!(status_of(&sim, 1), Status::Malformed);
    assert_eq!(status_of(&sim, 2), Status::Malformed);
    assert_eq!(status_of(&sim, 3), Status::Malformed);
    assert_eq!(status_of(&sim, 4), Status::Ok);
    assert_eq!(dirty(&sim, b"k"), 0);
    let stats = sim.coordinator.render_stats(None);
    assert_eq!(stat(&stats, "shard0.malformed_transactions"), 3, "{stats}");
}

#[test]
fn a_coordinator_starting_afresh_holds_the_prepared_transactions_again() {
    let mut sim = Sim::new(3);
    let txn = id(1);
    sim.send(prepare(
        &sim,
        txn,
        &[Item::put(b"k", b"v"), Item::get(b"r")],
        1,
    ));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 1), Status::Ok);
    // The coordinator's process restarts: its holds were in its memory.
    sim.coordinator = Sim::fresh_coordinator(&sim.chain);
    sim.tick();
    sim.deliver_all();
    assert!(sim.coordinator.is_ready());
    assert_eq!(dirty(&sim, b"k"), 1, "held again before it serves");
    assert_eq!(dirty(&sim, b"r"), 0);
    let stats = sim.coordinator.render_stats(None);
    assert_eq!(stat(&stats, "shard0.txn_held"), 1, "{stats}");
    // And its COMMIT releases it.
    sim.send(finish(Op::Commit, txn, 2));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 2), Status::Ok);
    assert_eq!(dirty(&sim, b"k"), 0);
    assert_eq!(sim.tail().store().latest(b"k").unwrap().value, b"v");
}

#[test]
fn a_probe_that_loses_a_transaction_report_waits_for_the_next() {
    // Two transactions prepared under an earlier coordinator; a new one
    // probes the same replicas.
    let mut sim = Sim::unprobed(2);
    let mut old = Sim::new(2);
    old.send(prepare(&old, id(1), &[Item::put(b"a", b"1")], 1));
    old.send(prepare(&old, id(2), &[Item::put(b"b", b"1")], 2));
    old.deliver_all();
    sim.replicas = std::mem::take(&mut old.replicas);
    sim.tick();
    // The first report of one transaction is lost.
    let mut lost_one = false;
    while let Some(datagram) = sim.network.pop_front() {
        if datagram.op() == Op::TxnReport && !lost_one {
            lost_one = true;
            continue;
        }
        sim.receive(datagram);
    }
    assert!(lost_one);
    assert!(!sim.coordinator.is_ready(), "one hold is missing");
    sim.advance(Duration::from_millis(60));
    sim.deliver_all();
    assert!(sim.coordinator.is_ready());
    assert_eq!((dirty(&sim, b"a"), dirty(&sim, b"b")), (1, 1));
}

#[test]
fn the_settler_asks_a_participant_where_the_newest_map_has_its_coordinator() {
    // The other shard's coordinator failed over since the client prepared:
    // the shell's directory names the new one.
    let moved = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 0, 0, 78), 7000);
    let directory = tern_proto::coordinator::Directory::default();
    directory.lock().unwrap().insert(9, moved);
    let mut sim = Sim::unprobed(2);
    sim.coordinator = Sim::fresh_coordinator(&sim.chain).with_directory(directory);
    sim.tick();
    sim.deliver_all();
    assert!(sim.coordinator.is_ready());
    sim.send(prepare(&sim, id(1), &[Item::put(b"k", b"v")], 1));
    sim.deliver_all();
    sim.advance(Duration::from_millis(250));
    let asked = deliver_answering(&mut sim, moved, |op| match op {
        Op::Resolve => Status::TxnPrepared,
        _ => Status::Ok,
    });
    assert_eq!(asked.last(), Some(&Op::Commit), "{asked:?}");
    assert!(sim.lose(to(OTHER)).is_empty(), "nothing to the old address");
    assert_eq!(sim.tail().store().latest(b"k").unwrap().value, b"v");
}

/// A locking transaction's ACQUIRE of `items` (GETs), its only
/// participant this shard so far.
fn acquire(sim: &Sim, txn: TxnId, items: &[Item<'_>], request_id: u64) -> Vec<u8> {
    let value = Prepare {
        id: txn,
        lease_ms: 200,
        participants: vec![Participant {
            shard: SHARD,
            coordinator: sim.coordinator_addr,
        }],
        items: items.to_vec(),
    }
    .encode()
    .unwrap();
    request(Op::Acquire, items[0].key, &value, 0, request_id)
}

fn for_update(key: &[u8]) -> Item<'_> {
    Item::get(key).with_flags(tern_wire::multi::item_flags::FOR_UPDATE)
}

/// The answers of a reply (a MULTI's, PREPARE's or ACQUIRE's).
fn answers(sim: &Sim, request_id: u64) -> Vec<tern_wire::multi::Answer> {
    tern_wire::multi::decode_answers(&sim.reply_to(request_id).value).unwrap()
}

#[test]
fn an_acquire_locks_and_reads_and_its_prepare_commits_under_the_locks() {
    let mut sim = Sim::new(3);
    sim.put(b"a", b"1", 1);
    sim.put(b"b", b"1", 2);
    sim.deliver_all();
    let version_a = sim.reply_to(1).header.version();
    let txn = id(1);
    sim.send(acquire(&sim, txn, &[Item::get(b"a"), for_update(b"b")], 3));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 3), Status::Ok);
    let read = answers(&sim, 3);
    assert_eq!(read[0].value.as_deref(), Some(&b"1"[..]));
    assert_eq!(read[0].number, version_a, "the version read");
    assert_eq!(read[1].value.as_deref(), Some(&b"1"[..]));
    // Nothing is decided: nothing dirty. Both keys are held at every
    // replica: a shared lock keeps writers out, an exclusive one readers.
    assert_eq!((dirty(&sim, b"a"), dirty(&sim, b"b")), (0, 0));
    for replica in &sim.replicas {
        assert_eq!(stat(&replica.render_stats(), "txn_locked_keys"), 2);
    }
    sim.put(b"a", b"x", 4);
    sim.get(b"a", 5);
    sim.get(b"b", 6);
    sim.deliver_all();
    assert_eq!(status_of(&sim, 4), Status::Locked);
    assert_eq!(status_of(&sim, 5), Status::Ok);
    assert_eq!(status_of(&sim, 6), Status::Locked);
    // A rival sharing `a` is let in; one wanting `b` is refused and
    // aborted there (no-wait).
    let rival = id(2);
    sim.send(acquire(&sim, rival, &[Item::get(b"a")], 7));
    sim.send(acquire(&sim, id(3), &[Item::get(b"b")], 8));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 7), Status::Ok);
    assert_eq!(status_of(&sim, 8), Status::Locked);
    sim.send(finish(Op::Resolve, id(3), 9));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 9), Status::TxnAborted);
    // The rival lets go; the transaction prepares its write under its own
    // locks (its check cannot fail) and commits.
    sim.send(finish(Op::Abort, rival, 10));
    sim.send(prepare(
        &sim,
        txn,
        &[Item::check(b"a", version_a), Item::put(b"b", b"2")],
        11,
    ));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 10), Status::Ok);
    assert_eq!(status_of(&sim, 11), Status::Ok);
    assert_eq!(
        dirty(&sim, b"b"),
        1,
        "its write counts dirty from its PREPARE"
    );
    sim.send(finish(Op::Commit, txn, 12));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 12), Status::Ok);
    for replica in &sim.replicas {
        assert_eq!(replica.store().latest(b"b").unwrap().value, b"2");
        assert_eq!(stat(&replica.render_stats(), "txn_locked_keys"), 0);
    }
    assert_eq!(dirty(&sim, b"b"), 0);
    sim.put(b"a", b"3", 13);
    sim.deliver_all();
    assert_eq!(status_of(&sim, 13), Status::Ok);
    let stats = sim.coordinator.render_stats(None);
    assert_eq!(stat(&stats, "shard0.txn_held"), 0, "{stats}");
}

#[test]
fn a_refused_acquire_aborts_the_transaction_and_releases_what_it_took() {
    let mut sim = Sim::new(2);
    let (holder, loser) = (id(1), id(2));
    sim.send(acquire(&sim, holder, &[for_update(b"a")], 1));
    sim.send(acquire(&sim, loser, &[Item::get(b"b")], 2));
    sim.deliver_all();
    assert_eq!(
        (status_of(&sim, 1), status_of(&sim, 2)),
        (Status::Ok, Status::Ok)
    );
    // The loser wants `a` too: refused, and everything it held goes.
    sim.send(acquire(&sim, loser, &[Item::get(b"a")], 3));
    sim.put(b"b", b"free", 4);
    sim.deliver_all();
    assert_eq!(status_of(&sim, 3), Status::Locked);
    assert_eq!(status_of(&sim, 4), Status::Ok, "its lock on b went");
    // Its later requests find it aborted; the holder is untouched.
    sim.send(prepare(&sim, loser, &[Item::put(b"b", b"mine")], 5));
    sim.send(acquire(&sim, loser, &[Item::get(b"c")], 6));
    sim.put(b"a", b"x", 7);
    sim.deliver_all();
    assert_eq!(status_of(&sim, 5), Status::TxnAborted);
    assert_eq!(status_of(&sim, 6), Status::TxnAborted);
    assert_eq!(status_of(&sim, 7), Status::Locked);
    assert_eq!(sim.tail().store().latest(b"b").unwrap().value, b"free");
    let stats = sim.coordinator.render_stats(None);
    assert_eq!(stat(&stats, "shard0.txn_held"), 1, "{stats}");
    // A resent ACQUIRE and a later upgrade are the holder's own: granted
    // once. A COMMIT before its PREPARE is refused and changes nothing;
    // its ABORT lets go.
    let again = acquire(&sim, holder, &[for_update(b"a")], 1);
    sim.send(again);
    sim.send(acquire(
        &sim,
        holder,
        &[Item::get(b"a"), for_update(b"d")],
        8,
    ));
    sim.send(finish(Op::Commit, holder, 9));
    sim.deliver_all();
    assert!(
        sim.replies_to(1)
            .iter()
            .all(|reply| reply.status() == Status::Ok)
    );
    assert_eq!(status_of(&sim, 8), Status::Ok);
    assert_eq!(status_of(&sim, 9), Status::Malformed);
    assert_eq!(stat(&sim.tail().render_stats(), "txn_locked_keys"), 2);
    sim.send(finish(Op::Abort, holder, 10));
    sim.put(b"a", b"y", 11);
    sim.deliver_all();
    assert_eq!(status_of(&sim, 10), Status::Ok);
    assert_eq!(status_of(&sim, 11), Status::Ok);
    assert_eq!(stat(&sim.tail().render_stats(), "txn_locked_keys"), 0);
    let stats = sim.coordinator.render_stats(None);
    assert_eq!(stat(&stats, "shard0.txn_held"), 0, "{stats}");
    // An ACQUIRE of anything but GETs is malformed.
    sim.send(acquire(&sim, id(4), &[Item::put(b"e", b"v")], 12));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 12), Status::Malformed);
    assert_eq!(stat(&sim.tail().render_stats(), "txn_locked_keys"), 0);
}

#[test]
fn locks_whose_client_went_away_are_released_after_the_lease() {
    let mut sim = Sim::new(3).with_journals();
    let txn = id(1);
    sim.send(acquire(&sim, txn, &[for_update(b"k"), Item::get(b"r")], 1));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 1), Status::Ok);
    // They survive a restart from the log and a snapshot, and a
    // coordinator starting afresh holds them again (nothing dirty).
    let snapshot = sim.replicas[1].snapshot();
    sim.restart_replica(0, None);
    sim.restart_replica(1, Some(snapshot));
    sim.coordinator = Sim::fresh_coordinator(&sim.chain);
    sim.tick();
    sim.deliver_all();
    assert!(sim.coordinator.is_ready());
    assert_eq!(dirty(&sim, b"k"), 0);
    for replica in &sim.replicas {
        assert_eq!(stat(&replica.render_stats(), "txn_locked_keys"), 2);
    }
    sim.put(b"k", b"x", 2);
    sim.deliver_all();
    assert_eq!(status_of(&sim, 2), Status::Locked);
    // The client sends nothing more: after the lease, the settler finds
    // this shard not prepared and aborts it.
    sim.advance(Duration::from_millis(250));
    sim.deliver_all();
    for replica in &sim.replicas {
        assert_eq!(stat(&replica.render_stats(), "txn_locked_keys"), 0);
    }
    // Its ABORT goes out at the next tick.
    sim.tick();
    sim.deliver_all();
    let stats = sim.coordinator.render_stats(None);
    assert_eq!(stat(&stats, "shard0.txn_held"), 0, "{stats}");
    assert_eq!(stat(&stats, "txn_settled_aborted"), 1, "{stats}");
    sim.put(b"k", b"y", 3);
    sim.send(prepare(&sim, txn, &[Item::put(b"k", b"late")], 4));
    sim.deliver_all();
    assert_eq!(status_of(&sim, 3), Status::Ok);
    assert_eq!(status_of(&sim, 4), Status::TxnAborted, "too late");
    assert_eq!(sim.tail().store().latest(b"k").unwrap().value, b"y");
}
