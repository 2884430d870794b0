//! The replicated state: the cluster map and what each change does to it.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use serde::{Deserialize, Serialize};
use tern_control::meta::{Change, MetaMap, Refusal};
use tern_control::{
    ClusterMap, Epoch, HandOff, Migration, ShardId, ShardMap, Slot, SlotRange, first_slot_missing,
};
use tern_wire::SLOT_COUNT;
use tern_wire::maps::CHAIN_LEN_MAX;

/// Whether a command changed the state.
enum Outcome {
    Changed,
    /// A repeat of a change already made (or an `Init` of an installed map).
    Unchanged,
}

/// A command in the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Installs the initial map (only when there is none yet).
    Init { shards: Vec<ShardMap> },
    /// An operator's change.
    Operator(Change),
    /// Failure handling: takes a silent replica out of its chain without
    /// lowering the shard's replication target, so a spare may replace it.
    Fail { shard: ShardId, addr: SocketAddrV4 },
}

/// What applying a command gave: the new map, or why it was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult(pub Result<MetaMap, Refusal>);

/// The state machine's value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    /// 0 until the initial map is installed.
    pub version: u64,
    pub shards: Vec<ShardMap>,
    /// Chain length each shard should have; failure handling refills a
    /// shorter chain from spare replicas of the shard.
    pub replication: BTreeMap<ShardId, usize>,
    /// Slot ranges moving between shards.
    #[serde(default)]
    pub migrations: Vec<Migration>,
    /// The id the next migration gets.
    #[serde(default)]
    pub next_migration: u64,
    /// Migrations that ended: true when completed, false when cancelled
    /// (so that a repeated request is answered as the first one was).
    #[serde(default)]
    pub ended: BTreeMap<u64, bool>,
    /// Shards retired (`RemoveShard`), so that a repeat changes nothing.
    #[serde(default)]
    pub retired: std::collections::BTreeSet<ShardId>,
}

impl MetaState {
    pub fn map(&self) -> MetaMap {
        MetaMap {
            version: self.version,
            shards: self.shards.clone(),
            migrations: self.migrations.clone(),
        }
    }

    /// Applies `command`: the new map, or why it was refused (and then
    /// nothing changed). A command that repeats one already applied changes
    /// nothing and keeps the version.
    pub fn apply(&mut self, command: &Command) -> Result<MetaMap, Refusal> {
        let before = self.clone();
        match self.change(command) {
            Ok(Outcome::Unchanged) => Ok(self.map()),
            Ok(Outcome::Changed) => {
                // Whatever a change did, the map it leaves must be valid.
                if let Err(error) =
                    ClusterMap::with_migrations(self.shards.clone(), self.migrations.clone())
                {
                    *self = before;
                    return Err(Refusal::InvalidMap(error.to_string()));
                }
                self.version += 1;
                Ok(self.map())
            }
            Err(refusal) => {
                *self = before;
                Err(refusal)
            }
        }
    }

