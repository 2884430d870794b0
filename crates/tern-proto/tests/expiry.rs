//! Expiry through the chain: deadlines decided once by the head and held
//! alike by every replica, their log and snapshots; a value hidden from its
//! deadline on by each replica's own clock (so a read `skew` after the
//! deadline never sees it); Redis's EXPIRE options and the writes that keep
//! or drop a deadline; the head's reaper deleting expired keys through the
//! coordinator so that memory comes back; deadlines moving with a
//! migration's copy.

mod sim;

use std::time::Duration;

use sim::*;
use tern_proto::replica::Replica;
use tern_proto::{Core, Outbox, WallClock};
use tern_wire::{
    Expiry, Extensions, Header, Message, Op, Status, encode, encode_append_with, expiry, flags,
    key_hash,
};

/// Unix milliseconds of the simulation's clock (every replica's clock
/// unless a test skews one).
fn unix_ms(sim: &Sim) -> u64 {
    WallClock::default().unix_ms(sim.now)
}

/// A client request carrying a deadline.
fn with_expiry(op: Op, key: &[u8], value: &[u8], request_id: u64, asked: Expiry) -> Vec<u8> {
    let mut header = Header::new(op, SHARD, EPOCH);
    header.key_hash.set(key_hash(key));
    header.client_id.set(42);
    header.request_id.set(request_id);
    let extensions = Extensions {
        expiry: Some(asked),
        ..Extensions::default()
    };
    let mut bytes = Vec::new();
    encode_append_with(&header, &extensions, key, value, &mut bytes).unwrap();
    bytes
}

fn expire(key: &[u8], request_id: u64, deadline_ms: u64, mode: u8) -> Vec<u8> {
    with_expiry(
        Op::Expire,
        key,
        b"",
        request_id,
        Expiry { deadline_ms, mode },
    )
}

/// A read sent straight to replica `index`, answered from its newest value.
fn read_at_replica(sim: &mut Sim, index: usize, key: &[u8], request_id: u64) -> Reply {
    let mut header = Header::new(Op::Get, SHARD, EPOCH);
    header.key_hash.set(key_hash(key));
    header.client_id.set(42);
    header.request_id.set(request_id);
    header.flags = flags::TAIL_READ;
    sim.network.push_back(Datagram {
        from: CLIENT,
        to: sim.chain[index],
        bytes: encode(&header, key, b"").unwrap(),
    });
    sim.deliver_all();
    sim.reply_to(request_id)
}

fn deadline_of(reply: &Reply) -> Option<u64> {
    reply.extensions.expiry.map(|decided| decided.deadline_ms)
}

#[test]
fn a_deadline_is_decided_once_hidden_everywhere_from_then_and_reaped_through_the_chain() {
    let mut sim = Sim::new(3);
    let decided_at = unix_ms(&sim);
    sim.send(with_expiry(
        Op::Put,
        b"session",
        b"v",
        1,
        Expiry::after(500),
    ));
    sim.put(b"lasting", b"v", 2);
    sim.deliver_all();
    assert_eq!(sim.reply_to(1).status(), Status::Ok);
    // Every replica holds the head's absolute deadline, not a duration.
    for replica in &sim.replicas {
        let found = replica.store().latest(b"session").unwrap();
        assert_eq!(found.deadline_ms, decided_at + 500);
        assert_eq!(replica.store().latest(b"lasting").unwrap().deadline_ms, 0);
    }
    // A read tells the deadline; a key without one says none.
    sim.get(b"session", 3);
    sim.get(b"lasting", 4);
    sim.deliver_all();
    assert_eq!(deadline_of(&sim.reply_to(3)), Some(decided_at + 500));
    assert_eq!(deadline_of(&sim.reply_to(4)), None);
    // At the deadline, before any delete: gone for every reader.
    sim.now += Duration::from_millis(500);
    for index in 0..3 {
        let reply = read_at_replica(&mut sim, index, b"session", 10 + index as u64);
        assert_eq!(reply.status(), Status::NotFound, "replica {index}");
    }
    sim.get(b"session", 20);
    sim.deliver_all();
    assert_eq!(sim.reply_to(20).status(), Status::NotFound);
    // The head's reaper has the coordinator sequence the delete: every
    // replica, and so every log, forgets the key.
    sim.tick();
    assert!(
        sim.network
            .iter()
            .any(|datagram| datagram.to == sim.coordinator_addr && datagram.op() == Op::Expire),
        "the head asks its coordinator"
    );
    sim.deliver_all();
    sim.advance(Duration::from_millis(10));
    sim.deliver_all();
    for replica in &sim.replicas {
        assert_eq!(replica.store().latest(b"session"), None);
        assert_eq!(replica.store().expiring_keys(), 0);
        assert_eq!(replica.store().live_keys(), 1);
    }
    let stats = sim.head().render_stats();
    assert!(stats.contains("reaped 1\n"), "{stats}");
    assert!(stats.contains("reap_requests 1\n"), "{stats}");
    // Nothing more to reap: no more requests.
    sim.advance(Duration::from_secs(2));
    assert!(sim.network.is_empty());
}

