//! The cluster map as a file: which shard owns which slots, where its
//! coordinator and replicas listen, and which slots are moving between
//! shards (each slot's state: owned, copying, or handed off).

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tern_wire::SLOT_COUNT;
use thiserror::Error;

use crate::{Epoch, Seq, ShardId, Slot, tls};

use tern_wire::slots;
/// A range of hash slots, `[start, end)` (written `[start, end]` in files).
pub use tern_wire::slots::SlotRange;

/// One shard: the slot ranges it owns, its coordinator and its chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    pub id: ShardId,
    pub epoch: Epoch,
    /// The slot ranges this shard owns, `[start, end)` each: a shard may own
    /// several, so that slots can move between shards range by range.
    pub slots: Vec<SlotRange>,
    pub coordinator: SocketAddrV4,
    /// Head first, tail last.
    pub replicas: Vec<SocketAddrV4>,
    /// Raised by the coordinator each time it starts sequencing the shard
    /// afresh at the same epoch (its process restarted, or it got its lease
    /// back), before it serves (`Change::Resequence`): a migration's hold
    /// lives in the coordinator's memory, so a hand-off is fenced by the
    /// incarnation that held the group as well as by the epoch.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub incarnation: u64,
    /// Early commit (Whale; `tern cluster up --commit early:K`): a write
    /// is answered once the first K replicas of the chain hold it, the rest
    /// follow; 0 (the default): once the tail holds it. A chain shrunk by
    /// failures to K replicas or fewer commits at its tail.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub early_commit: u32,
    /// Fan-out replication (`tern cluster up --replication fanout`): the
    /// head sends each write it decided to every other replica at once,
    /// and every replica acknowledges it to the coordinator; false (the
    /// default): the chain passes it on replica after replica.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fanout: bool,
}

fn is_zero<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Parses a commit rule as the CLI takes it: `chain` (answered once the
/// tail holds a write: 0), `early` (once the head and its successor do:
/// 2) or `early:K` (once the first K replicas do, K at least 1).
pub fn parse_commit(text: &str) -> Result<u32, String> {
    match text.split_once(':') {
        None if text == "chain" => Ok(0),
        None if text == "early" => Ok(2),
        Some(("early", k)) => match k.parse::<u32>() {
            Ok(0) => Err(
                "early:0 commits a write nowhere: K, the replicas that hold a write before it is answered, is at least 1"
                    .into(),
            ),
            Ok(k) => Ok(k),
            Err(_) => Err(format!("early:{k}: K must be a number of replicas")),
        },
        _ => Err(format!(
            "unknown commit rule {text:?}: chain, early (K = 2) or early:K"
        )),
    }
}

/// The commit rule as `parse_commit` reads it.
pub fn commit_name(early_commit: u32) -> String {
    match early_commit {
        0 => "chain".into(),
        k => format!("early:{k}"),
    }
}

/// Parses a replication topology as the CLI takes it: `chain` (false) or
/// `fanout` (true).
pub fn parse_replication(text: &str) -> Result<bool, String> {
    match text {
        "chain" => Ok(false),
        "fanout" | "fan-out" => Ok(true),
        _ => Err(format!("unknown replication {text:?}: chain or fanout")),
    }
}

/// The replication topology as `parse_replication` reads it.
pub fn replication_name(fanout: bool) -> &'static str {
    if fanout { "fanout" } else { "chain" }
}

/// A move of a slot range from one shard to another (live migration). The
/// range is cut into groups of `group_slots` slots, handed off one group at
/// a time: until its hand-off a group is served by `from` (which streams its
/// data to `to`), afterwards by `to`. When every group is handed off, the
/// range moves from `from`'s slots to `to`'s and the migration ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub id: u64,
    pub from: ShardId,
    pub to: ShardId,
    /// The slots that move, `[start, end)`; all owned by `from`.
    pub slots: SlotRange,
    /// Slots per group (the last group may be shorter).
    pub group_slots: u32,
    /// The groups handed off so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handed_off: Vec<HandOff>,
}

/// One group handed off to a migration's destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandOff {
    /// The group's index in the migration's range.
    pub group: u32,
    /// Every write the destination sequences for this group has a seq at
    /// least this high, so above every version the group had at the source.
    pub floor: Seq,
}

impl Migration {
    /// How many groups the range is cut into.
    pub fn group_count(&self) -> u32 {
        (self.slots[1] - self.slots[0]).div_ceil(self.group_slots)
    }

