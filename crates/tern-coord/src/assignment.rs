//! What a coordinator under meta does when the map changes: the decision,
//! without I/O, so that it is tested on its own (`tests` below) and the
//! serve loop only carries it out.
//!
//! A coordinator keeps serving a shard through any change of its chain or
//! epoch, reconfiguring in place (`ShardCoordinator::reconfigure`: the
//! window, dirty table and `commit_seq` survive); it stops serving a shard
//! the map moves away without disturbing the others. It starts afresh
//! (DESIGN rule 8, and in XDP mode a program reload) only when it newly
//! takes over a shard, since it cannot know what a predecessor had in
//! flight, or when its lease lapsed, since another coordinator may have
//! served meanwhile.

use std::collections::BTreeSet;

use tern_proto::coordinator::ShardConfig;

/// What the serve loop does with a newly assigned set of shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing this coordinator serves changed.
    Keep,
    /// Install in place: the shards to reconfigure (new chain or epoch) and
    /// those to stop serving.
    Change {
        reconfigure: Vec<ShardConfig>,
        remove: Vec<u32>,
    },
    /// Stop everything and start the assigned shards afresh (none: stand by).
    Restart,
}

/// Decides between serving `serving` and the map's `assigned` shards.
/// `lease_valid` is whether this process holds a lease for the map that
/// `assigned` comes from.
pub fn decide(serving: &[ShardConfig], assigned: &[ShardConfig], lease_valid: bool) -> Decision {
    if !lease_valid {
        return Decision::Restart;
    }
    let served: BTreeSet<u32> = serving.iter().map(|shard| shard.shard).collect();
    if assigned.iter().any(|shard| !served.contains(&shard.shard)) {
        // A takeover: what a predecessor had in flight is unknown here.
        return Decision::Restart;
    }
    if assigned.is_empty() {
        // Nothing left: stand by (and detach in XDP mode).
        return Decision::Restart;
    }
    let reconfigure: Vec<ShardConfig> = assigned
        .iter()
        .filter(|shard| !serving.contains(shard))
        .cloned()
        .collect();
    let remove: Vec<u32> = serving
        .iter()
        .map(|shard| shard.shard)
        .filter(|id| !assigned.iter().any(|shard| shard.shard == *id))
        .collect();
    if reconfigure.is_empty() && remove.is_empty() {
        Decision::Keep
    } else {
        Decision::Change {
            reconfigure,
            remove,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

    fn shard(id: u32, epoch: u32, replicas: &[u8]) -> ShardConfig {
        ShardConfig {
            shard: id,
            epoch,
            chain: replicas
                .iter()
                .map(|last| SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, *last), 7000))
                .collect(),
        }
    }

    #[test]
    fn the_same_map_changes_nothing() {
        let serving = [shard(0, 1, &[1, 2, 3]), shard(1, 1, &[4, 5, 6])];
        assert_eq!(decide(&serving, &serving, true), Decision::Keep);
    }

    #[test]
    fn a_replica_removed_or_added_is_installed_in_place() {
        let serving = [shard(0, 1, &[1, 2, 3]), shard(1, 1, &[4, 5, 6])];
        let removed = [shard(0, 2, &[2, 3]), shard(1, 1, &[4, 5, 6])];
        assert_eq!(
            decide(&serving, &removed, true),
            Decision::Change {
                reconfigure: vec![shard(0, 2, &[2, 3])],
                remove: vec![]
            }
        );
        let added = [shard(0, 3, &[2, 3, 7]), shard(1, 1, &[4, 5, 6])];
        assert_eq!(
            decide(&removed, &added, true),
            Decision::Change {
                reconfigure: vec![shard(0, 3, &[2, 3, 7])],
                remove: vec![]
            }
        );
    }

    #[test]
    fn a_shard_moved_away_is_dropped_without_touching_the_others() {
        let serving = [shard(0, 1, &[1, 2, 3]), shard(1, 1, &[4, 5, 6])];
        let moved = [shard(1, 1, &[4, 5, 6])];
        assert_eq!(
            decide(&serving, &moved, true),
            Decision::Change {
                reconfigure: vec![],
                remove: vec![0]
            }
        );
    }

    #[test]
    fn a_takeover_restarts_because_a_predecessor_may_have_writes_in_flight() {
        let serving = [shard(0, 1, &[1, 2, 3])];
        let more = [shard(0, 1, &[1, 2, 3]), shard(1, 2, &[4, 5, 6])];
        assert_eq!(decide(&serving, &more, true), Decision::Restart);
        assert_eq!(decide(&[], &more, true), Decision::Restart);
    }

    #[test]
    fn a_lost_lease_or_an_empty_assignment_stops_serving() {
        let serving = [shard(0, 1, &[1, 2, 3])];
        assert_eq!(decide(&serving, &serving, false), Decision::Restart);
        assert_eq!(decide(&serving, &[], true), Decision::Restart);
    }
}