#[test]
fn with_a_replica_clock_behind_a_value_stays_visible_there_for_at_most_the_skew() {
    const SKEW_MS: u64 = 200;
    let mut sim = Sim::new(3);
    // The tail's clock runs SKEW_MS behind the head's.
    sim.replicas[2].set_wall_clock(WallClock::with_offset(-(SKEW_MS as i64)));
    let decided_at = unix_ms(&sim);
    sim.send(with_expiry(Op::Put, b"k", b"v", 1, Expiry::after(1000)));
    sim.deliver_all();
    let deadline = decided_at + 1000;
    assert_eq!(
        sim.tail().store().latest(b"k").unwrap().deadline_ms,
        deadline
    );
    // Half the skew after the deadline: the head hides it, the slow tail
    // still answers it.
    sim.now += Duration::from_millis(1000 + SKEW_MS / 2);
    assert_eq!(
        read_at_replica(&mut sim, 0, b"k", 2).status(),
        Status::NotFound
    );
    assert_eq!(read_at_replica(&mut sim, 2, b"k", 3).status(), Status::Ok);
    // The skew after the deadline: gone everywhere, reaped or not.
    sim.now += Duration::from_millis(SKEW_MS / 2);
    for index in 0..3 {
        let reply = read_at_replica(&mut sim, index, b"k", 4 + index as u64);
        assert_eq!(reply.status(), Status::NotFound, "replica {index}");
    }
}