    fn change(&mut self, command: &Command) -> Result<Outcome, Refusal> {
        match command {
            Command::Init { shards } => {
                if self.version != 0 {
                    return Ok(Outcome::Unchanged);
                }
                self.shards = shards.clone();
                self.replication = shards
                    .iter()
                    .map(|shard| (shard.id, shard.replicas.len()))
                    .collect();
            }
            Command::Operator(Change::AddReplica { shard, addr }) => {
                self.check_unused(*addr)?;
                let entry = self.shard_mut(*shard)?;
                if entry.replicas.len() >= CHAIN_LEN_MAX {
                    return Err(Refusal::ChainFull {
                        shard: *shard,
                        limit: CHAIN_LEN_MAX,
                    });
                }
                entry.replicas.push(*addr);
                entry.epoch = entry.epoch.next();
                let length = entry.replicas.len();
                let target = self.replication.entry(*shard).or_default();
                *target = (*target).max(length);
            }
            Command::Operator(Change::AddShard {
                shard,
                coordinator,
                replicas,
            }) => {
                if let Some(existing) = self.shards.iter().find(|s| s.id == *shard) {
                    if existing.coordinator == *coordinator && existing.replicas == *replicas {
                        return Ok(Outcome::Unchanged);
                    }
                    return Err(Refusal::ShardExists { shard: *shard });
                }
                if replicas.is_empty() || replicas.len() > CHAIN_LEN_MAX {
                    return Err(Refusal::BadChainLength {
                        limit: CHAIN_LEN_MAX,
                    });
                }
                if replicas.contains(coordinator)
                    || self.shards.iter().any(|s| s.replicas.contains(coordinator))
                {
                    return Err(Refusal::CoordinatorIsAReplica { addr: *coordinator });
                }
                for (index, addr) in replicas.iter().enumerate() {
                    self.check_unused(*addr)?;
                    if replicas[..index].contains(addr) {
                        return Err(Refusal::AlreadyAReplica {
                            shard: *shard,
                            addr: *addr,
                        });
                    }
                }
                // Epoch 1: a chain born with its replicas, which start it
                // empty (`Membership::on_map`).
                self.shards.push(ShardMap {
                    id: *shard,
                    epoch: Epoch(1),
                    slots: Vec::new(),
                    coordinator: *coordinator,
                    replicas: replicas.clone(),
                    incarnation: 0,
                    // The cluster's setting, as its first shard has it.
                    early_commit: self.shards.first().map_or(0, |first| first.early_commit),
                    fanout: self.shards.first().is_some_and(|first| first.fanout),
                });
                self.replication.insert(*shard, replicas.len());
                self.retired.remove(shard);
            }
            Command::Operator(Change::RemoveShard { shard }) => {
                let Some(index) = self.shards.iter().position(|s| s.id == *shard) else {
                    if self.retired.contains(shard) {
                        return Ok(Outcome::Unchanged);
                    }
                    return Err(Refusal::NoSuchShard { shard: *shard });
                };
                let slots: u32 = self.shards[index].slots.iter().map(|[s, e]| e - s).sum();
                if slots > 0 {
                    return Err(Refusal::ShardOwnsSlots {
                        shard: *shard,
                        slots,
                    });
                }
                if let Some(migration) = self
                    .migrations
                    .iter()
                    .find(|m| m.from == *shard || m.to == *shard)
                {
                    return Err(Refusal::ShardMigrating {
                        shard: *shard,
                        migration: migration.id,
                    });
                }
                self.shards.remove(index);
                self.replication.remove(shard);
                self.retired.insert(*shard);
            }
            Command::Operator(Change::RemoveReplica { shard, addr }) => {
                let length = self.remove(*shard, *addr)?;
                self.replication.insert(*shard, length);
            }
            Command::Fail { shard, addr } => {
                self.remove(*shard, *addr)?;
            }
            Command::Operator(Change::MoveCoordinator { from, to }) => {
                if from == to {
                    return Err(Refusal::MoveToItself);
                }
                if self.shards.iter().any(|shard| shard.replicas.contains(to)) {
                    return Err(Refusal::CoordinatorIsAReplica { addr: *to });
                }
                let mut moved = 0;
                for shard in self.shards.iter_mut().filter(|s| s.coordinator == *from) {
                    shard.coordinator = *to;
                    shard.epoch = shard.epoch.next();
                    moved += 1;
                }
                if moved == 0 {
                    return Err(Refusal::NoShardCoordinatedAt { from: *from });
                }
            }
            Command::Operator(Change::Resequence {
                coordinator,
                shards,
            }) => {
                let (mut coordinated, mut bumped) = (false, false);
                for (id, seen) in shards {
                    let Some(shard) = self
                        .shards
                        .iter_mut()
                        .find(|shard| shard.id == *id && shard.coordinator == *coordinator)
                    else {
                        // Moved to another coordinator meanwhile: not its own.
                        continue;
                    };
                    coordinated = true;
                    if shard.incarnation == *seen {
                        shard.incarnation += 1;
                        bumped = true;
                    }
                }
                if !coordinated {
                    return Err(Refusal::NoShardCoordinatedAt { from: *coordinator });
                }
                if !bumped {
                    // Asked again after its answer was lost: done already.
                    return Ok(Outcome::Unchanged);
                }
            }
            Command::Operator(Change::BeginMigration {
                from,
                to,
                slots,
                group_slots,
            }) => return self.begin_migration(*from, *to, *slots, *group_slots),
            Command::Operator(Change::HandOff {
                migration,
                group,
                floor,
                source_epoch,
                source_incarnation,
            }) => {
                let source = self.migration_mut(*migration)?.from;
                let (epoch, incarnation) = {
                    let shard = self.shard_mut(source)?;
                    (shard.epoch, shard.incarnation)
                };
                let migration = self.migration_mut(*migration)?;
                if *group >= migration.group_count() {
                    return Err(Refusal::NoSuchGroup {
                        migration: migration.id,
                        group: *group,
                    });
                }
                if migration.handed_off.iter().any(|done| done.group == *group) {
                    return Ok(Outcome::Unchanged);
                }
                if epoch != *source_epoch {
                    return Err(Refusal::SourceChanged {
                        shard: source,
                        epoch,
                        expected: *source_epoch,
                    });
                }
                if incarnation != *source_incarnation {
                    return Err(Refusal::SourceRestarted {
                        shard: source,
                        incarnation,
                        expected: *source_incarnation,
                    });
                }
                migration.handed_off.push(HandOff {
                    group: *group,
                    floor: *floor,
                });
                migration.handed_off.sort_unstable_by_key(|done| done.group);
            }
            Command::Operator(Change::CompleteMigration { migration }) => {
                // A repeat; a cancelled one is refused by `migration_mut`.
                if self.ended.get(migration) == Some(&true) {
                    return Ok(Outcome::Unchanged);
                }
                let moving = self.migration_mut(*migration)?.clone();
                let left = moving.group_count() - moving.handed_off.len() as u32;
                if left > 0 {
                    return Err(Refusal::MigrationUnfinished {
                        migration: moving.id,
                        left,
                    });
                }
                self.move_slots(moving.from, moving.to, moving.slots)?;
                self.end(moving.id, true);
            }
            Command::Operator(Change::CancelMigration { migration }) => {
                // A repeat; a completed one is refused by `migration_mut`.
                if self.ended.get(migration) == Some(&false) {
                    return Ok(Outcome::Unchanged);
                }
                let moving = self.migration_mut(*migration)?.clone();
                for done in &moving.handed_off {
                    self.move_slots(moving.from, moving.to, moving.group_slots_of(done.group))?;
                }
                self.end(moving.id, false);
            }
        }
        Ok(Outcome::Changed)
    }

