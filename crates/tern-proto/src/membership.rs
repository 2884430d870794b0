//! A replica's membership under meta, without I/O: what it does when a map
//! arrives, when a state transfer completes, when it restarts, and whether
//! it may serve. The shell (`tern-server`'s `member`) feeds it the replica's
//! place in each map and carries out the [`Action`]s (reconfigure the
//! replica, drop its data, fetch its predecessor's state over TCP, load it).
//!
//! - **Member**: in the chain, serving while its lease holds.
//! - **Spare**: not in the chain (taken out, or new): fenced, no data. Meta
//!   appends only a live spare to a chain shorter than its target, so a
//!   replica that still believes it is a member is never re-added with
//!   outdated state.
//! - **Joining**: appended as the new tail; loads its predecessor's state,
//!   taken at this replica's epoch or later (from then on the predecessor
//!   forwards every later write here), then asks for everything after it
//!   (`Replica::catch_up`) and becomes a member.
//!
//! A process that restarts in the chain resumes only from its own durable
//! state (or on a brand-new cluster); otherwise it asks meta to take it out
//! and comes back as a spare, so it never serves state it does not have.

use crate::replica::ReplicaConfig;

/// Where the replica stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Member,
    Spare,
    /// Fetching the predecessor's state for this place in the chain.
    Joining {
        config: ReplicaConfig,
    },
}

/// What a replica restarting in a map does first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Resume as a member from its durable state.
    Resume,
    /// In the chain without its data: ask meta to take it out, then report
    /// with [`Membership::left`].
    AskToLeave,
    /// Not in the chain: a spare (drop whatever data is there).
    Spare,
}

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Install the replica's new place (`Replica::reconfigure`).
    Reconfigure(ReplicaConfig),
    /// Cancel any state transfer under way, install this place, and fetch
    /// the predecessor's state at this configuration's epoch or later.
    StartJoin(ReplicaConfig),
    /// Cancel the state transfer under way.
    CancelJoin,
    /// Drop the replica's data (its log and member marker) and reset it to
    /// an empty replica outside every chain.
    DropData,
    /// Load the fetched state into the replica at this place, ask the
    /// predecessor for every later write, and mark the data as a member's.
    LoadSnapshot(ReplicaConfig),
    /// Serve at this place from the empty state, marking the data as a
    /// member's: the chain was born with this replica (a new shard, at
    /// epoch 1), so there is nothing to fetch.
    StartEmpty(ReplicaConfig),
}

/// The membership of one replica process.
#[derive(Clone, Debug)]
pub struct Membership {
    role: Role,
    /// The place last installed in the replica (None: outside every chain).
    place: Option<ReplicaConfig>,
    /// The version of the map this replica has acted on. Its lease counts
    /// only for a process that has acted on the map the lease came with.
    acted_on: u64,
}

impl Membership {
    /// The decision of a replica process that starts with the map of
    /// `version`, in which it has `place`. `has_state`: it recovered writes
    /// from its durable log; `marked_member`: whether its data directory
    /// says it served as a member before (None: it has no data directory,
    /// so nothing can say).
    pub fn start(
        version: u64,
        place: Option<ReplicaConfig>,
        has_state: bool,
        marked_member: Option<bool>,
    ) -> (Membership, Start) {
        // A brand-new chain: every replica starts empty and in place. With
        // a data directory, a replica that never served carries no mark,
        // and a chain at epoch 1 was never reconfigured, so the replica is
        // one of those it was made with (the map's version alone does not
        // say: the coordinator's resequencing bumps it before a slow
        // replica's first look, which then asked to leave a fresh cluster).
        // Without one, only the first map says so.
        let fresh = |place: &ReplicaConfig| match marked_member {
            Some(marked) => !marked && place.epoch == 1,
            None => version == 1,
        };
        let (role, start) = match &place {
            Some(place) if has_state || fresh(place) => (Role::Member, Start::Resume),
            Some(_) => (Role::Member, Start::AskToLeave),
            None => (Role::Spare, Start::Spare),
        };
        let membership = Membership {
            role,
            place,
            acted_on: version,
        };
        (membership, start)
    }