#[test]
fn expire_options_and_writes_keep_or_drop_deadlines_as_redis_does() {
    let mut sim = Sim::new(3);
    let now = unix_ms(&sim);
    let deadline = |sim: &Sim, key: &[u8]| sim.tail().store().latest(key).map(|f| f.deadline_ms);
    sim.put(b"k", b"1", 1);
    sim.deliver_all();
    // NX on a key without a deadline sets it; again, it does not.
    sim.send(expire(b"k", 2, 10_000, expiry::RELATIVE | expiry::IF_NONE));
    sim.send(expire(b"k", 3, 20_000, expiry::RELATIVE | expiry::IF_NONE));
    // GT with a later deadline moves it; LT with a later one does not.
    sim.send(expire(b"k", 4, 30_000, expiry::RELATIVE | expiry::IF_LATER));
    sim.send(expire(
        b"k",
        5,
        40_000,
        expiry::RELATIVE | expiry::IF_EARLIER,
    ));
    sim.send(expire(b"absent", 6, 10_000, expiry::RELATIVE));
    // Options Redis refuses together.
    sim.send(expire(b"k", 7, 10_000, expiry::IF_NONE | expiry::IF_LATER));
    sim.deliver_all();
    let statuses: Vec<Status> = (2..=7).map(|id| sim.reply_to(id).status()).collect();
    assert_eq!(
        statuses,
        [
            Status::Ok,
            Status::CasMismatch,
            Status::Ok,
            Status::CasMismatch,
            Status::NotFound,
            Status::Malformed,
        ]
    );
    assert_eq!(deadline(&sim, b"k"), Some(now + 30_000));
    // INCRBY and APPEND keep the deadline.
    sim.send(request(Op::IncrBy, b"k", b"5", 0, 8));
    sim.deliver_all();
    assert_eq!(sim.tail().store().latest(b"k").unwrap().value, b"6");
    assert_eq!(deadline(&sim, b"k"), Some(now + 30_000));
    // SET KEEPTTL keeps it; a plain SET drops it.
    let keep = Expiry {
        deadline_ms: 0,
        mode: expiry::KEEP,
    };
    sim.send(with_expiry(Op::Put, b"k", b"kept", 9, keep));
    sim.deliver_all();
    assert_eq!(deadline(&sim, b"k"), Some(now + 30_000));
    sim.put(b"k", b"plain", 10);
    sim.deliver_all();
    assert_eq!(deadline(&sim, b"k"), Some(0));
    // PERSIST: only a key with a deadline changes.
    sim.send(expire(b"k", 11, 0, expiry::PERSIST));
    sim.send(with_expiry(
        Op::Put,
        b"k",
        b"x",
        12,
        Expiry::at(now + 60_000),
    ));
    sim.send(expire(b"k", 13, 0, expiry::PERSIST));
    sim.deliver_all();
    assert_eq!(sim.reply_to(11).status(), Status::CasMismatch);
    assert_eq!(sim.reply_to(13).status(), Status::Ok);
    assert_eq!(deadline(&sim, b"k"), Some(0));
    // A deadline in the past deletes the key, as Redis does.
    sim.send(expire(b"k", 14, now - 1, 0));
    sim.deliver_all();
    assert_eq!(sim.reply_to(14).status(), Status::Ok);
    assert_eq!(sim.tail().store().latest(b"k"), None);
    // A deadline on an op that takes none is refused.
    sim.send(with_expiry(Op::IncrBy, b"n", b"1", 15, Expiry::after(10)));
    sim.deliver_all();
    assert_eq!(sim.reply_to(15).status(), Status::Malformed);
}

#[test]
fn an_expired_value_counts_as_absent_for_the_next_write_and_its_old_value() {
    let mut sim = Sim::new(3);
    sim.send(with_expiry(Op::Put, b"n", b"41", 1, Expiry::after(100)));
    sim.deliver_all();
    sim.now += Duration::from_millis(100);
    // SET ... GET on the expired key answers nil, and INCR starts from 0.
    let mut set_get = Message::decode(&request(Op::Put, b"n", b"7", 0, 2))
        .unwrap()
        .header;
    set_get.flags = flags::RETURN_OLD;
    sim.send(encode(&set_get, b"n", b"7").unwrap());
    sim.deliver_all();
    let reply = sim.reply_to(2);
    assert_eq!(reply.status(), Status::Ok);
    assert!(reply.header.has_flag(flags::ANSWER_ABSENT), "nil, not 41");
    sim.send(with_expiry(Op::Put, b"m", b"5", 3, Expiry::after(100)));
    sim.deliver_all();
    sim.now += Duration::from_millis(100);
    sim.send(request(Op::IncrBy, b"m", b"1", 0, 4));
    // CAS against "absent" succeeds on an expired key (SET NX).
    sim.send(with_expiry(Op::Put, b"c", b"x", 5, Expiry::after(100)));
    sim.deliver_all();
    sim.now += Duration::from_millis(100);
    sim.send(request(Op::Cas, b"c", b"y", 0, 6));
    // DEL of an expired key answers 0 but frees it at once.
    sim.send(with_expiry(Op::Put, b"d", b"x", 7, Expiry::after(100)));
    sim.deliver_all();
    sim.now += Duration::from_millis(100);
    sim.send(request(Op::Delete, b"d", b"", 0, 8));
    sim.deliver_all();
    assert_eq!(sim.tail().store().latest(b"m").unwrap().value, b"1");
    assert_eq!(sim.reply_to(6).status(), Status::Ok);
    assert_eq!(sim.tail().store().latest(b"c").unwrap().value, b"y");
    assert_eq!(sim.reply_to(8).status(), Status::NotFound);
    assert_eq!(sim.tail().store().latest(b"d"), None);
}