    fn begin_migration(
        &mut self,
        from: ShardId,
        to: ShardId,
        slots: SlotRange,
        group_slots: u32,
    ) -> Result<Outcome, Refusal> {
        let [start, end] = slots;
        if start >= end || end > SLOT_COUNT || group_slots == 0 {
            return Err(Refusal::BadSlotRange { limit: SLOT_COUNT });
        }
        if from == to {
            return Err(Refusal::MigrateToItself);
        }
        self.shard_mut(to)?;
        let source = self.shard_mut(from)?.clone();
        if self.migrations.iter().any(|running| {
            (running.from, running.to, running.slots, running.group_slots)
                == (from, to, slots, group_slots)
        }) {
            return Ok(Outcome::Unchanged);
        }
        if let Some(slot) = first_slot_missing(&source.slots, slots) {
            return Err(Refusal::SlotNotOwned { shard: from, slot });
        }
        for running in &self.migrations {
            let [other_start, other_end] = running.slots;
            if other_start < end && start < other_end {
                return Err(Refusal::SlotAlreadyMoving {
                    slot: Slot(start.max(other_start)),
                    migration: running.id,
                });
            }
        }
        let id = self.next_migration.max(1);
        self.next_migration = id + 1;
        self.migrations.push(Migration {
            id,
            from,
            to,
            slots,
            group_slots,
            handed_off: Vec::new(),
        });
        Ok(Outcome::Changed)
    }

    /// The running migration `id`.
    fn migration_mut(&mut self, id: u64) -> Result<&mut Migration, Refusal> {
        match self.ended.get(&id) {
            Some(true) => return Err(Refusal::MigrationCompleted { migration: id }),
            Some(false) => return Err(Refusal::MigrationCancelled { migration: id }),
            None => {}
        }
        self.migrations
            .iter_mut()
            .find(|migration| migration.id == id)
            .ok_or(Refusal::NoSuchMigration { migration: id })
    }

    /// Moves `slots` from shard `from`'s ranges to shard `to`'s.
    fn move_slots(&mut self, from: ShardId, to: ShardId, slots: SlotRange) -> Result<(), Refusal> {
        tern_wire::slots::remove(&mut self.shard_mut(from)?.slots, slots);
        tern_wire::slots::add(&mut self.shard_mut(to)?.slots, slots);
        Ok(())
    }