    /// After `Start::AskToLeave`: `taken_out` when the map no longer has
    /// this replica; false when meta refused because it is the chain's last
    /// replica, which then serves empty (its data is lost, and says so).
    pub fn left(&mut self, taken_out: bool) -> Vec<Action> {
        if taken_out {
            self.role = Role::Spare;
            self.place = None;
            vec![Action::DropData]
        } else {
            self.role = Role::Member;
            Vec::new()
        }
    }

    /// A map of `version` in which this replica has `place` (None: it is
    /// in no chain).
    /// A map older than one already acted on is ignored.
    pub fn on_map(&mut self, version: u64, place: Option<ReplicaConfig>) -> Vec<Action> {
        if version < self.acted_on {
            return Vec::new();
        }
        self.acted_on = version;
        let role = std::mem::replace(&mut self.role, Role::Spare);
        let (role, actions) = match (role, place) {
            (Role::Member, Some(config)) => {
                let actions = if self.place.as_ref() == Some(&config) {
                    Vec::new()
                } else {
                    vec![Action::Reconfigure(config.clone())]
                };
                self.place = Some(config);
                (Role::Member, actions)
            }
            (Role::Joining { config: joining }, Some(config)) => {
                if joining.chain == config.chain {
                    // A new epoch of the same chain: the transfer goes on,
                    // and must now come from that epoch or later.
                    self.place = Some(config.clone());
                    (
                        Role::Joining {
                            config: config.clone(),
                        },
                        vec![Action::Reconfigure(config)],
                    )
                } else {
                    // The chain changed under the transfer: start it again.
                    self.join(config)
                }
            }
            // Every later chain of a shard comes from a change that bumps
            // its epoch (a replica added, failed, moved): a spare placed at
            // epoch 1 is in a chain created with it (`AddShard`), whose
            // members all start empty.
            (Role::Spare, Some(config)) if config.epoch == 1 => {
                self.place = Some(config.clone());
                (Role::Member, vec![Action::StartEmpty(config)])
            }
            (Role::Spare, Some(config)) => self.join(config),
            (role, None) => {
                let mut actions = Vec::new();
                if matches!(role, Role::Joining { .. }) {
                    actions.push(Action::CancelJoin);
                }
                if !matches!(role, Role::Spare) {
                    actions.push(Action::DropData);
                }
                self.place = None;
                (Role::Spare, actions)
            }
        };
        self.role = role;
        actions
    }

    fn join(&mut self, config: ReplicaConfig) -> (Role, Vec<Action>) {
        self.place = Some(config.clone());
        (
            Role::Joining {
                config: config.clone(),
            },
            vec![Action::StartJoin(config)],
        )
    }

    /// The predecessor served its state taken at `served_epoch`.
    pub fn on_snapshot(&mut self, served_epoch: u32) -> Vec<Action> {
        let Role::Joining { config } = &self.role else {
            // A transfer that finished after the join was cancelled.
            return Vec::new();
        };
        let config = config.clone();
        if served_epoch < config.epoch {
            // Taken before the predecessor knew of this replica: writes
            // after it may not have been forwarded here. Fetch again.
            return vec![Action::StartJoin(config)];
        }
        self.role = Role::Member;
        vec![Action::LoadSnapshot(config)]
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn is_member(&self) -> bool {
        self.role == Role::Member
    }

    pub fn is_spare(&self) -> bool {
        self.role == Role::Spare
    }

    /// The version of the map this replica has acted on.
    pub fn acted_on(&self) -> u64 {
        self.acted_on
    }

    /// Whether the replica must refuse to serve: it is not a member, or it
    /// holds no lease for the map it has acted on (`lease_valid(version)`).
    pub fn fenced(&self, lease_valid: impl Fn(u64) -> bool) -> bool {
        !self.is_member() || !lease_valid(self.acted_on)
    }

    /// Whether the replica may hand its state to a joining successor: only
    /// as a member that may serve. A joiner's own (empty or partial) state
    /// never seeds another joiner, whatever epoch it is configured at.
    pub fn may_serve_state(&self, lease_valid: impl Fn(u64) -> bool) -> bool {
        !self.fenced(lease_valid)
    }
}
