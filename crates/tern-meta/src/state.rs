//! The replicated state: the cluster map and what each change does to it.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use serde::{Deserialize, Serialize};
use tern_control::meta::{Change, MetaMap, Refusal};
use tern_control::{Migration, ShardId, ShardMap};
use tern_wire::maps::CHAIN_LEN_MAX;

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
}

impl MetaState {
    pub fn map(&self) -> MetaMap {
        MetaMap {
            version: self.version,
            shards: self.shards.clone(),
            migrations: self.migrations.clone(),
        }
    }

    pub fn apply(&mut self, command: &Command) -> Result<MetaMap, Refusal> {
        match command {
            Command::Init { shards } => {
                if self.version != 0 {
                    return Ok(self.map());
                }
                tern_control::ClusterMap::new(shards.clone())
                    .map_err(|error| Refusal::InvalidMap(error.to_string()))?;
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
        }
        self.version += 1;
        Ok(self.map())
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
}