    fn end(&mut self, id: u64, completed: bool) {
        self.migrations.retain(|migration| migration.id != id);
        self.ended.insert(id, completed);
    }

    fn shard_mut(&mut self, shard: ShardId) -> Result<&mut ShardMap, Refusal> {
        if self.version == 0 {
            return Err(Refusal::NotInitialised);
        }
        self.shards
            .iter_mut()
            .find(|entry| entry.id == shard)
            .ok_or(Refusal::NoSuchShard { shard })
    }

    /// Takes `addr` out of the chain; the chain's new length.
    fn remove(&mut self, shard: ShardId, addr: SocketAddrV4) -> Result<usize, Refusal> {
        let entry = self.shard_mut(shard)?;
        let Some(position) = entry.replicas.iter().position(|r| *r == addr) else {
            return Err(Refusal::NotAReplica { shard, addr });
        };
        if entry.replicas.len() == 1 {
            return Err(Refusal::LastReplica { shard, addr });
        }
        entry.replicas.remove(position);
        entry.epoch = entry.epoch.next();
        Ok(entry.replicas.len())
    }

    /// Whether no shard `shard` is in the map (an `AddShard` would create it).
    pub fn shard_is_new(&self, shard: ShardId) -> bool {
        self.shards.iter().all(|s| s.id != shard)
    }

