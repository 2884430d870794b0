//! What a coordinator under meta does when the map changes: the decision,
//! without I/O, so that it is tested on its own (`tests` below, and on the
//! simulated network in `tests/control.rs`) and the serve loop of
//! `tern-coord` only carries it out.
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

use crate::coordinator::{Coordinator, ShardConfig, ShardState};

/// One map as this coordinator reads it: its version and the shards it
/// assigns to this coordinator, both taken from the same map value (a
/// version read apart from its shards could hide a change made between the
/// two reads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub version: u64,
    pub shards: Vec<ShardConfig>,
}

/// What the serve loop is told between batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Go on as before.
    Serve,
    /// Install these shards' new configurations in place, stop serving
    /// those, and name this map version in refusals from now on.
    Change {
        reconfigure: Vec<ShardConfig>,
        remove: Vec<u32>,
        map_version: u64,
    },
    /// Stop serving and return (to stand by, or to start afresh).
    Stop,
}

/// A running coordinator's view of the map over time: the shards it serves
/// and the map version it has acted on. Asked between batches with the
/// newest map the heartbeats hold, it says what to do next.
#[derive(Clone, Debug)]
pub struct Supervisor {
    serving: Vec<ShardConfig>,
    /// The version of the map `serving` was last found current at (0 before
    /// the first poll, so that the first poll hands the version over).
    acted_on: u64,
}

impl Supervisor {
    pub fn new(serving: Vec<ShardConfig>) -> Supervisor {
        Supervisor {
            serving,
            acted_on: 0,
        }
    }

    /// The version of the map last acted on (0 before the first poll).
    pub fn acted_on(&self) -> u64 {
        self.acted_on
    }

    /// The shards served now.
    pub fn serving(&self) -> &[ShardConfig] {
        &self.serving
    }

    /// The next step, given the newest map (None: none newer than the one
    /// acted on is known) and `lease_valid(version)`: whether the lease
    /// holds for a process that has acted on the map of `version`. The
    /// lease is checked for the version acted on *after* this map was
    /// decided, so a lease that came with a map taking the shards away
    /// never lets them be served.
    pub fn poll(&mut self, newest: Option<Assignment>, lease_valid: impl Fn(u64) -> bool) -> Poll {
        let mut next = Poll::Serve;
        if let Some(map) = newest
            && map.version != self.acted_on
        {
            let assigned = if lease_valid(map.version) {
                map.shards
            } else {
                Vec::new()
            };
            let (reconfigure, remove) = match decide(&self.serving, &assigned, !assigned.is_empty())
            {
                Decision::Keep => (Vec::new(), Vec::new()),
                Decision::Change {
                    reconfigure,
                    remove,
                } => {
                    self.serving = assigned;
                    (reconfigure, remove)
                }
                Decision::Restart => return Poll::Stop,
            };
            self.acted_on = map.version;
            next = Poll::Change {
                reconfigure,
                remove,
                map_version: map.version,
            };
        }
        if lease_valid(self.acted_on) {
            next
        } else {
            Poll::Stop
        }
    }
}

/// A change to put into effect beyond the coordinator core (in XDP mode,
/// the kernel's routes).
#[derive(Clone, Copy, Debug)]
pub enum Install<'a> {
    Route(&'a ShardConfig),
    Gone(u32),
}

