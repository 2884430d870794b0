//! The data-path primitives of a slot migration, on the simulated network:
//! a destination shard installs copies of keys with the versions they had
//! at the source (INSTALL), lifts every later version above the source's
//! (REBASE), and a source forgets the slots that moved (DROP_SLOTS). Each
//! is a sequenced write, so every replica applies it in order, and it
//! survives restarts from the log and from snapshots.

mod sim;

use sim::*;
use tern_proto::coordinator::ShardState;
use tern_wire::{Header, Op, Status, encode, key_hash, slot_of};

/// The header of a migration's request about `key` to the simulated shard,
/// from the migration's own client (7).
fn migration_header(op: Op, key: &[u8], request_id: u64) -> Header {
    let mut header = Header::new(op, SHARD, EPOCH);
    header.key_hash.set(key_hash(key));
    header.client_id.set(7);
    header.request_id.set(request_id);
    header
}

fn install(key: &[u8], value: &[u8], version: u64, request_id: u64) -> Vec<u8> {
    let mut header = migration_header(Op::Install, key, request_id);
    header.set_version(version);
    encode(&header, key, value).unwrap()
}

fn rebase(floor: u64, request_id: u64) -> Vec<u8> {
    let mut header = migration_header(Op::Rebase, b"", request_id);
    header.set_version(floor);
    encode(&header, b"", b"").unwrap()
}

fn drop_slots(range: [u32; 2], request_id: u64) -> Vec<u8> {
    let mut header = migration_header(Op::DropSlots, b"", request_id);
    header.set_slot_range(range);
    encode(&header, b"", b"").unwrap()
}

/// A shard serving none of the slots of `key` yet (a migration's
/// destination before the hand-off).
fn destination_not_serving(key: &[u8]) -> Sim {
    let mut sim = Sim::new(3).with_journals();
    let slot = slot_of(key_hash(key));
    let mut config = sim.shard().config().clone();
    config.slots = vec![[0, slot], [slot + 1, tern_wire::SLOT_COUNT]];
    assert!(sim.coordinator.reconfigure(config));
    sim
}

#[test]
fn installed_keys_keep_their_versions_and_later_writes_get_higher_ones() {
    let mut sim = destination_not_serving(b"moved");
    // The copy goes in although the shard does not serve the slot yet.
    sim.send(install(b"moved", b"from-a", 7000, 1));
    sim.send(rebase(9000, 2));
    sim.deliver_all();
    assert_eq!(sim.reply_to(1).status(), Status::Ok);
    assert_eq!(sim.reply_to(2).status(), Status::Ok);
    for replica in &sim.replicas {
        let found = replica.store().latest(b"moved").unwrap();
        assert_eq!((found.version, found.value), (7000, &b"from-a"[..]));
    }
    // Client writes of the slot are still refused until the hand-off...
    sim.put(b"moved", b"early", 3);
    sim.deliver_all();
    assert_eq!(sim.reply_to(3).status(), Status::WrongShard);
    // ...after which a CAS with the version from the source succeeds, and
    // the version it writes is above every version the source gave.
    let mut config = sim.shard().config().clone();
    config.slots = vec![[0, tern_wire::SLOT_COUNT]];
    assert!(sim.coordinator.reconfigure(config));
    sim.send(request(Op::Cas, b"moved", b"from-b", 7000, 4));
    sim.deliver_all();
    let reply = sim.reply_to(4);
    assert_eq!(reply.status(), Status::Ok);
    assert!(reply.header.version() > 9000, "{}", reply.header.version());
    // Other keys' versions rise too: the floor covers keys deleted at the
    // source, whose old versions were not copied.
    sim.put(b"other", b"v", 5);
    sim.deliver_all();
    assert!(sim.reply_to(5).header.version() > 9000);
}

#[test]
fn a_copy_never_replaces_a_newer_version_and_a_repeated_copy_changes_nothing() {
    let mut sim = destination_not_serving(b"moved");
    sim.send(install(b"moved", b"new", 8000, 1));
    sim.deliver_all();
    // A resumed migration sends an older copy again, then the same copy.
    sim.send(install(b"moved", b"old", 7000, 2));
    sim.send(install(b"moved", b"new", 8000, 3));
    sim.deliver_all();
    for request_id in [2, 3] {
        let reply = sim.reply_to(request_id);
        assert_eq!((reply.status(), reply.header.version()), (Status::Ok, 8000));
    }
    for replica in &sim.replicas {
        let found = replica.store().latest(b"moved").unwrap();
        assert_eq!((found.version, found.value), (8000, &b"new"[..]));
    }
}