    fn check_unused(&self, addr: SocketAddrV4) -> Result<(), Refusal> {
        for shard in &self.shards {
            if shard.replicas.contains(&addr) {
                return Err(Refusal::AlreadyAReplica {
                    shard: shard.id,
                    addr,
                });
            }
            if shard.coordinator == addr {
                return Err(Refusal::IsTheCoordinator {
                    shard: shard.id,
                    addr,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_control::Epoch;

    fn addr(last: u8) -> SocketAddrV4 {
        SocketAddrV4::new([10, 0, 0, last].into(), 7000)
    }

    fn initial() -> MetaState {
        let mut state = MetaState::default();
        let shards = vec![ShardMap {
            id: ShardId(0),
            epoch: Epoch(1),
            slots: vec![[0, tern_wire::SLOT_COUNT]],
            coordinator: addr(1),
            replicas: vec![addr(10), addr(11), addr(12)],
            incarnation: 0,
            early_commit: 0,
            fanout: false,
        }];
        state.apply(&Command::Init { shards }).unwrap();
        state
    }

    #[test]
    fn every_change_bumps_the_epoch_and_the_version() {
        let mut state = initial();
        assert_eq!(state.version, 1);
        let map = state
            .apply(&Command::Fail {
                shard: ShardId(0),
                addr: addr(11),
            })
            .unwrap();
        assert_eq!(map.shards[0].replicas, vec![addr(10), addr(12)]);
        assert_eq!(map.shards[0].epoch, Epoch(2));
        assert_eq!(
            state.replication[&ShardId(0)],
            3,
            "a failure keeps the target"
        );
        let map = state
            .apply(&Command::Operator(Change::AddReplica {
                shard: ShardId(0),
                addr: addr(11),
            }))
            .unwrap();
        assert_eq!(map.shards[0].replicas, vec![addr(10), addr(12), addr(11)]);
        assert_eq!((map.shards[0].epoch, map.version), (Epoch(3), 3));
        let map = state
            .apply(&Command::Operator(Change::MoveCoordinator {
                from: addr(1),
                to: addr(2),
            }))
            .unwrap();
        assert_eq!(
            (map.shards[0].coordinator, map.shards[0].epoch),
            (addr(2), Epoch(4))
        );
        state
            .apply(&Command::Operator(Change::RemoveReplica {
                shard: ShardId(0),
                addr: addr(10),
            }))
            .unwrap();
        assert_eq!(
            state.replication[&ShardId(0)],
            2,
            "an operator's removal lowers it"
        );
    }

    #[test]
    fn impossible_changes_are_refused_and_change_nothing() {
        let mut state = initial();
        let before = state.clone();
        for command in [
            Command::Operator(Change::AddReplica {
                shard: ShardId(0),
                addr: addr(10),
            }),
            Command::Operator(Change::AddReplica {
                shard: ShardId(7),
                addr: addr(20),
            }),
            Command::Fail {
                shard: ShardId(0),
                addr: addr(20),
            },
            Command::Operator(Change::MoveCoordinator {
                from: addr(3),
                to: addr(4),
            }),
            Command::Operator(Change::MoveCoordinator {
                from: addr(1),
                to: addr(10),
            }),
        ] {
            assert!(state.apply(&command).is_err(), "{command:?}");
            assert_eq!(state, before);
        }
        for gone in [10, 11] {
            state
                .apply(&Command::Fail {
                    shard: ShardId(0),
                    addr: addr(gone),
                })
                .unwrap();
        }
        let last = state.apply(&Command::Fail {
            shard: ShardId(0),
            addr: addr(12),
        });
        assert_eq!(
            last.unwrap_err(),
            Refusal::LastReplica {
                shard: ShardId(0),
                addr: addr(12)
            }
        );
    }

    /// Two shards: 0 owns [0, 8192), 1 owns the rest.
    fn two_shards() -> MetaState {
        let mut state = MetaState::default();
        let shard = |id: u32, slots: SlotRange, first: u8| ShardMap {
            id: ShardId(id),
            epoch: Epoch(1),
            slots: vec![slots],
            coordinator: addr(first),
            replicas: vec![addr(first + 10), addr(first + 11)],
            incarnation: 0,
            early_commit: 0,
            fanout: false,
        };
        let shards = vec![shard(0, [0, 8192], 1), shard(1, [8192, SLOT_COUNT], 2)];
        state.apply(&Command::Init { shards }).unwrap();
        state
    }

    fn change(state: &mut MetaState, change: Change) -> Result<MetaMap, Refusal> {
        state.apply(&Command::Operator(change))
    }

    fn begin(from: u32, to: u32, slots: SlotRange) -> Change {
        Change::BeginMigration {
            from: ShardId(from),
            to: ShardId(to),
            slots,
            group_slots: 64,
        }
    }

    fn hand_off(migration: u64, group: u32) -> Change {
        Change::HandOff {
            migration,
            group,
            floor: tern_control::Seq(1000 + group as u64),
            source_epoch: Epoch(1),
            source_incarnation: 0,
        }
    }

    fn cluster(map: &MetaMap) -> ClusterMap {
        map.to_cluster_map(&[]).unwrap()
    }

    #[test]
    fn a_migration_hands_off_group_by_group_then_moves_its_slots() {
        let mut state = two_shards();
        let map = change(&mut state, begin(0, 1, [0, 256])).unwrap();
        assert_eq!(map.version, 2);
        assert!(
            map.shards.iter().all(|shard| shard.epoch == Epoch(1)),
            "no chain changes, so no epoch changes"
        );
        let id = map.migrations[0].id;
        // Repeating a request changes nothing, not even the version.
        assert_eq!(
            change(&mut state, begin(0, 1, [0, 256])).unwrap().version,
            2
        );
        let map = change(&mut state, hand_off(id, 1)).unwrap();
        assert_eq!(
            change(&mut state, hand_off(id, 1)).unwrap().version,
            map.version
        );
        let routed = cluster(&map);
        assert_eq!(
            routed.shard_of_slot(Slot(0)).id,
            ShardId(0),
            "group 0: not yet"
        );
        assert_eq!(
            routed.shard_of_slot(Slot(64)).id,
            ShardId(1),
            "group 1: handed off"
        );
        assert_eq!(
            change(&mut state, Change::CompleteMigration { migration: id }),
            Err(Refusal::MigrationUnfinished {
                migration: id,
                left: 3
            })
        );
        for group in [0, 2, 3] {
            change(&mut state, hand_off(id, group)).unwrap();
        }
        let map = change(&mut state, Change::CompleteMigration { migration: id }).unwrap();
        assert!(map.migrations.is_empty());
        assert_eq!(map.shards[0].slots, vec![[256, 8192]]);
        assert_eq!(map.shards[1].slots, vec![[0, 256], [8192, SLOT_COUNT]]);
        let version = map.version;
        let again = change(&mut state, Change::CompleteMigration { migration: id }).unwrap();
        assert_eq!(again.version, version);
        assert_eq!(
            change(&mut state, Change::CancelMigration { migration: id }),
            Err(Refusal::MigrationCompleted { migration: id })
        );
        // The slots can move back.
        let back = change(&mut state, begin(1, 0, [0, 256])).unwrap();
        assert_ne!(back.migrations[0].id, id, "ids are never reused");
    }

    #[test]
    fn a_cancelled_migration_leaves_the_groups_handed_off_at_the_destination() {
        let mut state = two_shards();
        let id = change(&mut state, begin(0, 1, [0, 256]))
            .unwrap()
            .migrations[0]
            .id;
        change(&mut state, hand_off(id, 0)).unwrap();
        let map = change(&mut state, Change::CancelMigration { migration: id }).unwrap();
        assert!(map.migrations.is_empty());
        assert_eq!(map.shards[0].slots, vec![[64, 8192]]);
        assert_eq!(map.shards[1].slots, vec![[0, 64], [8192, SLOT_COUNT]]);
        assert_eq!(
            change(&mut state, Change::CancelMigration { migration: id })
                .unwrap()
                .version,
            map.version
        );
        assert_eq!(
            change(&mut state, hand_off(id, 1)),
            Err(Refusal::MigrationCancelled { migration: id })
        );
    }

    #[test]
    fn a_coordinator_starting_afresh_fences_the_hand_offs_of_its_old_holds() {
        let mut state = two_shards();
        let id = change(&mut state, begin(0, 1, [0, 256]))
            .unwrap()
            .migrations[0]
            .id;
        let resequence = |seen: u64| Change::Resequence {
            coordinator: addr(1),
            shards: vec![(ShardId(0), seen)],
        };
        let map = change(&mut state, resequence(0)).unwrap();
        assert_eq!(map.shards[0].incarnation, 1);
        assert_eq!(map.shards[0].epoch, Epoch(1), "replicas see no change");
        assert_eq!(map.shards[1].incarnation, 0, "not named");
        // Asked again (its answer lost), it changes nothing.
        assert_eq!(
            change(&mut state, resequence(0)).unwrap().version,
            map.version
        );
        // A hold taken before the restart cannot hand off...
        assert_eq!(
            change(&mut state, hand_off(id, 0)),
            Err(Refusal::SourceRestarted {
                shard: ShardId(0),
                incarnation: 1,
                expected: 0
            })
        );
        // ...one taken after can.
        let Change::HandOff {
            migration,
            group,
            floor,
            source_epoch,
            ..
        } = hand_off(id, 0)
        else {
            unreachable!()
        };
        let map = change(
            &mut state,
            Change::HandOff {
                migration,
                group,
                floor,
                source_epoch,
                source_incarnation: 1,
            },
        )
        .unwrap();
        assert_eq!(map.migrations[0].handed_off.len(), 1);
        // Only the shard's own coordinator starts it afresh.
        assert_eq!(
            change(
                &mut state,
                Change::Resequence {
                    coordinator: addr(2),
                    shards: vec![(ShardId(0), 1)],
                }
            ),
            Err(Refusal::NoShardCoordinatedAt { from: addr(2) })
        );
    }

    #[test]
    fn a_whole_shard_may_be_drained() {
        let mut state = two_shards();
        let id = change(&mut state, begin(1, 0, [8192, SLOT_COUNT]))
            .unwrap()
            .migrations[0]
            .id;
        for group in 0..8192 / 64 {
            change(&mut state, hand_off(id, group)).unwrap();
        }
        let map = change(&mut state, Change::CompleteMigration { migration: id }).unwrap();
        assert_eq!(map.shards[0].slots, vec![[0, SLOT_COUNT]]);
        assert!(map.shards[1].slots.is_empty());
    }

    #[test]
    fn impossible_migrations_are_refused_and_change_nothing() {
        let mut state = two_shards();
        let id = change(&mut state, begin(0, 1, [0, 256]))
            .unwrap()
            .migrations[0]
            .id;
        let before = state.clone();
        for (request, refusal) in [
            (
                begin(0, 1, [8000, 8300]),
                Refusal::SlotNotOwned {
                    shard: ShardId(0),
                    slot: Slot(8192),
                },
            ),
            (
                begin(0, 7, [300, 400]),
                Refusal::NoSuchShard { shard: ShardId(7) },
            ),
            (
                begin(9, 1, [300, 400]),
                Refusal::NoSuchShard { shard: ShardId(9) },
            ),
            (
                begin(0, 1, [200, 400]),
                Refusal::SlotAlreadyMoving {
                    slot: Slot(200),
                    migration: id,
                },
            ),
            (begin(0, 0, [300, 400]), Refusal::MigrateToItself),
            (
                begin(0, 1, [400, 300]),
                Refusal::BadSlotRange { limit: SLOT_COUNT },
            ),
            (
                begin(0, 1, [0, SLOT_COUNT + 1]),
                Refusal::BadSlotRange { limit: SLOT_COUNT },
            ),
            (
                Change::BeginMigration {
                    from: ShardId(0),
                    to: ShardId(1),
                    slots: [300, 400],
                    group_slots: 0,
                },
                Refusal::BadSlotRange { limit: SLOT_COUNT },
            ),
            (
                hand_off(id, 4),
                Refusal::NoSuchGroup {
                    migration: id,
                    group: 4,
                },
            ),
            (hand_off(77, 0), Refusal::NoSuchMigration { migration: 77 }),
            (
                Change::HandOff {
                    migration: id,
                    group: 0,
                    floor: tern_control::Seq(1),
                    source_epoch: Epoch(7),
                    source_incarnation: 0,
                },
                Refusal::SourceChanged {
                    shard: ShardId(0),
                    epoch: Epoch(1),
                    expected: Epoch(7),
                },
            ),
            (
                Change::CompleteMigration { migration: 77 },
                Refusal::NoSuchMigration { migration: 77 },
            ),
        ] {
            assert_eq!(
                change(&mut state, request.clone()),
                Err(refusal),
                "{request:?}"
            );
            assert_eq!(state, before, "{request:?} changed nothing");
        }
        assert!(
            Refusal::SlotNotOwned {
                shard: ShardId(0),
                slot: Slot(8192)
            }
            .to_string()
            .contains("shard 0 does not own slot 8192")
        );
    }

    #[test]
    fn a_shard_is_added_empty_and_retired_only_once_it_owns_nothing() {
        let mut state = initial();
        let add = |replicas: Vec<SocketAddrV4>| {
            Command::Operator(Change::AddShard {
                shard: ShardId(1),
                coordinator: addr(1),
                replicas,
            })
        };
        let map = state.apply(&add(vec![addr(20), addr(21)])).unwrap();
        let added = map.shards.iter().find(|s| s.id == ShardId(1)).unwrap();
        assert_eq!((added.epoch, added.slots.len()), (Epoch(1), 0));
        assert_eq!(state.replication[&ShardId(1)], 2);
        let version = map.version;
        assert_eq!(
            state.apply(&add(vec![addr(20), addr(21)])).unwrap().version,
            version,
            "a repeat changes nothing"
        );
        assert_eq!(
            state.apply(&add(vec![addr(22)])),
            Err(Refusal::ShardExists { shard: ShardId(1) })
        );
        let taken = Command::Operator(Change::AddShard {
            shard: ShardId(2),
            coordinator: addr(1),
            replicas: vec![addr(10)],
        });
        assert!(matches!(
            state.apply(&taken),
            Err(Refusal::AlreadyAReplica { .. })
        ));
        let empty = Command::Operator(Change::AddShard {
            shard: ShardId(2),
            coordinator: addr(1),
            replicas: vec![],
        });
        assert!(matches!(
            state.apply(&empty),
            Err(Refusal::BadChainLength { .. })
        ));
        // Shard 0 owns every slot: it stays.
        let remove = |shard| {
            Command::Operator(Change::RemoveShard {
                shard: ShardId(shard),
            })
        };
        assert_eq!(
            state.apply(&remove(0)),
            Err(Refusal::ShardOwnsSlots {
                shard: ShardId(0),
                slots: tern_wire::SLOT_COUNT
            })
        );
        // In a migration: it stays too.
        state
            .apply(&Command::Operator(begin(0, 1, [0, 64])))
            .unwrap();
        assert!(matches!(
            state.apply(&remove(1)),
            Err(Refusal::ShardMigrating { .. })
        ));
        let id = state.migrations[0].id;
        state
            .apply(&Command::Operator(Change::CancelMigration {
                migration: id,
            }))
            .unwrap();
        let map = state.apply(&remove(1)).unwrap();
        assert!(map.shards.iter().all(|s| s.id != ShardId(1)));
        assert!(!state.replication.contains_key(&ShardId(1)));
        assert_eq!(
            state.apply(&remove(1)).unwrap().version,
            map.version,
            "a repeat"
        );
        assert_eq!(
            state.apply(&remove(7)),
            Err(Refusal::NoSuchShard { shard: ShardId(7) })
        );
    }
}