/// Carries out what `poll` said on `core`: each new configuration installed
/// by `install` and then in the core, each removed shard dropped from the
/// core and then from `install`'s side. Whether to go on serving.
pub fn carry_out<S: ShardState>(
    next: Poll,
    core: &mut Coordinator<S>,
    install: &mut dyn FnMut(Install<'_>),
) -> bool {
    match next {
        Poll::Serve => true,
        Poll::Stop => false,
        Poll::Change {
            reconfigure,
            remove,
            map_version,
        } => {
            for config in reconfigure {
                install(Install::Route(&config));
                core.reconfigure(config);
            }
            for shard in remove {
                core.remove(shard);
                install(Install::Gone(shard));
            }
            // After the configurations: acting on the new version lets go
            // of the holds of hand-offs it has (MOVED), and in XDP mode the
            // kernel serves whatever the bitmap says at once, so the
            // bitmap must already leave the slots handed off out.
            core.set_map_version(map_version);
            true
        }
    }
}

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

    /// A map of version `version` that assigns `ours` to this coordinator.
    fn map(version: u64, ours: &[ShardConfig]) -> Option<Assignment> {
        Some(Assignment {
            version,
            shards: ours.to_vec(),
        })
    }

    /// A lease as the heartbeat thread holds it: granted with the map of
    /// `granted_with`, valid for a process that has acted on that map.
    fn lease(granted_with: u64) -> impl Fn(u64) -> bool {
        move |acted_on| acted_on >= granted_with
    }

    #[test]
    fn the_first_poll_hands_the_map_version_over_and_then_serves() {
        let serving = vec![shard(0, 1, &[1, 2, 3])];
        let mut supervisor = Supervisor::new(serving.clone());
        let current = map(4, &serving);
        assert_eq!(
            supervisor.poll(current.clone(), lease(4)),
            Poll::Change {
                reconfigure: vec![],
                remove: vec![],
                map_version: 4
            }
        );
        assert_eq!(supervisor.poll(current.clone(), lease(4)), Poll::Serve);
    }

    #[test]
    fn a_new_chain_is_installed_in_place_with_the_version_of_its_map() {
        let mut supervisor = Supervisor::new(vec![shard(0, 1, &[1, 2, 3])]);
        supervisor.poll(map(4, &[shard(0, 1, &[1, 2, 3])]), lease(4));
        let changed = map(5, &[shard(0, 2, &[2, 3])]);
        assert_eq!(
            supervisor.poll(changed.clone(), lease(5)),
            Poll::Change {
                reconfigure: vec![shard(0, 2, &[2, 3])],
                remove: vec![],
                map_version: 5
            }
        );
        assert_eq!(supervisor.poll(changed.clone(), lease(5)), Poll::Serve);
    }

    #[test]
    fn a_lease_renewed_with_a_map_that_takes_the_shards_away_never_serves_them() {
        // The race fixed last: the heartbeat thread has a fresh lease, which
        // came with map 6, in which the shard has moved to another
        // coordinator. Acting on map 5 must not count as holding it...
        let ours = shard(0, 1, &[1, 2, 3]);
        let mut supervisor = Supervisor::new(vec![ours.clone()]);
        let old = map(5, std::slice::from_ref(&ours));
        assert!(matches!(
            supervisor.poll(old.clone(), lease(5)),
            Poll::Change { .. }
        ));
        assert_eq!(supervisor.poll(old.clone(), lease(6)), Poll::Stop);
        // ...and once map 6 is seen, the shard stops being served.
        let mut supervisor = Supervisor::new(vec![ours.clone()]);
        supervisor.poll(old.clone(), lease(5));
        let moved = map(6, &[]);
        assert_eq!(supervisor.poll(moved.clone(), lease(6)), Poll::Stop);
    }

    #[test]
    fn the_version_always_comes_with_the_shards_it_describes() {
        // The other race fixed last: a version read after the shards could
        // hide a change made in between. The supervisor only ever sees one
        // map value, so a change and its version cannot be split: a version
        // it has acted on is the version of the shards it serves.
        let mut supervisor = Supervisor::new(vec![shard(0, 1, &[1, 2, 3])]);
        supervisor.poll(map(4, &[shard(0, 1, &[1, 2, 3])]), lease(4));
        let changed = map(5, &[shard(0, 2, &[1, 3])]);
        let Poll::Change {
            reconfigure,
            map_version,
            ..
        } = supervisor.poll(changed.clone(), lease(5))
        else {
            panic!("the change of map 5 was not handed over");
        };
        assert_eq!((reconfigure, map_version), (vec![shard(0, 2, &[1, 3])], 5));
        assert_eq!(supervisor.serving, vec![shard(0, 2, &[1, 3])]);
    }

    #[test]
    fn a_takeover_or_an_expired_lease_stops_serving() {
        let ours = shard(0, 1, &[1, 2, 3]);
        let mut supervisor = Supervisor::new(vec![ours.clone()]);
        supervisor.poll(map(4, std::slice::from_ref(&ours)), lease(4));
        let more = map(5, &[ours.clone(), shard(1, 3, &[4, 5, 6])]);
        assert_eq!(supervisor.poll(more.clone(), lease(5)), Poll::Stop);
        let mut supervisor = Supervisor::new(vec![ours.clone()]);
        let current = map(4, &[ours]);
        supervisor.poll(current.clone(), lease(4));
        assert_eq!(supervisor.poll(current, |_| false), Poll::Stop);
    }

    fn shard(id: u32, epoch: u32, replicas: &[u8]) -> ShardConfig {
        ShardConfig {
            incarnation: 0,
            shard: id,
            epoch,
            chain: replicas
                .iter()
                .map(|last| SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, *last), 7000))
                .collect(),
            slots: vec![[0, tern_wire::SLOT_COUNT]],
            early_commit: 0,
            fanout: false,
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
