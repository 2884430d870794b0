//! The cluster map as a file: which shard owns which slots, and where its
//! coordinator and replicas listen.

use std::net::SocketAddrV4;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tern_wire::SLOT_COUNT;
use thiserror::Error;

use crate::{Epoch, ShardId, Slot};

/// A range of hash slots, `[start, end)` (written `[start, end]` in files).
pub type SlotRange = [u32; 2];

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
}

/// The cluster map (`cluster.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// The meta nodes that hold the authoritative map (empty: the map is
    /// static, as written in this file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meta: Vec<SocketAddrV4>,
    pub shards: Vec<ShardMap>,
    /// The version meta gave this map (0: read from a file).
    #[serde(skip)]
    pub version: u64,
    /// `slot -> index into shards`, derived when the map is validated.
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
}

impl ClusterMap {
    /// A validated map.
    pub fn new(shards: Vec<ShardMap>) -> Result<Self, MapError> {
        let mut map = ClusterMap {
            shards,
            meta: Vec::new(),
            version: 0,
            slot_owner: Vec::new(),
        };
        map.validate()?;
        Ok(map)
    }

    pub fn load(path: &Path) -> Result<Self, MapError> {
        let text = std::fs::read_to_string(path).map_err(|source| MapError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, MapError> {
        let mut map: ClusterMap = toml::from_str(text)?;
        map.validate()?;
        Ok(map)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a cluster map always serializes")
    }

    /// The shard owning `slot`. Validation guarantees there is exactly one.
    pub fn shard_of_slot(&self, slot: Slot) -> &ShardMap {
        &self.shards[self.slot_owner[slot.get() as usize] as usize]
    }

    /// The shard owning keys of this hash.
    pub fn shard_of_key_hash(&self, key_hash: u32) -> &ShardMap {
        self.shard_of_slot(Slot::of_key_hash(key_hash))
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
            if shard.slots.is_empty() {
                return invalid(format!("shard {} owns no slots", shard.id));
            }
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
        self.slot_owner = owner;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: u32, slots: SlotRange) -> ShardMap {
        ShardMap {
            id: ShardId(id),
            epoch: Epoch(1),
            slots: vec![slots],
            coordinator: "127.0.0.1:7000".parse().unwrap(),
            replicas: vec!["127.0.0.1:7100".parse().unwrap()],
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
        let mut empty = shard(2, [0, 1]);
        empty.slots.clear();
        assert!(
            ClusterMap::new(vec![empty])
                .unwrap_err()
                .to_string()
                .contains("owns no slots")
        );
    }
}