#[test]
fn deadlines_survive_the_log_snapshots_and_a_migration_copy() {
    let mut sim = Sim::new(3).with_journals();
    let now = unix_ms(&sim);
    sim.send(with_expiry(Op::Put, b"a", b"1", 1, Expiry::after(5000)));
    sim.send(with_expiry(Op::Put, b"b", b"2", 2, Expiry::at(now + 9000)));
    sim.deliver_all();
    // From the log alone, and from a snapshot.
    sim.restart_replica(1, None);
    assert_eq!(
        sim.replicas[1].store().latest(b"a").unwrap().deadline_ms,
        now + 5000
    );
    let snapshot = sim.tail().snapshot();
    let restored = Replica::restore(sim.replica_config(2), Some(&snapshot.1)).unwrap();
    assert_eq!(
        restored.store().latest(b"b").unwrap().deadline_ms,
        now + 9000
    );
    assert_eq!(restored.store().expiring_keys(), 2);
    // A migration's export carries them, and INSTALL_KEYS installs them.
    let export = sim.tail().export_slots([0, tern_wire::SLOT_COUNT], 0);
    let mut copied: Vec<(Vec<u8>, u64)> = export
        .keys
        .iter()
        .map(|key| (key.key.clone(), key.deadline_ms))
        .collect();
    copied.sort();
    assert_eq!(
        copied,
        [(b"a".to_vec(), now + 5000), (b"b".to_vec(), now + 9000)]
    );
    let mut destination = Sim::new(3);
    let mut header = Header::new(Op::InstallKeys, SHARD, EPOCH);
    header.key_hash.set(key_hash(b""));
    header.client_id.set(7);
    header.request_id.set(1);
    let value = tern_wire::export::encode_keys(&export.keys);
    destination.send(encode(&header, b"", &value).unwrap());
    destination.deliver_all();
    for replica in &destination.replicas {
        assert_eq!(
            replica.store().latest(b"a").unwrap().deadline_ms,
            now + 5000
        );
    }
    // A replica's reaper never runs while it is not head.
    let mut outbox = Outbox::new();
    let mut middle = Replica::restore(sim.replica_config(1), Some(&snapshot.1)).unwrap();
    middle.tick(sim.now + Duration::from_secs(60), &mut outbox);
    assert!(
        outbox
            .iter()
            .all(|(_, bytes)| { Message::decode(bytes).unwrap().header.op() != Op::Expire })
    );
}

#[test]
fn a_write_passed_on_again_after_a_reconfiguration_keeps_its_deadline() {
    let mut sim = Sim::new(3);
    let decided_at = unix_ms(&sim);
    sim.send(with_expiry(Op::Put, b"k", b"v", 1, Expiry::after(5000)));
    // The head applies it; its copy to the middle is lost, and the middle
    // fails before anyone resends it.
    let head = sim.chain[0];
    sim.deliver_all_except(|datagram| datagram.from == head && datagram.op() == Op::Replicate);
    sim.fail_replica_in_place(1);
    // The head passes its record on again under the new epoch, re-encoded.
    sim.tick();
    sim.deliver_all();
    sim.advance(Duration::from_millis(10));
    sim.deliver_all();
    for replica in &sim.replicas {
        let found = replica.store().latest(b"k").expect("applied everywhere");
        assert_eq!(found.deadline_ms, decided_at + 5000);
    }
    assert_eq!(sim.reply_to(1).status(), Status::Ok);
}