    /// The group of `slot`, if the migration moves it.
    pub fn group_of(&self, slot: Slot) -> Option<u32> {
        let slot = slot.get();
        (self.slots[0] <= slot && slot < self.slots[1])
            .then(|| (slot - self.slots[0]) / self.group_slots)
    }

    /// The slots of `group`, `[start, end)`.
    pub fn group_slots_of(&self, group: u32) -> SlotRange {
        let start = self.slots[0] + group * self.group_slots;
        [start, (start + self.group_slots).min(self.slots[1])]
    }

    fn hand_off(&self, group: u32) -> Option<&HandOff> {
        self.handed_off.iter().find(|done| done.group == group)
    }
}

/// Whether `ranges` hold every slot of `range`; if not, the first missing.
pub fn first_slot_missing(ranges: &[SlotRange], range: SlotRange) -> Option<Slot> {
    tern_wire::slots::first_missing(ranges, range).map(Slot)
}

/// The slot ranges `shard` serves: those it owns, except the groups it has
/// handed off in a migration, plus those handed off to it.
pub fn served_slots(shard: &ShardMap, migrations: &[Migration]) -> Vec<SlotRange> {
    let mut served = shard.slots.clone();
    for migration in migrations {
        for done in &migration.handed_off {
            let group = migration.group_slots_of(done.group);
            if migration.from == shard.id {
                slots::remove(&mut served, group);
            } else if migration.to == shard.id {
                slots::add(&mut served, group);
            }
        }
    }
    served
}

/// Where a slot stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Served by its owner; not moving.
    Owned { shard: ShardId },
    /// Moving, not yet handed off: served by `from`, which copies it to `to`.
    Copying {
        migration: u64,
        from: ShardId,
        to: ShardId,
    },
    /// Handed off: served by `to`, whose writes of it get seqs of at least
    /// `floor`; `from` still lists it until the migration completes.
    HandedOff {
        migration: u64,
        from: ShardId,
        to: ShardId,
        floor: Seq,
    },
}

impl SlotState {
    /// The shard that serves the slot now.
    pub fn serving(self) -> ShardId {
        match self {
            SlotState::Owned { shard } => shard,
            SlotState::Copying { from, .. } => from,
            SlotState::HandedOff { to, .. } => to,
        }
    }
}

/// The cluster map (`cluster.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// The meta nodes that hold the authoritative map (empty: the map is
    /// static, as written in this file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meta: Vec<SocketAddrV4>,
    pub shards: Vec<ShardMap>,
    /// Slot ranges moving between shards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrations: Vec<Migration>,
    /// The version meta gave this map (0: read from a file).
    #[serde(skip)]
    pub version: u64,
    /// `slot -> index into shards` of the shard serving it, derived when
    /// the map is validated.
    #[serde(skip)]
    slot_owner: Vec<u32>,
}

#[derive(Debug, Error)]
pub enum MapError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot parse the cluster map: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid cluster map: {0}")]
    Invalid(String),
    #[error("the cluster map's TLS identity: {0}")]
    Tls(String),
}

/// What a map file holds besides the map: how this process reaches the
/// cluster's control plane.
#[derive(Deserialize)]
struct MapFile {
    tls: Option<TlsSection>,
}

/// The `[tls] dir` of map file `path` holding `text`, relative to the file.
fn certificates_dir(path: &Path, text: &str) -> Result<Option<PathBuf>, MapError> {
    let file: MapFile = toml::from_str(text)?;
    Ok(file
        .tls
        .map(|section| path.parent().unwrap_or(Path::new(".")).join(section.dir)))
}

/// `[tls]` of a map file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    /// The certificates directory (`tern certs`), relative to the file.
    dir: PathBuf,
}

impl ClusterMap {
    /// A validated map.
    pub fn new(shards: Vec<ShardMap>) -> Result<Self, MapError> {
        Self::with_migrations(shards, Vec::new())
    }

    /// A validated map with slot ranges under way between shards.
    pub fn with_migrations(
        shards: Vec<ShardMap>,
        migrations: Vec<Migration>,
    ) -> Result<Self, MapError> {
        let mut map = ClusterMap {
            shards,
            migrations,
            meta: Vec::new(),
            version: 0,
            slot_owner: Vec::new(),
        };
        map.validate()?;
        Ok(map)
    }

