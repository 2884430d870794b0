//! Reading the map as a coordinator: which shards it assigns to the
//! coordinator at `listen`. The decisions on a change of the map are the
//! sans-I/O core `tern_proto::assignment`.

use std::net::SocketAddrV4;

use tern_control::meta::MetaMap;
use tern_control::{Migration, ShardMap, served_slots};
use tern_proto::assignment::Assignment;
use tern_proto::coordinator::ShardConfig;

/// The shards of `shards` whose coordinator is at `listen`, each with the
/// slots it serves given `migrations`.
pub fn shards_of(
    shards: &[ShardMap],
    migrations: &[Migration],
    listen: SocketAddrV4,
) -> Vec<ShardConfig> {
    shards
        .iter()
        .filter(|shard| shard.coordinator == listen)
        .map(|shard| ShardConfig {
            shard: shard.id.get(),
            epoch: shard.epoch.get(),
            chain: shard.replicas.clone(),
            slots: served_slots(shard, migrations),
            incarnation: shard.incarnation,
            early_commit: shard.early_commit,
            fanout: shard.fanout,
        })
        .collect()
}

/// `map` as the coordinator at `listen` reads it: its version and its
/// shards, from the one value.
pub fn assignment_of(map: &MetaMap, listen: SocketAddrV4) -> Assignment {
    Assignment {
        version: map.version,
        shards: shards_of(&map.shards, &map.migrations, listen),
    }
}