#[test]
fn dropped_slots_are_forgotten_by_every_replica_and_other_keys_stay() {
    let mut sim = Sim::new(3).with_journals();
    let keys: Vec<Vec<u8>> = (0..40).map(|n| format!("key-{n}").into_bytes()).collect();
    for (n, key) in keys.iter().enumerate() {
        sim.put(key, b"v", n as u64 + 1);
    }
    sim.deliver_all();
    let range = [0, tern_wire::SLOT_COUNT / 2];
    let moved = |key: &[u8]| (range[0]..range[1]).contains(&slot_of(key_hash(key)));
    assert!(keys.iter().any(|key| moved(key)) && keys.iter().any(|key| !moved(key)));
    // Slots the shard serves are never dropped.
    sim.send(drop_slots(range, 99));
    sim.deliver_all();
    assert_eq!(sim.reply_to(99).status(), Status::TryAgain);
    assert_eq!(sim.tail().store().live_keys(), keys.len());
    // Once its map no longer has them (the migration completed), they go.
    let mut config = sim.shard().config().clone();
    config.slots = vec![[range[1], tern_wire::SLOT_COUNT]];
    assert!(sim.coordinator.reconfigure(config));
    sim.send(drop_slots(range, 100));
    sim.deliver_all();
    assert_eq!(sim.reply_to(100).status(), Status::Ok);
    for replica in &sim.replicas {
        for key in &keys {
            assert_eq!(
                replica.store().latest(key).is_some(),
                !moved(key),
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }
    // An impossible range is refused, and nothing is dropped.
    sim.send(drop_slots([10, 5], 101));
    sim.deliver_all();
    assert_eq!(sim.reply_to(101).status(), Status::Malformed);
    let kept = keys.iter().filter(|key| !moved(key)).count();
    assert_eq!(sim.tail().store().live_keys(), kept);
}

#[test]
fn a_read_routed_before_its_slot_was_dropped_and_arriving_after_is_asked_again() {
    let mut sim = Sim::new(3).with_journals();
    sim.put(b"leaving", b"v", 1);
    sim.deliver_all();
    let range = slot_range_of(b"leaving");
    // The coordinator forwards a read of the key while it serves the slot;
    // the read is slow to arrive.
    sim.get(b"leaving", 2);
    sim.deliver_first(from_client);
    let forwarded = sim.lose(op(Op::Get));
    assert_eq!(forwarded.len(), 1);
    // Meanwhile the slot moves away and the chain forgets it.
    let mut config = sim.shard().config().clone();
    tern_wire::slots::remove(&mut config.slots, range);
    assert!(sim.coordinator.reconfigure(config));
    sim.send(drop_slots(range, 3));
    sim.deliver_all();
    assert_eq!(sim.reply_to(3).status(), Status::Ok);
    // Answered NOT_FOUND it would say the key never was; asked again, the
    // client is sent where the slot went.
    for datagram in forwarded {
        sim.receive(datagram);
    }
    sim.deliver_all();
    assert_eq!(sim.reply_to(2).status(), Status::TryAgain);
    let counted: u64 = sim
        .replicas
        .iter()
        .map(|replica| replica.counters().read_before_drop)
        .sum();
    assert_eq!(counted, 1);
    sim.get(b"leaving", 4);
    sim.deliver_all();
    assert_eq!(sim.reply_to(4).status(), Status::WrongShard);
}

#[test]
fn installs_and_rebases_survive_a_restart_from_the_log_and_from_a_snapshot() {
    for from_snapshot in [false, true] {
        let mut sim = destination_not_serving(b"moved");
        sim.send(install(b"moved", b"from-a", 7000, 1));
        sim.send(rebase(9000, 2));
        sim.deliver_all();
        let snapshot = from_snapshot.then(|| sim.head().snapshot());
        sim.restart_replica(0, snapshot);
        let found = sim.head().store().latest(b"moved").unwrap();
        assert_eq!(found.version, 7000, "snapshot: {from_snapshot}");
        assert!(
            sim.head()
                .store()
                .version_of(sim.head().store().applied_seq() + 1)
                > 9000,
            "the floor holds after the restart (snapshot: {from_snapshot})"
        );
    }
}

fn freeze_request(range: [u32; 2], mode: u8, hold_ms: u32, request_id: u64) -> Vec<u8> {
    freeze_request_naming(range, mode, hold_ms, 0, request_id)
}

fn freeze_request_naming(
    range: [u32; 2],
    mode: u8,
    hold_ms: u32,
    map_version: u64,
    request_id: u64,
) -> Vec<u8> {
    let mut header = migration_header(Op::Freeze, b"", request_id);
    header.set_slot_range(range);
    let value = tern_wire::freeze::Request {
        mode,
        hold_ms,
        map_version,
    }
    .encode();
    encode(&header, b"", &value).unwrap()
}

#[test]
fn a_moved_hold_goes_once_the_coordinator_has_the_map_of_its_hand_off() {
    let mut sim = Sim::new(2);
    let range = slot_range_of(b"moving");
    // Handed off in map 7: refused, naming map 7, until the map arrives.
    sim.send(freeze_request_naming(
        range,
        tern_wire::freeze::MOVED,
        5000,
        7,
        1,
    ));
    sim.put(b"moving", b"v", 2);
    sim.deliver_all();
    assert_eq!(sim.reply_to(2).status(), Status::WrongShard);
    sim.coordinator.set_map_version(6);
    sim.put(b"moving", b"v", 3);
    sim.deliver_all();
    assert_eq!(
        sim.reply_to(3).status(),
        Status::WrongShard,
        "map 6 is older"
    );
    // Map 7 or later: the configuration decides. Here the slot is still
    // (or again) this shard's, as after a move away and back within the
    // hold's 5 s: served, not refused until the hold runs out.
    sim.coordinator.set_map_version(8);
    sim.put(b"moving", b"v", 4);
    sim.deliver_all();
    assert_eq!(sim.reply_to(4).status(), Status::Ok);
}

fn slot_range_of(key: &[u8]) -> [u32; 2] {
    let slot = slot_of(key_hash(key));
    [slot, slot + 1]
}

#[test]
fn a_frozen_range_holds_its_writes_serves_its_reads_and_reports_when_drained() {
    let mut sim = Sim::new(3);
    sim.put(b"frozen", b"v1", 1);
    sim.deliver_all();
    // A write in flight when the freeze arrives: not drained yet.
    sim.put(b"frozen", b"v2", 2);
    sim.deliver_first(from_client);
    let range = slot_range_of(b"frozen");
    sim.send(freeze_request(range, tern_wire::freeze::WRITES, 2000, 10));
    sim.deliver_first(from_client);
    sim.deliver_first(to(CLIENT));
    assert_eq!(
        sim.reply_to(10).status(),
        Status::TryAgain,
        "a write in flight"
    );
    sim.deliver_all();
    assert_eq!(
        sim.reply_to(2).status(),
        Status::Ok,
        "the write in flight ends"
    );
    sim.send(freeze_request(range, tern_wire::freeze::WRITES, 2000, 11));
    sim.deliver_all();
    let drained = sim.reply_to(11);
    assert_eq!(drained.status(), Status::Ok);
    assert_eq!(drained.header.seq.get(), sim.shard().state().next_seq());
    // Writes of the range wait; reads and other keys go on.
    sim.put(b"frozen", b"v3", 3);
    sim.get(b"frozen", 4);
    sim.put(b"elsewhere", b"v", 5);
    sim.deliver_all();
    assert_eq!(sim.reply_to(3).status(), Status::TryAgain);
    assert_eq!(sim.reply_to(4).value, b"v2");
    assert_eq!(sim.reply_to(5).status(), Status::Ok);
    // Holding reads too: the hand-off is near.
    sim.send(freeze_request(range, tern_wire::freeze::ALL, 2000, 12));
    sim.get(b"frozen", 6);
    sim.deliver_all();
    assert_eq!(sim.reply_to(6).status(), Status::TryAgain);
    // Released: served again.
    sim.send(freeze_request(range, tern_wire::freeze::RELEASE, 0, 13));
    sim.put(b"frozen", b"v3", 7);
    sim.deliver_all();
    assert_eq!(sim.reply_to(7).status(), Status::Ok);
    assert_eq!(sim.shard().counters().held_frozen, 2);
}

#[test]
fn a_hold_ends_by_itself_when_the_migration_stops_renewing_it() {
    let mut sim = Sim::new(2);
    let range = slot_range_of(b"frozen");
    sim.send(freeze_request(range, tern_wire::freeze::ALL, 500, 1));
    sim.put(b"frozen", b"v", 2);
    sim.deliver_all();
    assert_eq!(sim.reply_to(2).status(), Status::TryAgain);
    sim.advance(std::time::Duration::from_millis(600));
    sim.put(b"frozen", b"v", 3);
    sim.deliver_all();
    assert_eq!(sim.reply_to(3).status(), Status::Ok);
}

#[test]
fn a_bad_freeze_is_refused_and_holds_nothing() {
    let mut sim = Sim::new(2);
    let range = slot_range_of(b"frozen");
    sim.send(freeze_request([10, 5], tern_wire::freeze::WRITES, 500, 1));
    sim.send(freeze_request(range, 7, 500, 2));
    sim.send(freeze_request(range, tern_wire::freeze::WRITES, 60_000, 3));
    sim.put(b"frozen", b"v", 4);
    sim.deliver_all();
    for request_id in 1..=3 {
        assert_eq!(sim.reply_to(request_id).status(), Status::Malformed);
    }
    assert_eq!(sim.reply_to(4).status(), Status::Ok);
}

#[test]
fn a_hold_outlives_a_reconfiguration_of_the_chain() {
    let mut sim = Sim::new(3);
    let range = slot_range_of(b"frozen");
    sim.send(freeze_request(range, tern_wire::freeze::WRITES, 2000, 1));
    sim.deliver_all();
    sim.fail_replica_in_place(1);
    sim.send(request_at(EPOCH + 1, Op::Put, b"frozen", b"v", 0, 2));
    sim.deliver_all();
    assert_eq!(sim.reply_to(2).status(), Status::TryAgain);
}

fn install_outcome(client_id: u64, request_id: u64, version: u64, of_key: &[u8]) -> Vec<u8> {
    // Under the original client's id: the outcome is remembered as its.
    let mut header = migration_header(Op::InstallOutcome, b"", request_id);
    header.client_id.set(client_id);
    header.status = Status::Ok as u8;
    header.set_version(version);
    encode(&header, b"", &key_hash(of_key).to_le_bytes()).unwrap()
}

#[test]
fn a_write_applied_at_the_source_and_retried_at_the_destination_is_applied_once() {
    let mut sim = destination_not_serving(b"counter");
    // At the source, client 42's INCRBY (request 9) made the counter 5 at
    // version 7000; its reply was lost. The migration copies the key and
    // the outcome.
    sim.send(install(b"counter", b"5", 7000, 1));
    sim.send(install_outcome(42, 9, 7000, b"counter"));
    sim.send(rebase(9000, 2));
    sim.deliver_all();
    let mut config = sim.shard().config().clone();
    config.slots = vec![[0, tern_wire::SLOT_COUNT]];
    assert!(sim.coordinator.reconfigure(config));
    // The client retries with the same request id, now at the destination.
    sim.send(request(Op::IncrBy, b"counter", b"1", 0, 9));
    sim.deliver_all();
    let retried = sim.replies_to(9);
    let answer = retried.last().unwrap();
    assert_eq!(
        (answer.status(), answer.header.version()),
        (Status::Ok, 7000)
    );
    for replica in &sim.replicas {
        assert_eq!(replica.store().latest(b"counter").unwrap().value, b"5");
    }
    // A new write is applied.
    sim.send(request(Op::IncrBy, b"counter", b"1", 0, 10));
    sim.deliver_all();
    assert_eq!(sim.tail().store().latest(b"counter").unwrap().value, b"6");
}

#[test]
fn an_installed_outcome_survives_snapshots_with_its_key_hash() {
    let mut sim = destination_not_serving(b"counter");
    sim.send(install_outcome(42, 9, 7000, b"counter"));
    sim.deliver_all();
    let snapshot = sim.tail().snapshot();
    let restored =
        tern_proto::replica::Replica::restore(sim.tail().config().clone(), Some(&snapshot.1))
            .unwrap();
    let exported = restored.export_slots(slot_range_of(b"counter"), 0);
    assert_eq!(exported.outcomes.len(), 1);
    assert_eq!(exported.outcomes[0].request_id, 9);
}

#[test]
fn the_export_of_a_range_has_its_live_keys_its_outcomes_and_a_floor_above_them() {
    let mut sim = Sim::new(3);
    let keys: Vec<Vec<u8>> = (0..30).map(|n| format!("key-{n}").into_bytes()).collect();
    for (n, key) in keys.iter().enumerate() {
        sim.put(key, b"v", n as u64 + 1);
    }
    sim.send(request(Op::Delete, &keys[0], b"", 0, 100));
    sim.deliver_all();
    let range = [0, tern_wire::SLOT_COUNT / 2];
    let moved = |key: &[u8]| (range[0]..range[1]).contains(&slot_of(key_hash(key)));
    let export = sim.tail().export_slots(range, 0);
    let mut exported: Vec<&[u8]> = export.keys.iter().map(|k| &k.key[..]).collect();
    exported.sort();
    let mut expected: Vec<&[u8]> = keys[1..]
        .iter()
        .map(|k| &k[..])
        .filter(|k| moved(k))
        .collect();
    expected.sort();
    assert_eq!(
        exported, expected,
        "live keys of the range, the deleted one left out"
    );
    assert!(export.keys.iter().all(|k| k.version < export.floor));
    // The client's last 16 writes are remembered (requests 16 to 30 and the
    // delete): those to keys of the range are exported.
    let requests: Vec<u64> = export.outcomes.iter().map(|o| o.request_id).collect();
    for (n, key) in keys.iter().enumerate() {
        let request_id = n as u64 + 1;
        assert_eq!(
            requests.contains(&request_id),
            moved(key) && n >= 30 - 15,
            "{n}"
        );
    }
}

#[test]
fn holds_are_bounded_and_a_hold_at_the_bound_is_still_renewed() {
    let mut sim = Sim::new(1);
    let max = tern_proto::coordinator::FREEZES_MAX as u32;
    for slot in 0..max {
        sim.send(freeze_request(
            [slot, slot + 1],
            tern_wire::freeze::WRITES,
            5000,
            u64::from(slot) + 1,
        ));
    }
    sim.deliver_all();
    assert_eq!(sim.reply_to(u64::from(max)).status(), Status::Ok);
    sim.send(freeze_request(
        [max, max + 1],
        tern_wire::freeze::WRITES,
        5000,
        1_000_000,
    ));
    sim.send(freeze_request(
        [0, 1],
        tern_wire::freeze::ALL,
        5000,
        1_000_001,
    ));
    sim.deliver_all();
    assert_eq!(
        sim.reply_to(1_000_000).status(),
        Status::TryAgain,
        "one too many"
    );
    assert_eq!(
        sim.reply_to(1_000_001).status(),
        Status::Ok,
        "a renewal is not a new hold"
    );
}

#[test]
fn a_release_inside_a_hold_lets_go_of_that_part_only() {
    let mut sim = Sim::new(1);
    let key = b"inside";
    let slot = slot_of(key_hash(key));
    // A neighbour of the key in the held range, on either side.
    let neighbour = (0..)
        .map(|n| format!("neighbour-{n}").into_bytes())
        .find(|other| {
            let other = slot_of(key_hash(other));
            other != slot && other.abs_diff(slot) < 8
        })
        .unwrap();
    let range = [
        slot.saturating_sub(8),
        (slot + 8).min(tern_wire::SLOT_COUNT),
    ];
    sim.send(freeze_request(range, tern_wire::freeze::ALL, 5000, 1));
    sim.send(freeze_request(
        [slot, slot + 1],
        tern_wire::freeze::RELEASE,
        0,
        2,
    ));
    sim.deliver_all();
    assert_eq!(sim.reply_to(2).status(), Status::Ok);
    sim.put(key, b"v", 3);
    sim.put(&neighbour, b"v", 4);
    sim.deliver_all();
    assert_eq!(sim.reply_to(3).status(), Status::Ok, "released");
    assert_eq!(sim.reply_to(4).status(), Status::TryAgain, "still held");
    // Releasing the whole range lets go of both pieces.
    sim.send(freeze_request(range, tern_wire::freeze::RELEASE, 0, 5));
    sim.put(&neighbour, b"v", 6);
    sim.deliver_all();
    assert_eq!(sim.reply_to(6).status(), Status::Ok);
}

fn uninstall(key: &[u8], version: u64, request_id: u64) -> Vec<u8> {
    let mut header = migration_header(Op::Uninstall, key, request_id);
    header.set_version(version);
    encode(&header, key, b"").unwrap()
}

/// What a replica holds of the slots `range`: each live key with its
/// version and value, sorted.
fn contents(
    replica: &tern_proto::replica::Replica,
    range: [u32; 2],
) -> Vec<(Vec<u8>, u64, Vec<u8>)> {
    let mut found: Vec<_> = replica
        .store()
        .live_in(range)
        .map(|(key, found)| (key.to_vec(), found.version, found.value.to_vec()))
        .collect();
    found.sort();
    found
}

#[test]
fn a_delta_copy_brings_what_changed_since_the_first_and_the_destination_forgets_what_was_deleted() {
    let range = [0, tern_wire::SLOT_COUNT / 2];
    let in_range = |key: &[u8]| (range[0]..range[1]).contains(&slot_of(key_hash(key)));
    let keys: Vec<Vec<u8>> = (0..40)
        .map(|n| format!("key-{n}").into_bytes())
        .filter(|key| in_range(key))
        .take(6)
        .collect();
    let mut source = Sim::new(3);
    for (n, key) in keys.iter().enumerate() {
        source.put(key, b"first", n as u64 + 1);
    }
    source.deliver_all();
    let mut destination = Sim::new(3);
    let mut config = destination.shard().config().clone();
    config.slots = vec![[range[1], tern_wire::SLOT_COUNT]];
    assert!(destination.coordinator.reconfigure(config));
    let mut request_id = 1000;
    let mut install_all = |destination: &mut Sim, export: &tern_wire::export::Export| {
        for copied in &export.keys {
            request_id += 1;
            destination.send(install(
                &copied.key,
                &copied.value,
                copied.version,
                request_id,
            ));
        }
        destination.deliver_all();
    };
    // The first copy, while the source goes on serving.
    let first = source.tail().export_slots(range, 0);
    assert!(first.unchanged.is_empty());
    install_all(&mut destination, &first);
    // Meanwhile: one key overwritten, one deleted, one deleted and written
    // again, one new.
    source.put(&keys[0], b"second", 100);
    source.send(request(Op::Delete, &keys[1], b"", 0, 101));
    source.send(request(Op::Delete, &keys[2], b"", 0, 102));
    source.deliver_all();
    source.put(&keys[2], b"again", 103);
    let new_key = (40..200)
        .map(|n| format!("key-{n}").into_bytes())
        .find(|key| in_range(key))
        .unwrap();
    source.put(&new_key, b"new", 104);
    source.deliver_all();
    // The delta: only what changed comes in full.
    let delta = source.tail().export_slots(range, first.floor);
    let mut changed: Vec<&[u8]> = delta.keys.iter().map(|k| &k.key[..]).collect();
    changed.sort();
    let mut expected = vec![&keys[0][..], &keys[2][..], &new_key[..]];
    expected.sort();
    assert_eq!(changed, expected);
    let mut unchanged: Vec<Vec<u8>> = delta
        .unchanged
        .iter()
        .map(|named| named.key.clone())
        .collect();
    unchanged.sort();
    assert_eq!(unchanged, keys[3..].to_vec());
    install_all(&mut destination, &delta);
    // The copied keys the delta no longer names were deleted at the source.
    let live: std::collections::HashSet<&[u8]> = delta
        .keys
        .iter()
        .map(|k| &k.key[..])
        .chain(delta.unchanged.iter().map(|named| &named.key[..]))
        .collect();
    for (n, copied) in first
        .keys
        .iter()
        .filter(|k| !live.contains(&k.key[..]))
        .enumerate()
    {
        destination.send(uninstall(&copied.key, delta.floor, 2000 + n as u64));
    }
    // An UNINSTALL never forgets a newer copy.
    destination.send(uninstall(&keys[0], first.floor, 2100));
    destination.deliver_all();
    assert_eq!(destination.reply_to(2100).status(), Status::Ok);
    let wanted = contents(source.tail(), range);
    assert_eq!(wanted.len(), keys.len());
    for replica in &destination.replicas {
        assert_eq!(contents(replica, range), wanted);
    }
}

fn install_keys(keys: &[(&[u8], u64, &[u8])], request_id: u64) -> Vec<u8> {
    let copied: Vec<tern_wire::export::ExportedKey> = keys
        .iter()
        .map(|(key, version, value)| tern_wire::export::ExportedKey {
            key: key.to_vec(),
            version: *version,
            value: value.to_vec(),
            deadline_ms: 0,
        })
        .collect();
    let header = migration_header(Op::InstallKeys, b"", request_id);
    encode(&header, b"", &tern_wire::export::encode_keys(&copied)).unwrap()
}

#[test]
fn several_keys_install_under_one_seq_each_only_over_an_older_version_and_survive_a_restart() {
    let mut sim = destination_not_serving(b"a");
    sim.send(install(b"b", b"newer-here", 9000, 1));
    sim.deliver_all();
    sim.send(install_keys(
        &[
            (b"a", 7000, b"from-a"),
            (b"b", 8000, b"older"),
            (b"c", 7500, b"from-c"),
        ],
        2,
    ));
    sim.deliver_all();
    assert_eq!(sim.reply_to(2).status(), Status::Ok);
    let expect = |replica: &tern_proto::replica::Replica| {
        let found = |key: &[u8]| {
            let found = replica.store().latest(key).unwrap();
            (found.version, found.value.to_vec())
        };
        assert_eq!(found(b"a"), (7000, b"from-a".to_vec()));
        assert_eq!(
            found(b"b"),
            (9000, b"newer-here".to_vec()),
            "never over a newer one"
        );
        assert_eq!(found(b"c"), (7500, b"from-c".to_vec()));
    };
    sim.replicas.iter().for_each(expect);
    // From the log, as a restarted replica replays it.
    sim.restart_replica(1, None);
    expect(&sim.replicas[1]);
    // A damaged batch is refused and changes nothing.
    let mut header = migration_header(Op::InstallKeys, b"", 3);
    header.key_hash.set(key_hash(b""));
    sim.send(encode(&header, b"", &[1, 200, 0]).unwrap());
    sim.deliver_all();
    assert_eq!(sim.reply_to(3).status(), Status::Malformed);
    sim.replicas.iter().for_each(expect);
}

#[test]
fn replicas_count_the_reads_they_answer_and_the_writes_they_apply_by_slot() {
    let mut sim = Sim::new(3).with_journals();
    let slot = slot_of(key_hash(b"counted"));
    for request_id in 1..=3 {
        sim.put(b"counted", b"v", request_id);
    }
    for request_id in 4..=9 {
        sim.get(b"counted", request_id);
    }
    // A migration's copy is no load.
    sim.send(install(b"copied", b"v", 5, 10));
    sim.deliver_all();
    let copied = slot_of(key_hash(b"copied"));
    for replica in &sim.replicas {
        assert_eq!(replica.slot_load().writes(slot), 3);
        assert_eq!(replica.slot_load().writes(copied), 0);
    }
    let reads: u64 = sim
        .replicas
        .iter()
        .map(|replica| replica.slot_load().reads(slot))
        .sum();
    assert_eq!(reads, 6, "each read answered once, by some replica");
    // Counted live: a replica restarted from its log starts from zero.
    sim.restart_replica(1, None);
    assert_eq!(sim.replicas[1].slot_load().writes(slot), 0);
}

#[test]
fn a_range_held_to_pull_names_the_slots_asked_once_and_the_incarnation() {
    let mut sim = Sim::new(3);
    let mut config = sim.shard().config().clone();
    config.incarnation = 5;
    assert!(sim.coordinator.reconfigure(config));
    let range = [0, tern_wire::SLOT_COUNT];
    sim.send(freeze_request(range, tern_wire::freeze::PULL, 2000, 1));
    sim.deliver_all();
    assert_eq!(sim.reply_to(1).value, 5u64.to_le_bytes());
    // Requests wait, and their slots are remembered (each once).
    sim.get(b"wanted", 2);
    sim.put(b"wanted", b"v", 3);
    sim.deliver_all();
    assert_eq!(sim.reply_to(2).status(), Status::TryAgain);
    assert_eq!(sim.reply_to(3).status(), Status::TryAgain);
    sim.send(freeze_request(range, tern_wire::freeze::PULL, 2000, 4));
    sim.deliver_all();
    let slot = slot_of(key_hash(b"wanted")) as u16;
    let mut expected = 5u64.to_le_bytes().to_vec();
    expected.extend_from_slice(&slot.to_le_bytes());
    assert_eq!(sim.reply_to(4).value, expected);
    // Named once: the next answer has the incarnation only.
    sim.send(freeze_request(range, tern_wire::freeze::PULL, 2000, 5));
    sim.deliver_all();
    assert_eq!(sim.reply_to(5).value, 5u64.to_le_bytes());
}