    /// Reads a map file. A file with a `[tls]` table (`dir`: the
    /// certificates directory, relative to the file) makes this process
    /// speak mutual TLS to the cluster's control plane, as the identity
    /// [`tls::identity_name`] of that directory.
    pub fn load(path: &Path) -> Result<Self, MapError> {
        let text = std::fs::read_to_string(path).map_err(|source| MapError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let map = Self::parse(&text)?;
        if let Some(dir) = certificates_dir(path, &text)? {
            tls::use_identity(&dir, &tls::identity_name()).map_err(MapError::Tls)?;
        }
        Ok(map)
    }

    /// The certificates directory a map file names (`[tls] dir`), if any.
    pub fn tls_dir(path: &Path) -> Result<Option<PathBuf>, MapError> {
        let text = std::fs::read_to_string(path).map_err(|source| MapError::Read {
            path: path.display().to_string(),
            source,
        })?;
        certificates_dir(path, &text)
    }

    pub fn parse(text: &str) -> Result<Self, MapError> {
        let mut map: ClusterMap = toml::from_str(text)?;
        map.validate()?;
        Ok(map)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a cluster map always serializes")
    }

    /// The shard serving `slot`: its owner, or the destination of a
    /// migration that has handed it off. Validation guarantees there is
    /// exactly one.
    pub fn shard_of_slot(&self, slot: Slot) -> &ShardMap {
        &self.shards[self.slot_owner[slot.get() as usize] as usize]
    }

    /// The shard owning keys of this hash.
    pub fn shard_of_key_hash(&self, key_hash: u32) -> &ShardMap {
        self.shard_of_slot(Slot::of_key_hash(key_hash))
    }

    /// Whether `slot` is moving, and where it stands.
    pub fn slot_state(&self, slot: Slot) -> SlotState {
        for migration in &self.migrations {
            if let Some(group) = migration.group_of(slot) {
                let (id, from, to) = (migration.id, migration.from, migration.to);
                return match migration.hand_off(group) {
                    Some(done) => SlotState::HandedOff {
                        migration: id,
                        from,
                        to,
                        floor: done.floor,
                    },
                    None => SlotState::Copying {
                        migration: id,
                        from,
                        to,
                    },
                };
            }
        }
        SlotState::Owned {
            shard: self.shard_of_slot(slot).id,
        }
    }

    pub fn shard(&self, id: ShardId) -> Option<&ShardMap> {
        self.shards.iter().find(|shard| shard.id == id)
    }

    /// Splits the slot space evenly over `count` shards: `[start, end)` ranges.
    pub fn even_slot_ranges(count: u32) -> Vec<SlotRange> {
        (0..count)
            .map(|index| [SLOT_COUNT * index / count, SLOT_COUNT * (index + 1) / count])
            .collect()
    }

    fn validate(&mut self) -> Result<(), MapError> {
        let invalid = |message: String| Err(MapError::Invalid(message));
        if self.shards.is_empty() {
            return invalid("no shards".into());
        }
        let mut owner = vec![u32::MAX; SLOT_COUNT as usize];
        for (index, shard) in self.shards.iter().enumerate() {
            for &[start, end] in &shard.slots {
                if start >= end || end > SLOT_COUNT {
                    return invalid(format!(
                        "shard {} has slot range [{start}, {end}) outside [0, {SLOT_COUNT})",
                        shard.id
                    ));
                }
                for slot in start..end {
                    if owner[slot as usize] != u32::MAX {
                        return invalid(format!("slot {slot} belongs to two shards"));
                    }
                    owner[slot as usize] = index as u32;
                }
            }
            if shard.replicas.is_empty() {
                return invalid(format!("shard {} has no replicas", shard.id));
            }
            if self.shards[..index]
                .iter()
                .any(|other| other.id == shard.id)
            {
                return invalid(format!("shard id {} appears twice", shard.id));
            }
        }
        if let Some(slot) = owner.iter().position(|&index| index == u32::MAX) {
            return invalid(format!("slot {slot} belongs to no shard"));
        }
        let mut moving = vec![false; SLOT_COUNT as usize];
        for (index, migration) in self.migrations.iter().enumerate() {
            let id = migration.id;
            if self.migrations[..index].iter().any(|other| other.id == id) {
                return invalid(format!("migration id {id} appears twice"));
            }
            let [start, end] = migration.slots;
            if start >= end || end > SLOT_COUNT || migration.group_slots == 0 {
                return invalid(format!(
                    "migration {id} moves slots [{start}, {end}) in groups of {}",
                    migration.group_slots
                ));
            }
            let (Some(from), Some(to)) = (
                self.shards
                    .iter()
                    .position(|shard| shard.id == migration.from),
                self.shards
                    .iter()
                    .position(|shard| shard.id == migration.to),
            ) else {
                return invalid(format!("migration {id} names a shard not in the map"));
            };
            if from == to {
                return invalid(format!("migration {id} moves slots to their owner"));
            }
            for slot in start..end {
                if owner[slot as usize] != from as u32 {
                    return invalid(format!(
                        "migration {id} moves slot {slot}, which shard {} does not own",
                        migration.from
                    ));
                }
                if std::mem::replace(&mut moving[slot as usize], true) {
                    return invalid(format!("slot {slot} is in two migrations"));
                }
            }
            for (position, done) in migration.handed_off.iter().enumerate() {
                if done.group >= migration.group_count()
                    || migration.handed_off[..position]
                        .iter()
                        .any(|other| other.group == done.group)
                {
                    return invalid(format!(
                        "migration {id} hands off group {} twice or outside its range",
                        done.group
                    ));
                }
                let [group_start, group_end] = migration.group_slots_of(done.group);
                owner[group_start as usize..group_end as usize].fill(to as u32);
            }
        }
        self.slot_owner = owner;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_rules_parse_and_bad_ones_say_why() {
        assert_eq!(parse_commit("chain"), Ok(0));
        assert_eq!(parse_commit("early"), Ok(2));
        assert_eq!(parse_commit("early:1"), Ok(1));
        assert_eq!(parse_commit("early:5"), Ok(5));
        assert!(parse_commit("early:0").unwrap_err().contains("at least 1"));
        assert!(parse_commit("early:x").unwrap_err().contains("number"));
        assert!(
            parse_commit("fanout")
                .unwrap_err()
                .contains("unknown commit rule")
        );
        for k in [0, 1, 2, 7] {
            assert_eq!(parse_commit(&commit_name(k)), Ok(k));
        }
    }

    #[test]
    fn a_map_without_early_commit_reads_as_the_chain() {
        let text = r#"
            [[shards]]
            id = 0
            epoch = 1
            slots = [[0, 16384]]
            coordinator = "127.0.0.1:7000"
            replicas = ["127.0.0.1:7100"]
        "#;
        let map: ClusterMap = toml::from_str(text).unwrap();
        assert_eq!(map.shards[0].early_commit, 0);
        let mut early = map.clone();
        early.shards[0].early_commit = 2;
        let written = toml::to_string(&early).unwrap();
        assert!(written.contains("early_commit = 2"));
        assert!(!toml::to_string(&map).unwrap().contains("early_commit"));
    }

    fn shard(id: u32, slots: SlotRange) -> ShardMap {
        ShardMap {
            id: ShardId(id),
            epoch: Epoch(1),
            slots: vec![slots],
            coordinator: "127.0.0.1:7000".parse().unwrap(),
            replicas: vec!["127.0.0.1:7100".parse().unwrap()],
            incarnation: 0,
            early_commit: 0,
            fanout: false,
        }
    }

    #[test]
    fn a_map_round_trips_through_toml_and_routes_every_slot() {
        let shards = ClusterMap::even_slot_ranges(3)
            .into_iter()
            .enumerate()
            .map(|(id, slots)| shard(id as u32, slots))
            .collect();
        let map = ClusterMap::new(shards).unwrap();
        let parsed = ClusterMap::parse(&map.to_toml()).unwrap();
        assert_eq!(parsed, map);
        assert_eq!(parsed.shard_of_slot(Slot(0)).id, ShardId(0));
        assert_eq!(parsed.shard_of_slot(Slot(SLOT_COUNT - 1)).id, ShardId(2));
    }

    #[test]
    fn gaps_and_overlaps_in_slot_ranges_are_refused() {
        let gap = ClusterMap::new(vec![shard(0, [0, 100]), shard(1, [200, SLOT_COUNT])]);
        assert!(
            gap.unwrap_err()
                .to_string()
                .contains("slot 100 belongs to no shard")
        );
        let overlap = ClusterMap::new(vec![shard(0, [0, 200]), shard(1, [100, SLOT_COUNT])]);
        assert!(overlap.unwrap_err().to_string().contains("two shards"));
    }

    fn two_shards_moving(handed_off: Vec<HandOff>) -> Result<ClusterMap, MapError> {
        let migration = Migration {
            id: 5,
            from: ShardId(0),
            to: ShardId(1),
            slots: [100, 150],
            group_slots: 16,
            handed_off,
        };
        ClusterMap::with_migrations(
            vec![shard(0, [0, 200]), shard(1, [200, SLOT_COUNT])],
            vec![migration],
        )
    }

    #[test]
    fn a_handed_off_group_is_served_by_the_destination_and_the_rest_by_the_source() {
        let floor = Seq(7000);
        let map = two_shards_moving(vec![HandOff { group: 1, floor }]).unwrap();
        assert_eq!(map.migrations[0].group_count(), 4, "16 + 16 + 16 + 2 slots");
        assert_eq!(map.migrations[0].group_slots_of(3), [148, 150]);
        let (from, to) = (ShardId(0), ShardId(1));
        let copying = SlotState::Copying {
            migration: 5,
            from,
            to,
        };
        let handed_off = SlotState::HandedOff {
            migration: 5,
            from,
            to,
            floor,
        };
        for (slot, state) in [
            (99, SlotState::Owned { shard: from }),
            (100, copying),
            (115, copying),
            (116, handed_off),
            (131, handed_off),
            (132, copying),
            (149, copying),
            (150, SlotState::Owned { shard: from }),
            (200, SlotState::Owned { shard: to }),
        ] {
            assert_eq!(map.slot_state(Slot(slot)), state, "slot {slot}");
            assert_eq!(
                map.shard_of_slot(Slot(slot)).id,
                state.serving(),
                "slot {slot}"
            );
        }
        let parsed = ClusterMap::parse(&map.to_toml()).unwrap();
        assert_eq!(parsed, map);
        assert_eq!(parsed.shard_of_slot(Slot(120)).id, to);
        assert_eq!(
            served_slots(&map.shards[0], &map.migrations),
            [[0, 116], [132, 200]]
        );
        assert_eq!(
            served_slots(&map.shards[1], &map.migrations),
            [[116, 132], [200, SLOT_COUNT]]
        );
    }

    #[test]
    fn impossible_migrations_are_refused() {
        let floor = Seq(1);
        let twice = two_shards_moving(vec![
            HandOff { group: 0, floor },
            HandOff { group: 0, floor },
        ]);
        assert!(twice.unwrap_err().to_string().contains("group 0 twice"));
        let outside = two_shards_moving(vec![HandOff { group: 4, floor }]);
        assert!(
            outside
                .unwrap_err()
                .to_string()
                .contains("outside its range")
        );
        let base = two_shards_moving(Vec::new()).unwrap();
        let refused = |edit: &dyn Fn(&mut Migration)| {
            let mut migration = base.migrations[0].clone();
            edit(&mut migration);
            ClusterMap::with_migrations(base.shards.clone(), vec![migration])
                .unwrap_err()
                .to_string()
        };
        assert!(
            refused(&|m| m.slots = [150, 250]).contains("slot 200, which shard 0 does not own")
        );
        assert!(refused(&|m| m.to = ShardId(0)).contains("to their owner"));
        assert!(refused(&|m| m.to = ShardId(9)).contains("not in the map"));
        assert!(refused(&|m| m.group_slots = 0).contains("groups of 0"));
        let mut second = base.migrations[0].clone();
        second.id = 6;
        second.slots = [140, 160];
        let overlap = ClusterMap::with_migrations(
            base.shards.clone(),
            vec![base.migrations[0].clone(), second],
        );
        assert!(
            overlap
                .unwrap_err()
                .to_string()
                .contains("slot 140 is in two migrations")
        );
    }

    #[test]
    fn the_first_missing_slot_is_named() {
        let ranges = vec![[0, 160]];
        assert_eq!(first_slot_missing(&ranges, [10, 160]), None);
        assert_eq!(first_slot_missing(&ranges, [150, 170]), Some(Slot(160)));
    }

    #[test]
    fn a_shard_may_own_several_ranges() {
        let mut interleaved = shard(0, [0, 100]);
        interleaved.slots.push([200, SLOT_COUNT]);
        let map = ClusterMap::new(vec![interleaved, shard(1, [100, 200])]).unwrap();
        assert_eq!(map.shard_of_slot(Slot(50)).id, ShardId(0));
        assert_eq!(map.shard_of_slot(Slot(150)).id, ShardId(1));
        assert_eq!(map.shard_of_slot(Slot(250)).id, ShardId(0));
        let parsed = ClusterMap::parse(&map.to_toml()).unwrap();
        assert_eq!(parsed, map);
        // A shard may own nothing (drained, or not yet filled), as long as
        // every slot has an owner.
        let mut empty = shard(2, [0, 1]);
        empty.slots.clear();
        let with_empty = ClusterMap::new(vec![shard(0, [0, SLOT_COUNT]), empty.clone()]).unwrap();
        assert_eq!(with_empty.shard_of_slot(Slot(0)).id, ShardId(0));
        assert!(
            ClusterMap::new(vec![empty])
                .unwrap_err()
                .to_string()
                .contains("slot 0 belongs to no shard")
        );
    }
}
